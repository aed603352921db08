"""``federated_train``: rounds of select clients → local training → collect updates → validate
→ aggregate → evaluate, as a Prefect flow of :func:`~flows.tasks.cid_task` steps.

Two modes, one client step (:func:`client_round`):

- Simulation (the embedded default): the clients are partitions of a dataset (``iid`` or
  ``dirichlet:ALPHA``), each stored as its own artifact with a training part and a held-out
  part that follows its label mix; every client step runs in this process.
- Cluster (``clients=[(NODE, DATASET), ...]``): each client is a node agent training on its own
  (usually private) dataset through the node-side ``fed-client`` flow
  (:mod:`flows.federated.remote`); only updates travel. A node that does not answer within
  ``round_timeout`` is left out of the round, which goes on with at least ``min_clients``
  answers; its update, when it comes, is for a finished round and is discarded.

Every step's inputs and outputs are CIDs: each round's global model, every client update and
each aggregation are artifacts with signed receipts, so ``cidflow lineage`` traces the final
model through every round to the data. Because each step is cached by content, a coordinator
killed mid-run resumes where it stopped when run again, and ends with the same model CID as an
uninterrupted run with the same seeds (with DP, only up to the last cached step: the noise
comes from the OS CSPRNG, so a recomputed step draws new noise). A round with fewer than
``min_clients`` answers or accepted updates fails the run cleanly: no partial model is produced.

Evaluation: the centralised accuracy of each round's model on the dataset's test split, and a
federated one: each client evaluates the global model it receives on its held-out part (its
test split, or its training data if it has none) before training; those figures, weighted by
examples, are the previous round's ``federated_accuracy`` (a last evaluation-only pass covers
the final model).

Secure aggregation (``secure=True``, FedAvg): clients send pairwise-masked updates
(:mod:`flows.federated.secagg`) and the coordinator learns only their sum; a client missing
after masking makes the round start again without it, never a partial unmasking.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from prefect import flow

from artifacts.errors import ArtifactError, InvalidCIDError
from flows.errors import AggregationError, FlowError, one_line
from flows.federated.attacks import SILENT, active_attack, apply_attack, check_attack
from flows.federated.client import state_to_weights
from flows.federated.validate import option_conflict
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
    """The :class:`ModelSpec` of a model artifact's spec, its code allowed by the current
    :class:`~flows.code.CodeTrust` (checked here, before anything is imported)."""
    from flows.code import current_trust, model_ref
    from flows.federated.client import ModelSpec

    ref = model_ref(spec)
    if not ref.is_zoo:
        current_trust().check(ref)
    return ModelSpec(
        ref.model,
        tuple(spec["input_shape"]),
        int(spec["n_classes"]),
        int(spec.get("seed", 0)),
        spec.get("model_kwargs") or None,
        ref.code,
    )


def _spec_modules(model: Any) -> list[str]:
    """The code modules of a federated step that builds model artifact ``model``: the zoo and
    training loop, and its local ``module:factory``'s module when the current policy trusts
    it (a code artifact's CID is pinned by the model's CID, which is in the key)."""
    from flows.pipelines import _loaded_model_modules

    return _loaded_model_modules(model=model)


def _init_modules(**kwargs: Any) -> list[str]:
    from flows.pipelines import _model_modules

    return _model_modules(model=kwargs.get("model"), code=kwargs.get("code"))


def _client_modules(**kwargs: Any) -> list[str]:
    return _spec_modules(kwargs.get("global_model"))


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


def _has_split(art: Any, split: str) -> bool:
    arrays = art.arrays()
    return any(f"{split}/{stem}" in arrays or f"{split}/{stem}.npy" in arrays for stem in "xy")


def _xy(art: Any, split: str) -> tuple[Any, Any]:
    from flows.pipelines import _supervised

    x_arr, y_arr = _supervised(art, split)
    return np.asarray(x_arr[...], dtype=np.float32), np.asarray(y_arr[...], dtype=np.int64)


def client_secret() -> bytes:
    """A secret only this node can compute, stable across runs: the hash of its ed25519
    signature (deterministic) over a fixed message. Secure aggregation keys derive from it."""
    import hashlib

    signature = current_runtime().identity.sign(b"cidflow secure aggregation key v1")
    return hashlib.sha256(signature.encode("ascii")).digest()


def write_client_parts(
    store: Any, dataset: str, clients: int, partition: str, seed: int, out_dir: Any
) -> list[Any]:
    """The dataset cut as :func:`split_clients` cuts it, written as ``client-K.npz`` files
    (``train/x``, ``train/y``, ``test/x``, ``test/y``) in ``out_dir``: private data to hand to
    node agents (``cidflow cluster up --private NODE:federated=FILE``) for a trial cluster."""
    from pathlib import Path

    from flows.federated.partition import follow_partition
    from flows.federated.partition import partition as cut

    art = store.open_artifact(dataset)
    x, y = _xy(art, "train")
    xt, yt = _xy(art, "test")
    parts = cut(partition, y, clients, seed)
    held = follow_partition([y[p] for p in parts], yt, seed + 1)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (idx, hidx) in enumerate(zip(parts, held, strict=True)):
        path = out / f"client-{k + 1}.npz"
        arrays = {"train/x": x[idx], "train/y": y[idx], "test/x": xt[hidx], "test/y": yt[hidx]}
        np.savez(path, **arrays)
        paths.append(path)
    return paths


@cid_task(name="fed-split")
def split_clients(dataset: str, clients: int, partition: str, seed: int) -> dict[str, Any]:
    """The dataset's training split cut into one artifact (``x``, ``y``) per client."""
    from flows.federated.partition import follow_partition
    from flows.federated.partition import partition as cut

    store = current_runtime().store
    art = store.open_artifact(dataset)
    x, y = _xy(art, "train")
    parts = cut(partition, y, clients, seed)
    held: list[Any] = [None] * clients
    if _has_split(art, "test"):
        xt, yt = _xy(art, "test")
        held = [(xt[i], yt[i]) for i in follow_partition([y[p] for p in parts], yt, seed + 1)]
    out = []
    for k, idx in enumerate(parts):
        info = {"client": k, "of": clients, "dataset": dataset, "partition": partition}
        arrays = {"train/x": x[idx], "train/y": y[idx]}
        if held[k] is not None:
            arrays |= {"test/x": held[k][0], "test/y": held[k][1]}
        cid = store.put_arrays(arrays, attrs={FED_ATTR: info}, source="federated split")
        out.append(str(cid))
    return {"clients": out, "sizes": [len(p) for p in parts]}


@cid_task(name="fed-init", extra_modules=_init_modules)
def init_model(
    dataset: str,
    model: str,
    seed: int,
    model_kwargs: dict[str, Any] | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Round 0: the seeded initial global model for the dataset's shapes and classes.
    ``model`` with ``code`` (a code artifact's CID) as for :func:`~flows.pipelines.train`."""
    from flows.code import current_trust, make_ref
    from flows.federated.client import ModelSpec
    from flows.pipelines import _n_classes, _supervised

    ref = make_ref(model, code)
    if not ref.is_zoo:
        current_trust().check(ref)  # before anything is read or imported
    art = current_runtime().store.open_artifact(dataset)
    x_arr, y_arr = _supervised(art, "train")
    n_classes = _n_classes(art, np.asarray(y_arr[...]))
    spec = ModelSpec(
        model, tuple(int(n) for n in x_arr.shape[1:]), n_classes, seed, model_kwargs, ref.code
    )
    as_json = {
        "model": model,
        "code": ref.code,
        "model_kwargs": model_kwargs or {},
        "n_classes": n_classes,
        "input_shape": list(spec.input_shape),
        "seed": seed,
        "dataset": dataset,
    }
    return {"model": _put_model(spec.initial_weights(), as_json, {"round": 0}, "federated")}


@cid_task(name="fed-client", extra_modules=_client_modules)
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
    secure: dict[str, Any] | None = None,
    dp: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One client's round: evaluate the global model on the local held-out part, then train
    from it (``epochs=0``: evaluate only); the update is an artifact. ``attack`` makes this
    client Byzantine (simulation only, see :func:`apply_attack`); ``secure`` (``me``,
    ``peers``, ``context``) sends a masked update for secure aggregation; ``dp`` (``epsilon``,
    ``delta``, ``clip``, ``rounds``) trains by DP-SGD, the noise chosen here for this client's
    data to spend at most ``epsilon`` over all the rounds (:mod:`flows.federated.dpsgd`)."""
    from flows.federated.client import evaluate_weights, local_train

    weights, spec = _weights(global_model)
    model_spec = _model_spec(spec)  # the code is trusted before anything else is read
    art = current_runtime().store.open_artifact(data)
    x, y = _xy(art, "train")
    held = _xy(art, "test") if _has_split(art, "test") else (x, y)
    evaluation = evaluate_weights(model_spec, weights, *held)
    key: dict[str, str] = {}
    if secure is not None:
        from flows.federated.secagg import client_private_key, public_key_hex

        me = client_private_key(client_secret(), str(secure["me"]))
        key["public_key"] = public_key_hex(me)
    if epochs == 0:
        return {
            "update": None,
            "num_examples": len(y),
            "metrics": {},
            "evaluation": evaluation,
            **key,
        }
    if dp is not None:
        from flows.federated.dpsgd import dp_sgd_train, plan

        budget = plan(
            len(y),
            batch_size=batch_size,
            epochs=epochs,
            rounds=int(dp["rounds"]),
            epsilon=float(dp["epsilon"]),
            delta=float(dp["delta"]),
            clip=float(dp["clip"]),
        )
        result = dp_sgd_train(
            model_spec, weights, x, y, budget, lr=lr, seed=seed, proximal_mu=proximal_mu
        )
    else:
        result = local_train(
            model_spec,
            weights,
            x,
            y,
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            proximal_mu=proximal_mu,
        )
    sent = apply_attack(attack, weights, result.weights) if attack else result.weights
    info: dict[str, Any] = {"round": round, "update_of": global_model, "data": data}
    if attack:
        info["attack"] = attack
    if secure is not None and "peers" in secure:
        update = _put_masked(weights, sent, result.num_examples, secure, info)
    else:
        update = _put_model(sent, spec, info, "federated client")
    return {
        "update": update,
        "num_examples": result.num_examples,
        "metrics": result.metrics,
        "evaluation": evaluation,
        **key,
    }


def _put_masked(
    before: Weights, after: Weights, n: int, secure: dict[str, Any], info: dict[str, Any]
) -> str:
    """The update ``after - before``, weighted by ``n`` and masked: alone it says nothing."""
    from flows.federated.secagg import client_private_key, mask_update

    delta = {k: np.asarray(after[k], np.float64) - np.asarray(before[k], np.float64) for k in after}
    key = client_private_key(client_secret(), str(secure["me"]))
    masked = mask_update(
        delta,
        n,
        me=str(secure["me"]),
        private_key=key,
        peers=dict(secure["peers"]),
        context=bytes.fromhex(secure["context"]),
    )
    attrs = {
        FED_ATTR: {
            **info,
            "masked": True,
            "context": secure["context"],
            "participants": sorted(secure["peers"]),
        }
    }
    return str(current_runtime().store.put_arrays(masked, attrs=attrs, source="federated client"))


@cid_task(name="fed-aggregate")
def aggregate_round(
    global_model: str,
    updates: list[str],
    counts: list[Any],  # as the clients claimed them: validated in screening
    round: int,
    strategy: str,
    strategy_args: dict[str, Any] | None = None,
    server_state: str | None = None,
    dp: dict[str, float] | None = None,
    clients: list[str] | None = None,
    secure: dict[str, Any] | None = None,
    min_cosine: float | None = None,
    max_norm_ratio: float | None = None,
) -> dict[str, Any]:
    """Screen and aggregate the round's updates into the next global model (or a failure).

    An update that is not for this round's global model (a late one, say) is rejected first;
    with ``min_cosine``, so is one pointing away from the round's median update, with
    ``max_norm_ratio`` one far longer than the round's median update
    (:func:`~flows.federated.validate.outlier_screen`).
    With ``dp`` (``clip``, ``noise_multiplier``; FedAvg only) the screened updates are
    clipped and averaged with Gaussian noise (:func:`~flows.federated.privacy.private_mean`);
    with ``secure`` (``participants``, ``context``) the masked updates are summed and only the
    sum is unmasked (:func:`~flows.federated.secagg.unmask_sum`)."""
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
        args["state"] = ServerOptState(
            step, {n: arrays[f"m/{n}"] for n in names}, {n: arrays[f"v/{n}"] for n in names}
        )
    chosen = cls(**args)
    weights, spec = _weights(global_model)
    labels = clients or [f"client-{k}" for k in range(len(updates))]
    fresh, stale, loaded = [], [], {}
    for label, u, n in zip(labels, updates, counts, strict=True):
        try:  # a client's answer is untrusted: anything unreadable is a rejection, not a crash
            if not isinstance(u, str):
                raise FlowError(f"update is a {type(u).__name__}, not a CID")
            art = store.open_artifact(u)
            info = art.attrs.get(FED_ATTR) or {}
            if not isinstance(info, dict):
                raise FlowError(f"update attribute {FED_ATTR!r} is not an object")
            if secure is None:
                if art.kind != "state_dict":
                    raise FlowError(f"update {u} is a {art.kind!r} artifact, not a model")
                _check_declared(art, weights)  # before anything is read or allocated
                loaded[u] = state_to_weights(art.to_state_dict())
        except (
            ArtifactError,
            InvalidCIDError,
            FlowError,
            ValueError,
            TypeError,
            RecursionError,
        ) as exc:
            stale.append((label, one_line(exc)))
            continue
        if info.get("round") != round:
            stale.append((label, f"an update for round {info.get('round')}, not round {round}"))
        elif info.get("update_of") != global_model:
            stale.append((label, f"trained from {info.get('update_of')}, not this round's model"))
        else:
            fresh.append((label, u, n))
    away: list[tuple[str, str]] = []
    if secure is not None:
        outcome = _secure_round(chosen, weights, fresh, secure)
    else:
        results: list[Any] = [(label, loaded[u], n) for label, u, n in fresh]
        if min_cosine is not None or max_norm_ratio is not None:
            from flows.federated.validate import outlier_screen

            results, away = outlier_screen(
                weights, results, min_cosine=min_cosine, max_norm_ratio=max_norm_ratio
            )
            stale += away
        if dp is not None:
            outcome = _private_round(chosen, weights, results, dp, round)
        else:
            outcome = chosen.aggregate(round, weights, results)
    screened = [label for label, _ in [*away, *outcome.rejected]]
    answer: dict[str, Any] = {
        "rejected": [list(r) for r in [*stale, *outcome.rejected]],
        "screened": screened,  # rejected for what the update holds (not late, not unreadable)
        "metrics": {**outcome.metrics, "received": len(updates)},
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


def _check_declared(art: Any, weights: Weights) -> None:
    """Raise :class:`FlowError` unless the update declares exactly the global model's array
    names and shapes (in validation's words): checked on its metadata, so a claimed
    10^9-element array is refused before it is allocated."""
    from flows.federated.validate import _names

    declared = {name: tuple(info.shape) for name, info in art.arrays().items()}
    missing = [n for n in weights if n not in declared]
    extra = sorted(n for n in declared if n not in weights)
    if missing or extra:
        parts = [f"missing arrays {_names(missing)}"] if missing else []
        parts += [f"unexpected arrays {_names(extra)}"] if extra else []
        raise FlowError("; ".join(parts))
    for name, shape in declared.items():
        if shape != tuple(np.shape(weights[name])):
            raise FlowError(
                f"array {name!r} has shape {list(shape)}, the global model "
                f"{list(np.shape(weights[name]))}"
            )


def _secure_round(
    chosen: Any, weights: Weights, fresh: list[tuple[str, str, int]], secure: dict[str, Any]
) -> Any:
    """FedAvg over masked updates: sum them (the masks cancel), unmask only the sum."""
    from flows.federated.aggregate import cast_like
    from flows.federated.secagg import SecAggError, unmask_sum
    from flows.federated.strategies import AggregateResult, FedAvg

    if not isinstance(chosen, FedAvg):
        raise AggregationError("secure aggregation is offered with fedavg only")
    store = current_runtime().store
    metrics: dict[str, float | int | str] = {"received": len(fresh), "accepted": len(fresh)}
    masked = {}
    for label, u, _ in fresh:
        art = store.open_artifact(u)
        if (art.attrs.get(FED_ATTR) or {}).get("context") != secure["context"]:
            return AggregateResult(None, [], metrics, failure=f"{label}: masked for another round")
        masked[label] = art.to_numpy()
    if len(masked) < chosen.min_clients:
        return AggregateResult(None, [], metrics, failure="too few updates to unmask")
    try:
        sums, total = unmask_sum(masked, list(secure["participants"]))
    except SecAggError as exc:
        return AggregateResult(None, [], metrics, failure=str(exc))
    if total <= 0:
        return AggregateResult(None, [], metrics, failure="no examples in the sum")
    new = {k: np.asarray(weights[k], np.float64) + sums[k] / total for k in weights}
    return AggregateResult(cast_like(weights, new), [], metrics)


def _private_round(
    chosen: Any, weights: Weights, results: list[Any], dp: dict[str, float], round: int
) -> Any:
    from flows.federated.aggregate import cast_like
    from flows.federated.privacy import private_mean
    from flows.federated.strategies import AggregateResult, FedAvg
    from flows.federated.validate import screen

    if not isinstance(chosen, FedAvg):
        raise AggregationError("differential privacy is offered with fedavg only")
    accepted, rejected = screen(
        weights,
        results,
        norm_bound=chosen.norm_bound,
        max_examples=chosen.max_examples,
        max_weight_ratio=chosen.max_weight_ratio,
    )
    metrics: dict[str, float | int | str] = {"received": len(results), "accepted": len(accepted)}
    if len(accepted) < chosen.min_clients:
        return AggregateResult(None, rejected, metrics, failure="too few accepted updates")
    # The noise comes from the OS CSPRNG, never from a recorded seed (DESIGN.md, invariant 9).
    mean = private_mean(
        weights,
        [u.weights for u in accepted],
        clip=float(dp["clip"]),
        noise_multiplier=float(dp["noise_multiplier"]),
    )
    return AggregateResult(cast_like(weights, mean), rejected, metrics)


class LocalClients:
    """Simulation: every client step runs here, on the client's partition. ``dropout`` is the
    chance (seeded) that a client's answer is lost in a round, to exercise unreliable clients."""

    def __init__(self, data: dict[str, str], dropout: float, seed: int) -> None:
        from flows.federated.remote import ClientAnswers

        self.data, self.dropout, self.calls = data, dropout, 0
        self.rng = np.random.default_rng([seed, 7_919])
        self._answers = ClientAnswers

    def run_round(self, rnd: int, global_model: str, params: dict[str, dict[str, Any]]) -> Any:
        out = self._answers()
        self.calls += 1
        for label, extra in params.items():
            if extra.get("attack") == SILENT and extra.get("epochs", 1):
                out.missing.append((label, "silent (simulated Byzantine client)"))
                continue
            answer = client_round(
                global_model=global_model, data=self.data[label], round=rnd, **extra
            )
            if self.dropout and extra.get("epochs", 1) and self.rng.random() < self.dropout:
                out.missing.append((label, "dropped out (simulated)"))
                continue
            out.answers[label] = answer
        return out


def _context(global_model: str, rnd: int, attempt: int) -> str:
    import hashlib

    text = f"cidflow secagg|{global_model}|{rnd}|{attempt}"
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _claimed(value: Any) -> int | str:
    """A client's claimed count for validation to accept or reject with a reason (never a
    bare ``int()`` of what a client sent): the integer, a short string as sent, or the
    ``repr`` of anything else (so the value can be a cache key)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    if isinstance(value, str) and len(value) <= 80:
        return value
    return repr(value)[:80]


def _number(value: Any) -> float | None:
    """A client's reported figure as a finite float, or ``None`` if it is anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    out = float(value)
    return out if math.isfinite(out) else None


def _federated_evaluation(answers: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The clients' evaluations of one global model: the example-weighted accuracy (in
    simulation the held-out parts together are the test split, so it equals the centralised
    figure) and each client's own, which shows how evenly the model serves non-IID clients."""
    evals: dict[str, tuple[int, float]] = {}
    for c, a in answers.items():  # a client's answer is untrusted: a malformed one is left out
        e = a.get("evaluation") if isinstance(a, dict) else None
        if not isinstance(e, dict):
            continue
        n, acc = _claimed(e.get("examples")), _number(e.get("accuracy"))
        if isinstance(n, int) and 0 <= n <= 2**31 - 1 and acc is not None and 0 <= acc <= 1:
            evals[c] = (n, acc)
    total = sum(n for n, _ in evals.values())
    weighted = sum(acc * n for n, acc in evals.values()) / total if total else None
    per_client = {c: acc for c, (n, acc) in evals.items() if n}
    return {"federated_accuracy": weighted, "client_accuracy": per_client}


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
    dp_level: str = "client",
    nodes: list[list[str]] | None = None,
    api_url: str | None = None,
    round_timeout: float = 600.0,
    min_clients: int | None = None,
    secure: bool = False,
    dropout: float = 0.0,
    min_cosine: float | None = None,
    max_norm_ratio: float | None = None,
    exclude_after: int | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """The rounds (see the module docstring); returns the final model, history, accuracy.

    ``model`` with ``code`` (a code artifact's CID) must be allowed by the current
    :class:`~flows.code.CodeTrust` (:func:`~flows.code.trusting`): checked before any round.

    ``nodes`` (``[NODE, DATASET]`` pairs) selects cluster mode, with ``api_url`` the cluster's
    Prefect API; ``clients``/``partition``/``byzantine``/``dropout`` are simulation settings.
    ``byzantine`` > 0 makes the first that many clients send ``attack`` (robustness tests).
    ``min_clients`` (default: a majority of the clients) answers, and accepted updates, are
    needed for a round to count. ``dp_epsilon`` with ``dp_level="client"`` adds noise to the
    sum of clipped updates (FedAvg only); with ``"example"`` every client trains by DP-SGD
    (any strategy). ``min_cosine`` rejects updates pointing away from the round's median
    update (a sign flip, say; not with ``secure``, where updates are masked), ``max_norm_ratio``
    those longer than that many times the round's median update norm. ``exclude_after``
    leaves a client out of every later round (training and evaluation) once that many of its
    updates were rejected for what they hold (validation or the outlier screens; a late or
    missing update is no strike): a Byzantine client that keeps attacking is dropped for good."""
    from prefect.logging import get_run_logger

    from flows.federated.remote import NodeClients
    from flows.federated.strategies import STRATEGIES
    from flows.pipelines import evaluate
    from flows.remote import Coordinator

    if strategy not in STRATEGIES:
        raise AggregationError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")
    from flows.code import current_trust, make_ref

    ref = make_ref(model, code)
    if not ref.is_zoo:
        current_trust().check(ref)  # untrusted code fails before any round
    n_clients = len(nodes) if nodes else clients
    if rounds < 1 or n_clients < 1:
        raise FlowError("rounds and clients must be at least 1")
    need = min_clients if min_clients is not None else max(1, (n_clients + 1) // 2)
    if not 1 <= need <= n_clients:
        raise FlowError(f"min_clients must be between 1 and the {n_clients} clients, got {need}")
    if not 0 <= byzantine <= n_clients or (nodes and byzantine):
        raise FlowError(f"byzantine must be between 0 and the {n_clients} simulated clients")
    if not 0.0 <= dropout < 1.0 or (nodes and dropout):
        raise FlowError("dropout is a simulated chance in [0, 1)")
    conflict = option_conflict(
        strategy,
        dp_epsilon=dp_epsilon,
        dp_level=dp_level,
        secure=secure,
        min_cosine=min_cosine,
        max_norm_ratio=max_norm_ratio,
    )
    if conflict is not None:
        raise AggregationError(conflict)
    central_dp = dp_epsilon is not None and dp_level == "client"
    if round_timeout <= 0:
        raise FlowError("round_timeout must be positive")
    if exclude_after is not None and exclude_after < 1:
        raise FlowError(f"exclude_after must be at least 1, got {exclude_after}")
    if byzantine:
        check_attack(attack)  # a bad attack spec fails before any round
    log = get_run_logger()
    dp: dict[str, float] | None = None
    client_dp: dict[str, Any] | None = None
    if dp_epsilon is not None and not central_dp:
        client_dp = {"epsilon": dp_epsilon, "delta": dp_delta, "clip": dp_clip, "rounds": rounds}
        log.info(
            "differential privacy: DP-SGD on every client, epsilon %.3g at delta %g for "
            "each client's examples over %d rounds, clip %g",
            dp_epsilon,
            dp_delta,
            rounds,
            dp_clip,
        )
    elif dp_epsilon is not None:
        from flows.federated.privacy import noise_for_epsilon

        sigma = noise_for_epsilon(dp_epsilon, rounds, dp_delta)
        dp = {"clip": dp_clip, "noise_multiplier": sigma}  # no seed: the noise is not seeded
        log.info(
            "differential privacy: epsilon %.3g at delta %g over %d rounds: noise multiplier "
            "%.4f, clip %g",
            dp_epsilon,
            dp_delta,
            rounds,
            sigma,
            dp_clip,
        )
    args = dict(strategy_args or {})
    args.setdefault("min_clients", need)
    if strategy == "fedprox":
        args.setdefault("proximal_mu", 0.01)
    mu = float(args.get("proximal_mu", 0.0)) if strategy == "fedprox" else 0.0
    runner: Any
    if nodes:
        pairs = [(str(n), str(d)) for n, d in nodes]
        labels = [n for n, _ in pairs]
        coordinator = Coordinator.for_home(current_runtime().store.home)
        runner = NodeClients(pairs, api_url, round_timeout, coordinator)
        client_data: list[str] = [d for _, d in pairs]
    else:
        parts = split_clients(dataset=dataset, clients=clients, partition=partition, seed=seed)
        labels = [f"client-{k}" for k in range(clients)]
        client_data = list(parts["clients"])
        runner = LocalClients(dict(zip(labels, client_data, strict=True)), dropout, seed)
    current = init_model(
        dataset=dataset, model=model, seed=seed, model_kwargs=model_kwargs, code=ref.code
    )
    global_model, state = str(current["model"]), None
    keys: dict[str, str] = {}
    if secure:  # each client's public key (an evaluation-only call that also returns it)
        got = runner.run_round(
            0, global_model, {c: {"epochs": 0, "secure": {"me": c}} for c in labels}
        )
        keys = {c: str(a["public_key"]) for c, a in got.answers.items()}
    history: list[dict[str, Any]] = []
    spent_by: dict[str, dict[str, float]] = {}  # DP-SGD: each client's planned spend
    strikes: dict[str, int] = {}  # rounds in which a client's update was screened out
    excluded: list[str] = []
    for rnd in range(1, rounds + 1):
        participants = [c for c in labels if (not secure or c in keys) and c not in excluded]
        dropped: list[tuple[str, str]] = []
        late_seen: list[dict[str, Any]] = []
        for attempt in range(n_clients):
            context = _context(global_model, rnd, attempt)
            params = {}
            for c in participants:
                k = labels.index(c)
                extra: dict[str, Any] = {
                    "epochs": epochs,
                    "lr": lr,
                    "batch_size": batch_size,
                    "seed": seed * 100_003 + rnd * 1_009 + k,
                    "proximal_mu": mu,
                }
                if k < byzantine and (kind := active_attack(attack, rnd)):
                    extra["attack"] = kind
                if client_dp is not None:
                    extra["dp"] = client_dp
                if secure:
                    extra["secure"] = {
                        "me": c,
                        "context": context,
                        "peers": {p: keys[p] for p in participants},
                    }
                params[c] = extra
            got = runner.run_round(rnd, global_model, params)
            dropped += got.missing
            late_seen += got.late
            for late in got.late:
                log.warning(
                    "round %d: late update from %s for round %d discarded",
                    rnd,
                    late["client"],
                    late["round"],
                )
            for c, why in got.missing:
                log.warning("round %d: %s missing: %s", rnd, c, why)
            if len(got.answers) < need:
                missing = "; ".join(f"{c}: {why}" for c, why in got.missing)
                raise AggregationError(
                    f"round {rnd} failed: {len(got.answers)} of {len(participants)} clients "
                    f"answered, min_clients is {need} ({missing}); no model published"
                )
            if not secure or not got.missing:
                break
            # Masks pair every participant with every other: a missing one would leave its
            # masks in the sum. Start the round again without it, never unmask a partial sum.
            participants = [c for c in participants if c in got.answers]
            log.warning(
                "round %d: secure aggregation restarts without %s",
                rnd,
                ", ".join(c for c, _ in got.missing),
            )
        answered = [c for c in participants if c in got.answers]
        for c in answered if client_dp is not None else ():
            reported = got.answers[c].get("metrics")
            figures = {
                k: _number(reported.get(k)) if isinstance(reported, dict) else None
                for k in ("epsilon", "noise_multiplier", "sample_rate")
            }
            if all(v is not None for v in figures.values()):
                spent_by[c] = {k: float(v) for k, v in figures.items() if v is not None}
            else:
                log.warning("round %d: %s reported no valid DP-SGD spend", rnd, c)
        if history:
            history[-1].update(_federated_evaluation(got.answers))
        agg = aggregate_round(
            global_model=global_model,
            updates=[got.answers[c]["update"] for c in answered],
            counts=[_claimed(got.answers[c].get("num_examples")) for c in answered],
            round=rnd,
            strategy=strategy,
            strategy_args=args,
            server_state=state,
            dp=dp,
            clients=answered,
            secure={"participants": answered, "context": context} if secure else None,
            min_cosine=min_cosine,
            max_norm_ratio=max_norm_ratio,
        )
        if agg["model"] is None:
            raise AggregationError(f"round {rnd} failed: {agg['failure']} (no model published)")
        global_model, state = agg["model"], agg["server_state"]
        for c in agg["screened"] if exclude_after is not None else ():
            strikes[c] = strikes.get(c, 0) + 1
            if strikes[c] == exclude_after:
                excluded.append(c)
                log.warning(
                    "round %d: %s excluded from later rounds: %d of its updates were rejected",
                    rnd,
                    c,
                    exclude_after,
                )
        metrics = evaluate(model=global_model, dataset=dataset, code=ref.code)["metrics"]
        row: dict[str, Any] = {
            "round": rnd,
            "accuracy": float(metrics["accuracy"]),
            "loss": float(metrics["loss"]),
            "rejected": len(agg["rejected"]),
            "rejections": [list(r) for r in agg["rejected"]],
            "clients": len(answered),
            "federated_accuracy": None,
            "client_accuracy": {},
            "missing": [list(m) for m in dropped],
            "late": [{k: v for k, v in late.items() if k != "state"} for late in late_seen],
            "excluded": list(excluded),
        }
        history.append(row)
        log.info(
            "round %d/%d  accuracy=%.4f  loss=%.4f  clients=%d  rejected=%d",
            rnd,
            rounds,
            row["accuracy"],
            row["loss"],
            row["clients"],
            row["rejected"],
        )
    final = runner.run_round(
        rounds + 1, global_model, {c: {"epochs": 0} for c in labels if c not in excluded}
    )
    history[-1].update(_federated_evaluation(final.answers))
    privacy = None
    from flows.federated.privacy import NOISE

    if dp is not None:
        from flows.federated.privacy import epsilon

        spent = epsilon(dp["noise_multiplier"], rounds, dp_delta)
        privacy = {"level": "client", "epsilon": spent, "delta": dp_delta, **dp, "noise": NOISE}
    elif client_dp is not None:
        worst = max((s["epsilon"] for s in spent_by.values()), default=None)
        privacy = {
            "level": "example",
            "epsilon": worst,
            "delta": dp_delta,
            "clip": dp_clip,
            "clients": spent_by,
            "noise": NOISE,
        }
    return {
        "model": global_model,
        "history": history,
        "accuracy": history[-1]["accuracy"],
        "clients": client_data,
        "strategy": strategy,
        "privacy": privacy,
        "federated_accuracy": history[-1]["federated_accuracy"],
        "secure": secure,
    }


federated_train = flow(name="federated-train", log_prints=False)(federated_train_fn)
