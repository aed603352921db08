"""Federated aggregation strategies, one algorithm per module.

Every strategy is a :class:`~flows.federated.strategies.base.Strategy`: its
:meth:`~flows.federated.strategies.base.Strategy.aggregate` screens a round's
``(client_id, weights, num_examples)`` results and returns an
:class:`~flows.federated.strategies.base.AggregateResult` (new weights, or the reason there
are none, plus the rejected updates and metrics). :data:`STRATEGIES` maps each strategy's
``name`` to its class.
"""

from __future__ import annotations

from typing import Final

from flows.federated.strategies.base import AggregateResult, Strategy
from flows.federated.strategies.fedadagrad import FedAdagrad
from flows.federated.strategies.fedadam import FedAdam
from flows.federated.strategies.fedavg import FedAvg
from flows.federated.strategies.fedmedian import FedMedian
from flows.federated.strategies.fedopt import FedOpt, ServerOptState
from flows.federated.strategies.fedprox import FedProx
from flows.federated.strategies.fedtrimmedavg import FedTrimmedAvg
from flows.federated.strategies.fedyogi import FedYogi
from flows.federated.strategies.krum import Krum, MultiKrum

__all__ = [
    "STRATEGIES",
    "AggregateResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedProx",
    "FedTrimmedAvg",
    "FedYogi",
    "Krum",
    "MultiKrum",
    "ServerOptState",
    "Strategy",
]

STRATEGIES: Final[dict[str, type[Strategy]]] = {
    cls.name: cls
    for cls in (
        FedAvg,
        FedProx,
        FedAdagrad,
        FedAdam,
        FedYogi,
        FedMedian,
        FedTrimmedAvg,
        Krum,
        MultiKrum,
    )
}
