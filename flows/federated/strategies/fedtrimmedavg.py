"""FedTrimmedAvg (Yin et al. 2018): the coordinate-wise β-trimmed mean of the client models."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import ClassVar

from flows.errors import AggregationError
from flows.federated.aggregate import Array, Weights, trimmed_mean
from flows.federated.strategies.base import (
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_MAX_WEIGHT_RATIO,
    Metrics,
    Strategy,
    as_results,
)
from flows.federated.validate import ClientUpdate

__all__ = ["FedTrimmedAvg"]


class FedTrimmedAvg(Strategy):
    """:func:`~flows.federated.aggregate.trimmed_mean` cutting ``beta`` at each end.

    ``beta`` defaults to 0.2, Flower's ``FedTrimmedAvg`` default: with 5 clients one value is
    cut at each end of every coordinate.
    """

    name: ClassVar[str] = "fedtrimmedavg"

    def __init__(
        self,
        *,
        beta: float = 0.2,
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
        if (
            isinstance(beta, bool)
            or not isinstance(beta, numbers.Real)
            or not math.isfinite(beta)
            or not 0 <= beta < 0.5
        ):
            raise AggregationError(f"beta must be a number in [0, 0.5), got {beta!r}")
        self.beta: float = float(beta)

    def combine(
        self, round: int, global_weights: Mapping[str, Array], updates: Sequence[ClientUpdate]
    ) -> tuple[Weights, Metrics]:
        cut = int(self.beta * len(updates))
        return trimmed_mean(as_results(updates), self.beta), {"trimmed_each_end": cut}
