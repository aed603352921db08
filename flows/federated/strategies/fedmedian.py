"""FedMedian (Yin et al. 2018): the coordinate-wise median of the client models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from flows.federated.aggregate import Array, Weights, median
from flows.federated.strategies.base import Metrics, Strategy, as_results
from flows.federated.validate import ClientUpdate

__all__ = ["FedMedian"]


class FedMedian(Strategy):
    """The new global model is :func:`~flows.federated.aggregate.median` of the updates."""

    name: ClassVar[str] = "fedmedian"

    def combine(
        self, round: int, global_weights: Mapping[str, Array], updates: Sequence[ClientUpdate]
    ) -> tuple[Weights, Metrics]:
        return median(as_results(updates)), {}
