"""Node and cluster commands: ``node start``, ``cluster up/status/down``, ``store repair``
(registered on the main group by :mod:`cidflow.cli`)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from cidflow.cli import _emit_json, _home, _size, _store, cli, json_option

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``512MiB``, ``2G``, ``1048576`` → bytes."""
    m = _SIZE.match(text)
    if not m:
        raise click.BadParameter(f"{text!r} is not a size like 512MiB or 20G")
    unit = (m.group(2) or "").upper()[:1]
    return int(float(m.group(1)) * _UNITS[unit])


def _private(items: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    out = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"--private {item!r} is not NAME=PATH")
        out.append((name, Path(path).expanduser().absolute()))
    return tuple(out)


def _policies(items: tuple[str, ...], private: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """``--policy NAME=POLICY`` pairs; ``--policy POLICY`` applies to every ``--private``."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, policy = item.rpartition("=")
        if sep and not name:
            raise click.BadParameter(f"--policy {item!r} is not [NAME=]POLICY")
        for target in [name] if sep else [p.partition("=")[0] for p in private]:
            out[target] = policy
    return tuple(out.items())


def _registry(given: str | None, file: str | None, from_env: str | None) -> str | None:
    """The registry target: ``--registry`` (never one with a password: command lines are
    public), else ``--registry-file``'s content, else ``CIDFLOW_NODE_REGISTRY``."""
    from registry.registry import redact_url

    if given is not None and redact_url(given) != given:
        raise click.BadParameter(
            "a password on the command line is visible to every user (ps): put the URL in "
            "CIDFLOW_NODE_REGISTRY or in a file given to --registry-file",
            param_hint="--registry",
        )
    if given is not None and file is not None:
        raise click.BadParameter("give --registry or --registry-file, not both")
    if file is not None:
        try:
            text = Path(file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {file}: {exc.strerror}") from None
        if not text:
            raise click.BadParameter(f"{file} is empty", param_hint="--registry-file")
        return text
    return given or from_env or None


@cli.group("node")
def node_group() -> None:
    """Run this machine as a node agent: lend disk and compute to the network."""


@node_group.command("start")
@click.option("--name", required=True, help="This node's name (deployments are FLOW/NAME).")
@click.option("--home", "node_home", type=click.Path(file_okay=False), help="The node's home.")
@click.option("--host", help="Address to listen on (default 127.0.0.1; CIDFLOW_NODE_HOST).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (default 8470).")
@click.option("--capacity", help="Most bytes of blobs to hold (e.g. 20GiB; default: no cap).")
@click.option("--max-blob", help="Largest single upload accepted (default 128MiB).")
@click.option(
    "--private",
    "private",
    multiple=True,
    metavar="NAME=PATH",
    help="A private dataset: used by flows on this node only, never served.",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    metavar="[NAME=]POLICY",
    help="What may leave a private dataset: model (weights, aggregate metrics; the "
    "default), aggregate (federated updates only) or rows (anything). POLICY alone "
    "applies to every --private of this start.",
)
@click.option(
    "--registry",
    help="Registry to announce to (service URL or SQLite path; one "
    "with a password: CIDFLOW_NODE_REGISTRY or --registry-file, out of 'ps').",
)
@click.option(
    "--registry-file",
    type=click.Path(dir_okay=False),
    help="A file holding the registry target (e.g. a postgresql:// URL).",
)
@click.option(
    "--allow-peer",
    "peers",
    multiple=True,
    metavar="KEY",
    help="A peer's public key whose signed PUTs (replication) this node accepts.",
)
@click.option("--prefect-api", help="Prefect API URL: serve the node-side flows there.")
@click.option(
    "--prefect-auth-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A 0600 file holding the Prefect API's USER:PASSWORD (or set PREFECT_API_AUTH_STRING).",
)
@click.option(
    "--allow-coordinator",
    "coordinators",
    multiple=True,
    metavar="KEY",
    help="A coordinator's public key whose signed run requests this node "
    "accepts (repeat; none: the node runs no flows).",
)
@click.option(
    "--heartbeat",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between re-announcements.",
)
@click.option("--marker", hidden=True, help="Set by 'cluster up' to recognise its processes.")
@click.pass_context
def node_start(
    ctx: click.Context,
    name: str,
    node_home: str | None,
    host: str | None,
    port: int | None,
    capacity: str | None,
    max_blob: str | None,
    private: tuple[str, ...],
    policies: tuple[str, ...],
    registry: str | None,
    registry_file: str | None,
    peers: tuple[str, ...],
    prefect_api: str | None,
    prefect_auth_file: Path | None,
    coordinators: tuple[str, ...],
    heartbeat: float,
    marker: str | None,
) -> None:
    """Serve blobs over HTTP, announce to the registry, run flows (until Ctrl-C / SIGTERM).

    The node's own token is the file HOME/token (created on first start, mode 0600): it alone
    authorises deletes and listings; peers (--allow-peer) may only PUT blobs, signed by their
    key. Options not given come from CIDFLOW_NODE_* (HOST, PORT, CAPACITY, MAX_BLOB,
    ALLOWED_HOSTS, REGISTRY)."""
    from node_agent.agent import NodeAgent, NodeOptions
    from node_agent.settings import NodeSettings

    settings = NodeSettings()
    home = Path(node_home).expanduser().absolute() if node_home else _home(ctx)
    options = NodeOptions(
        name=name,
        home=home,
        host=host or settings.host,
        port=port or settings.port,
        capacity=parse_size(capacity) if capacity else settings.capacity,
        max_blob=parse_size(max_blob) if max_blob else settings.max_blob,
        private=_private(private),
        policies=_policies(policies, private),
        prefect_api=prefect_api,
        registry=_registry(registry, registry_file, settings.registry),
        heartbeat=heartbeat,
        allowed_hosts=tuple(settings.allowed_hosts),
        peers=peers,
        prefect_auth_file=prefect_auth_file.expanduser().absolute() if prefect_auth_file else None,
        allowed_coordinators=coordinators,
    )
    agent = NodeAgent(options)
    click.echo(f"node {name} ({agent.identity.id}) serving {options.url}", err=True)
    agent.serve()


node_home_option = click.option(
    "--home",
    "node_home",
    type=click.Path(file_okay=False),
    help="The node's home (default: the global --home).",
)


@node_group.command("allow")
@click.argument("code_cid", metavar="CODE_CID")
@node_home_option
@click.option("--revoke", is_flag=True, help="Withdraw it instead.")
@json_option
@click.pass_context
def node_allow(
    ctx: click.Context, code_cid: str, node_home: str | None, revoke: bool, as_json: bool
) -> None:
    """Allow a code artifact to run on this node (sandboxed), or --revoke it. Takes effect on
    the node's next run; the allow-list is HOME/trusted-code.json."""
    from flows.code import trust_code, untrust_code

    home = Path(node_home).expanduser().absolute() if node_home else _home(ctx)
    changed = (untrust_code if revoke else trust_code)(home, code_cid)
    if as_json:
        _emit_json({"code": code_cid, "allowed": not revoke, "changed": changed})
    else:
        click.echo(f"{'revoked' if revoke else 'allowed'} {code_cid}")


@node_group.command("approve")
@click.argument("name")
@click.argument("code_cid", metavar="CODE_CID")
@node_home_option
@click.option("--revoke", is_flag=True, help="Withdraw the approval instead.")
@json_option
@click.pass_context
def node_approve(
    ctx: click.Context,
    name: str,
    code_cid: str,
    node_home: str | None,
    revoke: bool,
    as_json: bool,
) -> None:
    """As the owner of private dataset NAME, approve a code artifact to run on it (or
    --revoke): user code needs this on top of the operator's 'node allow'."""
    from flows.private import approve_code

    home = Path(node_home).expanduser().absolute() if node_home else _home(ctx)
    changed = approve_code(home, name, code_cid, revoke=revoke)
    if as_json:
        _emit_json({"dataset": name, "code": code_cid, "approved": not revoke, "changed": changed})
    else:
        click.echo(f"{'revoked' if revoke else 'approved'} {code_cid} for {name}")


cluster_home_option = click.option(
    "--home",
    "cluster_home",
    type=click.Path(file_okay=False),
    help="Cluster folder (default: the global --home).",
)


def _cluster_home(ctx: click.Context, cluster_home: str | None) -> Path:
    return Path(cluster_home).expanduser().absolute() if cluster_home else _home(ctx)


@cli.group("cluster")
def cluster_group() -> None:
    """A local cluster on 127.0.0.1: a Prefect server and N node agents."""


@cluster_group.command("up")
@click.option("--nodes", type=click.IntRange(1, 32), default=3, show_default=True)
@cluster_home_option
@click.option("--replication", "-r", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option("--capacity", help="Per-node capacity (e.g. 2GiB).")
@click.option(
    "--private",
    "private",
    multiple=True,
    metavar="NODE:NAME=PATH",
    help="A private dataset held by one node.",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    metavar="NODE:NAME=POLICY",
    help="A private dataset's output policy: model (default), aggregate or rows.",
)
@json_option
@click.pass_context
def cluster_up_cmd(
    ctx: click.Context,
    nodes: int,
    cluster_home: str | None,
    replication: int,
    capacity: str | None,
    private: tuple[str, ...],
    policies: tuple[str, ...],
    as_json: bool,
) -> None:
    """Start the cluster in the background; later commands with this home use it."""
    from node_agent.cluster import cluster_up

    home = _cluster_home(ctx, cluster_home)
    per_node: dict[str, list[str]] = {}
    for item in private:
        node, sep, rest = item.partition(":")
        if not sep or "=" not in rest:
            raise click.BadParameter(f"--private {item!r} is not NODE:NAME=PATH")
        name, _, path = rest.partition("=")
        per_node.setdefault(node, []).append(f"{name}={Path(path).expanduser().absolute()}")
    per_node_policy: dict[str, list[str]] = {}
    for item in policies:
        node, sep, rest = item.partition(":")
        if not sep or "=" not in rest:
            raise click.BadParameter(f"--policy {item!r} is not NODE:NAME=POLICY")
        per_node_policy.setdefault(node, []).append(rest)
    out = cluster_up(
        home,
        nodes,
        replication=replication,
        capacity=parse_size(capacity) if capacity else None,
        private=per_node,
        policies=per_node_policy,
    )
    if as_json:
        _emit_json(out)
        return
    click.echo(f"Prefect API {out['prefect_api']}")
    for node in out["nodes"]:
        click.echo(f"{node['name']}  {node['url']}  pid {node['pid']}")


@cluster_group.command("status")
@cluster_home_option
@json_option
@click.pass_context
def cluster_status_cmd(ctx: click.Context, cluster_home: str | None, as_json: bool) -> None:
    """Show the cluster's processes and whether each node answers."""
    from node_agent.cluster import cluster_status

    home = _cluster_home(ctx, cluster_home)
    out = cluster_status(home)
    if as_json:
        _emit_json(out)
        return
    state = "running" if out["prefect_running"] else "stopped"
    click.echo(f"Prefect API {out['prefect_api']} ({state})")
    for node in out["nodes"]:
        used = _size(node["used"]) if node.get("used") is not None else "-"
        click.echo(f"{node['name']}  {node['url']}  pid {node['pid']}  {node['status']}  {used}")


@cluster_group.command("down")
@cluster_home_option
@json_option
@click.pass_context
def cluster_down_cmd(ctx: click.Context, cluster_home: str | None, as_json: bool) -> None:
    """Stop exactly the processes 'cluster up' started."""
    from node_agent.cluster import cluster_down

    home = _cluster_home(ctx, cluster_home)
    out = cluster_down(home)
    if as_json:
        _emit_json(out)
        return
    click.echo(f"stopped {len(out['stopped'])} process(es)")


@cli.group("store")
def store_group() -> None:
    """The home's blob store as a whole (on a cluster: all nodes)."""


@store_group.command("repair")
@json_option
@click.pass_context
def store_repair(ctx: click.Context, as_json: bool) -> None:
    """Restore the replication factor: copy verified blobs to the nodes that should hold them."""
    from artifacts.blobstore.replicated import ReplicatedBlobStore

    store = _store(ctx)
    blobs = store.blobs
    if not isinstance(blobs, ReplicatedBlobStore):
        raise click.UsageError("store repair needs a home on a cluster (cidflow cluster up)")
    report = blobs.repair()
    out: dict[str, object] = {
        "checked": report.checked,
        "copied": report.copied,
        "missing": [str(c) for c in report.missing],
        "under_replicated": [str(c) for c in report.under_replicated],
        "unreachable": sorted(report.unreachable),
        "ok": report.ok,
    }
    if as_json:
        _emit_json(out)
    else:
        click.echo(
            f"checked {report.checked} blob(s), copied {report.copied}, missing "
            f"{len(report.missing)}, unreachable nodes: {', '.join(report.unreachable) or 'none'}"
        )
    if not report.ok:
        raise SystemExit(1)
