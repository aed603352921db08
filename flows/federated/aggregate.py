"""Aggregation rules as pure functions: FedAvg, coordinate-wise median, trimmed mean, Krum.

Every rule takes ``results: list[tuple[dict[str, numpy.ndarray], int]]`` (one client's weights
by name, and the number of examples it trained on) and returns ``dict[str, numpy.ndarray]``
with the names in the order of the first update. The definitions are the published ones; where
Flower (``flwr/server/strategy/aggregate.py``) differs, the function says how.

Input rules, the same for every function (a break raises
:class:`~flows.errors.AggregationError`): at least one update; every update has the same names,
and for each name the same shape and dtype; only integer and floating arrays (no bool, complex
or object arrays); floating values all finite (NaN or inf is refused: screening with
:mod:`flows.federated.validate` rejects such updates before they get here).

Dtypes: arithmetic is done in float64. A floating input comes back in its own dtype (float32
stays float32). An average of integers is in general not an integer, so an integer input comes
back as float64 rather than silently truncated (Flower and numpy do the same); strategies cast
the aggregate back to the global model's dtypes with :func:`cast_like`, which rounds counters
to the nearest integer. Plain Krum *selects* one update, so it returns that update's arrays
unchanged, integer dtypes included.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from flows.errors import AggregationError

__all__ = [
    "Array",
    "Result",
    "Weights",
    "cast_like",
    "fedavg",
    "krum",
    "krum_scores",
    "krum_select",
    "median",
    "trimmed_mean",
    "weighted_average",
]

Array: TypeAlias = npt.NDArray[Any]
"""One named array of a model."""
Weights: TypeAlias = dict[str, Array]
"""A model's (or an update's) arrays by name."""
Result: TypeAlias = tuple[Mapping[str, Array], int]
"""One client's result: its weights by name and the number of examples it trained on."""

_F64 = np.float64


# --------------------------------------------------------------------------- input checks


def _check_updates(updates: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[Weights]]:
    """The names (in the first update's order) and the updates as ndarrays, or an error."""
    if len(updates) == 0:
        raise AggregationError("no updates to aggregate")
    names = list(updates[0])
    if not names:
        raise AggregationError("update 0 has no arrays")
    for name in names:
        if not isinstance(name, str):
            raise AggregationError(f"update 0 has a non-string array name {name!r}")
    expected = set(names)
    spec: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    checked: list[Weights] = []
    for i, update in enumerate(updates):
        if not isinstance(update, Mapping):
            raise AggregationError(f"update {i} is a {type(update).__name__}, not arrays by name")
        if set(update) != expected:
            missing = sorted(map(str, expected - set(update)))
            extra = sorted(map(str, set(update) - expected))
            raise AggregationError(
                f"update {i} has different array names than update 0 "
                f"(missing {missing}, unexpected {extra})"
            )
        arrays: Weights = {}
        for name in names:
            a = np.asarray(update[name])
            if a.dtype.kind not in "fiu":
                raise AggregationError(
                    f"update {i}: array {name!r} has dtype {a.dtype}; only integer and "
                    "floating arrays can be aggregated"
                )
            if i == 0:
                spec[name] = (a.shape, a.dtype)
            elif (a.shape, a.dtype) != spec[name]:
                shape0, dtype0 = spec[name]
                raise AggregationError(
                    f"update {i}: array {name!r} is {a.dtype}{list(a.shape)}, "
                    f"update 0 has {dtype0}{list(shape0)}"
                )
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise AggregationError(f"update {i}: array {name!r} has NaN or infinite values")
            arrays[name] = a
        checked.append(arrays)
    return names, checked


def _split(results: Sequence[Result]) -> tuple[list[Mapping[str, Any]], list[Any]]:
    updates: list[Mapping[str, Any]] = []
    counts: list[Any] = []
    for i, item in enumerate(results):
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise AggregationError(f"result {i} is not a (weights, num_examples) pair")
        updates.append(item[0])
        counts.append(item[1])
    return updates, counts


def _check_counts(counts: Sequence[Any]) -> list[int]:
    out: list[int] = []
    for i, n in enumerate(counts):
        if isinstance(n, bool) or not isinstance(n, numbers.Integral):
            raise AggregationError(f"update {i}: num_examples {n!r} is not an integer")
        if n < 0:
            raise AggregationError(f"update {i}: num_examples {n} is negative")
        out.append(int(n))
    if sum(out) <= 0:
        raise AggregationError("the updates report no examples in total; cannot weight them")
    return out


def _check_int(value: Any, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise AggregationError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise AggregationError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


# --------------------------------------------------------------------------- helpers


def _stack(arrays: Sequence[Weights], name: str) -> npt.NDArray[np.float64]:
    """The arrays named ``name``, stacked along a new first axis, as float64."""
    return np.stack([a[name] for a in arrays]).astype(_F64, copy=False)


def _finish(name: str, value: npt.NDArray[np.float64], dtype: np.dtype[Any]) -> Array:
    """``value`` in ``dtype`` if that is floating (else float64), refusing overflow."""
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is checked just below
        out = np.asarray(value.astype(dtype) if dtype.kind == "f" else value.astype(_F64))
    if not np.isfinite(out).all():
        raise AggregationError(f"aggregating {name!r} overflowed {out.dtype}")
    return out


def _weighted(names: list[str], arrays: list[Weights], weights: Sequence[float]) -> Weights:
    w = np.asarray(weights, dtype=_F64)
    total = float(w.sum())
    out: Weights = {}
    for name in names:
        stacked = _stack(arrays, name)
        with np.errstate(over="ignore", invalid="ignore"):  # _finish refuses inf
            value = np.tensordot(w, stacked, axes=1) / total
        out[name] = _finish(name, np.asarray(value), arrays[0][name].dtype)
    return out


def cast_like(reference: Mapping[str, Array], weights: Mapping[str, Array]) -> Weights:
    """``weights`` in the names, shapes and dtypes of ``reference`` (the global model).

    Floating arrays are cast to the reference's precision; integer arrays (counters such as
    BatchNorm's ``num_batches_tracked``) are rounded half to even and must fit the dtype. The
    result has the reference's name order. Non-finite results raise
    :class:`~flows.errors.AggregationError`: a model with NaN in it never leaves a strategy.
    """
    if set(reference) != set(weights):
        raise AggregationError(
            f"aggregate has names {sorted(weights)}, the global model {sorted(reference)}"
        )
    out: Weights = {}
    for name, ref in reference.items():
        ref = np.asarray(ref)
        a = np.asarray(weights[name])
        if a.shape != ref.shape:
            raise AggregationError(
                f"aggregate {name!r} has shape {list(a.shape)}, the global model {list(ref.shape)}"
            )
        if a.dtype.kind not in "fiu":
            raise AggregationError(f"aggregate {name!r} has unsupported dtype {a.dtype}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise AggregationError(f"aggregate {name!r} has NaN or infinite values")
        if ref.dtype.kind == "f":
            with np.errstate(over="ignore"):  # checked just below
                b = np.asarray(a.astype(ref.dtype))
            if not np.isfinite(b).all():
                raise AggregationError(f"aggregate {name!r} overflows {ref.dtype}")
        elif ref.dtype.kind in "iu":
            r = np.rint(a.astype(_F64))
            info = np.iinfo(ref.dtype)
            if r.size and (r.min() < info.min or r.max() > info.max):
                raise AggregationError(f"aggregate {name!r} does not fit {ref.dtype}")
            b = np.asarray(r.astype(ref.dtype))
        else:
            raise AggregationError(f"global array {name!r} has unsupported dtype {ref.dtype}")
        out[name] = b
    return out


# --------------------------------------------------------------------------- the rules


def weighted_average(updates: Sequence[Mapping[str, Array]], weights: Sequence[float]) -> Weights:
    """Σᵢ wᵢ·xᵢ / Σᵢ wᵢ for every array, computed in float64.

    ``weights`` are finite and non-negative with a positive sum, one per update. The dtype rule
    of the module applies (floating stays, integer becomes float64).
    """
    names, arrays = _check_updates(updates)
    if len(weights) != len(arrays):
        raise AggregationError(f"{len(weights)} weights for {len(arrays)} updates")
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
            raise AggregationError(f"weight {i} is {w!r}, not a finite number")
        if w < 0:
            raise AggregationError(f"weight {i} is negative ({w})")
    if not math.fsum(float(w) for w in weights) > 0:
        raise AggregationError("the weights sum to zero")
    return _weighted(names, arrays, weights)


def fedavg(results: Sequence[Result]) -> Weights:
    """FedAvg (McMahan et al. 2017): the mean of the updates weighted by their example counts.

    ``Σᵢ nᵢ·xᵢ / Σᵢ nᵢ``, as Flower's ``aggregate``. Counts are integers ≥ 0 (a client with 0
    examples has no weight) with a positive total.
    """
    updates, counts = _split(results)
    names, arrays = _check_updates(updates)
    return _weighted(names, arrays, _check_counts(counts))


def median(results: Sequence[Result]) -> Weights:
    """Coordinate-wise median (Yin et al. 2018), as Flower's ``aggregate_median``.

    Example counts are ignored. With an even number of updates a coordinate's median is the
    mean of its two middle values (``numpy.median``).
    """
    updates, _ = _split(results)
    names, arrays = _check_updates(updates)
    return {
        name: _finish(name, np.median(_stack(arrays, name), axis=0), arrays[0][name].dtype)
        for name in names
    }


def _trimmed(names: list[str], arrays: list[Weights], beta: float) -> Weights:
    n = len(arrays)
    cut = int(beta * n)
    out: Weights = {}
    for name in names:
        kept = np.sort(_stack(arrays, name), axis=0)[cut : n - cut]
        # Clipped to the kept range: float64 rounding of the mean can step one ulp outside it.
        mean = np.clip(kept.mean(axis=0), kept[0], kept[-1])
        out[name] = _finish(name, mean, arrays[0][name].dtype)
    return out


def trimmed_mean(results: Sequence[Result], beta: float) -> Weights:
    """Coordinate-wise β-trimmed mean (Yin et al. 2018).

    For every coordinate, drop the ``k = floor(beta · n)`` largest and the ``k`` smallest of the
    ``n`` values and average the remaining ``n − 2k`` (unweighted; example counts are ignored).
    ``beta`` is the fraction cut at *each* end, ``0 ≤ beta < 0.5``, so at least one value is
    always left; ``beta = 0`` is the plain unweighted mean.

    This matches Flower's ``aggregate_trimmed_avg`` / ``_trim_mean`` (and
    ``scipy.stats.trim_mean``): the cut is ``int(beta * n)`` computed in floating point. Flower
    does not check ``beta``; here ``beta ≥ 0.5`` (which would leave nothing, or the median at
    best) is an error.
    """
    if (
        isinstance(beta, bool)
        or not isinstance(beta, numbers.Real)
        or not math.isfinite(beta)
        or not 0 <= beta < 0.5
    ):
        raise AggregationError(f"beta must be a number in [0, 0.5), got {beta!r}")
    updates, _ = _split(results)
    names, arrays = _check_updates(updates)
    return _trimmed(names, arrays, float(beta))


def _krum_scores(names: list[str], arrays: list[Weights], num_malicious: int) -> Array:
    n = len(arrays)
    if n <= 2 * num_malicious + 2:
        raise AggregationError(
            f"Krum tolerating {num_malicious} Byzantine updates needs more than "
            f"{2 * num_malicious + 2} updates (n > 2f + 2), got {n}"
        )
    flat = np.stack(
        [np.concatenate([a[name].astype(_F64).ravel() for name in names]) for a in arrays]
    )
    dist = np.empty((n, n), dtype=_F64)
    with np.errstate(over="ignore", invalid="ignore"):  # an infinite score is refused below
        for i in range(n):
            diff = flat - flat[i]
            dist[i] = np.einsum("ij,ij->i", diff, diff)
    closest = n - num_malicious - 2
    scores = np.array([np.sort(np.delete(dist[i], i))[:closest].sum() for i in range(n)])
    if not np.isfinite(scores).all():
        raise AggregationError("Krum distances overflow float64")
    return scores


def krum_scores(results: Sequence[Result], num_malicious: int) -> Array:
    """Krum scores (Blanchard et al. 2017), lowest best.

    The score of update ``i`` is the sum of the squared Euclidean distances (over all arrays,
    flattened) to its ``n − f − 2`` nearest other updates, where ``f = num_malicious``. The
    rule needs ``n > 2f + 2``; Flower's ``aggregate_krum`` does not check this and uses
    ``max(1, n − f − 2)`` neighbours instead.
    """
    f = _check_int(num_malicious, "num_malicious", minimum=0)
    updates, _ = _split(results)
    names, arrays = _check_updates(updates)
    return _krum_scores(names, arrays, f)


def _select(scores: Array, to_keep: int) -> list[int]:
    order = np.argsort(scores, kind="stable")
    return [int(i) for i in order[: max(1, to_keep)]]


def krum_select(results: Sequence[Result], num_malicious: int, to_keep: int) -> list[int]:
    """Indices of the updates :func:`krum` keeps, best (lowest score) first.

    One index for ``to_keep = 0`` (plain Krum), else ``to_keep`` of them. Ties go to the lower
    index, as ``numpy.argmin`` does for plain Krum in Flower.
    """
    f = _check_int(num_malicious, "num_malicious", minimum=0)
    k = _check_int(to_keep, "to_keep", minimum=0)
    updates, _ = _split(results)
    names, arrays = _check_updates(updates)
    if k > len(arrays):
        raise AggregationError(f"to_keep={k} is more than the {len(arrays)} updates")
    return _select(_krum_scores(names, arrays, f), k)


def krum(
    results: Sequence[Result], num_malicious: int, to_keep: int, *, weighted: bool = False
) -> Weights:
    """Krum and Multi-Krum (Blanchard et al. 2017).

    ``to_keep = 0``: plain Krum, the single update with the lowest :func:`krum_scores` score,
    returned as is (copied; its dtypes kept). ``to_keep = m ≥ 1``: Multi-Krum, the unweighted
    mean of the ``m`` lowest-scoring updates, as in the paper. Flower's ``aggregate_krum``
    instead averages the kept updates weighted by example counts (its ``aggregate``); pass
    ``weighted=True`` for that. Needs ``n > 2f + 2`` updates and ``to_keep ≤ n``.
    """
    f = _check_int(num_malicious, "num_malicious", minimum=0)
    k = _check_int(to_keep, "to_keep", minimum=0)
    updates, counts = _split(results)
    names, arrays = _check_updates(updates)
    if k > len(arrays):
        raise AggregationError(f"to_keep={k} is more than the {len(arrays)} updates")
    chosen = _select(_krum_scores(names, arrays, f), k)
    if k == 0:
        best = arrays[chosen[0]]
        return {name: best[name].copy() for name in names}
    kept = [arrays[i] for i in chosen]
    if weighted:
        return _weighted(names, kept, _check_counts([counts[i] for i in chosen]))
    return _weighted(names, kept, [1.0] * len(kept))
