"""Byzantine clients for simulation: what an attacking client sends instead of its update.

No Prefect here: the CLI checks an attack spec before it points Prefect at the home.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flows.errors import FlowError

__all__ = ["SILENT", "active_attack", "apply_attack", "attack_factor", "check_attack"]

Weights = dict[str, np.ndarray[Any, Any]]

SILENT = "silent"
"""The attacker never sends an update: the round goes on without it. What a perfect defence
would achieve (the attacker's data is simply lost), so the floor for the other attacks."""


def _split(attack: str) -> tuple[str, int]:
    """``KIND[@R]`` → ``(KIND, R)``: R is the first round attacked (default 1)."""
    kind, at, start = attack.partition("@")
    if not at:
        return kind, 1
    if not start.isdigit() or int(start) < 1:
        raise FlowError(f"attack {attack!r}: KIND@R needs a round R >= 1")
    return kind, int(start)


def check_attack(attack: str) -> None:
    """Raise :class:`FlowError` unless ``attack`` is ``KIND`` or ``KIND@R`` with KIND one of
    ``scale:K``, ``signflip`` or ``silent`` (``@R``: honest until round R, then attacking: an
    attacker that first earns trust)."""
    kind, _ = _split(attack)
    if kind != SILENT:
        attack_factor(kind)


def active_attack(attack: str, round: int) -> str | None:
    """The attack a Byzantine client makes in ``round`` (its KIND), or ``None`` before R."""
    kind, first = _split(attack)
    return kind if round >= first else None


def attack_factor(attack: str) -> float:
    """The factor K of an attack spec: ``scale:K`` → K, ``signflip`` → −1."""
    kind, _, value = attack.partition(":")
    if kind == "signflip" and not value:
        return -1.0
    if kind == "scale":
        try:
            return float(value)
        except ValueError:
            raise FlowError(f"attack {attack!r}: scale:K needs a number K") from None
    raise FlowError(f"unknown attack {attack!r} (expected scale:K, signflip or silent)")


def apply_attack(attack: str, before: Weights, after: Weights) -> Weights:
    """What a Byzantine client sends instead of its honest weights (simulation only):
    ``scale:K`` sends ``before + K * (after - before)`` (K = 1000: a huge update), ``signflip``
    sends ``before - (after - before)``. Integer arrays are left honest."""
    factor = attack_factor(attack)
    out: Weights = {}
    for name, new in after.items():
        old = before[name]
        if np.issubdtype(new.dtype, np.floating):
            out[name] = (old + factor * (new - old)).astype(new.dtype)
        else:
            out[name] = new
    return out
