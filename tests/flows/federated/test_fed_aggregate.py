"""The pure aggregation rules: hand-computed examples, properties, and every error path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flows.errors import AggregationError, FlowError
from flows.federated.aggregate import (
    cast_like,
    fedavg,
    krum,
    krum_scores,
    krum_select,
    median,
    trimmed_mean,
    weighted_average,
)

f32 = np.float32


def r(n: int = 1, **arrays: Any) -> tuple[dict[str, np.ndarray], int]:
    """One result: arrays by keyword name (lists become float64 unless already arrays)."""
    return {k: np.asarray(v) for k, v in arrays.items()}, n


def assert_weights(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        np.testing.assert_array_equal(got[name], want[name])


# --------------------------------------------------------------------------- FedAvg


def test_fedavg_hand_computed() -> None:
    a = r(1, w=np.array([[1, 2], [3, 4]], f32), b=np.array([0.5], f32))
    b = r(3, w=np.array([[3, 6], [9, 0]], f32), b=np.array([1.5], f32))
    # (1·[1,2,3,4] + 3·[3,6,9,0]) / 4 = [10,20,30,4] / 4;  (0.5 + 4.5) / 4
    assert_weights(
        fedavg([a, b]),
        {"w": np.array([[2.5, 5.0], [7.5, 1.0]], f32), "b": np.array([1.25], f32)},
    )


def test_fedavg_keeps_the_first_updates_name_order() -> None:
    a = ({"z": np.array([1.0]), "a": np.array([2.0])}, 1)
    b = ({"a": np.array([4.0]), "z": np.array([3.0])}, 1)
    assert list(fedavg([a, b])) == ["z", "a"]


def test_fedavg_integer_arrays_become_float64_not_truncated() -> None:
    out = fedavg([r(1, c=np.array([1, 2])), r(1, c=np.array([2, 3]))])
    assert_weights(out, {"c": np.array([1.5, 2.5])})


def test_fedavg_client_with_zero_examples_has_no_weight() -> None:
    out = fedavg([r(0, w=[100.0]), r(5, w=[2.0])])
    assert_weights(out, {"w": np.array([2.0])})


def test_fedavg_zero_dimensional_arrays() -> None:
    out = fedavg([r(1, s=np.float32(1.0)), r(3, s=np.float32(3.0))])
    assert_weights(out, {"s": np.array(2.5, f32)})


def test_fedavg_numpy_integer_counts() -> None:
    results: list[Any] = [({"w": np.array([0.0])}, np.int64(1)), r(3, w=[4.0])]
    out = fedavg(results)
    assert_weights(out, {"w": np.array([3.0])})


def test_weighted_average_hand_computed() -> None:
    out = weighted_average([{"w": np.array([0.0, 4.0])}, {"w": np.array([6.0, 0.0])}], [2, 1])
    assert_weights(out, {"w": np.array([2.0, 8.0 / 3.0])})


# --------------------------------------------------------------------------- median


def test_median_odd_hand_computed() -> None:
    results = [
        r(1, w=np.array([1, 10, -1], f32)),
        r(50, w=np.array([2, 20, -3], f32)),
        r(7, w=np.array([9, 0, -2], f32)),
    ]
    assert_weights(median(results), {"w": np.array([2, 10, -2], f32)})


def test_median_even_is_mean_of_the_two_middle_values() -> None:
    results = [r(w=[1.0]), r(w=[10.0]), r(w=[3.0]), r(w=[2.0])]
    assert_weights(median(results), {"w": np.array([2.5])})


def test_median_of_integers_is_float64() -> None:
    results = [r(c=np.array([1])), r(c=np.array([2]))]
    assert_weights(median(results), {"c": np.array([1.5])})


# --------------------------------------------------------------------------- trimmed mean

FIVE = [
    r(1, w=[100.0, 2.0]),
    r(1, w=[1.0, -50.0]),
    r(1, w=[3.0, 3.0]),
    r(1, w=[2.0, 0.0]),
    r(1, w=[4.0, 1.0]),
]


def test_trimmed_mean_cuts_per_coordinate() -> None:
    # beta=0.2, n=5: cut 1 each end. [1,2,3,4,100] -> mean(2,3,4)=3; [-50,0,1,2,3] -> 1
    assert_weights(trimmed_mean(FIVE, 0.2), {"w": np.array([3.0, 1.0])})


def test_trimmed_mean_floor_of_beta_n() -> None:
    # beta=0.1, n=5: floor(0.5)=0, the plain mean: 110/5, -44/5
    assert_weights(trimmed_mean(FIVE, 0.1), {"w": np.array([22.0, -8.8])})
    # beta=0.49, n=5: floor(2.45)=2, only the median is left
    assert_weights(trimmed_mean(FIVE, 0.49), {"w": np.array([3.0, 1.0])})


def test_trimmed_mean_cut_is_int_of_float_product_like_flower() -> None:
    # 0.3 * 10 == 3.0000000000000004 in floating point: cut 3, keep 3..6
    results = [r(w=[float(i)]) for i in range(10)]
    assert_weights(trimmed_mean(results, 0.3), {"w": np.array([4.5])})


def test_trimmed_mean_ignores_example_counts_and_keeps_float32() -> None:
    results = [
        r(1, w=np.array([0], f32)),
        r(1000, w=np.array([4], f32)),
        r(3, w=np.array([9], f32)),
    ]
    assert_weights(trimmed_mean(results, 0.0), {"w": np.array([13 / 3], f32)})


# --------------------------------------------------------------------------- Krum

LINE = [r(1, w=[0.0]), r(1, w=[1.0]), r(1, w=[2.0]), r(1, w=[3.0]), r(1, w=[10.0])]


def test_krum_scores_hand_computed() -> None:
    # f=1, n=5: each score sums the 2 smallest squared distances to the others.
    # 0: 1,4,9,100 -> 5   1: 1,1,4,81 -> 2   2: 4,1,1,64 -> 2   3: 9,4,1,49 -> 5   10: 49+64
    np.testing.assert_array_equal(krum_scores(LINE, 1), [5.0, 2.0, 2.0, 5.0, 113.0])


def test_krum_picks_lowest_score_ties_to_lower_index() -> None:
    assert krum_select(LINE, 1, 0) == [1]
    assert_weights(krum(LINE, 1, 0), {"w": np.array([1.0])})


def test_multi_krum_is_the_unweighted_mean_of_the_best() -> None:
    assert krum_select(LINE, 1, 3) == [1, 2, 0]
    assert_weights(krum(LINE, 1, 2), {"w": np.array([1.5])})
    assert_weights(krum(LINE, 1, 3), {"w": np.array([1.0])})
    assert_weights(krum(LINE, 1, 5), {"w": np.array([16.0 / 5.0])})


def test_krum_distances_span_all_arrays() -> None:
    # flattened: u0=(0,0,0) u1=(1,0,0) u2=(0,1,1) u3=(0,0,2); f=0 -> 2 neighbours
    # d01=1 d02=2 d03=4 d12=3 d13=5 d23=2 -> scores 3, 4, 4, 6
    results = [
        r(1, a=[0.0, 0.0], b=[0.0]),
        r(9, a=[1.0, 0.0], b=[0.0]),
        r(1, a=[0.0, 1.0], b=[1.0]),
        r(1, a=[0.0, 0.0], b=[2.0]),
    ]
    np.testing.assert_array_equal(krum_scores(results, 0), [3.0, 4.0, 4.0, 6.0])
    assert_weights(krum(results, 0, 0), {"a": np.array([0.0, 0.0]), "b": np.array([0.0])})
    assert_weights(krum(results, 0, 2), {"a": np.array([0.5, 0.0]), "b": np.array([0.0])})
    # Flower's variant weights the kept updates by example counts: (1·u0 + 9·u1) / 10
    assert_weights(
        krum(results, 0, 2, weighted=True), {"a": np.array([0.9, 0.0]), "b": np.array([0.0])}
    )


def test_plain_krum_returns_the_selected_update_unchanged_and_copied() -> None:
    results = [r(1, c=np.array([i], np.int64)) for i in (0, 1, 2, 3, 10)]
    out = krum(results, 1, 0)
    assert_weights(out, {"c": np.array([1], np.int64)})
    out["c"][0] = 99
    assert results[1][0]["c"][0] == 1


# --------------------------------------------------------------------------- cast_like


def test_cast_like_rounds_counters_and_keeps_float_precision() -> None:
    ref: dict[str, np.ndarray] = {"w": np.zeros(2, f32), "n": np.array(0, np.int64)}
    out = cast_like(ref, {"n": np.array(2.5), "w": np.array([0.1, 0.2])})
    assert list(out) == ["w", "n"]
    assert out["w"].dtype == f32
    assert isinstance(out["n"], np.ndarray)
    assert_weights(out, {"w": np.array([0.1, 0.2], f32), "n": np.array(2, np.int64)})


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ({"x": np.zeros(2)}, "names"),
        ({"w": np.zeros(3), "n": np.array(0.0)}, "shape"),
        ({"w": np.array([np.nan, 0.0]), "n": np.array(0.0)}, "NaN"),
        ({"w": np.array([1e39, 0.0]), "n": np.array(0.0)}, "overflows float32"),
        ({"w": np.zeros(2), "n": np.array(1e19)}, "does not fit int64"),
        ({"w": np.array(["a", "b"]), "n": np.array(0.0)}, "unsupported dtype"),
    ],
)
def test_cast_like_errors(weights: dict[str, np.ndarray], match: str) -> None:
    ref: dict[str, np.ndarray] = {"w": np.zeros(2, f32), "n": np.array(0, np.int64)}
    with pytest.raises(AggregationError, match=match):
        cast_like(ref, weights)


# --------------------------------------------------------------------------- error paths


def test_aggregation_error_is_a_flow_error_and_a_value_error() -> None:
    assert issubclass(AggregationError, FlowError)
    assert issubclass(AggregationError, ValueError)


ALL_RULES = [
    pytest.param(fedavg, id="fedavg"),
    pytest.param(median, id="median"),
    pytest.param(lambda res: trimmed_mean(res, 0.1), id="trimmed_mean"),
    pytest.param(lambda res: krum(res, 0, 0), id="krum"),
]

BAD_INPUTS = [
    pytest.param([], "no updates", id="empty"),
    pytest.param([r(w=[1.0]), r(x=[1.0])], "different array names", id="names"),
    pytest.param([r(w=[1.0]), r(w=[1.0], x=[2.0])], "unexpected", id="extra-name"),
    pytest.param([r(w=[1.0]), r(w=[1.0, 2.0])], "float64\\[2\\]", id="shape"),
    pytest.param([r(w=[1.0]), r(w=np.array([1.0], f32))], "float32", id="dtype"),
    pytest.param([r(w=[1.0]), r(w=[np.nan])], "NaN or infinite", id="nan"),
    pytest.param([r(w=[np.inf]), r(w=[1.0])], "NaN or infinite", id="inf"),
    pytest.param([r(w=[True]), r(w=[False])], "dtype bool", id="bool"),
    pytest.param([r(w=np.array([1j])), r(w=np.array([1j]))], "complex", id="complex"),
    pytest.param([({}, 1), ({}, 1)], "no arrays", id="no-arrays"),
    pytest.param([({1: np.zeros(1)}, 1)], "non-string", id="name-type"),
    pytest.param([r(w=[1.0]), ([np.zeros(1)], 1)], "not arrays by name", id="not-mapping"),
    pytest.param([r(w=[1.0]), ({"w": np.zeros(1)},)], "pair", id="not-pair"),
]


@pytest.mark.parametrize("rule", ALL_RULES)
@pytest.mark.parametrize(("results", "match"), BAD_INPUTS)
def test_every_rule_refuses_bad_input(rule: Any, results: list[Any], match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        rule(results)


@pytest.mark.parametrize(
    ("counts", "match"),
    [
        ((0, 0), "no examples in total"),
        ((-1, 3), "negative"),
        ((1.5, 1), "not an integer"),
        ((True, 1), "not an integer"),
        (("3", 1), "not an integer"),
    ],
)
def test_fedavg_refuses_bad_counts(counts: tuple[Any, Any], match: str) -> None:
    results = [({"w": np.zeros(1)}, counts[0]), ({"w": np.ones(1)}, counts[1])]
    with pytest.raises(AggregationError, match=match):
        fedavg(results)


def test_fedavg_refuses_an_overflowing_average() -> None:
    with pytest.raises(AggregationError, match="overflowed"):
        fedavg([r(1, w=[1.5e308]), r(1, w=[1.5e308])])


@pytest.mark.parametrize("beta", [-0.1, 0.5, 0.7, float("nan"), float("inf"), True, "0.1", None])
def test_trimmed_mean_refuses_bad_beta(beta: Any) -> None:
    with pytest.raises(AggregationError, match="beta"):
        trimmed_mean(FIVE, beta)


def test_krum_needs_more_than_2f_plus_2_updates() -> None:
    with pytest.raises(AggregationError, match=r"more than 4 updates \(n > 2f \+ 2\), got 4"):
        krum(LINE[:4], 1, 0)
    krum(LINE, 1, 0)  # n = 5 > 4
    with pytest.raises(AggregationError, match="more than 2"):
        krum(LINE[:2], 0, 0)
    with pytest.raises(AggregationError, match="n > 2f"):
        krum_scores(LINE[:4], 1)


@pytest.mark.parametrize(
    ("num_malicious", "to_keep", "match"),
    [
        (-1, 0, "num_malicious must be at least 0"),
        (1.0, 0, "num_malicious must be an integer"),
        (True, 0, "num_malicious must be an integer"),
        (1, -1, "to_keep must be at least 0"),
        (1, 6, "to_keep=6 is more than the 5 updates"),
        (1, 2.0, "to_keep must be an integer"),
    ],
)
def test_krum_refuses_bad_parameters(num_malicious: Any, to_keep: Any, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        krum(LINE, num_malicious, to_keep)
    with pytest.raises(AggregationError, match=match):
        krum_select(LINE, num_malicious, to_keep)


def test_multi_krum_weighted_refuses_zero_examples_in_the_kept_updates() -> None:
    results = [r(0, w=[0.0]), r(0, w=[1.0]), r(0, w=[2.0]), r(1, w=[3.0]), r(1, w=[10.0])]
    with pytest.raises(AggregationError, match="no examples"):
        krum(results, 1, 2, weighted=True)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1.0], "1 weights for 2 updates"),
        ([1.0, -1.0], "negative"),
        ([1.0, float("nan")], "finite"),
        ([1.0, True], "finite"),
        ([0.0, 0.0], "sum to zero"),
    ],
)
def test_weighted_average_refuses_bad_weights(weights: list[Any], match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        weighted_average([{"w": np.zeros(1)}, {"w": np.ones(1)}], weights)


# --------------------------------------------------------------------------- properties

SHAPES = hnp.array_shapes(min_dims=0, max_dims=2, max_side=3)
FINITE32 = st.floats(-1e3, 1e3, width=32, allow_nan=False, allow_infinity=False)
FINITE64 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False)


@st.composite
def updates(
    draw: st.DrawFn, *, min_size: int = 1, max_size: int = 7, dtype: Any = np.float32
) -> list[tuple[dict[str, np.ndarray], int]]:
    shapes = draw(st.lists(SHAPES, min_size=1, max_size=3))
    n = draw(st.integers(min_size, max_size))
    elements = FINITE32 if dtype == np.float32 else FINITE64
    out = []
    for _ in range(n):
        weights = {
            f"a{i}": draw(hnp.arrays(dtype, shape, elements=elements))
            for i, shape in enumerate(shapes)
        }
        out.append((weights, draw(st.integers(1, 10**6))))
    return out


@given(updates(max_size=1), st.lists(st.integers(1, 10**6), min_size=1, max_size=6))
def test_fedavg_of_identical_updates_is_that_update(
    one: list[tuple[dict[str, np.ndarray], int]], counts: list[int]
) -> None:
    weights = one[0][0]
    assert_weights(fedavg([(weights, n) for n in counts]), weights)


@given(updates(), st.randoms(use_true_random=False))
def test_rules_are_permutation_invariant(results: list[Any], rng: Any) -> None:
    shuffled = list(results)
    rng.shuffle(shuffled)
    assert_weights(median(shuffled), median(results))
    assert_weights(trimmed_mean(shuffled, 0.2), trimmed_mean(results, 0.2))
    a, b = fedavg(shuffled), fedavg(results)
    for name in a:
        scale = max(1.0, float(np.abs(b[name]).max()) if b[name].size else 1.0)
        np.testing.assert_allclose(a[name], b[name], rtol=1e-6, atol=1e-6 * scale)


@given(updates(dtype=np.float64), st.floats(0.0, 0.49))
def test_median_and_trimmed_mean_stay_within_coordinate_min_max(
    results: list[Any], beta: float
) -> None:
    for out in (median(results), trimmed_mean(results, beta)):
        for name, value in out.items():
            stacked = np.stack([w[name] for w, _ in results])
            assert value.dtype == np.float64
            assert (stacked.min(axis=0) <= value).all()
            assert (value <= stacked.max(axis=0)).all()


@given(updates(dtype=np.float64))
def test_trimmed_mean_beta_zero_is_the_unweighted_mean(results: list[Any]) -> None:
    out = trimmed_mean(results, 0.0)
    equal = fedavg([(w, 1) for w, _ in results])
    for name in out:
        expected = np.mean(np.stack([w[name] for w, _ in results]), axis=0)
        np.testing.assert_allclose(out[name], expected, rtol=1e-12, atol=1e-9)
        np.testing.assert_allclose(out[name], equal[name], rtol=1e-12, atol=1e-9)


@given(updates(dtype=np.float32))
def test_float32_stays_float32(results: list[Any]) -> None:
    for out in (fedavg(results), median(results), trimmed_mean(results, 0.1)):
        assert all(a.dtype == np.float32 for a in out.values())
        assert [a.shape for a in out.values()] == [a.shape for a in results[0][0].values()]


@given(
    st.lists(hnp.arrays(np.float64, 6, elements=st.floats(-1, 1)), min_size=4, max_size=4),
    st.integers(0, 4),
    st.integers(0, 3),
    st.sampled_from([1000.0, -1000.0]),
    st.integers(0, 3),
)
def test_krum_never_selects_a_scaled_byzantine_update(
    honest: list[np.ndarray], position: int, victim: int, scale: float, to_keep: int
) -> None:
    assume(np.abs(honest[victim]).max() >= 0.1)
    byzantine = scale * honest[victim]
    vectors = list(honest)
    vectors.insert(position, byzantine)
    results = [({"w": v}, 1) for v in vectors]
    chosen = krum_select(results, 1, to_keep)
    assert position not in chosen
    out = krum(results, 1, to_keep)
    assert np.abs(out["w"]).max() <= 1.0


def test_krum_refuses_distances_that_overflow() -> None:
    results = [r(w=[1e200 * (-1) ** i]) for i in range(5)]
    with pytest.raises(AggregationError, match="overflow"):
        krum(results, 1, 0)
