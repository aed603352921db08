"""Splitting a labelled dataset among federated clients: IID, or non-IID by a Dirichlet prior.

``dirichlet:ALPHA`` follows Hsu, Qi and Brown (2019), "Measuring the Effects of Non-Identical
Data Distribution for Federated Visual Classification": for every class, the shares of its
examples that go to each client are drawn from Dir(α·1); small α gives each client few classes,
large α approaches IID. Draws are repeated (same seeded generator) until every client holds at
least ``min_size`` examples. Everything depends on the seed only, so the same arguments give the
same partition, and so the same client datasets and CIDs, in every process.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from flows.errors import DatasetError

__all__ = [
    "Partition",
    "dirichlet_partition",
    "follow_partition",
    "iid_partition",
    "parse_partition",
    "partition",
]

Array = np.ndarray[Any, Any]

#: Redraws allowed before a Dirichlet partition with too-small clients is an error.
MAX_DRAWS = 1000


@dataclass(frozen=True, slots=True)
class Partition:
    """``kind`` is ``iid`` or ``dirichlet``; ``alpha`` the concentration for ``dirichlet``."""

    kind: str
    alpha: float | None = None

    def __str__(self) -> str:
        return self.kind if self.alpha is None else f"{self.kind}:{self.alpha:g}"


def parse_partition(text: str) -> Partition:
    """``iid`` or ``dirichlet:ALPHA`` (ALPHA > 0, finite)."""
    kind, _, value = text.strip().partition(":")
    if kind == "iid" and not value:
        return Partition("iid")
    if kind == "dirichlet":
        try:
            alpha = float(value)
        except ValueError:
            alpha = math.nan
        if not (alpha > 0 and math.isfinite(alpha)):
            raise DatasetError(f"partition {text!r}: ALPHA must be a positive number")
        return Partition("dirichlet", alpha)
    raise DatasetError(f"unknown partition {text!r} (expected iid or dirichlet:ALPHA)")


def iid_partition(n: int, clients: int, seed: int) -> list[Array]:
    """A seeded shuffle of ``range(n)`` cut into ``clients`` near-equal parts (sorted)."""
    _check(n, clients, 1)
    order = np.random.default_rng(seed).permutation(n)
    return [np.sort(part) for part in np.array_split(order, clients)]


def dirichlet_partition(
    y: Array, clients: int, alpha: float, seed: int, *, min_size: int = 10
) -> list[Array]:
    """Indices of ``y`` per client (sorted), class shares drawn from Dir(``alpha``)."""
    labels = np.asarray(y)
    if labels.ndim != 1:
        raise DatasetError(f"labels must be 1-D, got shape {labels.shape}")
    _check(len(labels), clients, min_size)
    if not (alpha > 0 and math.isfinite(alpha)):
        raise DatasetError(f"alpha must be a positive number, got {alpha!r}")
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(MAX_DRAWS):
        parts: list[list[Array]] = [[] for _ in range(clients)]
        for members in by_class:
            shuffled = rng.permutation(members)
            shares = rng.dirichlet(np.full(clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64)
            for k, piece in enumerate(np.split(shuffled, cuts)):
                parts[k].append(piece)
        out = [np.sort(np.concatenate(p)) for p in parts]
        if min(len(p) for p in out) >= min_size:
            return out
    raise DatasetError(
        f"no Dirichlet(alpha={alpha:g}) split of {len(labels)} examples gives each of {clients} "
        f"clients at least {min_size} examples in {MAX_DRAWS} draws (raise alpha or lower "
        "the client count)"
    )


def partition(spec: str | Partition, y: Array, clients: int, seed: int) -> list[Array]:
    """Indices per client for ``spec`` (``iid`` or ``dirichlet:ALPHA``)."""
    part = parse_partition(spec) if isinstance(spec, str) else spec
    if part.kind == "iid":
        return iid_partition(len(y), clients, seed)
    assert part.alpha is not None
    return dirichlet_partition(y, clients, part.alpha, seed)


def follow_partition(train_labels: list[Array], y: Array, seed: int) -> list[Array]:
    """Indices of ``y`` (a test split) per client, following the clients' training labels:
    each class's examples go to the clients in proportion to how many of that class each one
    trains on, so every client's held-out part looks like its training part (what federated
    evaluation on non-IID clients needs). A class no client trains on is spread evenly."""
    labels = np.asarray(y)
    clients = len(train_labels)
    if clients < 1:
        raise DatasetError("no clients to follow")
    rng = np.random.default_rng(seed)
    parts: list[list[Array]] = [[] for _ in range(clients)]
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        counts = np.array([np.count_nonzero(t == c) for t in train_labels], dtype=np.float64)
        shares = counts / counts.sum() if counts.sum() > 0 else np.full(clients, 1.0 / clients)
        cuts = np.rint(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
        for k, piece in enumerate(np.split(members, cuts)):
            parts[k].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def _check(n: int, clients: int, min_size: int) -> None:
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise DatasetError(f"the number of clients must be a positive integer, got {clients!r}")
    if n < clients * max(1, min_size):
        raise DatasetError(
            f"{n} examples cannot give {clients} clients at least {max(1, min_size)} each"
        )
