"""FedYogi (Reddi et al. 2021): ``v_t = v_{t−1} − (1 − β₂)·Δ_t²·sign(v_{t−1} − Δ_t²)``."""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from flows.federated.strategies.base import DEFAULT_MAX_EXAMPLES, DEFAULT_MAX_WEIGHT_RATIO
from flows.federated.strategies.fedopt import F64Array, FedOpt, ServerOptState

__all__ = ["FedYogi"]


class FedYogi(FedOpt):
    """Yogi on the server (see :mod:`.fedopt` for the shared step).

    Defaults are Flower's ``FedYogi``: ``eta = 0.01``, ``beta_1 = 0.9``, ``beta_2 = 0.99``,
    ``tau = 1e-3`` (its client-side ``eta_l`` default is 0.0316). No bias correction, as in the
    paper and Flower. ``v`` stays ≥ 0 from any ``v_init ≥ 0``.
    """

    name: ClassVar[str] = "fedyogi"

    def __init__(
        self,
        *,
        eta: float = 0.01,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
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
            beta_2=beta_2,
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
        result: F64Array = v - (1.0 - self.beta_2) * delta_sq * np.sign(v - delta_sq)
        return result
