"""Signed run receipts: which code, parameters and input CIDs made which output CIDs, where.

A receipt is the canonical JSON ``{"body": BODY, "sig": SIG}`` where BODY holds the task name,
the hash of its code, its canonical parameters, input and output CIDs, the node id (the
fingerprint of the node key that signs), the environment (python, torch, platform) and the
start and end times. It is stored as a ``json`` blob (gc keeps it) and named by its CID;
lineage is the graph of receipts, walked from an output back to the source data.
"""

from __future__ import annotations

import calendar
import os
import platform
import sys
import time
from dataclasses import dataclass
from typing import Any, Final

from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import CID, as_cid
from artifacts.errors import InvalidCIDError
from artifacts.store import ArtifactStore
from flows.errors import ReceiptError
from registry.errors import RegistryError
from registry.identity import Identity, fingerprint, verify_signature

__all__ = [
    "JOURNAL",
    "RECEIPT_FORMAT",
    "Receipt",
    "environment",
    "load_receipt",
    "parse_time",
    "record_receipt",
    "recorded_order",
    "write_receipt",
]

RECEIPT_FORMAT: Final = "cidflow/receipt@1"
_FIELDS = {
    "format",
    "task",
    "code",
    "parameters",
    "inputs",
    "outputs",
    "node",
    "key",
    "environment",
    "started",
    "ended",
}


#: The receipts this home wrote or accepted, one CID a line, in the order it did: lineage
#: orders receipts by this record, never by the times a receipt claims.
JOURNAL: Final = "receipts.journal"


def record_receipt(store: ArtifactStore, cid: str | CID) -> None:
    """Append ``cid`` to this home's receipt journal (:data:`JOURNAL`, fsynced)."""
    path = store.home / JOURNAL
    with open(path, "a", encoding="ascii") as f:
        f.write(f"{as_cid(cid)}\n")
        f.flush()
        os.fsync(f.fileno())


def recorded_order(store: ArtifactStore) -> dict[str, int]:
    """Receipt CID → its position in this home's journal (later: larger)."""
    try:
        lines = (store.home / JOURNAL).read_text(encoding="ascii", errors="replace").split()
    except FileNotFoundError:
        return {}
    return {cid: pos for pos, cid in enumerate(lines)}


def environment() -> dict[str, str]:
    """Where a task ran: Python, torch (when loaded) and platform versions."""
    env = {"python": platform.python_version(), "platform": platform.platform()}
    torch = sys.modules.get("torch")
    if torch is not None:
        env["torch"] = str(torch.__version__)
    return env


def parse_time(text: Any) -> float:
    """A receipt's ISO time (``2026-12-04T17:05:11.123Z``) as Unix seconds (:class:`ValueError`
    if it is not one)."""
    if not isinstance(text, str):
        raise ValueError(f"receipt time {text!r} is not a string")
    whole = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return whole + (float("0" + text[19:-1]) if text[19:20] == "." else 0.0)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


@dataclass(frozen=True, slots=True)
class Receipt:
    """A verified receipt (construct with :func:`load_receipt` or :func:`write_receipt`)."""

    cid: CID
    body: dict[str, Any]

    @property
    def task(self) -> str:
        return str(self.body["task"])

    @property
    def inputs(self) -> list[str]:
        return list(self.body["inputs"])

    @property
    def outputs(self) -> list[str]:
        return list(self.body["outputs"])

    @property
    def node(self) -> str:
        return str(self.body["node"])


def write_receipt(
    store: ArtifactStore,
    identity: Identity,
    *,
    task: str,
    code: str,
    parameters: dict[str, Any],
    inputs: list[str],
    outputs: list[str],
    started: float,
    ended: float,
) -> Receipt:
    """Sign and store a receipt; return it with its CID."""
    for text in [*inputs, *outputs]:
        as_cid(text)  # only real CIDs are recorded
    body = {
        "format": RECEIPT_FORMAT,
        "task": task,
        "code": code,
        "parameters": parameters,
        "inputs": sorted(set(inputs)),
        "outputs": sorted(set(outputs)),
        "node": identity.id,
        "key": identity.public_key,
        "environment": environment(),
        "started": _iso(started),
        "ended": _iso(ended),
    }
    signed = {"body": body, "sig": identity.sign(canonical_json(body))}
    receipt = Receipt(store.put_record(canonical_json(signed)), body)
    if not store.read_only:
        record_receipt(store, receipt.cid)
    return receipt


def load_receipt(store: ArtifactStore, cid: str | CID) -> Receipt:
    """Fetch a receipt, re-hash it and check its signature (:class:`ReceiptError` if bad)."""
    key = as_cid(cid)
    try:
        obj = loads_strict(store.get_record(key))
    except ValueError as exc:
        raise ReceiptError(f"receipt {key} is not strict JSON: {exc}") from None
    if not isinstance(obj, dict) or set(obj) != {"body", "sig"}:
        raise ReceiptError(f"{key} is not a receipt (expected body and sig)")
    body = obj["body"]
    if not isinstance(body, dict) or set(body) != _FIELDS or body["format"] != RECEIPT_FORMAT:
        raise ReceiptError(f"{key} is not a {RECEIPT_FORMAT} receipt")
    try:
        if body["node"] != fingerprint(body["key"]):
            raise ReceiptError(f"receipt {key}: node id does not match its key")
        verify_signature(body["key"], obj["sig"], canonical_json(body))
        for c in [*body["inputs"], *body["outputs"]]:
            as_cid(c)
    except (RegistryError, InvalidCIDError, TypeError) as exc:
        raise ReceiptError(f"receipt {key} does not verify: {exc}") from None
    return Receipt(key, body)
