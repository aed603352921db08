"""Canonical JSON: the one byte encoding of a JSON value that every cidflow process agrees on.

UTF-8, keys sorted by code point, no insignificant whitespace, no NaN or infinities. Manifests,
receipts and registry entries are all encoded this way, so equal values give equal CIDs.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["canonical_json", "loads_strict"]


def canonical_json(value: Any) -> bytes:
    """Encode ``value`` as canonical JSON bytes.

    Raises ``ValueError`` for NaN/infinite floats and for nesting deeper than the recursion
    limit, ``TypeError`` for values JSON cannot hold.
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except RecursionError:
        raise ValueError("the value nests too deep for JSON") from None
    return text.encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"JSON number {text} does not fit in a finite float")
    return value


def _unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def loads_strict(data: bytes) -> Any:
    """Parse JSON bytes strictly: UTF-8 only, no NaN/Infinity, no duplicate keys; nesting
    deeper than the interpreter's recursion limit is a ``ValueError`` (a stranger's document
    must not raise ``RecursionError`` in whoever reads it)."""
    text = data.decode("utf-8")
    try:
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            object_pairs_hook=_unique_object,
        )
    except RecursionError:
        raise ValueError("JSON nests too deep") from None
