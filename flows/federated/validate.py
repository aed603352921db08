"""Checks every client update before it is aggregated; a failed check is a recorded reason.

A client is not trusted: its update must have exactly the global model's names, shapes and
dtypes, only finite values, an update norm ``‖update − global‖₂`` (over all arrays together)
within ``norm_bound``, and a claimed example count ``0 < num_examples ≤ max_examples`` (a huge
claim would otherwise buy a huge FedAvg weight). :func:`validate_update` returns the first
reason an update fails, or ``None``; :func:`screen` splits a round's updates into accepted ones
and ``(client_id, reason)`` rejections, which strategies put in their result.

No accepted client counts for more than ``max_weight_ratio`` (default
:data:`DEFAULT_MAX_WEIGHT_RATIO`, 10) times the median of the round's accepted claims: a larger
claim is clamped, not rejected. The coordinator cannot check a count (the data stays on the
nodes, and in cluster mode it does not know the dataset sizes), so the claims' median, which a
minority of liars cannot move far, is the reference; 10x leaves every honest client of the
repository's partitions whole (largest ratio 8.3, dirichlet:0.1 over 3-20 clients and 30
seeds of the digits data) while one client claiming 2^31 examples buys at most 10 medians.

:func:`outlier_screen` checks each update against the round's others (off unless asked): by
direction, an update whose cosine with the coordinate-wise median of the round's updates is
below ``min_cosine`` is rejected (a sign-flipped update has the norm of an honest one, so the
norm bound cannot see it, and on non-IID data it drags the median itself); by length, one
longer than ``max_norm_ratio`` times the round's median update norm (a scaled update, without
an absolute bound to tune for each model). See bench/RESULTS.md, section 10.

A bad *global* model, or bad bounds, is the coordinator's fault, not a client's: those raise
:class:`~flows.errors.AggregationError`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from flows.errors import AggregationError
from flows.federated.aggregate import Array

__all__ = [
    "DEFAULT_MAX_WEIGHT_RATIO",
    "SELECTING_RULES",
    "ClientUpdate",
    "check_limits",
    "check_weight_ratio",
    "option_conflict",
    "outlier_screen",
    "screen",
    "update_norm",
    "validate_update",
]

#: Strategies that select updates themselves (and need more than 2f + 2 of them): no
#: outlier screen in front of them.
SELECTING_RULES = ("krum", "multikrum")
#: No client's FedAvg weight exceeds this many times the median accepted claim (see above).
DEFAULT_MAX_WEIGHT_RATIO = 10.0
#: The outlier screens' thresholds and the closed range each may take.
SCREEN_BOUNDS = {"min_cosine": (-1.0, 1.0), "max_norm_ratio": (1.0, math.inf)}


class ClientUpdate(NamedTuple):
    """One client's result for a round: who sent it, its weights, its example count."""

    client_id: str
    weights: Mapping[str, Array]
    num_examples: int


def check_limits(norm_bound: float, max_examples: int) -> None:
    """Raise :class:`~flows.errors.AggregationError` unless both screening limits make sense."""
    if (
        isinstance(norm_bound, bool)
        or not isinstance(norm_bound, numbers.Real)
        or math.isnan(norm_bound)
        or norm_bound <= 0
    ):
        raise AggregationError(f"norm_bound must be a positive number (or inf), got {norm_bound!r}")
    if isinstance(max_examples, bool) or not isinstance(max_examples, numbers.Integral):
        raise AggregationError(f"max_examples must be an integer, got {max_examples!r}")
    if max_examples < 1:
        raise AggregationError(f"max_examples must be at least 1, got {max_examples}")


def check_weight_ratio(ratio: float) -> float:
    """``ratio`` if it is a number ≥ 1 (``math.inf`` for no cap), else an AggregationError."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not ratio >= 1:
        raise AggregationError(f"max_weight_ratio must be a number >= 1 (or inf), got {ratio!r}")
    return float(ratio)


def _capped(accepted: list[ClientUpdate], ratio: float) -> list[ClientUpdate]:
    """Each count clamped to ``ratio`` times the median accepted count (at least 1)."""
    if not accepted or math.isinf(ratio):
        return accepted
    cap = max(1, math.floor(ratio * float(np.median([u.num_examples for u in accepted]))))
    return [u._replace(num_examples=min(u.num_examples, cap)) for u in accepted]


def _check_global(global_weights: Mapping[str, Any]) -> None:
    if not global_weights:
        raise AggregationError("the global model has no arrays")
    for name, a in global_weights.items():
        if not isinstance(name, str):
            raise AggregationError(f"the global model has a non-string array name {name!r}")
        a = np.asarray(a)
        if a.dtype.kind not in "fiu":
            raise AggregationError(f"global array {name!r} has unsupported dtype {a.dtype}")
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            raise AggregationError(f"global array {name!r} has NaN or infinite values")


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:5])
    return shown + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def update_norm(global_weights: Mapping[str, Array], update: Mapping[str, Array]) -> float:
    """``‖update − global‖₂`` over all arrays together, in float64 (inf if it overflows)."""
    total = 0.0
    for name, g in global_weights.items():
        with np.errstate(over="ignore", invalid="ignore"):  # an infinite difference is inf
            diff = np.asarray(update[name]).astype(np.float64) - np.asarray(g).astype(np.float64)
        scale = float(np.max(np.abs(diff))) if diff.size else 0.0
        if scale == 0.0:
            continue
        if not math.isfinite(scale):
            return math.inf
        # Scaled so that squaring cannot overflow before the square root.
        total = math.hypot(total, scale * float(np.linalg.norm(diff / scale)))
    return total


def _reason(
    global_weights: Mapping[str, Any],
    update: Any,
    num_examples: Any,
    norm_bound: float,
    max_examples: int,
) -> str | None:
    if isinstance(num_examples, bool) or not isinstance(num_examples, numbers.Integral):
        return f"num_examples {num_examples!r} is not an integer"
    num_examples = int(num_examples)
    if num_examples <= 0:
        return f"num_examples {num_examples} is not positive"
    if num_examples > max_examples:
        return f"claims {num_examples} examples, more than the cap of {max_examples}"
    if not isinstance(update, Mapping):
        return f"update is a {type(update).__name__}, not arrays by name"
    missing = [n for n in global_weights if n not in update]
    extra = [str(n) for n in update if n not in global_weights]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing arrays {_names(missing)}")
        if extra:
            parts.append(f"unexpected arrays {_names(sorted(extra))}")
        return "; ".join(parts)
    for name, g in global_weights.items():
        a = update[name]
        g = np.asarray(g)
        if not isinstance(a, np.ndarray):
            return f"array {name!r} is a {type(a).__name__}, not a numpy array"
        if a.shape != g.shape:
            return f"array {name!r} has shape {list(a.shape)}, the global model {list(g.shape)}"
        if a.dtype != g.dtype:
            return f"array {name!r} has dtype {a.dtype}, the global model {g.dtype}"
        if a.dtype.kind == "f":
            finite = np.isfinite(a)
            if not finite.all():
                nan = int(np.isnan(a).sum())
                inf = int(a.size - finite.sum()) - nan
                return f"array {name!r} has {nan} NaN and {inf} infinite values"
    norm = update_norm(global_weights, update)
    if not norm <= norm_bound:
        return f"update norm {norm:.6g} exceeds the bound {norm_bound:.6g}"
    return None


def validate_update(
    global_weights: Mapping[str, Array],
    update: Mapping[str, Array],
    num_examples: int,
    *,
    norm_bound: float,
    max_examples: int,
) -> str | None:
    """Why ``update`` must not be aggregated into ``global_weights``, or ``None`` if it may.

    Checks, in order: ``0 < num_examples ≤ max_examples``; the same array names as the global
    model; for each array, a numpy array of the same shape and dtype with only finite values;
    ``‖update − global‖₂ ≤ norm_bound`` (pass ``math.inf`` for no bound). An update norm that
    overflows float64 counts as infinite, so it fails any finite bound.
    """
    check_limits(norm_bound, max_examples)
    _check_global(global_weights)
    return _reason(global_weights, update, num_examples, norm_bound, max_examples)


def screen(
    global_weights: Mapping[str, Array],
    results: Sequence[tuple[str, Mapping[str, Array], int]],
    *,
    norm_bound: float,
    max_examples: int,
    max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
) -> tuple[list[ClientUpdate], list[tuple[str, str]]]:
    """Split ``(client_id, weights, num_examples)`` results into accepted and rejected ones.

    Rejections are ``(client_id, reason)`` in input order. A second update from the same client
    in one round is rejected as a duplicate (it would otherwise count twice). Order is kept.
    Accepted counts are clamped to ``max_weight_ratio`` times their median.
    """
    check_limits(norm_bound, max_examples)
    check_weight_ratio(max_weight_ratio)
    _check_global(global_weights)
    accepted: list[ClientUpdate] = []
    rejected: list[tuple[str, str]] = []
    seen: set[str] = set()
    for i, item in enumerate(results):
        if not isinstance(item, tuple | list) or len(item) != 3:
            rejected.append((f"#{i}", "not a (client_id, weights, num_examples) triple"))
            continue
        client_id, weights, num_examples = item
        client = str(client_id)
        if client in seen:
            rejected.append((client, "duplicate update from this client in one round"))
            continue
        seen.add(client)
        reason = _reason(global_weights, weights, num_examples, norm_bound, max_examples)
        if reason is None:
            accepted.append(ClientUpdate(client, weights, int(num_examples)))
        else:
            rejected.append((client, reason))
    return _capped(accepted, max_weight_ratio), rejected


def _threshold(name: str, value: float | None) -> None:
    if value is None:
        return
    low, high = SCREEN_BOUNDS[name]
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not (low <= float(value) <= high)
    ):
        raise AggregationError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


def outlier_screen(
    global_weights: Mapping[str, Array],
    results: Sequence[tuple[str, Mapping[str, Array], int]],
    *,
    min_cosine: float | None = None,
    max_norm_ratio: float | None = None,
) -> tuple[list[tuple[str, Mapping[str, Array], int]], list[tuple[str, str]]]:
    """Split results into kept ones and ``(client_id, reason)`` for updates ``Δ_k = w_k − w``
    that stand out from the round's others: with ``min_cosine``, whose cosine with the
    coordinate-wise median of the round's ``Δ`` is below it (a sign flip has an honest norm but
    points away); with ``max_norm_ratio``, whose norm is more than that many times the median
    of the round's update norms (a scaled update, caught without an absolute bound to tune).

    Only well-formed updates take part (the others are kept here, for :func:`screen` to reject
    with its reason); with fewer than three there is no meaningful median and nothing is
    rejected, nor by direction when the median update is zero, nor by length when the median
    norm is."""
    _threshold("min_cosine", min_cosine)
    _threshold("max_norm_ratio", max_norm_ratio)
    _check_global(global_weights)
    names = sorted(global_weights)
    deltas: dict[int, Array] = {}
    for i, (_, weights, n) in enumerate(results):
        if _reason(global_weights, weights, n, math.inf, 2**62) is None:
            deltas[i] = np.concatenate(
                [
                    (
                        np.asarray(weights[k], np.float64)
                        - np.asarray(global_weights[k], np.float64)
                    ).ravel()
                    for k in names
                ]
            )
    if len(deltas) < 3:
        return list(results), []
    norms = {i: float(np.linalg.norm(d)) for i, d in deltas.items()}
    median_norm = float(np.median(list(norms.values())))
    reference = np.median(np.stack(list(deltas.values())), axis=0)
    ref_norm = float(np.linalg.norm(reference))
    kept, rejected = [], []
    for i, item in enumerate(results):
        why = None
        delta, norm = deltas.get(i), norms.get(i, 0.0)
        if max_norm_ratio is not None and median_norm and norm > max_norm_ratio * median_norm:
            why = (
                f"update norm {norm:.4g} is more than {max_norm_ratio:g}x the round's median "
                f"norm {median_norm:.4g}"
            )
        elif min_cosine is not None and delta is not None and norm and ref_norm:
            cosine = float(delta @ reference) / (norm * ref_norm)
            if cosine < min_cosine:
                why = (
                    f"points away from the round's median update (cosine {cosine:.3f} < "
                    f"{min_cosine:g})"
                )
        if why is None:
            kept.append(item)
        else:
            rejected.append((str(item[0]), why))
    return kept, rejected


def option_conflict(
    strategy: str,
    *,
    dp_epsilon: float | None,
    dp_level: str,
    secure: bool,
    min_cosine: float | None,
    max_norm_ratio: float | None = None,
    spell: Callable[[str], str] = str,
) -> str | None:
    """Why these federated-training options cannot go together, or ``None``. ``spell`` writes
    an option's name (the CLI gives its flag spelling); no Prefect here, so the CLI can ask
    before it starts a flow."""
    if dp_level not in ("client", "example"):
        return f"{spell('dp_level')} must be client or example, got {dp_level!r}"
    client_level = dp_epsilon is not None and dp_level == "client"
    if client_level and strategy != "fedavg":
        return (
            f"{spell('dp_epsilon')} at {spell('dp_level')} client is offered with "
            f"{spell('strategy')} fedavg only ({spell('dp_level')} example works with every "
            "strategy)"
        )
    if secure and (strategy != "fedavg" or client_level):
        return (
            f"{spell('secure')} is offered with {spell('strategy')} fedavg (and DP only at "
            f"{spell('dp_level')} example)"
        )
    for name, value in (("min_cosine", min_cosine), ("max_norm_ratio", max_norm_ratio)):
        if value is None:
            continue
        low, high = SCREEN_BOUNDS[name]
        if secure:
            return f"{spell(name)} needs updates in the clear: not with {spell('secure')}"
        if not low <= value <= high:
            return f"{spell(name)} must be in [{low:g}, {high:g}], got {value}"
        if strategy in SELECTING_RULES:
            return (
                f"{spell(name)} is for mean and median rules: Krum selects updates itself "
                "and needs more than 2f + 2 of them, which screening would cut"
            )
    return None
