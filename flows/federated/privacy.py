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

The same accountant serves example-level DP-SGD on each client (:mod:`flows.federated.dpsgd`),
where every step is the *sampled* Gaussian mechanism: each example joins a batch with
probability ``q`` (Poisson sampling). Its RDP at integer order α is ``log A_α / (α − 1)`` with
``A_α = Σ_k C(α, k) (1 − q)^(α−k) q^k exp((k² − k) / (2σ²))`` (Mironov, Talwar & Zhang 2019,
Sec. 3.3; the form TensorFlow Privacy and Opacus compute for integer orders); ``q = 1`` gives
back ``α / (2σ²)``. With ``q < 1`` only integer orders are searched.

The noise is drawn from a generator seeded afresh from the operating system's CSPRNG
(:func:`noise_rng`) at every draw; the seed is never stored, logged, returned or put in a
receipt, parameter or cache key. A recorded seed would let anyone who reads the receipts
regenerate the noise and subtract it. So a DP result is not bit-for-bit reproducible (a cache
hit returns the stored result; a recomputation draws new noise), and reports say so with
:data:`NOISE`. Everything else (sampling, shuffling, initialisation) stays seeded.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from flows.errors import AggregationError

__all__ = [
    "DEFAULT_ORDERS",
    "NOISE",
    "clip_update",
    "epsilon",
    "noise_for_epsilon",
    "noise_rng",
    "private_mean",
    "rdp",
]

Array = np.ndarray[Any, Any]
#: Rényi orders searched when converting to (ε, δ): fine near 1, coarse far out.
DEFAULT_ORDERS: tuple[float, ...] = (
    *(1 + x / 10 for x in range(1, 100)),
    *range(11, 64),
    64.0,
    128.0,
    256.0,
    512.0,
    1024.0,
)

#: What reports say of the noise's source: it cannot be regenerated from anything recorded.
NOISE = "os-csprng, not reproducible"


def noise_rng() -> np.random.Generator:
    """A generator seeded with 128 fresh bits from the OS CSPRNG; the seed is kept nowhere."""
    return np.random.default_rng(secrets.randbits(128))


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
) -> dict[str, Array]:
    """The new global weights: base + (Σ clipped Δ_k + N(0, (σ·clip)²)) / n, in float64; the
    noise from :func:`noise_rng` (never reproducible, by design)."""
    if not updates:
        raise AggregationError("no updates to aggregate")
    sigma = _positive(noise_multiplier, "noise_multiplier") * _positive(clip, "clip")
    n = len(updates)
    total = {k: np.zeros(np.shape(v), np.float64) for k, v in base.items()}
    for update in updates:
        clipped = clip_update(update, base, clip)
        for k in total:
            total[k] += clipped[k] - np.asarray(base[k], np.float64)
    rng = noise_rng()
    return {
        k: np.asarray(base[k], np.float64) + (t + rng.normal(0.0, sigma, size=t.shape)) / n
        for k, t in total.items()
    }


def rdp(
    noise_multiplier: float,
    steps: int,
    sample_rate: float = 1.0,
    orders: Sequence[float] = DEFAULT_ORDERS,
) -> list[tuple[float, float]]:
    """``(order, RDP)`` of ``steps`` compositions of the (sampled) Gaussian mechanism; orders
    that are not integers are left out when ``sample_rate < 1``."""
    sigma = _positive(noise_multiplier, "noise_multiplier")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise AggregationError(f"the number of steps must be a positive integer, got {steps!r}")
    q = _positive(sample_rate, "sample_rate")
    if q > 1:
        raise AggregationError(f"sample_rate must be at most 1, got {sample_rate}")
    if q == 1:
        return [(a, steps * a / (2 * sigma * sigma)) for a in orders if a > 1]
    out = []
    for a in orders:
        if a <= 1 or a != int(a):
            continue
        k = np.arange(int(a) + 1, dtype=np.float64)
        # log C(α, k) as a running sum of log((α − k + 1) / k)
        log_binom = np.concatenate(([0.0], np.cumsum(np.log((a - k[1:] + 1) / k[1:]))))
        terms = (
            log_binom
            + (a - k) * math.log1p(-q)
            + k * math.log(q)
            + (k * k - k) / (2 * sigma * sigma)
        )
        top = float(terms.max())
        log_a = top + math.log(float(np.exp(terms - top).sum()))
        out.append((float(a), steps * log_a / (a - 1)))
    return out


def epsilon(
    noise_multiplier: float,
    rounds: int,
    delta: float,
    orders: Sequence[float] = DEFAULT_ORDERS,
    sample_rate: float = 1.0,
) -> float:
    """ε of ``rounds`` Gaussian-mechanism rounds (or DP-SGD steps, each example sampled with
    ``sample_rate``) at ``noise_multiplier``, for ``delta``."""
    if not (isinstance(delta, int | float) and 0 < delta < 1):
        raise AggregationError(f"delta must be in (0, 1), got {delta!r}")
    curve = rdp(noise_multiplier, rounds, sample_rate, orders)
    return min(r + math.log(1 / delta) / (a - 1) for a, r in curve)


def noise_for_epsilon(target: float, rounds: int, delta: float, sample_rate: float = 1.0) -> float:
    """The smallest noise multiplier (to 1e-4) whose ``rounds`` rounds (DP-SGD steps at
    ``sample_rate``) spend at most ``target``."""
    target = _positive(target, "target epsilon")
    low, high = 1e-3, 1e4
    if epsilon(high, rounds, delta, sample_rate=sample_rate) > target:
        raise AggregationError(f"no noise multiplier up to {high:g} reaches epsilon {target:g}")
    while high - low > 1e-4:
        mid = (low + high) / 2
        if epsilon(mid, rounds, delta, sample_rate=sample_rate) > target:
            low = mid
        else:
            high = mid
    return high
