"""``federated_train``: rounds of select clients → local training → collect updates → validate
→ aggregate → evaluate, as a Prefect flow of :func:`~flows.tasks.cid_task` steps.

Simulation mode (the embedded default): the clients are partitions of a dataset's training
split (``iid`` or ``dirichlet:ALPHA``), each stored as its own artifact. Every step's inputs and
outputs are CIDs: each round's global model, every client update and each aggregation are
artifacts with signed receipts, so ``cidflow lineage`` traces the final model through every
round to the data. Because each step is cached by content, a coordinator killed mid-run resumes
where it stopped when run again, and ends with the same model CID as an uninterrupted run with
the same seeds. A round with fewer than ``min_clients`` accepted updates fails the run cleanly:
no partial model is produced.

Not yet here (issue 6, later parts): cluster mode (node-side client flows over private
datasets), differential privacy, secure aggregation, stragglers and federated evaluation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from prefect import flow

from flows.cache import MODEL_CODE_MODULES
from flows.errors import AggregationError, FlowError
from flows.tasks import cid_task, current_runtime

__all__ = ["aggregate_round", "client_round", "federated_train", "init_model", "split_clients"]

FED_ATTR = "cidflow.federated"
Weights = dict[str, np.ndarray[Any, Any]]


def _spec_of(art: Any) -> dict[str, Any]:
    from flows.pipelines import MODEL_ATTR

    spec = art.attrs.get(MODEL_ATTR)
    if art.kind != "state_dict" or not isinstance(spec, dict):
        raise FlowError(f"{art.cid} is not a cidflow model")
    return dict(spec)


def _model_spec(spec: dict[str, Any]) -> Any:
    from flows.federated.client import ModelSpec

    return ModelSpec(spec["model"], tuple(spec["input_shape"]), int(spec["n_classes"]),
                     int(spec.get("seed", 0)), spec.get("model_kwargs") or None)  # fmt: skip


def _weights(cid: str) -> tuple[Weights, dict[str, Any]]:
    from flows.federated.client import state_to_weights

    art = current_runtime().store.open_artifact(cid)
    return state_to_weights(art.to_state_dict()), _spec_of(art)


def _put_model(weights: Weights, spec: dict[str, Any], info: dict[str, Any], source: str) -> str:
    import torch

    from flows.pipelines import MODEL_ATTR

    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    store = current_runtime().store
    cid = store.put_state_dict(tensors, attrs={MODEL_ATTR: spec, FED_ATTR: info}, source=source)
    return str(cid)


def attack_factor(attack: str) -> float:
    """The factor K of an attack spec: ``scale:K`` → K, ``signflip`` → −1."""
    kind, _, value = attack.partition(":")
    if kind == "signflip" and not value:
        return -1.0
    if kind == "scale":
        try:
            return float(value)
        except ValueError:
            raise FlowError(f"attack {attack!r}: scale:K needs a number K") from None
    raise FlowError(f"unknown attack {attack!r} (expected scale:K or signflip)")


def apply_attack(attack: str, before: Weights, after: Weights) -> Weights:
    """What a Byzantine client sends instead of its honest weights (simulation only):
    ``scale:K`` sends ``before + K * (after - before)`` (K = 1000: a huge update), ``signflip``
    sends ``before - (after - before)``. Integer arrays are left honest."""
    factor = attack_factor(attack)
    out: Weights = {}
    for name, new in after.items():
        old = before[name]
        if np.issubdtype(new.dtype, np.floating):
            out[name] = (old + factor * (new - old)).astype(new.dtype)
        else:
            out[name] = new
    return out


@cid_task(name="fed-split")
def split_clients(dataset: str, clients: int, partition: str, seed: int) -> dict[str, Any]:
    """The dataset's training split cut into one artifact (``x``, ``y``) per client."""
    from flows.federated.partition import partition as cut
    from flows.pipelines import _supervised

    store = current_runtime().store
    x_arr, y_arr = _supervised(store.open_artifact(dataset), "train")
    x, y = np.asarray(x_arr[...], dtype=np.float32), np.asarray(y_arr[...], dtype=np.int64)
    parts = cut(partition, y, clients, seed)
    out = []
    for k, idx in enumerate(parts):
        info = {"client": k, "of": clients, "dataset": dataset, "partition": partition}
        cid = store.put_arrays({"x": x[idx], "y": y[idx]}, attrs={FED_ATTR: info},
                               source="federated split")  # fmt: skip
        out.append(str(cid))
    return {"clients": out, "sizes": [len(p) for p in parts]}


@cid_task(name="fed-init", extra_modules=MODEL_CODE_MODULES)
def init_model(
    dataset: str, model: str, seed: int, model_kwargs: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Round 0: the seeded initial global model for the dataset's shapes and classes."""
    from flows.federated.client import ModelSpec
    from flows.pipelines import _n_classes, _supervised

    art = current_runtime().store.open_artifact(dataset)
    x_arr, y_arr = _supervised(art, "train")
    n_classes = _n_classes(art, np.asarray(y_arr[...]))
    spec = ModelSpec(model, tuple(int(n) for n in x_arr.shape[1:]), n_classes, seed, model_kwargs)
    as_json = {"model": model, "model_kwargs": model_kwargs or {}, "n_classes": n_classes,
               "input_shape": list(spec.input_shape), "seed": seed, "dataset": dataset}  # fmt: skip
    return {"model": _put_model(spec.initial_weights(), as_json, {"round": 0}, "federated")}


@cid_task(name="fed-client", extra_modules=MODEL_CODE_MODULES)
def client_round(
    global_model: str,
    data: str,
    round: int,
    epochs: int = 1,
    lr: float = 5e-3,
    batch_size: int = 32,
    seed: int = 0,
    proximal_mu: float = 0.0,
    attack: str | None = None,
) -> dict[str, Any]:
    """One client's local training from the global model; the update is an artifact.
    ``attack`` makes this client Byzantine (simulation only, see :func:`apply_attack`)."""
    from flows.federated.client import local_train

    weights, spec = _weights(global_model)
    local = current_runtime().store.open_artifact(data).to_numpy()
    result = local_train(
        _model_spec(spec), weights, local["x"], local["y"], epochs=epochs, lr=lr,
        batch_size=batch_size, seed=seed, proximal_mu=proximal_mu,
    )  # fmt: skip
    sent = apply_attack(attack, weights, result.weights) if attack else result.weights
    info = {"round": round, "update_of": global_model, "data": data}
    if attack:
        info["attack"] = attack
    update = _put_model(sent, spec, info, "federated client")
    return {"update": update, "num_examples": result.num_examples, "metrics": result.metrics}


@cid_task(name="fed-aggregate")
def aggregate_round(
    global_model: str,
    updates: list[str],
    counts: list[int],
    round: int,
    strategy: str,
    strategy_args: dict[str, Any] | None = None,
    server_state: str | None = None,
    dp: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Screen and aggregate the round's updates into the next global model (or a failure).

    With ``dp`` (``clip``, ``noise_multiplier``, ``seed``; FedAvg only) the screened updates are
    clipped and averaged with Gaussian noise (:func:`~flows.federated.privacy.private_mean`)."""
    from flows.federated.strategies import STRATEGIES, FedOpt, ServerOptState

    if strategy not in STRATEGIES:
        raise AggregationError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    cls = STRATEGIES[strategy]
    args = dict(strategy_args or {})
    store = current_runtime().store
    if issubclass(cls, FedOpt) and server_state is not None:
        saved = store.open_artifact(server_state)
        arrays, step = saved.to_numpy(), int(saved.attrs["step"])
        names = sorted({k.split("/", 1)[1] for k in arrays})
        args["state"] = ServerOptState(step, {n: arrays[f"m/{n}"] for n in names},
                                       {n: arrays[f"v/{n}"] for n in names})  # fmt: skip
    chosen = cls(**args)
    weights, spec = _weights(global_model)
    results = [(f"client-{k}", _weights(u)[0], n) for k, (u, n) in
               enumerate(zip(updates, counts, strict=True))]  # fmt: skip
    if dp is not None:
        outcome = _private_round(chosen, weights, results, dp, round)
    else:
        outcome = chosen.aggregate(round, weights, results)
    answer: dict[str, Any] = {
        "rejected": [list(r) for r in outcome.rejected],
        "metrics": dict(outcome.metrics),
        "failure": outcome.failure,
    }
    if outcome.weights is None:
        return {**answer, "model": None, "server_state": server_state}
    info = {"round": round, "strategy": strategy, "previous": global_model, "updates": updates}
    answer["model"] = _put_model(outcome.weights, spec, info, "federated aggregate")
    answer["server_state"] = None
    if isinstance(chosen, FedOpt) and chosen.state is not None:
        st = chosen.state
        arrays = {f"m/{n}": a for n, a in st.m.items()} | {f"v/{n}": a for n, a in st.v.items()}
        answer["server_state"] = str(store.put_arrays(arrays, attrs={"step": st.step}))
    return answer


def _private_round(
    chosen: Any, weights: Weights, results: list[Any], dp: dict[str, float], round: int
) -> Any:
    from flows.federated.aggregate import cast_like
    from flows.federated.privacy import private_mean
    from flows.federated.strategies import AggregateResult, FedAvg
    from flows.federated.validate import screen

    if not isinstance(chosen, FedAvg):
        raise AggregationError("differential privacy is offered with fedavg only")
    accepted, rejected = screen(weights, results, norm_bound=chosen.norm_bound,
                                max_examples=chosen.max_examples)  # fmt: skip
    metrics: dict[str, float | int | str] = {"received": len(results), "accepted": len(accepted)}
    if len(accepted) < chosen.min_clients:
        return AggregateResult(None, rejected, metrics, failure="too few accepted updates")
    rng = np.random.default_rng([int(dp.get("seed", 0)), round])
    mean = private_mean(weights, [u.weights for u in accepted], clip=float(dp["clip"]),
                        noise_multiplier=float(dp["noise_multiplier"]), rng=rng)  # fmt: skip
    return AggregateResult(cast_like(weights, mean), rejected, metrics)


def federated_train_fn(
    dataset: str,
    clients: int = 5,
    partition: str = "dirichlet:0.5",
    rounds: int = 20,
    strategy: str = "fedavg",
    model: str = "mlp",
    seed: int = 0,
    epochs: int = 1,
    lr: float = 5e-3,
    batch_size: int = 32,
    strategy_args: dict[str, Any] | None = None,
    model_kwargs: dict[str, Any] | None = None,
    byzantine: int = 0,
    attack: str = "scale:1000",
    dp_epsilon: float | None = None,
    dp_delta: float = 1e-5,
    dp_clip: float = 1.0,
) -> dict[str, Any]:
    """The rounds (see the module docstring); returns the final model, history, accuracy.
    ``byzantine`` > 0 makes the first that many clients send ``attack`` (robustness tests)."""
    from prefect.logging import get_run_logger

    from flows.federated.strategies import STRATEGIES
    from flows.pipelines import evaluate

    if strategy not in STRATEGIES:
        raise AggregationError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    if rounds < 1 or clients < 1:
        raise FlowError("rounds and clients must be at least 1")
    if not 0 <= byzantine <= clients:
        raise FlowError(f"byzantine must be between 0 and the {clients} clients")
    if byzantine:
        attack_factor(attack)  # a bad attack spec fails before any round
    log = get_run_logger()
    dp: dict[str, float] | None = None
    if dp_epsilon is not None:
        from flows.federated.privacy import noise_for_epsilon

        sigma = noise_for_epsilon(dp_epsilon, rounds, dp_delta)
        dp = {"clip": dp_clip, "noise_multiplier": sigma, "seed": seed}
        log.info(
            "differential privacy: epsilon %.3g at delta %g over %d rounds: noise multiplier "
            "%.4f, clip %g", dp_epsilon, dp_delta, rounds, sigma, dp_clip,
        )  # fmt: skip
    args = dict(strategy_args or {})
    if strategy == "fedprox":
        args.setdefault("proximal_mu", 0.01)
    mu = float(args.get("proximal_mu", 0.0)) if strategy == "fedprox" else 0.0
    parts = split_clients(dataset=dataset, clients=clients, partition=partition, seed=seed)
    current = init_model(dataset=dataset, model=model, seed=seed, model_kwargs=model_kwargs)
    global_model, state = str(current["model"]), None
    history: list[dict[str, Any]] = []
    for rnd in range(1, rounds + 1):
        ups = [
            client_round(
                global_model=global_model,
                data=data,
                round=rnd,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed * 100_003 + rnd * 1_009 + k,
                proximal_mu=mu,
                attack=attack if k < byzantine else None,
            )
            for k, data in enumerate(parts["clients"])
        ]
        agg = aggregate_round(
            global_model=global_model, updates=[u["update"] for u in ups],
            counts=[int(u["num_examples"]) for u in ups], round=rnd, strategy=strategy,
            strategy_args=args, server_state=state, dp=dp,
        )  # fmt: skip
        if agg["model"] is None:
            raise AggregationError(f"round {rnd} failed: {agg['failure']} (no model published)")
        global_model, state = agg["model"], agg["server_state"]
        metrics = evaluate(model=global_model, dataset=dataset)["metrics"]
        row = {"round": rnd, "accuracy": float(metrics["accuracy"]),
               "loss": float(metrics["loss"]), "rejected": len(agg["rejected"])}  # fmt: skip
        history.append(row)
        log.info("round %d/%d  accuracy=%.4f  loss=%.4f  rejected=%d", rnd, rounds,
                 row["accuracy"], row["loss"], row["rejected"])  # fmt: skip
    privacy = None
    if dp is not None:
        from flows.federated.privacy import epsilon

        spent = epsilon(dp["noise_multiplier"], rounds, dp_delta)
        privacy = {"epsilon": spent, "delta": dp_delta, **dp}
    return {"model": global_model, "history": history, "accuracy": history[-1]["accuracy"],
            "clients": parts["clients"], "strategy": strategy, "privacy": privacy}  # fmt: skip


federated_train = flow(name="federated-train", log_prints=False)(federated_train_fn)
