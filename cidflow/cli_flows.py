"""Flow commands of the ``cidflow`` CLI (registered on the main group by :mod:`cidflow.cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from cidflow.cli import _emit_json, _registry, _store, cli, registry_option


def _resolve(ctx: click.Context, ref_or_cid: str, target: str | None) -> tuple[str, str | None]:
    """(CID, receipt CID or None) of a registry reference or a plain CID (``private:NAME``,
    a node's private dataset, stays as it is: only that node can resolve it)."""
    from artifacts.cid import as_cid
    from artifacts.errors import InvalidCIDError

    if ref_or_cid.startswith("private:"):
        return ref_or_cid, None
    try:
        return str(as_cid(ref_or_cid)), None
    except InvalidCIDError:
        info = _registry(ctx, target).resolve(ref_or_cid)
        return info.cid, info.receipt


def _print_tree(tree: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.tree import Tree

    def label(node: dict[str, Any]) -> str:
        return f"[bold]{node['cid']}[/bold]"

    def add(branch: Tree, node: dict[str, Any]) -> None:
        run = node["produced_by"]
        if run is None:
            branch.add("[dim]source (no receipt: added or published from outside a flow)[/dim]")
            return
        params = json.dumps(run["parameters"], sort_keys=True)
        step = branch.add(
            f"[cyan]{run['task']}[/cyan] {params}  [dim]receipt {run['receipt'][:20]}… "
            f"on {run['node']} at {run['ended']}[/dim]"
        )
        for child in run["inputs"]:
            add(step.add(label(child)), child)

    root = Tree(label(tree))
    add(root, tree)
    Console().print(root)


@cli.command()
@click.argument("ref_or_cid", metavar="REF_OR_CID")
@click.option("--dot", "as_dot", is_flag=True, help="Print Graphviz DOT.")
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def lineage(
    ctx: click.Context, ref_or_cid: str, as_dot: bool, target: str | None, as_json: bool
) -> None:
    """Show how an artifact was made: the signed receipts back to its source data."""
    from flows.lineage import lineage as walk
    from flows.lineage import to_dot

    cid, receipt = _resolve(ctx, ref_or_cid, target)
    tree = walk(_store(ctx, read_only=True), cid, receipt=receipt)
    if as_json:
        _emit_json(tree)
    elif as_dot:
        click.echo(to_dot(tree), nl=False)
    else:
        _print_tree(tree)


def _flow_env(ctx: click.Context, verbose: bool) -> None:
    """Point Prefect (ephemeral API, result storage) and the flow runtime at this home.

    Must run before prefect is imported (Prefect reads its settings once, at import: a flow
    would otherwise keep results and its API database under ``~/.prefect``, shared by every
    home); a value already in the environment wins."""
    import os
    import sys

    from cidflow.cli import _home

    if "prefect" in sys.modules and "PREFECT_LOCAL_STORAGE_PATH" not in os.environ:
        raise RuntimeError("internal error: prefect was imported before the home was set up")

    home = _home(ctx)
    os.environ["CIDFLOW_HOME"] = str(home)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "prefect" / "results"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # Failures are reported as one line by the CLI; Prefect's own tracebacks only with -v.
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")


def _kwargs(items: tuple[str, ...], flag: str = "--model-kwarg") -> dict[str, Any]:
    """``KEY=VALUE`` options as a dict, each VALUE read as JSON where it is JSON."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{flag} {item!r} is not KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


trust_code_option = click.option(
    "--trust-code",
    "trust_items",
    multiple=True,
    metavar="CID_OR_MODULE:FACTORY",
    help="Trust this code artifact (CID) or local module:factory to build the model, for this "
    "run (repeatable; see cidflow code trust for a lasting allow-list).",
)


def _trust(ctx: click.Context, items: tuple[str, ...], *named: str) -> Any:
    """The run's :class:`~flows.code.CodeTrust`: the home's allow-list, ``--trust-code``
    values and what this command line itself named (``--code``, ``--model module:factory``)."""
    from cidflow.cli import _home
    from flows.code import CodeTrust
    from flows.errors import UntrustedCodeError

    try:
        return CodeTrust.for_home(_home(ctx)).trusting(*items, *named)
    except UntrustedCodeError:
        raise
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--trust-code") from None


def _model_to_train(
    ctx: click.Context,
    model: str,
    code: str | None,
    items: tuple[str, ...],
    *,
    on_nodes: bool,
) -> tuple[Any, Any, list[str]]:
    """(model reference, trust policy, modules for the cache key) of ``--model``/``--code``:
    what the local user names on the command line is trusted for this run. ``on_nodes``: the
    model is built by node agents, which never build a local module."""
    from flows.code import code_files, make_ref, model_modules

    ref = make_ref(model, code)  # a bad name or CID fails here, before any flow
    if on_nodes and ref.is_local:
        raise click.UsageError(
            f"--model {model}: node agents never build local code; store it as a code "
            "artifact (cidflow code add DIR) whose CID the nodes' operators trust"
        )
    named = [ref.code] if ref.code is not None else [model] if ref.is_local else []
    trust = _trust(ctx, items, *named)
    if ref.code is not None:
        code_files(_store(ctx, read_only=True), ref.code)  # a forged or missing one fails here
    return ref, trust, model_modules(ref)


def _loaded_model(ctx: click.Context, model: str, items: tuple[str, ...]) -> tuple[Any, Any]:
    """(code CID or None, trust policy) of model artifact ``model``, refused before any flow
    (and before anything is imported) unless the run trusts its code; its local module, when
    trusted, joins the cache key (:func:`flows.code.model_modules`)."""
    from flows.code import model_ref_of

    trust = _trust(ctx, items)
    ref = model_ref_of(_store(ctx, read_only=True), model)
    if not ref.is_zoo:
        trust.check(ref)
    return ref, trust


def _run_flow(
    ctx: click.Context,
    task: str,
    params: dict[str, Any],
    verbose: bool,
    extra_modules: list[str] | None = None,
    trust: Any = None,
) -> dict[str, Any]:
    """Run ``flows.pipelines.<task>_flow(**params)``, unless its result is already cached.

    The fast path (:func:`flows.cache.lookup_cached`) computes the task's cache key exactly as
    its Prefect cache policy does and reads the JSON result Prefect stored for it, so a cached
    rerun starts neither Prefect nor torch; a record whose artifacts or receipt are gone from
    the store is dropped so that Prefect recomputes. ``CIDFLOW_NO_FAST_PATH=1`` turns it off."""
    from cidflow.cli import _home

    cluster = _cluster(ctx)
    if cluster is not None:  # on a cluster: the run goes to a node (Prefect deployment)
        from node_agent.coordinator import run_on_cluster

        return run_on_cluster(
            _store(ctx),
            cluster,
            task,
            params,
            node=ctx.obj.get("node"),
            needs_gpu=bool(ctx.obj.get("needs_gpu")),
        )
    if ctx.obj.get("node") or ctx.obj.get("needs_gpu"):
        raise click.UsageError("--node and --gpu need a home on a cluster (cidflow cluster up)")
    _flow_env(ctx, verbose)
    from flows.cache import MODEL_CODE_MODULES, lookup_cached, prefect_results_dir

    results = prefect_results_dir()
    if results is not None:
        found = lookup_cached(
            f"flows.pipelines:{task}",
            params,
            home=_home(ctx),
            results=results,
            extra_modules=[*MODEL_CODE_MODULES, *(extra_modules or [])],
            drop_stale=True,
        )
        if found is not None:
            return {**found, "cached": True}
    from flows import pipelines
    from flows.code import CodeTrust, trusting

    with trusting(trust if trust is not None else CodeTrust.for_home(_home(ctx))):
        result: dict[str, Any] = getattr(pipelines, f"{task}_flow")(**params)
    return result


def _cluster(ctx: click.Context) -> dict[str, Any] | None:
    """The home's cluster record, with this process's Prefect client pointed at the cluster's
    API and credentials (``None``: the home is not on a cluster)."""
    from cidflow.cli import _home
    from node_agent.cluster import load_cluster, use_cluster_prefect

    doc = load_cluster(_home(ctx))
    if doc is not None:
        use_cluster_prefect(doc)
    return doc


def _node_option(fn: Any) -> Any:
    """``--node NAME`` and ``--gpu``: where a run goes on a cluster (default: the scheduler
    picks the live node holding most of the inputs)."""

    def remember(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        ctx.ensure_object(dict)[str(param.name)] = value

    fn = click.option(
        "--gpu",
        "needs_gpu",
        is_flag=True,
        expose_value=False,
        callback=remember,
        help="On a cluster: run on a node with a GPU.",
    )(fn)
    return click.option(
        "--node",
        metavar="NAME",
        expose_value=False,
        callback=remember,
        help="On a cluster: the node to run on (needed for private:NAME datasets).",
    )(fn)


def _report(result: dict[str, Any], as_json: bool, lines: list[str]) -> None:
    if as_json:
        _emit_json(result)
        return
    for line in lines:
        click.echo(line)
    if result.get("cached"):
        click.echo("(served from the cache: same code, parameters and input CIDs)")
    click.echo(f"receipt: {result['receipt']}")


verbose_option = click.option("-v", "--verbose", is_flag=True, help="Show Prefect's logs.")


@cli.command()
@click.option("--dataset", required=True, metavar="REF_OR_CID", help="Dataset to train on.")
@click.option(
    "--model",
    default="mlp",
    show_default=True,
    help="logreg, mlp, cnn or module:factory (a local module, or one in --code).",
)
@click.option(
    "--code",
    metavar="CODE_CID",
    help="A code artifact (cidflow code add) holding --model's module; naming it "
    "trusts it for this run.",
)
@trust_code_option
@click.option("--epochs", type=click.IntRange(1, 10000), default=10, show_default=True)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=64, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option(
    "--model-kwarg", "model_kwargs", multiple=True, metavar="KEY=VALUE", help="e.g. hidden=[256]"
)
@registry_option
@_node_option
@verbose_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def train(
    ctx: click.Context,
    dataset: str,
    model: str,
    code: str | None,
    trust_items: tuple[str, ...],
    epochs: int,
    seed: int,
    batch_size: int,
    lr: float,
    model_kwargs: tuple[str, ...],
    target: str | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Train a model on a dataset (a Prefect flow; cached by content, receipt signed)."""
    kwargs = _kwargs(model_kwargs)
    on_nodes = _cluster(ctx) is not None
    ref, trust, modules = _model_to_train(ctx, model, code, trust_items, on_nodes=on_nodes)
    cid, _ = _resolve(ctx, dataset, target)
    params = {
        "dataset": cid,
        "model": model,
        "epochs": epochs,
        "seed": seed,
        "batch_size": batch_size,
        "lr": lr,
        "model_kwargs": kwargs or None,
        "code": ref.code,
    }
    # a local model's module is part of the key (flows.code.model_modules, without torch)
    result = _run_flow(ctx, "train", params, verbose, modules, trust)
    m = result["metrics"]
    shown = "  ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "epoch")
    _report(
        result, as_json, [f"model: {result['model']}", f"after epoch {m.get('epoch')}: {shown}"]
    )


@cli.command()
@click.option("--model", required=True, metavar="REF_OR_CID")
@click.option("--dataset", required=True, metavar="REF_OR_CID")
@trust_code_option
@registry_option
@_node_option
@verbose_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def evaluate(
    ctx: click.Context,
    model: str,
    dataset: str,
    trust_items: tuple[str, ...],
    target: str | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Accuracy, loss and confusion matrix of a model on a dataset's test split."""
    from flows.code import model_modules

    model_cid, _ = _resolve(ctx, model, target)
    ref, trust = _loaded_model(ctx, model_cid, trust_items)
    data_cid, _ = _resolve(ctx, dataset, target)
    params = {"model": model_cid, "dataset": data_cid, "code": ref.code}
    result = _run_flow(ctx, "evaluate", params, verbose, model_modules(ref), trust)
    m = result["metrics"]
    lines = [
        f"accuracy {m['accuracy']:.4f}  loss {m['loss']:.4f}",
        f"metrics artifact (confusion matrix): {result['metrics_artifact']}",
    ]
    _report(result, as_json, lines)


@cli.command()
@click.option("--model", required=True, metavar="REF_OR_CID")
@click.option("--dataset", required=True, metavar="REF_OR_CID")
@click.option("--split", default="test", show_default=True, help="Which x to predict.")
@click.option("--batch-size", type=click.IntRange(1, 1 << 20), default=1024, show_default=True)
@trust_code_option
@registry_option
@_node_option
@verbose_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def infer(
    ctx: click.Context,
    model: str,
    dataset: str,
    split: str,
    batch_size: int,
    trust_items: tuple[str, ...],
    target: str | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Predict class ids for a dataset, batch by batch; prints the predictions' CID."""
    from flows.code import model_modules

    model_cid, _ = _resolve(ctx, model, target)
    ref, trust = _loaded_model(ctx, model_cid, trust_items)
    data_cid, _ = _resolve(ctx, dataset, target)
    params = {
        "model": model_cid,
        "dataset": data_cid,
        "split": split,
        "batch_size": batch_size,
        "code": ref.code,
    }
    result = _run_flow(ctx, "infer", params, verbose, model_modules(ref), trust)
    _report(result, as_json, [f"predictions: {result['predictions']} ({result['rows']} rows)"])


@cli.command()
@click.option("--dataset", required=True, metavar="REF_OR_CID", help="Dataset (train/test).")
@click.option("--clients", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option(
    "--partition",
    default="dirichlet:0.5",
    show_default=True,
    help="iid or dirichlet:ALPHA (non-IID).",
)
@click.option("--rounds", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option(
    "--strategy",
    default="fedavg",
    show_default=True,
    help="fedavg, fedprox, fedadagrad, fedadam, fedyogi, fedmedian, fedtrimmedavg, "
    "krum, multikrum.",
)
@click.option(
    "--strategy-arg",
    "strategy_args",
    multiple=True,
    metavar="KEY=VALUE",
    help="e.g. proximal_mu=0.1, beta=0.2, num_malicious=1",
)
@click.option(
    "--model",
    default="mlp",
    show_default=True,
    help="logreg, mlp, cnn or module:factory (local, or in --code).",
)
@click.option(
    "--code",
    metavar="CODE_CID",
    help="A code artifact holding --model's module; naming it trusts it for this run.",
)
@trust_code_option
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option(
    "--epochs",
    type=click.IntRange(1, 1000),
    default=1,
    show_default=True,
    help="Local epochs per round.",
)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=5e-3, show_default=True)
@click.option(
    "--byzantine",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Simulation: clients that send --attack, not honest updates.",
)
@click.option(
    "--attack",
    default="scale:1000",
    show_default=True,
    help="What Byzantine clients send: scale:K, signflip or silent (KIND@R: from round R on).",
)
@click.option(
    "--dp-epsilon",
    type=click.FloatRange(min=0, min_open=True),
    help="Differential privacy: the epsilon to spend (see --dp-level).",
)
@click.option(
    "--dp-delta",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=1e-5,
    show_default=True,
)
@click.option(
    "--dp-clip",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="L2 bound on each client's update (client level) or each example's "
    "gradient (example level).",
)
@click.option(
    "--dp-level",
    type=click.Choice(["client", "example"]),
    default="client",
    show_default=True,
    help="client: noise on the sum of updates, protects whole clients (fedavg); "
    "example: DP-SGD on every client, protects each example (any strategy).",
)
@click.option(
    "--client",
    "node_clients",
    multiple=True,
    metavar="NODE[=DATASET]",
    help="Cluster mode: a node agent as a client, training on DATASET there "
    "(default private:federated). Repeat for each node; replaces --clients/"
    "--partition.",
)
@click.option(
    "--round-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=600.0,
    show_default=True,
    help="Seconds a round waits for its clients.",
)
@click.option(
    "--min-clients",
    type=click.IntRange(min=1),
    help="Answers (and accepted updates) a round needs [default: a majority].",
)
@click.option(
    "--secure",
    is_flag=True,
    help="Secure aggregation (fedavg): the coordinator sees only the sum of updates.",
)
@click.option(
    "--dropout",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Simulation: chance a client's answer is lost.",
)
@click.option(
    "--min-cosine",
    type=click.FloatRange(-1, 1),
    help="Reject updates whose cosine with the round's coordinate-wise median update "
    "is below this (0 catches sign-flipped updates) [default: off].",
)
@click.option(
    "--max-norm-ratio",
    type=click.FloatRange(min=1),
    metavar="R",
    help="Reject updates more than R times as long as the round's median update "
    "(10 catches scaled updates) [default: off].",
)
@click.option(
    "--exclude-after",
    type=click.IntRange(min=1),
    metavar="K",
    help="Leave a client out of later rounds once K of its updates were rejected "
    "(a client that keeps attacking) [default: never].",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.png",
    help="Save the accuracy curves as a PNG.",
)
@registry_option
@verbose_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def federated(
    ctx: click.Context,
    dataset: str,
    clients: int,
    partition: str,
    rounds: int,
    strategy: str,
    strategy_args: tuple[str, ...],
    model: str,
    code: str | None,
    trust_items: tuple[str, ...],
    seed: int,
    epochs: int,
    lr: float,
    byzantine: int,
    attack: str,
    dp_epsilon: float | None,
    dp_delta: float,
    dp_clip: float,
    dp_level: str,
    node_clients: tuple[str, ...],
    round_timeout: float,
    min_clients: int | None,
    secure: bool,
    dropout: float,
    min_cosine: float | None,
    max_norm_ratio: float | None,
    exclude_after: int | None,
    plot: Path | None,
    target: str | None,
    verbose: bool,
    as_json: bool,
) -> None:
    """Federated training: clients train where their data is, only updates travel (as
    artifacts), the strategy aggregates; a history of accuracy per round.

    In simulation (the default) the clients are --clients partitions of the dataset; on a
    cluster home (cidflow cluster up) each --client NODE[=DATASET] is a node agent training on
    its own, usually private, data. --dataset's test split gives the centralised accuracy."""
    from flows.federated.partition import parse_partition
    from flows.federated.strategies import STRATEGIES

    parse_partition(partition)  # bad specs fail here, before Prefect starts
    if strategy not in STRATEGIES:
        raise click.BadParameter(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    from flows.federated.validate import option_conflict

    conflict = option_conflict(
        strategy,
        dp_epsilon=dp_epsilon,
        dp_level=dp_level,
        secure=secure,
        min_cosine=min_cosine,
        max_norm_ratio=max_norm_ratio,
        spell=lambda name: "--" + name.replace("_", "-"),
    )
    if conflict is not None:
        raise click.BadParameter(conflict)
    if byzantine > clients:
        raise click.BadParameter(f"--byzantine {byzantine} is more than the {clients} clients")
    if byzantine:
        from flows.federated.attacks import check_attack

        check_attack(attack)
    if plot is not None and plot.suffix.lower() != ".png":
        raise click.BadParameter(f"--plot {plot}: the file name must end in .png")
    strategy_kwargs = _kwargs(strategy_args, "--strategy-arg")  # before Prefect starts
    nodes = _federated_nodes(ctx, node_clients, byzantine, dropout)
    ref, trust, _ = _model_to_train(ctx, model, code, trust_items, on_nodes=bool(nodes))
    cid, _ = _resolve(ctx, dataset, target)
    _flow_env(ctx, verbose)
    cluster = _cluster(ctx) if nodes else None  # the coordinator's flow runs on its server
    from flows.code import trusting
    from flows.federated.flow import federated_train

    with trusting(trust):
        result: dict[str, Any] = federated_train(
            dataset=cid,
            clients=clients,
            partition=partition,
            rounds=rounds,
            strategy=strategy,
            model=model,
            code=ref.code,
            seed=seed,
            epochs=epochs,
            lr=lr,
            strategy_args=strategy_kwargs or None,
            byzantine=byzantine,
            attack=attack,
            dp_epsilon=dp_epsilon,
            dp_delta=dp_delta,
            dp_clip=dp_clip,
            dp_level=dp_level,
            nodes=nodes,
            api_url=cluster["prefect_api"] if cluster else None,
            round_timeout=round_timeout,
            min_clients=min_clients,
            secure=secure,
            dropout=dropout,
            min_cosine=min_cosine,
            max_norm_ratio=max_norm_ratio,
            exclude_after=exclude_after,
        )
    if plot is not None:
        from flows.federated.report import plot_history

        result["plot"] = str(plot_history(result["history"], plot, f"{strategy}, {model}"))
    if as_json:
        _emit_json(result)
        return
    _print_history(result)


def _federated_nodes(
    ctx: click.Context, node_clients: tuple[str, ...], byzantine: int, dropout: float
) -> list[list[str]] | None:
    """``--client`` values as ``[node, dataset]`` pairs, checked against the cluster."""
    if not node_clients:
        return None
    cluster = _cluster(ctx)
    if cluster is None:
        raise click.UsageError("--client needs a home on a cluster (cidflow cluster up)")
    if byzantine or dropout:
        raise click.UsageError("--byzantine and --dropout are simulation settings")
    known = [n["name"] for n in cluster["storage"]["nodes"]]
    pairs = []
    for text in node_clients:  # NODE alone means NODE=private:federated
        node, sep, data = text.partition("=")
        if not node or (sep and not data):
            raise click.BadParameter(f"--client {text!r} is not NODE or NODE=DATASET")
        pairs.append((node, data if sep else "private:federated"))
    for node, _ in pairs:
        if node not in known:
            names = ", ".join(known)
            raise click.BadParameter(f"no node {node!r} in this cluster (nodes: {names})")
    if len({n for n, _ in pairs}) != len(pairs):
        raise click.BadParameter("each node can be one client only")
    return [[n, d] for n, d in pairs]


def _print_history(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    table = Table(
        "round",
        "accuracy",
        "federated",
        "worst client",
        "loss",
        "clients",
        "rejected",
        title="federated training",
    )
    for row in result["history"]:
        own = list((row.get("client_accuracy") or {}).values())
        table.add_row(
            str(row["round"]),
            pct(row["accuracy"]),
            pct(row.get("federated_accuracy")),
            pct(min(own) if own else None),
            f"{row['loss']:.4f}",
            str(row.get("clients", "")),
            str(row["rejected"]),
        )
    Console().print(table)
    click.echo(f"model: {result['model']}  final accuracy {result['accuracy']:.4f}")
    if result["history"][-1].get("excluded"):
        click.echo(f"excluded: {', '.join(result['history'][-1]['excluded'])}")
    privacy = result.get("privacy")
    if privacy:
        what = (
            "each client's examples (DP-SGD on the clients)"
            if privacy["level"] == "example"
            else "each whole client (noise on the sum of updates)"
        )
        eps = privacy["epsilon"]  # None: no client reported a valid DP-SGD spend
        spent = f"{eps:.3g}" if eps is not None else "unknown"
        click.echo(
            f"privacy: epsilon {spent} at delta {privacy['delta']:g} for {what}; "
            f"noise: {privacy.get('noise', 'unstated')}"
        )
    if result.get("plot"):
        click.echo(f"plot: {result['plot']}")
