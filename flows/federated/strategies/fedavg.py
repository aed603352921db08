"""FedAvg (McMahan et al. 2017): the example-weighted mean of the client models."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

from flows.federated.aggregate import Array, Weights, fedavg
from flows.federated.strategies.base import Metrics, Strategy, as_results
from flows.federated.validate import ClientUpdate

__all__ = ["FedAvg"]


class FedAvg(Strategy):
    """The new global model is :func:`~flows.federated.aggregate.fedavg` of the updates."""

    name: ClassVar[str] = "fedavg"

    def combine(
        self, round: int, global_weights: Mapping[str, Array], updates: Sequence[ClientUpdate]
    ) -> tuple[Weights, Metrics]:
        return fedavg(as_results(updates)), {"num_examples": sum(u.num_examples for u in updates)}
