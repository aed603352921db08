"""Differential privacy for federated rounds: clip each client's update, add Gaussian noise to
their sum, and account for the privacy spent with Rényi DP.

Central DP with every client participating in every round (as in this project's simulation):
each client's update ``Δ_k = w_k − w_global`` is scaled to an L2 norm of at most ``clip``; the
server adds ``N(0, (noise_multiplier · clip)²)`` to each coordinate of ``Σ Δ_k`` and divides
by the number of clients. One round is the Gaussian mechanism with L2 sensitivity ``clip``
(adding or removing one client's contribution), whose RDP at order α is ``α / (2 σ²)`` with
``σ = noise_multiplier`` (Mironov 2017, Prop. 7); RDP composes additively over rounds, and
converts to (ε, δ)-DP by ``ε = min_α [RDP(α) + log(1/δ) / (α − 1)]`` (Mironov 2017, Prop. 3).
Client sampling (privacy amplification) is not modelled: the bound is for full participation
and therefore conservative when fewer clients take part.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flows.errors import AggregationError

__all__ = ["DEFAULT_ORDERS", "clip_update", "epsilon", "noise_for_epsilon", "private_mean"]

Array = np.ndarray[Any, Any]
#: Rényi orders searched when converting to (ε, δ): fine near 1, coarse far out.
DEFAULT_ORDERS: tuple[float, ...] = (
    *(1 + x / 10 for x in range(1, 100)), *range(11, 64), 64.0, 128.0, 256.0, 512.0, 1024.0,
)  # fmt: skip


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise AggregationError(f"{what} must be a finite number, got {value!r}")
    if value <= 0:
        raise AggregationError(f"{what} must be positive, got {value}")
    return float(value)


def clip_update(
    update: Mapping[str, Array], base: Mapping[str, Array], clip: float
) -> dict[str, Array]:
    """``base + Δ`` with ``Δ = update − base`` scaled to an L2 norm (over all arrays) ≤ ``clip``;
    float64. Integer arrays are taken from ``base`` (they carry no gradient signal)."""
    clip = _positive(clip, "clip")
    delta = {k: np.asarray(update[k], np.float64) - np.asarray(base[k], np.float64) for k in base}
    norm = math.sqrt(sum(float(np.sum(d * d)) for d in delta.values()))
    if not math.isfinite(norm):
        raise AggregationError("the update is not finite: it cannot be clipped")
    factor = min(1.0, clip / norm) if norm > 0 else 1.0
    return {k: np.asarray(base[k], np.float64) + factor * d for k, d in delta.items()}


def private_mean(
    base: Mapping[str, Array],
    updates: Sequence[Mapping[str, Array]],
    *,
    clip: float,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> dict[str, Array]:
    """The new global weights: base + (Σ clipped Δ_k + N(0, (σ·clip)²)) / n, in float64."""
    if not updates:
        raise AggregationError("no updates to aggregate")
    sigma = _positive(noise_multiplier, "noise_multiplier") * _positive(clip, "clip")
    n = len(updates)
    total = {k: np.zeros(np.shape(v), np.float64) for k, v in base.items()}
    for update in updates:
        clipped = clip_update(update, base, clip)
        for k in total:
            total[k] += clipped[k] - np.asarray(base[k], np.float64)
    return {
        k: np.asarray(base[k], np.float64) + (t + rng.normal(0.0, sigma, size=t.shape)) / n
        for k, t in total.items()
    }


def epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> float:
    """ε of ``rounds`` Gaussian-mechanism rounds at ``noise_multiplier``, for ``delta``."""
    sigma = _positive(noise_multiplier, "noise_multiplier")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise AggregationError(f"rounds must be a positive integer, got {rounds!r}")
    if not (0 < delta < 1):
        raise AggregationError(f"delta must be in (0, 1), got {delta!r}")
    return min(
        rounds * a / (2 * sigma * sigma) + math.log(1 / delta) / (a - 1) for a in orders if a > 1
    )


def noise_for_epsilon(target: float, rounds: int, delta: float) -> float:
    """The smallest noise multiplier (to 1e-4) whose ``rounds`` rounds spend at most ``target``."""
    target = _positive(target, "target epsilon")
    low, high = 1e-3, 1e4
    if epsilon(high, rounds, delta) > target:
        raise AggregationError(f"no noise multiplier up to {high:g} reaches epsilon {target:g}")
    while high - low > 1e-4:
        mid = (low + high) / 2
        if epsilon(mid, rounds, delta) > target:
            low = mid
        else:
            high = mid
    return high
