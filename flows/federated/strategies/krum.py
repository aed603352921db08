"""Krum and Multi-Krum (Blanchard et al. 2017): keep the updates closest to their neighbours."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar

from flows.errors import AggregationError
from flows.federated.aggregate import Array, Weights, krum_select, weighted_average
from flows.federated.strategies.base import (
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_MAX_WEIGHT_RATIO,
    Metrics,
    Strategy,
    as_results,
)
from flows.federated.validate import ClientUpdate

__all__ = ["Krum", "MultiKrum"]


def _non_negative(value: int, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise AggregationError(f"{what} must be an integer ≥ {minimum}, got {value!r}")
    return value


class Krum(Strategy):
    """:func:`~flows.federated.aggregate.krum` tolerating ``num_malicious`` Byzantine clients.

    ``to_keep = 0`` (the default, as in Flower) is plain Krum; ``to_keep = m`` averages the ``m``
    best updates (Multi-Krum, unweighted as in the paper). A round with ``n ≤ 2f + 2`` accepted
    updates fails. Metrics name the kept clients, best first, in ``selected``.
    """

    name: ClassVar[str] = "krum"

    def __init__(
        self,
        *,
        num_malicious: int = 0,
        to_keep: int = 0,
        min_clients: int = 1,
        norm_bound: float = math.inf,
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
    ) -> None:
        super().__init__(
            min_clients=min_clients,
            norm_bound=norm_bound,
            max_examples=max_examples,
            max_weight_ratio=max_weight_ratio,
        )
        self.num_malicious = _non_negative(num_malicious, "num_malicious", 0)
        self.to_keep = _non_negative(to_keep, "to_keep", 0)

    def combine(
        self, round: int, global_weights: Mapping[str, Array], updates: Sequence[ClientUpdate]
    ) -> tuple[Weights, Metrics]:
        chosen = krum_select(as_results(updates), self.num_malicious, self.to_keep)
        kept = [updates[i].weights for i in chosen]
        metrics: Metrics = {"selected": ",".join(updates[i].client_id for i in chosen)}
        if self.to_keep == 0:
            return {name: a.copy() for name, a in kept[0].items()}, metrics
        return weighted_average(kept, [1.0] * len(kept)), metrics


class MultiKrum(Krum):
    """Multi-Krum: the unweighted mean of the ``to_keep ≥ 1`` best updates by Krum score."""

    name: ClassVar[str] = "multikrum"

    def __init__(
        self,
        *,
        to_keep: int,
        num_malicious: int = 0,
        min_clients: int = 1,
        norm_bound: float = math.inf,
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
    ) -> None:
        super().__init__(
            num_malicious=num_malicious,
            to_keep=_non_negative(to_keep, "to_keep", 1),
            min_clients=min_clients,
            norm_bound=norm_bound,
            max_examples=max_examples,
            max_weight_ratio=max_weight_ratio,
        )
