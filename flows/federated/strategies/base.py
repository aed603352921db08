"""The abstract strategy: hooks per algorithm, one concrete aggregation step for all.

:meth:`Strategy.aggregate` is the same for every algorithm: screen the round's updates
(:func:`~flows.federated.validate.screen`), require ``min_clients`` accepted ones, call the
algorithm's hook :meth:`Strategy.combine`, cast the result back to the global model's names,
shapes and dtypes and check it is finite. Whatever goes wrong is an explicit
:class:`AggregateResult` with ``failure`` set and ``weights = None``, never an exception from
deep inside and never a model with NaN in it: the coordinator keeps the previous global model
and records why.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, TypeAlias

from flows.errors import AggregationError
from flows.federated.aggregate import Array, Weights, cast_like
from flows.federated.validate import (
    DEFAULT_MAX_WEIGHT_RATIO,
    ClientUpdate,
    check_limits,
    check_weight_ratio,
    screen,
)

__all__ = [
    "DEFAULT_MAX_EXAMPLES",
    "DEFAULT_MAX_WEIGHT_RATIO",
    "AggregateResult",
    "Metrics",
    "Strategy",
    "as_results",
]

Metrics: TypeAlias = dict[str, float | int | str]
"""Scalar facts about one aggregation (counts, norms, chosen clients)."""

DEFAULT_MAX_EXAMPLES = 2**31 - 1


@dataclass(frozen=True, slots=True)
class AggregateResult:
    """The outcome of one round's aggregation.

    Exactly one of ``weights`` (the new global model) and ``failure`` (why there is none) is
    set. ``rejected`` lists ``(client_id, reason)`` for updates screened out, in either case.
    """

    weights: Weights | None
    rejected: list[tuple[str, str]] = field(default_factory=list)
    metrics: Metrics = field(default_factory=dict)
    failure: str | None = None

    def __post_init__(self) -> None:
        if (self.weights is None) == (self.failure is None):
            raise ValueError("an AggregateResult has either weights or a failure, not both")

    @property
    def ok(self) -> bool:
        """Whether the round produced a new global model."""
        return self.failure is None


def as_results(updates: Sequence[ClientUpdate]) -> list[tuple[Mapping[str, Array], int]]:
    """Screened updates in the ``(weights, num_examples)`` form of :mod:`..aggregate`."""
    return [(u.weights, u.num_examples) for u in updates]


def _positive_int(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise AggregationError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


class Strategy(ABC):
    """A federated aggregation strategy.

    Subclasses set :attr:`name` and implement :meth:`combine`; they may override
    :meth:`client_config` to send per-round settings to the clients.

    ``norm_bound``, ``max_examples`` and ``max_weight_ratio`` are the screening limits (see
    :mod:`flows.federated.validate`); ``min_clients`` is how many accepted updates a round needs
    (fewer is a failed round, never a partial model).
    """

    name: ClassVar[str]

    def __init__(
        self,
        *,
        min_clients: int = 1,
        norm_bound: float = math.inf,
        max_examples: int = DEFAULT_MAX_EXAMPLES,
        max_weight_ratio: float = DEFAULT_MAX_WEIGHT_RATIO,
    ) -> None:
        self.min_clients = _positive_int(min_clients, "min_clients")
        check_limits(norm_bound, max_examples)
        self.norm_bound = norm_bound
        self.max_examples = max_examples
        self.max_weight_ratio = check_weight_ratio(max_weight_ratio)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(min_clients={self.min_clients})"

    def client_config(self, round: int) -> dict[str, float | int | str | bool]:
        """Settings sent to every client for ``round`` (none by default)."""
        return {}

    @abstractmethod
    def combine(
        self, round: int, global_weights: Mapping[str, Array], updates: Sequence[ClientUpdate]
    ) -> tuple[Weights, Metrics]:
        """The new global weights from screened ``updates``, and metrics about them.

        Raise :class:`~flows.errors.AggregationError` when they cannot be combined; a stateful
        strategy must leave its state unchanged when it raises.
        """

    def aggregate(
        self,
        round: int,
        global_weights: Mapping[str, Array],
        results: Sequence[tuple[str, Mapping[str, Array], int]],
    ) -> AggregateResult:
        """One round: screen ``(client_id, weights, num_examples)`` results and combine them."""
        try:
            accepted, rejected = screen(
                global_weights,
                results,
                norm_bound=self.norm_bound,
                max_examples=self.max_examples,
                max_weight_ratio=self.max_weight_ratio,
            )
        except AggregationError as e:  # the global model itself is unusable
            return AggregateResult(None, [], {"received": len(results)}, failure=str(e))
        metrics: Metrics = {"received": len(results), "accepted": len(accepted)}
        if len(accepted) < self.min_clients:
            return AggregateResult(
                None,
                rejected,
                metrics,
                failure=f"only {len(accepted)} of {len(results)} updates accepted, "
                f"need at least {self.min_clients}",
            )
        try:
            weights, extra = self.combine(round, global_weights, accepted)
            weights = cast_like(global_weights, weights)
        except AggregationError as e:
            return AggregateResult(None, rejected, metrics, failure=str(e))
        return AggregateResult(weights, rejected, {**metrics, **extra})
