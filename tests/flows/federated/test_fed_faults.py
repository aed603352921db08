"""Bad input and faults at the aggregation step, as the coordinator sees them: real Prefect task
runs in this process (a temporary Prefect API), a real store, real torch.

NaN/infinite, misshapen or misnamed updates, an inflated example count and late updates are
rejected with a reason while the honest updates still aggregate; too few accepted updates fail
the round without publishing a model (in the step and through the whole flow); secure
aggregation gives the plain run's accuracy from masked updates and survives dropouts; an
evaluation-only client step sends no update."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from prefect import flow
from prefect.settings import (
    PREFECT_HOME,
    PREFECT_LOCAL_STORAGE_PATH,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    temporary_settings,
)
from prefect.testing.utilities import prefect_test_harness

from artifacts.store import ArtifactStore
from flows.errors import AggregationError, FlowError, ReceiptError
from flows.federated.flow import (
    FED_ATTR,
    _put_model,
    _weights,
    aggregate_round,
    client_round,
    federated_train,
    init_model,
    split_clients,
)
from flows.federated.secagg import NUM_EXAMPLES, decode
from flows.pipelines import MODEL_ATTR
from flows.receipts import Receipt, load_receipt
from flows.tasks import Runtime, runtime
from registry.identity import Identity

pytestmark = [pytest.mark.xdist_group("prefect"), pytest.mark.slow]

Weights = dict[str, np.ndarray[Any, Any]]
T = TypeVar("T")
MODEL_KWARGS = {"hidden": [16]}
HONEST = ["client-0", "client-1", "client-2"]


@pytest.fixture(scope="module")
def _prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One temporary Prefect API server (SQLite) for the module; nothing under ~/.prefect."""
    settings = {
        PREFECT_HOME: tmp_path_factory.mktemp("prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED: False,
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        with temporary_settings(updates=settings), prefect_test_harness():
            yield


@dataclass
class Fed:
    """A coordinator's home: the dataset, its clients' parts and the round-0 global model."""

    store: ArtifactStore
    dataset: str
    clients: list[str]  # each client's data CID
    model: str  # the round-0 global model
    weights: Weights
    spec: dict[str, Any]


def _in_flow(fn: Callable[[], T]) -> T:
    """Run ``fn`` (which calls cid_tasks) as a Prefect flow run."""
    return flow(name="fed-faults", validate_parameters=False)(fn)()


def _dataset(store: ArtifactStore) -> str:
    """300 examples of 8 features in 3 well-separated classes (train 210, test 90)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 2.0
    y = rng.integers(0, 3, 300)
    x = (centres[y] + rng.normal(size=(300, 8))).astype(np.float32)
    arrays = {"train/x": x[:210], "train/y": y[:210], "test/x": x[210:], "test/y": y[210:]}
    return str(store.put_arrays(arrays, source="test"))


@pytest.fixture
def fed(_prefect_api: None, tmp_path: Path) -> Iterator[Fed]:
    # Task results are cached by CID, not by store: each test gets its own result folder.
    store = ArtifactStore(tmp_path / "home")
    rt = Runtime(store, Identity.create(tmp_path / "keys"))
    results = {PREFECT_LOCAL_STORAGE_PATH: tmp_path / "results"}
    with temporary_settings(updates=results), runtime(rt):
        dataset = _dataset(store)

        def prepare() -> tuple[str, list[str]]:
            parts = split_clients(dataset=dataset, clients=3, partition="iid", seed=0)
            init = init_model(dataset=dataset, model="mlp", seed=0, model_kwargs=MODEL_KWARGS)
            return str(init["model"]), list(parts["clients"])

        model, clients = _in_flow(prepare)
        weights, spec = _weights(model)
        yield Fed(store, dataset, clients, model, weights, spec)


def _honest(fed: Fed, global_model: str, rnd: int = 1) -> list[dict[str, Any]]:
    """Every client's real round from ``global_model``."""
    return _in_flow(
        lambda: [
            client_round(global_model=global_model, data=data, round=rnd, seed=k)
            for k, data in enumerate(fed.clients)
        ]
    )


def _nudged(fed: Fed) -> tuple[list[str], list[int]]:
    """Three well-formed round-1 updates (the global model plus small seeded steps) stored the
    way a client stores one, with their example counts: honest input without local training."""
    rng = np.random.default_rng(1)
    info = {"round": 1, "update_of": fed.model}
    updates = [
        _put_model(
            {
                k: (v + 0.01 * rng.standard_normal(v.shape)).astype(v.dtype)
                for k, v in fed.weights.items()
            },
            fed.spec,
            info,
            "federated client",
        )
        for _ in HONEST
    ]
    return updates, [70, 60, 80]


def _aggregate(
    global_model: str,
    updates: list[str],
    counts: list[int],
    clients: list[str],
    rnd: int = 1,
    **kwargs: Any,
) -> dict[str, Any]:
    return _in_flow(
        lambda: aggregate_round(
            global_model=global_model,
            updates=updates,
            counts=counts,
            round=rnd,
            strategy="fedavg",
            clients=clients,
            **kwargs,
        )
    )


def _put_raw(fed: Fed, weights: Weights, info: dict[str, Any]) -> str:
    """An update stored as-is (any names, shapes, dtypes), with the model spec and round info."""
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in weights.items()}
    attrs = {MODEL_ATTR: fed.spec, FED_ATTR: info}
    return str(fed.store.put_state_dict(tensors, attrs=attrs, source="federated client"))


def _model(cid: str) -> Weights:
    return _weights(cid)[0]


def _distance(a: Weights, b: Weights) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def _reasons(answer: dict[str, Any]) -> dict[str, str]:
    return {str(client): str(reason) for client, reason in answer["rejected"]}


def _receipts(store: ArtifactStore) -> list[Receipt]:
    found = []
    for cid in store.records():
        try:
            found.append(load_receipt(store, cid))
        except ReceiptError as exc:
            if "not a" not in str(exc):
                raise
    return found


def _tasks(store: ArtifactStore) -> list[str]:
    return sorted(str(r.body["task"]) for r in _receipts(store))


def _aggregated_models(store: ArtifactStore) -> list[str]:
    return [a.cid for a in store.list() if a.source == "federated aggregate"]


# -- 1. non-finite values ------------------------------------------------------------------------


def test_nan_and_infinite_updates_are_rejected_and_the_honest_ones_aggregate(fed: Fed) -> None:
    answers = _honest(fed, fed.model)
    honest = [str(a["update"]) for a in answers]
    counts = [int(a["num_examples"]) for a in answers]
    info = {"round": 1, "update_of": fed.model}
    nan = {k: v.copy() for k, v in _model(honest[0]).items()}
    nan["1.weight"][0, 0] = np.nan
    inf = {k: v.copy() for k, v in _model(honest[1]).items()}
    inf["3.bias"][1] = np.inf
    bad = [
        _put_model(nan, fed.spec, info, "federated client"),
        _put_model(inf, fed.spec, info, "federated client"),
    ]

    out = _aggregate(fed.model, [*honest, *bad], [*counts, 70, 70], [*HONEST, "nan", "inf"])
    reasons = _reasons(out)
    assert set(reasons) == {"nan", "inf"}
    assert reasons["nan"] == "array '1.weight' has 1 NaN and 0 infinite values"
    assert reasons["inf"] == "array '3.bias' has 0 NaN and 1 infinite values"
    assert out["failure"] is None
    assert out["model"] is not None
    assert out["metrics"]["accepted"] == 3
    new = _model(out["model"])
    assert all(np.isfinite(a).all() for a in new.values())
    # exactly the FedAvg of the honest updates alone
    alone = _model(_aggregate(fed.model, honest, counts, HONEST)["model"])
    assert all(np.array_equal(new[k], alone[k]) for k in alone)
    assert _distance(new, fed.weights) > 0


def test_a_sign_flipped_update_is_rejected_by_the_direction_screen_when_asked(fed: Fed) -> None:
    answers = _honest(fed, fed.model)
    honest = [str(a["update"]) for a in answers]
    counts = [int(a["num_examples"]) for a in answers]
    own = _model(honest[0])
    flipped = {
        k: (2 * fed.weights[k].astype(np.float64) - own[k]).astype(own[k].dtype) for k in own
    }  # global − Δ
    info = {"round": 1, "update_of": fed.model}
    bad = _put_model(flipped, fed.spec, info, "federated client")
    updates, labels = [*honest, bad], [*HONEST, "flip"]
    plain = _aggregate(fed.model, updates, [*counts, counts[0]], labels)
    assert plain["rejected"] == []  # same norm as an honest update: the norm bound cannot see it
    out = _aggregate(fed.model, updates, [*counts, counts[0]], labels, min_cosine=0.0)
    reasons = _reasons(out)
    assert list(reasons) == ["flip"]
    assert "points away from the round's median update" in reasons["flip"]
    assert out["metrics"]["received"] == 4
    alone = _model(_aggregate(fed.model, honest, counts, HONEST)["model"])
    new = _model(out["model"])
    assert all(np.array_equal(new[k], alone[k]) for k in alone)


# -- 2. names and shapes -------------------------------------------------------------------------


def test_misshapen_misnamed_and_mistyped_updates_are_rejected_with_the_reason(fed: Fed) -> None:
    honest, counts = _nudged(fed)
    info = {"round": 1, "update_of": fed.model}
    good = _model(honest[0])
    crafted = {
        "shape": {**good, "1.weight": np.zeros((17, 8), np.float32)},
        "missing": {k: v for k, v in good.items() if k != "3.bias"},
        "extra": {**good, "backdoor.weight": np.ones(4, np.float32)},
        "renamed": {("3.b" if k == "3.bias" else k): v for k, v in good.items()},
        "dtype": {**good, "3.weight": good["3.weight"].astype(np.float64)},
    }
    updates = [_put_raw(fed, w, info) for w in crafted.values()]
    out = _aggregate(
        fed.model, [*honest, *updates], [*counts, *[70] * len(updates)], [*HONEST, *crafted]
    )
    reasons = _reasons(out)
    assert set(reasons) == set(crafted)
    assert reasons["shape"] == "array '1.weight' has shape [17, 8], the global model [16, 8]"
    assert reasons["missing"] == "missing arrays '3.bias'"
    assert reasons["extra"] == "unexpected arrays 'backdoor.weight'"
    assert reasons["renamed"] == "missing arrays '3.bias'; unexpected arrays '3.b'"
    assert reasons["dtype"] == "array '3.weight' has dtype float64, the global model float32"
    assert out["failure"] is None
    assert out["metrics"]["accepted"] == 3
    new = _model(out["model"])
    assert {k: v.shape for k, v in new.items()} == {k: v.shape for k, v in fed.weights.items()}


def test_an_update_that_is_not_a_model_is_rejected_not_fatal(fed: Fed) -> None:
    honest, counts = _nudged(fed)
    info = {"round": 1, "update_of": fed.model}
    junk = str(fed.store.put_arrays(dict(fed.weights), attrs={FED_ATTR: info}))
    out = _aggregate(fed.model, [*honest, junk], [*counts, 70], [*HONEST, "junk"])
    assert list(_reasons(out)) == ["junk"]
    assert out["model"] is not None


# -- 3. an inflated example count ----------------------------------------------------------------


def test_a_huge_example_count_is_capped_instead_of_dominating_fedavg(fed: Fed) -> None:
    honest, counts = _nudged(fed)
    attacker = {k: v + np.float32(5.0) for k, v in fed.weights.items()}
    liar = _put_model(attacker, fed.spec, {"round": 1, "update_of": fed.model}, "federated client")
    updates, claims, labels = [*honest, liar], [*counts, 10**12], [*HONEST, "liar"]

    capped = _aggregate(fed.model, updates, claims, labels)  # default max_examples: 2**31 - 1
    assert _reasons(capped) == {
        "liar": "claims 1000000000000 examples, more than the cap of 2147483647"
    }
    assert capped["metrics"]["num_examples"] == sum(counts)
    honest_only = _model(_aggregate(fed.model, honest, counts, HONEST)["model"])
    got = _model(capped["model"])
    assert all(np.array_equal(got[k], honest_only[k]) for k in honest_only)

    # Without either cap the liar buys ~all of FedAvg's weight: the model is the attacker's.
    uncapped = _aggregate(
        fed.model,
        updates,
        claims,
        labels,
        strategy_args={"max_examples": 10**13, "max_weight_ratio": 1e15},
    )
    assert uncapped["rejected"] == []
    dominated = _model(uncapped["model"])
    assert _distance(dominated, attacker) < 1e-4
    assert _distance(dominated, honest_only) > 0.99 * _distance(attacker, honest_only)


def test_no_client_weighs_more_than_ten_medians_by_default(fed: Fed) -> None:
    """A claim under max_examples is accepted but clamped to 10x the median accepted claim (75
    of 60, 70, 80 and the liar's): the liar weighs 750 of 960, not 2^31 - 1 of 2^31 + 209."""
    honest, counts = _nudged(fed)
    attacker = {k: v + np.float32(5.0) for k, v in fed.weights.items()}
    liar = _put_model(attacker, fed.spec, {"round": 1, "update_of": fed.model}, "federated client")
    answer = _aggregate(fed.model, [*honest, liar], [*counts, 2**31 - 1], [*HONEST, "liar"])
    assert answer["rejected"] == []
    assert answer["metrics"]["num_examples"] == sum(counts) + 10 * 75
    share = _distance(_model(answer["model"]), fed.weights) / _distance(attacker, fed.weights)
    assert share == pytest.approx(750 / 960, abs=0.01)


# -- 4. late updates -----------------------------------------------------------------------------


def test_updates_for_a_finished_round_or_an_older_model_are_rejected_as_late(fed: Fed) -> None:
    first = _honest(fed, fed.model)
    counts = [int(a["num_examples"]) for a in first]
    round1 = _aggregate(fed.model, [str(a["update"]) for a in first], counts, HONEST)
    g1 = str(round1["model"])

    # Round 1 itself: an update that says it is for round 0.
    early = _put_model(fed.weights, fed.spec, {"round": 0, "update_of": fed.model}, "federated")
    out = _aggregate(
        fed.model,
        [str(first[0]["update"]), str(first[1]["update"]), early],
        [*counts[:2], 70],
        ["client-0", "client-1", "early"],
    )
    assert _reasons(out) == {"early": "an update for round 0, not round 1"}
    assert out["model"] is not None

    # Round 2: client-2's answer from round 1 arrives late, and a round-2 claim on the old model.
    second = _honest(fed, g1, rnd=2)
    old_base = _put_model(
        _model(str(first[0]["update"])),
        fed.spec,
        {"round": 2, "update_of": fed.model},
        "federated client",
    )
    out = _aggregate(
        g1,
        [str(second[0]["update"]), str(second[1]["update"]), str(first[2]["update"]), old_base],
        [*counts[:2], counts[2], 70],
        ["client-0", "client-1", "client-2", "stale"],
        rnd=2,
    )
    reasons = _reasons(out)
    assert reasons["client-2"] == "an update for round 1, not round 2"
    assert reasons["stale"] == f"trained from {fed.model}, not this round's model"
    assert out["metrics"]["received"] == 4
    assert out["failure"] is None
    new = _model(str(out["model"]))
    alone = _model(
        str(
            _aggregate(
                g1,
                [str(a["update"]) for a in second[:2]],
                counts[:2],
                ["client-0", "client-1"],
                rnd=2,
            )["model"]
        )
    )
    assert all(np.array_equal(new[k], alone[k]) for k in alone)


# -- 5. too few accepted updates -----------------------------------------------------------------


def test_too_few_accepted_updates_fail_the_round_without_a_model(fed: Fed) -> None:
    honest = _nudged(fed)[0][:2]
    nan = {k: np.full_like(v, np.nan) for k, v in fed.weights.items()}
    bad = _put_model(nan, fed.spec, {"round": 1, "update_of": fed.model}, "federated client")
    out = _aggregate(
        fed.model,
        [*honest, bad],
        [70, 70, 70],
        ["client-0", "client-1", "nan"],
        strategy_args={"min_clients": 3},
    )
    assert out["model"] is None
    assert out["failure"] == "only 2 of 3 updates accepted, need at least 3"
    assert list(_reasons(out)) == ["nan"]
    assert "NaN" in _reasons(out)["nan"]
    assert _aggregated_models(fed.store) == []


def test_a_flow_round_with_too_few_clients_fails_cleanly_and_publishes_nothing(fed: Fed) -> None:
    common: dict[str, Any] = {
        "dataset": fed.dataset,
        "clients": 3,
        "partition": "iid",
        "rounds": 1,
        "model": "mlp",
        "model_kwargs": MODEL_KWARGS,
    }
    before = _tasks(fed.store)
    with pytest.raises(FlowError) as refused:
        federated_train(**common, min_clients=4)
    assert str(refused.value) == "min_clients must be between 1 and the 3 clients, got 4"
    assert _tasks(fed.store) == before  # refused before any step ran

    # Seed 0 drops client-2 in round 1 (dropout 0.5), and every client is needed.
    with pytest.raises(AggregationError) as failed:
        federated_train(**common, seed=0, min_clients=3, dropout=0.5)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("round 1 failed: 2 of 3 clients answered, min_clients is 3 (")
    assert "client-2: dropped out (simulated)" in message
    assert message.endswith("no model published")
    assert "fed-aggregate" not in _tasks(fed.store)
    assert "fed-client" in _tasks(fed.store)  # the clients did run
    assert _aggregated_models(fed.store) == []


# -- 6. secure aggregation -----------------------------------------------------------------------


def _chain(fed: Fed, model: str) -> list[dict[str, Any]]:
    """Each round's aggregate info (round, updates), first round first, from the final model."""
    infos = []
    while (info := fed.store.open_artifact(model).attrs[FED_ATTR])["round"] > 0:
        infos.append(info)
        model = info["previous"]
    return infos[::-1]


def test_secure_aggregation_matches_the_plain_run_from_masked_updates(fed: Fed) -> None:
    common: dict[str, Any] = {
        "dataset": fed.dataset,
        "clients": 3,
        "partition": "iid",
        "rounds": 2,
        "model": "mlp",
        "model_kwargs": MODEL_KWARGS,
        "seed": 0,
    }
    plain = federated_train(**common)
    secure = federated_train(**common, secure=True)
    assert secure["secure"] is True
    assert secure["model"] != plain["model"]
    assert [h["clients"] for h in secure["history"]] == [3, 3]
    for p, s in zip(plain["history"], secure["history"], strict=True):
        assert abs(p["accuracy"] - s["accuracy"]) <= 1e-6
        assert abs(p["loss"] - s["loss"]) <= 1e-4
    assert _distance(_model(secure["model"]), _model(plain["model"])) < 1e-4

    # Every update a secure client stored is masked: uint64 noise that alone is not its delta.
    masked = [
        r
        for r in _receipts(fed.store)
        if r.body["task"] == "fed-client" and "peers" in (r.body["parameters"]["secure"] or {})
    ]
    assert len(masked) == 6  # 2 rounds x 3 clients
    for r in masked:
        (update,) = r.outputs
        art = fed.store.open_artifact(update)
        assert art.attrs[FED_ATTR]["masked"] is True
        arrays = art.to_numpy()
        assert set(arrays) == {NUM_EXAMPLES, *fed.weights}
        assert all(a.dtype == np.uint64 for a in arrays.values())
    # Round 1, client-0: the same local training in both runs, so its true delta is known.
    plain_r1, secure_r1 = _chain(fed, plain["model"])[0], _chain(fed, secure["model"])[0]
    honest = _model(plain_r1["updates"][0])
    start = _model(plain_r1["previous"])
    alone = fed.store.open_artifact(secure_r1["updates"][0]).to_numpy()
    assert int(alone[NUM_EXAMPLES].view(np.int64)) != 70  # the count is masked too
    for name, w in honest.items():
        delta = w.astype(np.float64) - start[name]
        guess = decode(alone[name]) / 70
        assert not np.allclose(guess, delta, atol=1e-2), name
        assert float(np.abs(guess).max()) > 1e3  # noise, many orders above any real delta


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_secure_aggregation_goes_on_without_the_clients_that_drop_out(fed: Fed) -> None:
    records = _Records()
    logger = logging.getLogger("prefect.flow_runs")
    logger.addHandler(records)
    try:
        out = federated_train(
            dataset=fed.dataset,
            clients=3,
            partition="iid",
            rounds=2,
            model="mlp",
            model_kwargs=MODEL_KWARGS,
            seed=1,
            dropout=0.4,
            secure=True,
        )
    finally:
        logger.removeHandler(records)
    labels = set(HONEST)
    dropped_any = False
    for row, info in zip(out["history"], _chain(fed, out["model"]), strict=True):
        participants = {
            tuple(fed.store.open_artifact(u).attrs[FED_ATTR]["participants"])
            for u in info["updates"]
        }
        assert len(participants) == 1  # all masked for the same (final) participant set
        survivors = set(participants.pop())
        assert row["clients"] == len(survivors) == len(info["updates"]) >= 2
        dropped = labels - survivors
        dropped_any = dropped_any or bool(dropped)
        rnd = row["round"]
        for c in dropped:
            assert any(
                line.startswith(f"round {rnd}: {c} missing: dropped out") for line in records.lines
            ), (c, records.lines)
            restart = f"round {rnd}: secure aggregation restarts without"
            assert any(line.startswith(restart) and c in line for line in records.lines)
        assert 0 <= row["accuracy"] <= 1
    assert dropped_any, "seed 1 drops a client in some round"


def test_a_secure_rounds_history_names_the_clients_that_dropped_out(fed: Fed) -> None:
    out = federated_train(
        dataset=fed.dataset,
        clients=3,
        partition="iid",
        rounds=1,
        model="mlp",
        model_kwargs=MODEL_KWARGS,
        seed=1,
        dropout=0.4,
        secure=True,
    )
    (row,) = out["history"]
    assert row["clients"] == 2  # seed 1: client-1 drops out of round 1
    assert row["missing"] == [["client-1", "dropped out (simulated)"]]


def test_a_silent_byzantine_client_is_missing_from_every_round(fed: Fed) -> None:
    """``--attack silent``: the attacker never sends an update (the floor for the robustness
    figures: what a defence that caught it every round would give). Every round goes on with
    the other clients, names it as missing, and none of its updates is in any round."""
    out = federated_train(
        dataset=fed.dataset,
        clients=3,
        partition="iid",
        rounds=2,
        model="mlp",
        model_kwargs=MODEL_KWARGS,
        seed=1,
        byzantine=1,
        attack="silent",
    )
    for row, info in zip(out["history"], _chain(fed, out["model"]), strict=True):
        assert row["clients"] == 2
        assert row["missing"] == [["client-0", "silent (simulated Byzantine client)"]]
        senders = {fed.store.open_artifact(u).attrs[FED_ATTR]["data"] for u in info["updates"]}
        assert senders == set(out["clients"][1:])  # client-0 (index 0) sent nothing
    # The attacker still evaluates the final model (it is only silent about updates).
    assert set(out["history"][-1]["client_accuracy"]) == set(HONEST)


@pytest.mark.parametrize(
    "screen",
    [{"strategy_args": {"norm_bound": 50.0}}, {"max_norm_ratio": 10.0}],
    ids=["norm-bound", "norm-ratio"],
)
def test_a_client_rejected_k_times_is_excluded_from_later_rounds(
    fed: Fed, screen: dict[str, Any]
) -> None:
    """``exclude_after=2``: client-0 sends ×1000 updates, the norm bound (or the screen against
    the round's median norm) rejects them in rounds 1 and 2, and from round 3 on it gets no work
    at all (no update, no final evaluation)."""
    common: dict[str, Any] = {
        "dataset": fed.dataset,
        "clients": 3,
        "partition": "iid",
        "model": "mlp",
        "model_kwargs": MODEL_KWARGS,
        "seed": 1,
        **screen,
    }
    out = federated_train(**common, rounds=4, byzantine=1, attack="scale:1000", exclude_after=2)
    rows, chain = out["history"], _chain(fed, out["model"])
    assert [r["rejected"] for r in rows] == [1, 1, 0, 0]
    assert [r["excluded"] for r in rows] == [[], ["client-0"], ["client-0"], ["client-0"]]
    assert [r["clients"] for r in rows] == [3, 3, 2, 2]
    for info in chain[2:]:
        senders = {fed.store.open_artifact(u).attrs[FED_ATTR]["data"] for u in info["updates"]}
        assert senders == set(out["clients"][1:])
    assert set(rows[-1]["client_accuracy"]) == {"client-1", "client-2"}
    # Honest clients under the same bound are never struck.
    clean = federated_train(**common, rounds=2, exclude_after=1)
    assert [r["excluded"] for r in clean["history"]] == [[], []]
    assert [r["rejected"] for r in clean["history"]] == [0, 0]


def test_an_attacker_that_starts_late_is_honest_until_then_and_excluded_once_caught(
    fed: Fed,
) -> None:
    """``scale:1000@2``: client-0 is honest in round 1 (its update is kept, with no attack on
    record), attacks from round 2, is rejected there by the length screen and, with
    ``exclude_after=1``, left out of round 3."""
    out = federated_train(
        dataset=fed.dataset,
        clients=3,
        partition="iid",
        rounds=3,
        model="mlp",
        model_kwargs=MODEL_KWARGS,
        seed=1,
        byzantine=1,
        attack="scale:1000@2",
        max_norm_ratio=10.0,
        exclude_after=1,
    )
    rows, chain = out["history"], _chain(fed, out["model"])
    assert [r["rejected"] for r in rows] == [0, 1, 0]
    assert [r["clients"] for r in rows] == [3, 3, 2]
    assert [r["excluded"] for r in rows] == [[], ["client-0"], ["client-0"]]
    attacks = [
        {
            fed.store.open_artifact(u).attrs[FED_ATTR]["data"]: fed.store.open_artifact(u)
            .attrs[FED_ATTR]
            .get("attack")
            for u in info["updates"]
        }
        for info in chain
    ]
    first = out["clients"][0]
    assert attacks[0][first] is None  # round 1: honest
    assert attacks[1][first] == "scale:1000"
    assert first not in attacks[2]


def test_exclude_after_must_be_positive(fed: Fed) -> None:
    # (Exclusions alone never leave a round short: a round that strikes a client had enough
    # accepted updates without it, and those clients stay.)
    with pytest.raises(FlowError, match="exclude_after must be at least 1, got 0"):
        federated_train(dataset=fed.dataset, clients=3, rounds=1, exclude_after=0)


# -- 7. evaluation only --------------------------------------------------------------------------


def test_an_evaluation_only_client_round_sends_no_update(fed: Fed) -> None:
    before = {a.cid for a in fed.store.list()}
    answer = _in_flow(
        lambda: client_round(global_model=fed.model, data=fed.clients[0], round=1, epochs=0)
    )
    assert answer["update"] is None
    assert answer["metrics"] == {}
    assert answer["num_examples"] > 0
    evaluation = answer["evaluation"]
    assert 0.0 <= evaluation["accuracy"] <= 1.0
    assert evaluation["examples"] > 0
    assert evaluation["loss"] > 0
    assert {a.cid for a in fed.store.list()} == before  # no artifact written
    receipt = load_receipt(fed.store, answer["receipt"])
    assert receipt.task == "fed-client"
    assert receipt.outputs == []


# -- 9. untrusted answers: every field type-checked into a recorded rejection ---------------------


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        ("lots", "num_examples 'lots' is not an integer"),
        (-1, "num_examples -1 is not positive"),
        (2**62, f"claims {2**62} examples, more than the cap of 2147483647"),
        (True, "num_examples True is not an integer"),
        (1.5, "num_examples 1.5 is not an integer"),
        (None, "num_examples None is not an integer"),
    ],
)
def test_a_bad_example_count_is_a_rejection_and_the_honest_clients_aggregate(
    fed: Fed, claim: Any, reason: str
) -> None:
    honest, counts = _nudged(fed)
    liar = _put_model(fed.weights, fed.spec, {"round": 1, "update_of": fed.model}, "client")
    answer = _aggregate(fed.model, [*honest, liar], [*counts, claim], [*HONEST, "liar"])
    assert _reasons(answer) == {"liar": reason}
    expected = _model(_aggregate(fed.model, honest, counts, HONEST)["model"])
    got = _model(answer["model"])
    assert all(np.array_equal(got[k], expected[k]) for k in expected)


def test_extra_missing_and_misdeclared_arrays_are_refused_from_their_metadata(fed: Fed) -> None:
    honest, counts = _nudged(fed)
    info = {"round": 1, "update_of": fed.model}
    name = next(iter(fed.weights))
    extra = _put_raw(fed, {**fed.weights, "smuggled": np.zeros(3, np.float32)}, info)
    missing = _put_raw(fed, {k: v for k, v in fed.weights.items() if k != name}, info)
    answer = _aggregate(
        fed.model, [*honest, extra, missing], [*counts, 10, 10], [*HONEST, "extra", "missing"]
    )
    reasons = _reasons(answer)
    assert reasons["extra"] == "unexpected arrays 'smuggled'"
    assert reasons["missing"] == f"missing arrays {name!r}"
    assert answer["model"] is not None
    assert answer["metrics"]["accepted"] == 3


def test_a_billion_element_array_is_refused_before_it_is_read() -> None:
    from artifacts.artifact import ArrayInfo
    from flows.federated.flow import _check_declared

    class Huge:  # declares 10^9 elements; reading it would fail the test
        def arrays(self) -> dict[str, ArrayInfo]:
            return {"w": ArrayInfo("w", (10**9,), "float32", (10**6,), {})}

        def to_state_dict(self) -> Any:
            raise AssertionError("read before its declared shape was checked")

    with pytest.raises(
        FlowError, match=r"array 'w' has shape \[1000000000\], the global model \[4\]"
    ):
        _check_declared(Huge(), {"w": np.zeros(4, np.float32)})


def test_round_info_that_is_not_an_object_or_nests_deep_is_a_rejection(fed: Fed) -> None:
    honest, counts = _nudged(fed)
    flat = _put_model(fed.weights, fed.spec, [1, 2], "client")  # type: ignore[arg-type]
    deep: Any = 1
    for _ in range(200):
        deep = {"a": deep}
    nested = _put_model(fed.weights, fed.spec, {"round": deep, "update_of": fed.model}, "c")
    answer = _aggregate(
        fed.model, [*honest, flat, nested], [*counts, 10, 10], [*HONEST, "flat", "nested"]
    )
    reasons = _reasons(answer)
    assert "is not an object" in reasons["flat"]
    assert reasons["nested"].startswith("an update for round {")
    assert answer["model"] is not None
    assert answer["metrics"]["accepted"] == 3


def test_a_flow_round_lists_a_lying_clients_rejection_and_goes_on(
    fed: Fed, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.federated.flow import LocalClients

    real = LocalClients.run_round

    def lying(self: LocalClients, rnd: int, model: str, params: dict[str, Any]) -> Any:
        got = real(self, rnd, model, params)
        liar = got.answers.get("client-0")
        if liar is not None:
            liar["num_examples"] = "lots"
            liar["metrics"] = {"loss": [1, 2], "accuracy": "high"}
            liar["evaluation"] = {"examples": "many", "accuracy": float("nan")}
        return got

    monkeypatch.setattr(LocalClients, "run_round", lying)
    out = federated_train(
        dataset=fed.dataset,
        clients=3,
        partition="iid",
        rounds=2,
        model="mlp",
        model_kwargs=MODEL_KWARGS,
        min_clients=2,
    )
    for row in out["history"]:
        assert row["rejections"] == [["client-0", "num_examples 'lots' is not an integer"]]
        assert row["clients"] == 3
    assert out["history"][-1]["client_accuracy"].keys() == {"client-1", "client-2"}
