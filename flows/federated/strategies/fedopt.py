"""The server-optimiser shape shared by FedAdagrad, FedAdam and FedYogi (Reddi et al. 2021).

"Adaptive Federated Optimization", Algorithm 2, per round ``t`` and per coordinate::

    Δ_t = avg(client models) − x_t                      pseudo-gradient
    m_t = β₁·m_{t−1} + (1 − β₁)·Δ_t                     m_{−1} = 0
    v_t = v_{t−1} + Δ_t²                                 FedAdagrad
    v_t = β₂·v_{t−1} + (1 − β₂)·Δ_t²                     FedAdam
    v_t = v_{t−1} − (1 − β₂)·Δ_t²·sign(v_{t−1} − Δ_t²)   FedYogi
    x_{t+1} = x_t + η·m_t / (√v_t + τ)

Where we stand relative to the paper and to Flower (``flwr/server/strategy/fedopt.py``,
``fedadagrad.py``, ``fedadam.py``, ``fedyogi.py``):

- ``v_{−1}``: the paper asks for ``v_{−1} ≥ τ²``; we start at ``v_init`` (default ``τ²``).
  Flower starts at 0 (pass ``v_init=0.0`` to match it).
- The average: the paper writes the uniform mean ``(1/|S|)·Σ Δᵢ``; Flower uses the
  example-weighted FedAvg mean, so that SGD with ``η = 1`` is exactly FedAvg. We weight by
  examples too (``weighted=True``); ``weighted=False`` is the paper's uniform mean.
- Bias correction: Algorithm 2 has none, nor do Flower's FedAdagrad and FedYogi. Flower's
  FedAdam scales η by ``√(1 − β₂^(r+1)) / (1 − β₁^(r+1))`` with ``r`` the server round; our
  FedAdam follows the paper unless ``bias_correction=True``, which applies Kingma & Ba's factor
  with ``t`` = the number of server steps taken (1 on the first step).
- Defaults are Flower's (listed on each class). ``eta_l`` (the client learning rate the paper
  tunes with η) is only a setting for clients: :meth:`FedOpt.client_config` sends it as
  ``learning_rate`` when given, and nothing otherwise.
- Arithmetic and the optimiser state are float64; the new model is cast back to the global
  model's dtypes. Integer arrays (counters) are not parameters: they take the FedAvg value,
  rounded.

NaN guard (flwr #1060): the new ``m``, ``v`` and model are checked before anything is kept; if
any value is NaN or infinite, or does not fit the model's dtype, the round fails with a reason,
the optimiser state stays as it was, and no weights are returned.
"""

from __future__ import annotations

import math
import numbers
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flows.errors import AggregationError
from flows.federated.aggregate import Array, Weights, cast_like, fedavg, weighted_average
from flows.federated.strategies.base import (
    DEFAULT_MAX_EXAMPLES,
    DEFAULT_MAX_WEIGHT_RATIO,
    Metrics,
    Strategy,
)
from flows.federated.validate import ClientUpdate

__all__ = ["FedOpt", "ServerOptState"]

F64Array = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class ServerOptState:
    """The server optimiser's state after ``step`` steps: first and second moments by name."""

    step: int
    m: dict[str, F64Array]
    v: dict[str, F64Array]


def _real(value: float, what: str, *, low: float, high: float, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise AggregationError(f"{what} must be a finite number, got {value!r}")
    ok = (value > low if low_open else value >= low) and value < high
    if not ok:
        bracket = "(" if low_open else "["
        raise AggregationError(f"{what} must be in {bracket}{low}, {high}), got {value}")
    return float(value)


class FedOpt(Strategy):
    """A server optimiser over the pseudo-gradient; subclasses define the second moment."""

    def __init__(
        self,
        *,
        eta: float,
        beta_1: float,
        beta_2: float,
        tau: float,
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
            min_clients=min_clients,
            norm_bound=norm_bound,
            max_examples=max_examples,
            max_weight_ratio=max_weight_ratio,
        )
        self.eta = _real(eta, "eta", low=0.0, high=math.inf, low_open=True)
        self.beta_1 = _real(beta_1, "beta_1", low=0.0, high=1.0, low_open=False)
        self.beta_2 = _real(beta_2, "beta_2", low=0.0, high=1.0, low_open=False)
        self.tau = _real(tau, "tau", low=0.0, high=math.inf, low_open=True)
        self.eta_l = (
            None if eta_l is None else _real(eta_l, "eta_l", low=0.0, high=math.inf, low_open=True)
        )
        self.v_init = (
            self.tau**2
            if v_init is None
            else _real(v_init, "v_init", low=0.0, high=math.inf, low_open=False)
        )
        self.weighted = bool(weighted)
        self._state = state

    @property
    def state(self) -> ServerOptState | None:
        """The optimiser state (copies), or ``None`` before the first successful step."""
        s = self._state
        if s is None:
            return None
        return ServerOptState(
            s.step, {k: a.copy() for k, a in s.m.items()}, {k: a.copy() for k, a in s.v.items()}
        )

    def client_config(self, round: int) -> dict[str, float | int | str | bool]:
        return {} if self.eta_l is None else {"learning_rate": self.eta_l}

    @abstractmethod
    def second_moment(self, v: F64Array, delta_sq: F64Array) -> F64Array:
        """``v_t`` from ``v_{t−1}`` and ``Δ_t²``."""

    def step_size(self, step: int) -> float:
        """η for server step ``step`` (1 on the first step); plain η unless overridden."""
        return self.eta

    def combine(
        self, round: int, global_weights: Mapping[str, Array], updates: Sequence[ClientUpdate]
    ) -> tuple[Weights, Metrics]:
        # Averaged in float64 and not rounded to the model's precision before Δ is taken.
        wide = [{k: np.asarray(a, dtype=np.float64) for k, a in u.weights.items()} for u in updates]
        if self.weighted:
            avg = fedavg([(w, u.num_examples) for w, u in zip(wide, updates, strict=True)])
        else:
            avg = weighted_average(wide, [1.0] * len(updates))
        params = [n for n, g in global_weights.items() if np.asarray(g).dtype.kind == "f"]
        prev = self._state
        if prev is not None and (
            set(prev.m) != set(params)
            or any(prev.m[n].shape != np.shape(global_weights[n]) for n in params)
        ):
            raise AggregationError("the server optimiser state does not match the global model")
        step = 1 if prev is None else prev.step + 1
        eta = self.step_size(step)
        new_m: dict[str, F64Array] = {}
        new_v: dict[str, F64Array] = {}
        new_x: Weights = dict(avg)  # integer arrays keep the average (rounded by cast_like)
        sq_norm = 0.0
        for name in params:
            x = np.asarray(global_weights[name]).astype(np.float64)
            delta = avg[name].astype(np.float64) - x
            shape = x.shape
            m0 = np.zeros(shape) if prev is None else prev.m[name]
            v0 = np.full(shape, self.v_init) if prev is None else prev.v[name]
            with np.errstate(over="ignore", invalid="ignore"):
                m = np.asarray(self.beta_1 * m0 + (1.0 - self.beta_1) * delta)
                v = np.asarray(self.second_moment(v0, delta * delta))
                new = np.asarray(x + eta * m / (np.sqrt(v) + self.tau))
                sq_norm += float(np.sum(delta * delta))
            for what, a in (("first moment", m), ("second moment", v), ("model", new)):
                if not np.isfinite(a).all():
                    raise AggregationError(
                        f"{type(self).__name__} step {step}: the {what} of {name!r} is not "
                        "finite; the round is discarded and the optimiser state kept"
                    )
            new_m[name], new_v[name], new_x[name] = m, v, new
        weights = cast_like(global_weights, new_x)  # raises if the model overflows its dtype
        self._state = ServerOptState(step, new_m, new_v)
        return weights, {"server_step": step, "pseudo_gradient_norm": math.sqrt(sq_norm)}
