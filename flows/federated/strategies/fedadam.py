"""FedAdam (Reddi et al. 2021): ``v_t = β₂·v_{t−1} + (1 − β₂)·Δ_t²`` (see :mod:`.fedopt`)."""

from __future__ import annotations

import math
from typing import ClassVar

from flows.federated.strategies.base import DEFAULT_MAX_EXAMPLES, DEFAULT_MAX_WEIGHT_RATIO
from flows.federated.strategies.fedopt import F64Array, FedOpt, ServerOptState

__all__ = ["FedAdam"]


class FedAdam(FedOpt):
    """Adam on the server.

    Defaults are Flower's ``FedAdam``: ``eta = 0.1``, ``beta_1 = 0.9``, ``beta_2 = 0.99``,
    ``tau = 1e-9`` (its client-side ``eta_l`` default is 0.1). Without bias correction, as in
    the paper's Algorithm 2; ``bias_correction=True`` scales η on step ``t`` by
    ``√(1 − β₂ᵗ) / (1 − β₁ᵗ)`` (Kingma & Ba). Flower always corrects, with ``t`` = round + 1.
    """

    name: ClassVar[str] = "fedadam"

    def __init__(
        self,
        *,
        eta: float = 0.1,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-9,
        bias_correction: bool = False,
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
        self.bias_correction = bool(bias_correction)

    def second_moment(self, v: F64Array, delta_sq: F64Array) -> F64Array:
        return self.beta_2 * v + (1.0 - self.beta_2) * delta_sq

    def step_size(self, step: int) -> float:
        if not self.bias_correction:
            return self.eta
        return self.eta * math.sqrt(1.0 - self.beta_2**step) / (1.0 - self.beta_1**step)
