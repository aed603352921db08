"""FedAdagrad (Reddi et al. 2021): ``v_t = v_{t−1} + Δ_t²`` (see :mod:`.fedopt`)."""

from __future__ import annotations

import math
from typing import ClassVar

from flows.federated.strategies.base import DEFAULT_MAX_EXAMPLES, DEFAULT_MAX_WEIGHT_RATIO
from flows.federated.strategies.fedopt import F64Array, FedOpt, ServerOptState

__all__ = ["FedAdagrad"]


class FedAdagrad(FedOpt):
    """Adagrad on the server.

    Defaults are Flower's ``FedAdagrad``: ``eta = 0.1``, ``tau = 1e-9`` and no momentum
    (``beta_1 = 0``, so ``m_t = Δ_t``); the paper's Algorithm 2 allows ``beta_1 > 0``. Flower's
    client-side ``eta_l`` default is 0.1. No ``beta_2``: the sum of squares never decays.
    """

    name: ClassVar[str] = "fedadagrad"

    def __init__(
        self,
        *,
        eta: float = 0.1,
        beta_1: float = 0.0,
        tau: float = 1e-9,
        eta_l: float | None = None,
        v_init: float | None = None,
        weighted: bool = True,
        state: ServerOptState | None = None,
        min_clients: int = 1,
        norm_bound: float = math.inf,
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
    ) -> None:
        super().__init__(
            eta=eta,
            beta_1=beta_1,
            beta_2=0.0,
            tau=tau,
            eta_l=eta_l,
            v_init=v_init,
            weighted=weighted,
            state=state,
            min_clients=min_clients,
            norm_bound=norm_bound,
            max_examples=max_examples,
            max_weight_ratio=max_weight_ratio,
        )

    def second_moment(self, v: F64Array, delta_sq: F64Array) -> F64Array:
        return v + delta_sq
