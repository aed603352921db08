"""Differential privacy: clipping, the noisy mean, and the RDP accountant against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from flows.errors import AggregationError
from flows.federated.privacy import (
    clip_update,
    epsilon,
    noise_for_epsilon,
    private_mean,
)

BASE = {"w": np.zeros(4, np.float32), "n": np.array([7], np.int64)}


def _norm(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    return math.sqrt(sum(float(np.sum((a[k] - b[k]) ** 2.0)) for k in a))


def test_clipping_scales_large_updates_only() -> None:
    big = {"w": np.array([3.0, 4.0, 0, 0]), "n": np.array([7])}
    clipped = clip_update(big, BASE, 1.0)
    np.testing.assert_allclose(clipped["w"], [0.6, 0.8, 0, 0])
    small = {"w": np.array([0.3, 0.4, 0, 0]), "n": np.array([7])}
    np.testing.assert_allclose(clip_update(small, BASE, 1.0)["w"], small["w"])
    with pytest.raises(AggregationError, match="not finite"):
        clip_update({"w": np.array([np.inf, 0, 0, 0]), "n": np.array([7])}, BASE, 1.0)
    with pytest.raises(AggregationError, match="clip"):
        clip_update(big, BASE, 0.0)


@given(st.lists(st.floats(-1e3, 1e3), min_size=4, max_size=4), st.floats(0.01, 10))
def test_a_clipped_update_is_never_longer_than_clip(values: list[float], clip: float) -> None:
    update = {"w": np.array(values), "n": np.array([7])}
    assert _norm(clip_update(update, BASE, clip), BASE) <= clip * (1 + 1e-9)


def test_private_mean_is_the_clipped_mean_plus_noise_of_the_right_scale() -> None:
    ups = [{"w": np.full(4, 0.1 * k), "n": np.array([7])} for k in range(1, 6)]
    rng = np.random.default_rng(0)
    draws = np.stack(
        [private_mean(BASE, ups, clip=10.0, noise_multiplier=1.0, rng=rng)["w"]
         for _ in range(4000)]
    )  # fmt: skip
    np.testing.assert_allclose(draws.mean(axis=0), np.full(4, 0.3), atol=0.13)  # 4 SE
    np.testing.assert_allclose(draws.std(axis=0), np.full(4, 10.0 / 5), rtol=0.05)
    with pytest.raises(AggregationError, match="no updates"):
        private_mean(BASE, [], clip=1.0, noise_multiplier=1.0, rng=rng)


def test_epsilon_matches_the_closed_form_and_behaves() -> None:
    # min over alpha of T*alpha/(2 s^2) + log(1/d)/(alpha-1) has the closed-form optimum
    # alpha* = 1 + s*sqrt(2 log(1/d) / T): eps = T/(2 s^2) + s^-1 sqrt(2 T log(1/d)).
    s, t, d = 4.0, 20, 1e-5
    closed = t / (2 * s * s) + math.sqrt(2 * t * math.log(1 / d)) / s
    assert epsilon(s, t, d) == pytest.approx(closed, rel=0.01)
    assert epsilon(s, t, d) >= closed - 1e-9  # a grid search can only be above the optimum
    assert epsilon(2 * s, t, d) < epsilon(s, t, d)
    assert epsilon(s, 2 * t, d) > epsilon(s, t, d)
    assert epsilon(s, t, 1e-3) < epsilon(s, t, d)
    sigma = noise_for_epsilon(8.0, 20, 1e-5)
    assert epsilon(sigma, 20, 1e-5) <= 8.0
    assert epsilon(sigma * 0.99, 20, 1e-5) > 8.0
    for bad in [(0.0, 20, d), (s, 0, d), (s, t, 0.0), (s, t, 1.0), (math.nan, t, d)]:
        with pytest.raises(AggregationError):
            epsilon(*bad)
