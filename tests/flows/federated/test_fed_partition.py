"""Client partitions: IID and Dirichlet non-IID splits of real labels (scikit-learn digits)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import load_digits

from flows.errors import DatasetError
from flows.federated.partition import (
    Partition,
    dirichlet_partition,
    iid_partition,
    parse_partition,
    partition,
)

DIGITS_Y = load_digits().target


def _is_partition(parts: list[np.ndarray], n: int) -> bool:
    joined = np.sort(np.concatenate(parts))
    return bool(np.array_equal(joined, np.arange(n)))


@pytest.mark.parametrize("alpha", [0.1, 0.5, 100.0])
def test_dirichlet_is_a_seeded_partition_whose_skew_follows_alpha(alpha: float) -> None:
    parts = dirichlet_partition(DIGITS_Y, 5, alpha, seed=0)
    assert _is_partition(parts, len(DIGITS_Y))
    assert min(len(p) for p in parts) >= 10
    again = dirichlet_partition(DIGITS_Y, 5, alpha, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = dirichlet_partition(DIGITS_Y, 5, alpha, seed=1)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=False))


def test_small_alpha_is_more_skewed_than_large_alpha() -> None:
    def skew(alpha: float) -> float:
        parts = dirichlet_partition(DIGITS_Y, 5, alpha, seed=3)
        # mean over clients of the share of their most common class
        return float(np.mean([np.bincount(DIGITS_Y[p]).max() / len(p) for p in parts]))

    assert skew(0.1) > skew(0.5) > skew(100.0)
    assert skew(100.0) < 0.2  # near IID: ten classes, about a tenth each


@given(n=st.integers(10, 500), clients=st.integers(1, 10), seed=st.integers(0, 2**32 - 1))
def test_iid_parts_are_near_equal_and_cover_everything(n: int, clients: int, seed: int) -> None:
    if n < clients:
        with pytest.raises(DatasetError):
            iid_partition(n, clients, seed)
        return
    parts = iid_partition(n, clients, seed)
    assert _is_partition(parts, n)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_parse_and_dispatch() -> None:
    assert parse_partition("iid") == Partition("iid")
    assert parse_partition("dirichlet:0.5") == Partition("dirichlet", 0.5)
    assert str(parse_partition("dirichlet:0.5")) == "dirichlet:0.5"
    parts = partition("dirichlet:0.5", DIGITS_Y, 5, seed=0)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(parts, dirichlet_partition(DIGITS_Y, 5, 0.5, seed=0), strict=True)
    )
    assert len(partition("iid", DIGITS_Y, 4, seed=0)) == 4


@pytest.mark.parametrize(
    "spec", ["dirichlet", "dirichlet:0", "dirichlet:-1", "dirichlet:nan", "dirichlet:x", "zipf:2",
             "iid:3", ""],
)  # fmt: skip
def test_bad_partition_specs(spec: str) -> None:
    with pytest.raises(DatasetError):
        parse_partition(spec)


def test_impossible_requests_are_clear_errors() -> None:
    with pytest.raises(DatasetError, match="positive integer"):
        dirichlet_partition(DIGITS_Y, 0, 0.5, seed=0)
    with pytest.raises(DatasetError, match="at least 10 each"):
        dirichlet_partition(DIGITS_Y[:30], 5, 0.5, seed=0)
    with pytest.raises(DatasetError, match="1-D"):
        dirichlet_partition(DIGITS_Y.reshape(-1, 1), 5, 0.5, seed=0)
    # two examples per client of one class each: Dirichlet draws can never fill 10 clients
    with pytest.raises(DatasetError, match="draws"):
        dirichlet_partition(np.zeros(100, dtype=np.int64), 10, 0.01, seed=0)
