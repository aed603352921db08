"""The federated client: deterministic local rounds from global weights, FedProx's proximal
term pulling towards the global model, and FedAvg rounds over real Dirichlet partitions of
scikit-learn digits reaching good accuracy (in memory: no Prefect, no store)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from flows.errors import ModelSpecError, TrainingError
from flows.federated.aggregate import fedavg
from flows.federated.client import ModelSpec, local_train
from flows.federated.partition import dirichlet_partition
from flows.training import evaluate_model

DIGITS = load_digits()
X = (DIGITS.data / 16.0).astype(np.float32)
Y = DIGITS.target.astype(np.int64)
SPEC = ModelSpec("mlp", (64,), 10, seed=0)


def _distance(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(np.sum((a[k] - b[k]) ** 2) for k in a)))


def test_a_local_round_is_deterministic_and_moves_the_weights() -> None:
    start = SPEC.initial_weights()
    one = local_train(SPEC, start, X[:300], Y[:300], epochs=1, seed=4)
    two = local_train(SPEC, start, X[:300], Y[:300], epochs=1, seed=4)
    assert one.num_examples == 300
    assert set(one.weights) == set(start)
    assert all(np.array_equal(one.weights[k], two.weights[k]) for k in start)
    assert all(one.weights[k].dtype == start[k].dtype for k in start)
    assert _distance(one.weights, start) > 0
    assert 0 <= one.metrics["accuracy"] <= 1


def test_the_proximal_term_keeps_the_client_near_the_global_model() -> None:
    start = SPEC.initial_weights()
    free = local_train(SPEC, start, X[:400], Y[:400], epochs=3, lr=1e-2, seed=1)
    held = local_train(SPEC, start, X[:400], Y[:400], epochs=3, lr=1e-2, seed=1, proximal_mu=5.0)
    assert _distance(held.weights, start) < 0.8 * _distance(free.weights, start)


def test_bad_inputs() -> None:
    start = SPEC.initial_weights()
    with pytest.raises(TrainingError, match="proximal_mu"):
        local_train(SPEC, start, X[:50], Y[:50], proximal_mu=-1.0)
    with pytest.raises(ModelSpecError, match="do not fit"):
        local_train(SPEC, {"nope": np.zeros(3)}, X[:50], Y[:50])
    wrong = {k: np.zeros((2, *v.shape[1:]), v.dtype) if v.ndim else v for k, v in start.items()}
    with pytest.raises(ModelSpecError, match="shape"):
        local_train(SPEC, wrong, X[:50], Y[:50])


def test_fedavg_rounds_on_non_iid_digits_learn() -> None:
    order = np.random.default_rng(0).permutation(len(Y))
    train, test = order[:1400], order[1400:]
    parts = dirichlet_partition(Y[train], 5, 0.5, seed=0)
    weights = SPEC.initial_weights()
    net = SPEC.build()
    for rnd in range(8):
        results = []
        for k, idx in enumerate(parts):
            res = local_train(SPEC, weights, X[train][idx], Y[train][idx], epochs=1, lr=5e-3,
                              seed=rnd * 100 + k)  # fmt: skip
            results.append((res.weights, res.num_examples))
        weights = {k: v.astype(np.float32) for k, v in fedavg(results).items()}
    from flows.federated.client import load_weights

    load_weights(net, weights)
    accuracy = evaluate_model(net, X[test], Y[test])["accuracy"]
    assert accuracy > 0.8


def test_byzantine_attacks_transform_the_update_only() -> None:
    from flows.errors import FlowError
    from flows.federated.flow import apply_attack

    before = {"w": np.array([1.0, 2.0], dtype=np.float32), "n": np.array([3], dtype=np.int64)}
    after = {"w": np.array([1.5, 1.0], dtype=np.float32), "n": np.array([4], dtype=np.int64)}
    scaled = apply_attack("scale:1000", before, after)
    np.testing.assert_allclose(scaled["w"], [501.0, -998.0])
    assert scaled["w"].dtype == np.float32
    assert scaled["n"][0] == 4  # integer arrays stay honest
    flipped = apply_attack("signflip", before, after)
    np.testing.assert_allclose(flipped["w"], [0.5, 3.0])
    for bad in ("scale:x", "scale", "poison", "signflip:2", "silent"):
        with pytest.raises(FlowError, match="attack"):
            apply_attack(bad, before, after)  # a silent client sends nothing to transform
    from flows.federated.attacks import check_attack

    check_attack("silent")
    with pytest.raises(FlowError, match="scale:K needs a number K"):
        check_attack("scale:x")
    for bad in ("poison", "silent:1", "poison@3"):
        with pytest.raises(FlowError, match="expected scale:K, signflip or silent"):
            check_attack(bad)
    for bad in ("signflip@0", "signflip@x", "signflip@", "silent@-1"):
        with pytest.raises(FlowError, match="KIND@R needs a round R >= 1"):
            check_attack(bad)
    from flows.federated.attacks import active_attack

    check_attack("scale:1000@3")
    assert [active_attack("scale:1000@3", r) for r in (1, 2, 3, 4)] == [
        None, None, "scale:1000", "scale:1000"]  # fmt: skip
    assert active_attack("signflip", 1) == "signflip"
    assert active_attack("silent@2", 2) == "silent"
