"""FedProx (Li et al. 2020): FedAvg on the server, a proximal term on the clients.

Each client minimises ``F_k(w) + (mu / 2)·‖w − w_global‖²``; the server side is plain FedAvg.
The strategy's only difference is :meth:`FedProx.client_config`, which hands ``proximal_mu`` to
the clients (the term itself is applied by the client training code). As in Flower's
``fedprox.py``, ``proximal_mu`` has no default: 0 is FedAvg, and a sensible value depends on
the task (the paper tries 0.001 to 1).
"""

from __future__ import annotations

import math
import numbers
from typing import ClassVar

from flows.errors import AggregationError
from flows.federated.strategies.base import DEFAULT_MAX_EXAMPLES, DEFAULT_MAX_WEIGHT_RATIO
from flows.federated.strategies.fedavg import FedAvg

__all__ = ["FedProx"]


class FedProx(FedAvg):
    """FedAvg that tells clients to add ``(proximal_mu / 2)·‖w − w_global‖²`` to their loss."""

    name: ClassVar[str] = "fedprox"

    def __init__(
        self,
        *,
        proximal_mu: float,
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
            isinstance(proximal_mu, bool)
            or not isinstance(proximal_mu, numbers.Real)
            or not math.isfinite(proximal_mu)
            or proximal_mu < 0
        ):
            raise AggregationError(f"proximal_mu must be a finite number ≥ 0, got {proximal_mu!r}")
        self.proximal_mu: float = float(proximal_mu)

    def client_config(self, round: int) -> dict[str, float | int | str | bool]:
        return {"proximal_mu": self.proximal_mu}
