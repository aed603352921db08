"""Screening client updates: every reason a client update is rejected, and bad configuration."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flows.errors import AggregationError
from flows.federated.validate import (
    ClientUpdate,
    outlier_screen,
    screen,
    update_norm,
    validate_update,
)

f32 = np.float32
GLOBAL: dict[str, np.ndarray] = {
    "w": np.zeros((2, 2), f32),
    "b": np.zeros(2, f32),
    "n": np.array(0, np.int64),
}


def good(delta: float = 0.0) -> dict[str, np.ndarray]:
    return {
        "w": np.full((2, 2), delta, f32),
        "b": np.zeros(2, f32),
        "n": np.array(0, np.int64),
    }


def check(update: Any, num_examples: Any = 10, **kw: Any) -> str | None:
    limits = {"norm_bound": 10.0, "max_examples": 1000} | kw
    return validate_update(GLOBAL, update, num_examples, **limits)


def test_a_good_update_passes() -> None:
    assert check(good(0.5)) is None
    assert check(good(), 1) is None
    assert check(good(), 1000) is None


@pytest.mark.parametrize(
    ("num_examples", "reason"),
    [
        (0, "num_examples 0 is not positive"),
        (-5, "num_examples -5 is not positive"),
        (1001, "claims 1001 examples, more than the cap of 1000"),
        (10**12, "claims 1000000000000 examples, more than the cap of 1000"),
        (3.0, "num_examples 3.0 is not an integer"),
        (True, "num_examples True is not an integer"),
        ("7", "num_examples '7' is not an integer"),
    ],
)
def test_example_counts(num_examples: Any, reason: str) -> None:
    assert check(good(), num_examples) == reason


def test_numpy_integer_counts_are_accepted() -> None:
    assert check(good(), np.int32(7)) is None


def test_names() -> None:
    missing = good()
    del missing["b"]
    assert check(missing) == "missing arrays 'b'"
    extra = good() | {"z": np.zeros(1, f32), "a": np.zeros(1, f32)}
    assert check(extra) == "unexpected arrays 'a', 'z'"
    both = {"w": good()["w"], "n": good()["n"], "x": np.zeros(2, f32)}
    assert check(both) == "missing arrays 'b'; unexpected arrays 'x'"


def test_many_missing_names_are_abbreviated() -> None:
    big = {f"a{i}": np.zeros(1) for i in range(8)}
    reason = validate_update(big, {}, 1, norm_bound=math.inf, max_examples=10)
    assert reason == "missing arrays 'a0', 'a1', 'a2', 'a3', 'a4' and 3 more"


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("w", np.zeros((4,), f32), "array 'w' has shape [4], the global model [2, 2]"),
        ("n", np.zeros((1,), np.int64), "array 'n' has shape [1], the global model []"),
        ("b", np.zeros(2, np.float64), "array 'b' has dtype float64, the global model float32"),
        ("n", np.array(0, np.int32), "array 'n' has dtype int32, the global model int64"),
        ("b", [0.0, 0.0], "array 'b' is a list, not a numpy array"),
        ("b", np.array([np.nan, 1.0], f32), "array 'b' has 1 NaN and 0 infinite values"),
        ("b", np.array([np.inf, -np.inf], f32), "array 'b' has 0 NaN and 2 infinite values"),
    ],
)
def test_arrays(name: str, value: Any, reason: str) -> None:
    update = good()
    update[name] = value
    assert check(update) == reason


def test_not_a_mapping() -> None:
    assert check([np.zeros(1)]) == "update is a list, not arrays by name"


def test_norm_bound_is_inclusive_over_all_arrays() -> None:
    g = {"a": np.zeros(1), "b": np.array([1.0])}
    u = {"a": np.array([3.0]), "b": np.array([5.0])}  # diff (3, 4): norm 5
    assert update_norm(g, u) == 5.0
    assert validate_update(g, u, 1, norm_bound=5.0, max_examples=1) is None
    reason = validate_update(g, u, 1, norm_bound=4.99, max_examples=1)
    assert reason == "update norm 5 exceeds the bound 4.99"
    assert validate_update(g, u, 1, norm_bound=math.inf, max_examples=1) is None


def test_norm_of_integer_arrays_counts_too() -> None:
    assert check(good() | {"n": np.array(13, np.int64)}) == "update norm 13 exceeds the bound 10"


def test_a_norm_that_overflows_float64_fails_any_finite_bound() -> None:
    g = {"w": np.array([-1e308, 0.0])}
    u = {"w": np.array([1e308, 1e308])}
    assert update_norm(g, u) == math.inf
    reason = validate_update(g, u, 1, norm_bound=1e300, max_examples=1)
    assert reason == "update norm inf exceeds the bound 1e+300"


def test_large_but_finite_norm_does_not_overflow() -> None:
    g = {"w": np.zeros(2)}
    u = {"w": np.array([3e200, 4e200])}
    assert update_norm(g, u) == pytest.approx(5e200)


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        ({"norm_bound": 0.0}, "norm_bound must be a positive number"),
        ({"norm_bound": -1.0}, "norm_bound must be a positive number"),
        ({"norm_bound": float("nan")}, "norm_bound must be a positive number"),
        ({"norm_bound": True}, "norm_bound must be a positive number"),
        ({"max_examples": 0}, "max_examples must be at least 1"),
        ({"max_examples": 1.5}, "max_examples must be an integer"),
    ],
)
def test_bad_limits_are_the_coordinators_error(limits: dict[str, Any], match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        check(good(), **limits)
    with pytest.raises(AggregationError, match=match):
        screen(GLOBAL, [], **({"norm_bound": 1.0, "max_examples": 1} | limits))


@pytest.mark.parametrize(
    ("global_weights", "match"),
    [
        ({}, "no arrays"),
        ({"w": np.array([np.nan])}, "global array 'w' has NaN"),
        ({"w": np.array([True])}, "unsupported dtype bool"),
        ({3: np.zeros(1)}, "non-string"),
    ],
)
def test_a_bad_global_model_is_the_coordinators_error(global_weights: Any, match: str) -> None:
    with pytest.raises(AggregationError, match=match):
        validate_update(global_weights, {}, 1, norm_bound=1.0, max_examples=1)
    with pytest.raises(AggregationError, match=match):
        screen(global_weights, [], norm_bound=1.0, max_examples=1)


def test_screen_splits_and_records_reasons_in_order() -> None:
    results: list[Any] = [
        ("a", good(0.5), 10),
        ("b", good(np.nan), 10),
        ("c", good(), 5000),
        ("a", good(0.1), 10),
        ("d", good(9.0), 10),  # norm sqrt(4·81) = 18
        ("e", good(), 3),
        ("f", good()),
    ]
    accepted, rejected = screen(GLOBAL, results, norm_bound=10.0, max_examples=1000)
    assert [u.client_id for u in accepted] == ["a", "e"]
    assert accepted[1] == ClientUpdate("e", results[5][1], 3)
    assert accepted[0].weights is results[0][1]
    assert rejected == [
        ("b", "array 'w' has 4 NaN and 0 infinite values"),
        ("c", "claims 5000 examples, more than the cap of 1000"),
        ("a", "duplicate update from this client in one round"),
        ("d", "update norm 18 exceeds the bound 10"),
        ("#6", "not a (client_id, weights, num_examples) triple"),
    ]


def test_screen_of_nothing() -> None:
    assert screen(GLOBAL, [], norm_bound=1.0, max_examples=1) == ([], [])


@given(
    hnp.arrays(np.float64, st.integers(0, 5), elements=st.floats(-1e6, 1e6)),
    hnp.arrays(np.float32, (2, 2), elements=st.floats(-1e3, 1e3, width=32)),
)
def test_update_norm_is_the_l2_norm_of_the_concatenated_difference(
    a: np.ndarray, b: np.ndarray
) -> None:
    g = {"a": np.zeros_like(a), "b": np.ones_like(b)}
    u = {"a": a, "b": b}
    flat = np.concatenate([a.ravel(), (b.astype(np.float64) - 1.0).ravel()])
    # math.hypot neither underflows nor overflows the squares (numpy's norm underflows)
    assert update_norm(g, u) == pytest.approx(math.hypot(*flat.tolist()), rel=1e-12)


def _shifted(w: list[float], b: list[float]) -> dict[str, np.ndarray]:
    return {"w": np.array(w, f32).reshape(2, 2), "b": np.array(b, f32), "n": np.array(0, np.int64)}


def test_outlier_screen_by_direction_rejects_an_update_pointing_away_from_the_median() -> None:
    honest = [
        _shifted([1, 1, 0, 0], [0.5, 0]),
        _shifted([1, 0.5, 0.2, 0], [0.4, 0.1]),
        _shifted([0.8, 1.2, 0, 0.1], [0.6, 0]),
        _shifted([0.2, 1, 0.1, 0], [0.1, 0]),
    ]
    flipped = {k: np.asarray(-v) for k, v in honest[0].items()}  # an honest update, sign-flipped
    results = [(f"c{i}", u, 10) for i, u in enumerate(honest)] + [("flip", flipped, 10)]
    kept, rejected = outlier_screen(GLOBAL, results, min_cosine=0.0)
    assert [c for c, _, _ in kept] == ["c0", "c1", "c2", "c3"]
    assert len(rejected) == 1
    client, reason = rejected[0]
    assert client == "flip"
    assert reason.startswith("points away from the round's median update (cosine -0.")
    # the same update scaled x1000 points the right way: the direction screen keeps it
    scaled = {k: np.asarray(1000 * v) for k, v in honest[1].items()}
    kept, rejected = outlier_screen(GLOBAL, [*results[:4], ("big", scaled, 10)], min_cosine=0.0)
    assert not rejected
    # a stricter threshold also drops the honest update least aligned with the median
    _, strict = outlier_screen(GLOBAL, results, min_cosine=0.9)
    assert {c for c, _ in strict} >= {"flip", "c3"}


def test_outlier_screen_by_direction_needs_three_well_formed_updates_and_a_good_threshold() -> None:
    up, down = _shifted([1, 1, 0, 0], [0, 0]), _shifted([-1, -1, 0, 0], [0, 0])
    kept, rejected = outlier_screen(GLOBAL, [("a", up, 1), ("b", down, 1)], min_cosine=0.0)
    assert len(kept) == 2 and not rejected  # noqa: PT018 - two updates: no median to trust
    broken = {"w": np.full((2, 2), np.nan, f32), "b": np.zeros(2, f32), "n": np.array(0)}
    kept, rejected = outlier_screen(
        GLOBAL, [("a", up, 1), ("b", up, 1), ("x", broken, 1), ("c", down, 1)], min_cosine=0.0
    )
    assert [c for c, _, _ in kept] == ["a", "b", "x"]  # the NaN one is left for screen()
    assert [c for c, _ in rejected] == ["c"]
    zero = [(c, good(), 1) for c in "abc"]  # a zero median update: nothing to compare with
    assert outlier_screen(GLOBAL, zero, min_cosine=0.0) == (zero, [])
    for bad in (1.5, -2, math.nan, True, "0"):
        with pytest.raises(AggregationError, match="min_cosine"):
            outlier_screen(GLOBAL, zero, min_cosine=bad)  # type: ignore[arg-type]


def test_outlier_screen_by_norm_rejects_an_update_far_longer_than_the_median() -> None:
    honest = [
        _shifted([1, 1, 0, 0], [0.5, 0]),
        _shifted([1, 0.5, 0.2, 0], [0.4, 0.1]),
        _shifted([0.8, 1.2, 0, 0.1], [0.6, 0]),
        _shifted([0.2, 1, 0.1, 0], [0.1, 0]),
    ]
    results = [(f"c{i}", u, 10) for i, u in enumerate(honest)]
    median = sorted(update_norm(GLOBAL, u) for u in honest)[2]  # the big one is the 5th
    for factor, caught in ((1000.0, True), (-50.0, True), (3.0, False)):
        big = {k: np.asarray(factor * v, v.dtype) for k, v in honest[1].items()}
        kept, rejected = outlier_screen(GLOBAL, [*results, ("big", big, 10)], max_norm_ratio=10)
        assert [c for c, _ in rejected] == (["big"] if caught else [])
        assert len(kept) == 5 - caught
        if caught:
            norm = update_norm(GLOBAL, big)
            assert rejected[0][1] == (
                f"update norm {norm:.4g} is more than 10x the round's median norm {median:.4g}"
            )
    # Both screens at once: the flip by direction, the long one by norm.
    flipped = {k: np.asarray(-v) for k, v in honest[0].items()}
    big = {k: np.asarray(1000 * v) for k, v in honest[1].items()}
    _, rejected = outlier_screen(
        GLOBAL,
        [*results, ("flip", flipped, 10), ("big", big, 10)],
        min_cosine=0.0,
        max_norm_ratio=10,
    )
    assert [c for c, _ in rejected] == ["flip", "big"]
    assert rejected[1][1].startswith("update norm")
    # Most updates zero: no length to compare with, nothing rejected by length.
    zeros = [(c, good(), 1) for c in "abc"] + [("d", good(0.5), 1)]
    assert outlier_screen(GLOBAL, zeros, max_norm_ratio=10) == (zeros, [])
    # Two updates: no median to trust; ratios below 1 would reject honest updates.
    assert outlier_screen(GLOBAL, results[:2], max_norm_ratio=1) == (results[:2], [])
    for bad in (0.5, math.nan, True, "10"):
        with pytest.raises(AggregationError, match="max_norm_ratio"):
            outlier_screen(GLOBAL, results, max_norm_ratio=bad)  # type: ignore[arg-type]


def test_screen_clamps_each_count_to_ten_medians_and_checks_the_ratio() -> None:
    from flows.federated.validate import DEFAULT_MAX_WEIGHT_RATIO

    assert DEFAULT_MAX_WEIGHT_RATIO == 10
    results = [(f"c{k}", good(), n) for k, n in enumerate([10, 20, 30, 10**6])]
    accepted, rejected = screen(GLOBAL, results, norm_bound=math.inf, max_examples=10**7)
    assert rejected == []
    assert [u.num_examples for u in accepted] == [10, 20, 30, 250]  # median 25
    wide, _ = screen(
        GLOBAL, results, norm_bound=math.inf, max_examples=10**7, max_weight_ratio=math.inf
    )
    assert [u.num_examples for u in wide] == [10, 20, 30, 10**6]
    for bad in (0.5, True, "10", math.nan):
        with pytest.raises(AggregationError, match="max_weight_ratio must be a number >= 1"):
            screen(GLOBAL, results, norm_bound=1.0, max_examples=10, max_weight_ratio=bad)
