"""Strategies: the shared round step, failures as results, and server optimisers by hand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from flows.errors import AggregationError
from flows.federated.strategies import (
    STRATEGIES,
    AggregateResult,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
    ServerOptState,
    Strategy,
)

f32 = np.float32


def w(*values: float, dtype: Any = np.float64) -> dict[str, np.ndarray]:
    return {"w": np.array(values, dtype)}


def assert_weights(got: dict[str, np.ndarray] | None, want: dict[str, np.ndarray]) -> None:
    assert got is not None
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name])


# --------------------------------------------------------------------------- result and base


def test_aggregate_result_has_weights_or_a_failure() -> None:
    assert AggregateResult(w(1.0)).ok
    failed = AggregateResult(None, failure="no")
    assert not failed.ok
    assert failed.rejected == []
    assert failed.metrics == {}
    with pytest.raises(ValueError, match="either weights or a failure"):
        AggregateResult(None)
    with pytest.raises(ValueError, match="either weights or a failure"):
        AggregateResult(w(1.0), failure="both")


def test_registry_names_every_strategy() -> None:
    assert sorted(STRATEGIES) == [
        "fedadagrad",
        "fedadam",
        "fedavg",
        "fedmedian",
        "fedprox",
        "fedtrimmedavg",
        "fedyogi",
        "krum",
        "multikrum",
    ]
    for name, cls in STRATEGIES.items():
        assert cls.name == name
        assert issubclass(cls, Strategy)


def test_fedavg_round_rejects_bad_updates_and_records_why() -> None:
    g: dict[str, np.ndarray] = {"w": np.zeros(2, f32), "steps": np.array(0, np.int64)}
    results: list[Any] = [
        ("a", {"w": np.array([1, 2], f32), "steps": np.array(3, np.int64)}, 1),
        ("b", {"w": np.array([np.nan, 0], f32), "steps": np.array(3, np.int64)}, 1),
        ("c", {"w": np.array([3, 6], f32), "steps": np.array(4, np.int64)}, 3),
        ("d", {"w": np.array([1, 1], f32), "steps": np.array(4, np.int64)}, 10**9),
    ]
    result = FedAvg(max_examples=1000).aggregate(1, g, results)
    assert result.ok
    # (1·[1,2] + 3·[3,6]) / 4 = [2.5, 5];  steps (3 + 12) / 4 = 3.75, rounded to 4
    assert_weights(result.weights, {"w": np.array([2.5, 5.0], f32), "steps": np.array(4)})
    assert result.rejected == [
        ("b", "array 'w' has 1 NaN and 0 infinite values"),
        ("d", "claims 1000000000 examples, more than the cap of 1000"),
    ]
    assert result.metrics == {"received": 4, "accepted": 2, "num_examples": 4}


def test_fewer_than_min_clients_is_a_failed_round_not_a_partial_model() -> None:
    results: list[Any] = [("a", w(1.0), 1), ("b", w(math.inf), 1), ("c", {"x": np.ones(1)}, 1)]
    result = FedAvg(min_clients=2).aggregate(3, w(0.0), results)
    assert result.weights is None
    assert result.failure == "only 1 of 3 updates accepted, need at least 2"
    assert [client for client, _ in result.rejected] == ["b", "c"]


def test_no_updates_at_all() -> None:
    result = FedMedian().aggregate(1, w(0.0), [])
    assert result.failure == "only 0 of 0 updates accepted, need at least 1"


def test_a_bad_global_model_is_a_failed_round() -> None:
    result = FedAvg().aggregate(1, w(math.nan), [("a", w(1.0), 1)])
    assert result.weights is None
    assert result.failure is not None
    assert "global array 'w' has NaN" in result.failure


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: FedAvg(min_clients=0), "min_clients must be a positive integer"),
        (lambda: FedAvg(norm_bound=-1.0), "norm_bound"),
        (lambda: FedAvg(max_examples=0), "max_examples"),
        (lambda: FedProx(proximal_mu=-0.1), "proximal_mu"),
        (lambda: FedProx(proximal_mu=math.nan), "proximal_mu"),
        (lambda: FedTrimmedAvg(beta=0.5), "beta"),
        (lambda: Krum(num_malicious=-1), "num_malicious"),
        (lambda: Krum(to_keep=-1), "to_keep"),
        (lambda: MultiKrum(to_keep=0), "to_keep"),
        (lambda: FedAdam(eta=0.0), "eta"),
        (lambda: FedAdam(beta_1=1.0), "beta_1"),
        (lambda: FedYogi(beta_2=-0.1), "beta_2"),
        (lambda: FedYogi(tau=0.0), "tau"),
        (lambda: FedAdagrad(eta_l=-1.0), "eta_l"),
        (lambda: FedAdagrad(v_init=-1.0), "v_init"),
        (lambda: FedAdam(eta=math.inf), "eta"),
    ],
)
def test_bad_settings_fail_at_construction(make: Any, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        make()


# --------------------------------------------------------------------------- simple strategies


def test_fedprox_sends_mu_and_aggregates_like_fedavg() -> None:
    strategy = FedProx(proximal_mu=0.01)
    assert strategy.client_config(1) == {"proximal_mu": 0.01}
    assert FedAvg().client_config(1) == {}
    result = strategy.aggregate(1, w(0.0, 0.0), [("a", w(1.0, 0.0), 1), ("b", w(5.0, 4.0), 3)])
    assert_weights(result.weights, w(4.0, 3.0))


def test_fedmedian_and_trimmed_avg_rounds() -> None:
    values = [100.0, 1.0, 3.0, 2.0, 4.0]
    results: list[Any] = [(f"c{i}", w(v), 1) for i, v in enumerate(values)]
    assert_weights(FedMedian().aggregate(1, w(0.0), results).weights, w(3.0))
    trimmed = FedTrimmedAvg().aggregate(1, w(0.0), results)  # beta 0.2: cut 1 each end
    assert_weights(trimmed.weights, w(3.0))
    assert trimmed.metrics["trimmed_each_end"] == 1


def test_krum_round_names_the_selected_clients() -> None:
    values = [0.0, 1.0, 2.0, 3.0, 10.0]  # scores 5, 2, 2, 5, 113 (see test_fed_aggregate)
    results: list[Any] = [(f"c{i}", w(v), 1) for i, v in enumerate(values)]
    plain = Krum(num_malicious=1).aggregate(1, w(0.0), results)
    assert_weights(plain.weights, w(1.0))
    assert plain.metrics["selected"] == "c1"
    multi = MultiKrum(num_malicious=1, to_keep=3).aggregate(1, w(0.0), results)
    assert_weights(multi.weights, w(1.0))
    assert multi.metrics["selected"] == "c1,c2,c0"


def test_krum_with_too_few_clients_is_a_failed_round() -> None:
    results: list[Any] = [(f"c{i}", w(float(i)), 1) for i in range(4)]
    result = Krum(num_malicious=1).aggregate(1, w(0.0), results)
    assert result.weights is None
    assert result.failure == (
        "Krum tolerating 1 Byzantine updates needs more than 4 updates (n > 2f + 2), got 4"
    )


@pytest.mark.parametrize(
    "strategy",
    [
        FedMedian(),
        FedTrimmedAvg(beta=0.2),
        Krum(num_malicious=1),
        MultiKrum(num_malicious=1, to_keep=3),
    ],
    ids=["median", "trimmed", "krum", "multikrum"],
)
@pytest.mark.parametrize(
    ("attack", "fedavg_error"),
    [(1000.0, 100.0), (-1.0, 0.3)],
    ids=["scaled-x1000", "sign-flipped"],
)
def test_robust_rules_resist_one_byzantine_client_in_five(
    strategy: Strategy, attack: float, fedavg_error: float
) -> None:
    rng = np.random.default_rng(0)
    honest = [1.0 + 0.01 * rng.standard_normal(8) for _ in range(4)]
    results: list[Any] = [(f"c{i}", {"w": v}, 100) for i, v in enumerate(honest)]
    results.insert(2, ("evil", {"w": attack * honest[0]}, 100))
    result = strategy.aggregate(1, {"w": np.zeros(8)}, results)
    assert result.weights is not None
    assert np.abs(result.weights["w"] - 1.0).max() < 0.05
    if "selected" in result.metrics:
        assert "evil" not in str(result.metrics["selected"]).split(",")
    fedavg = FedAvg().aggregate(1, {"w": np.zeros(8)}, results)
    assert fedavg.weights is not None
    assert np.abs(fedavg.weights["w"] - 1.0).max() > fedavg_error  # what FedAvg suffers


# --------------------------------------------------------------------------- server optimisers


def round_(
    strategy: Strategy, rnd: int, global_w: dict[str, np.ndarray], avg: dict[str, np.ndarray]
) -> AggregateResult:
    """One round where a single client sends ``avg`` (so the client average is ``avg``)."""
    return strategy.aggregate(rnd, global_w, [("a", avg, 7)])


def test_fedadagrad_two_steps_by_hand() -> None:
    # eta 1, tau 3 -> v_{-1} = tau² = 9; beta_1 = 0 (Flower's default) -> m_t = Δ_t
    s = FedAdagrad(eta=1.0, tau=3.0)
    # Δ1 = [4, 0]: v1 = [9+16, 9+0] = [25, 9]; x1 = [0 + 4/(5+3), 10 + 0/(3+3)] = [0.5, 10]
    r1 = round_(s, 1, w(0.0, 10.0), w(4.0, 10.0))
    assert_weights(r1.weights, w(0.5, 10.0))
    assert r1.metrics["server_step"] == 1
    assert r1.metrics["pseudo_gradient_norm"] == 4.0
    # Δ2 = [12, -4]: v2 = [25+144, 9+16] = [169, 25]; x2 = [0.5 + 12/(13+3), 10 - 4/(5+3)]
    r2 = round_(s, 2, w(0.5, 10.0), w(12.5, 6.0))
    assert_weights(r2.weights, w(1.25, 9.5))
    state = s.state
    assert state is not None
    assert state.step == 2
    np.testing.assert_array_equal(state.m["w"], [12.0, -4.0])
    np.testing.assert_array_equal(state.v["w"], [169.0, 25.0])


def test_fedadam_two_steps_by_hand() -> None:
    # eta 1, beta_1 0.5, beta_2 0.75, tau 1 -> v_{-1} = 1
    s = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1.0)
    # Δ1 = [1, -1, 0]: m1 = [0.5, -0.5, 0]; v1 = 0.75·1 + 0.25·Δ² = [1, 1, 0.75]
    # x1 = x0 + m1 / (√v1 + 1) = [0.25, -0.25, 5]
    r1 = round_(s, 1, w(0.0, 0.0, 5.0), w(1.0, -1.0, 5.0))
    assert_weights(r1.weights, w(0.25, -0.25, 5.0))
    # Δ2 = [1, 1, 0]: m2 = 0.5·m1 + 0.5·Δ2 = [0.75, 0.25, 0]; v2 = [1, 1, 0.5625]
    # x2 = x1 + m2 / 2 = [0.625, -0.125, 5]
    r2 = round_(s, 2, w(0.25, -0.25, 5.0), w(1.25, 0.75, 5.0))
    assert_weights(r2.weights, w(0.625, -0.125, 5.0))
    state = s.state
    assert state is not None
    np.testing.assert_array_equal(state.m["w"], [0.75, 0.25, 0.0])
    np.testing.assert_array_equal(state.v["w"], [1.0, 1.0, 0.5625])


def test_fedadam_bias_correction_is_opt_in() -> None:
    plain = FedAdam(beta_1=0.5, beta_2=0.75)
    corrected = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.75, bias_correction=True)
    assert plain.step_size(1) == plain.step_size(2) == 0.1
    assert corrected.step_size(1) == 1.0  # √(1 − 0.75) / (1 − 0.5)
    assert corrected.step_size(2) == pytest.approx(math.sqrt(1 - 0.5625) / 0.75)


def test_fedadam_defaults_first_step() -> None:
    # Flower's defaults: eta 0.1, beta_1 0.9, beta_2 0.99, tau 1e-9.
    # Δ = 1: m = 0.1, v = 0.99·1e-18 + 0.01, x = 0.1 · 0.1 / (0.1 + 1e-9) ≈ 0.1
    r1 = round_(FedAdam(), 1, w(0.0), w(1.0))
    assert r1.weights is not None
    assert r1.weights["w"][0] == pytest.approx(0.01 / (math.sqrt(0.01 + 0.99e-18) + 1e-9))


def test_fedyogi_two_steps_by_hand_both_sign_branches() -> None:
    # eta 1, beta_1 0.5, beta_2 0.75, tau 1, v_init 0 (Flower's start)
    s = FedYogi(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1.0, v_init=0.0)
    # Δ1 = [6, 50]: v0 − Δ² < 0 -> v1 = 0 + 0.25·Δ² = [9, 625]; m1 = [3, 25]
    # x1 = [3/(3+1), 25/(25+1)]
    r1 = round_(s, 1, w(0.0, 0.0), w(6.0, 50.0))
    assert_weights(r1.weights, w(0.75, 25 / 26))
    # Δ2 = [8, 14]: coordinate 0: 9 − 64 < 0 -> v2 = 9 + 16 = 25;
    #               coordinate 1: 625 − 196 > 0 -> v2 = 625 − 49 = 576 (Adam would give 517)
    # m2 = 0.5·m1 + 0.5·Δ2 = [5.5, 19.5]; x2 = x1 + [5.5/(5+1), 19.5/(24+1)]
    x1 = np.array([0.75, 25 / 26])
    r2 = round_(s, 2, {"w": x1}, {"w": x1 + np.array([8.0, 14.0])})
    assert r2.weights is not None
    np.testing.assert_allclose(r2.weights["w"], [0.75 + 5.5 / 6, 25 / 26 + 19.5 / 25], rtol=1e-15)
    state = s.state
    assert state is not None
    np.testing.assert_allclose(state.v["w"], [25.0, 576.0], rtol=1e-15)


def test_fedopt_defaults_match_flower() -> None:
    adagrad, adam, yogi = FedAdagrad(), FedAdam(), FedYogi()
    assert (adagrad.eta, adagrad.beta_1, adagrad.tau) == (0.1, 0.0, 1e-9)
    assert (adam.eta, adam.beta_1, adam.beta_2, adam.tau) == (0.1, 0.9, 0.99, 1e-9)
    assert (yogi.eta, yogi.beta_1, yogi.beta_2, yogi.tau) == (0.01, 0.9, 0.99, 1e-3)
    assert yogi.v_init == 1e-3**2
    assert adam.client_config(1) == {}
    assert FedYogi(eta_l=0.0316).client_config(1) == {"learning_rate": 0.0316}


def test_fedopt_uniform_average_is_the_papers_option() -> None:
    results: list[Any] = [("a", w(4.0), 1), ("b", w(0.0), 3)]
    weighted = FedAdagrad(eta=1.0, tau=1.0, v_init=0.0).aggregate(1, w(0.0), results)
    uniform = FedAdagrad(eta=1.0, tau=1.0, v_init=0.0, weighted=False).aggregate(1, w(0.0), results)
    # weighted Δ = 1: 1/(1+1); uniform Δ = 2: 2/(2+1)
    assert_weights(weighted.weights, w(0.5))
    assert_weights(uniform.weights, w(2 / 3))


def test_fedopt_keeps_float32_and_rounds_counters() -> None:
    g: dict[str, np.ndarray] = {"w": np.zeros(2, f32), "n": np.array(10, np.int64)}
    s = FedAdagrad(eta=1.0, tau=3.0)
    result = s.aggregate(1, g, [("a", {"w": np.array([4, 0], f32), "n": np.array(13)}, 1)])
    assert_weights(result.weights, {"w": np.array([0.5, 0.0], f32), "n": np.array(13)})
    state = s.state
    assert state is not None
    assert list(state.m) == ["w"]  # counters are not optimised


def test_fedopt_state_round_trips_and_is_copied() -> None:
    s = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1.0)
    round_(s, 1, w(0.0, 0.0, 5.0), w(1.0, -1.0, 5.0))
    saved = s.state
    assert saved is not None
    saved.m["w"][0] = 99.0
    resumed = FedAdam(eta=1.0, beta_1=0.5, beta_2=0.75, tau=1.0, state=s.state)
    r2 = round_(resumed, 2, w(0.25, -0.25, 5.0), w(1.25, 0.75, 5.0))
    assert_weights(r2.weights, w(0.625, -0.125, 5.0))


def test_server_step_that_would_give_nan_fails_and_keeps_the_state() -> None:
    # flwr #1060: Δ² overflows float64 -> v = inf; the round must fail, not poison the model.
    s = FedAdam()
    bad = round_(s, 1, w(1e300), w(-1e300))
    assert bad.weights is None
    assert bad.failure is not None
    assert "second moment of 'w' is not finite" in bad.failure
    assert s.state is None
    good = round_(s, 2, w(0.0), w(1.0))
    assert good.ok
    state = s.state
    assert state is not None
    assert state.step == 1


def test_server_step_that_overflows_the_models_dtype_fails_and_keeps_the_state() -> None:
    s = FedAdam(eta=1e38)
    round_(s, 1, w(0.0, dtype=f32), w(1.0, dtype=f32))
    before = s.state
    bad = round_(s, 2, w(3.3e38, dtype=f32), w(3.4e38, dtype=f32))
    assert bad.weights is None
    assert bad.failure == "aggregate 'w' overflows float32"
    after = s.state
    assert before is not None
    assert after is not None
    assert after.step == before.step == 1
    np.testing.assert_array_equal(after.v["w"], before.v["w"])


def test_optimiser_state_that_does_not_fit_the_model_fails() -> None:
    s = FedYogi()
    round_(s, 1, w(0.0), w(1.0))
    result = round_(s, 2, {"v": np.zeros(1)}, {"v": np.ones(1)})
    assert result.failure == "the server optimiser state does not match the global model"
    result = round_(s, 2, w(0.0, 0.0), w(1.0, 1.0))
    assert result.failure == "the server optimiser state does not match the global model"


def test_resuming_from_a_given_state() -> None:
    state = ServerOptState(4, {"w": np.array([0.0])}, {"w": np.array([1.0])})
    s = FedAdagrad(eta=1.0, tau=1.0, state=state)
    # Δ = 3: m = 3, v = 1 + 9 = 10 -> x = 3 / (√10 + 1)
    result = round_(s, 5, w(0.0), w(3.0))
    assert result.weights is not None
    assert result.weights["w"][0] == pytest.approx(3 / (math.sqrt(10) + 1), rel=1e-15)
    assert result.metrics["server_step"] == 5
