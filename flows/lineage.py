"""Lineage: the graph of receipts from an artifact back to its source data.

Every receipt names the CIDs a task read and wrote. :func:`lineage` finds the receipt that
produced a CID (the one this home recorded last if several did: the order of its receipt
journal, never the times a receipt claims, which its signer chose), then the receipts that
produced its inputs, and so on, as a tree; each receipt is verified on the way (a tampered
one stops the walk with :class:`~flows.errors.ReceiptError`).
"""

from __future__ import annotations

from typing import Any

from artifacts.store import ArtifactStore
from flows.errors import ReceiptError
from flows.receipts import Receipt, load_receipt, parse_time, recorded_order

__all__ = ["lineage", "receipt_index", "to_dot"]


def receipt_index(store: ArtifactStore) -> dict[str, list[Receipt]]:
    """Output CID → the receipts that produced it (recorded last first; receipts this home
    never recorded after them, by their claimed end time but never later than when they were
    stored here). Records that are not receipts are skipped; receipts that do not verify
    raise."""
    index: dict[str, list[Receipt]] = {}
    for cid in store.records():
        try:
            receipt = load_receipt(store, cid)
        except ReceiptError as exc:
            if "not a" in str(exc):
                continue  # another kind of record
            raise
        for out in receipt.outputs:
            index.setdefault(out, []).append(receipt)
    order = recorded_order(store)

    def key(r: Receipt) -> tuple[int, float, str]:
        pos = order.get(str(r.cid))
        if pos is not None:
            return (1, float(pos), str(r.cid))
        stored = store.blobs.stat(r.cid).mtime
        try:
            claimed = parse_time(r.body["ended"])
        except ValueError:
            claimed = 0.0
        return (0, min(claimed, stored), str(r.cid))

    for receipts in index.values():
        if len(receipts) > 1:  # the key may stat a blob (a request on a cluster): only to choose
            receipts.sort(key=key, reverse=True)
    return index


def lineage(
    store: ArtifactStore,
    cid: str,
    *,
    receipt: str | None = None,
    index: dict[str, list[Receipt]] | None = None,
    max_depth: int = 64,
) -> dict[str, Any]:
    """``{"cid", "produced_by": {"receipt", "task", "node", "parameters", "ended", "inputs":
    [subtrees]} | None}``. ``receipt`` pins the producing receipt (a registry entry's)."""
    index = receipt_index(store) if index is None else index
    seen: set[str] = set()

    def walk(target: str, pinned: str | None, depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {"cid": target, "produced_by": None}
        if depth >= max_depth or target in seen:
            return node
        seen.add(target)
        if pinned is not None:
            rec: Receipt | None = load_receipt(store, pinned)
        else:
            candidates = index.get(target, [])
            rec = candidates[0] if candidates else None
        if rec is None:
            return node
        node["produced_by"] = {
            "receipt": str(rec.cid),
            "task": rec.task,
            "node": rec.node,
            "parameters": rec.body["parameters"],
            "ended": rec.body["ended"],
            "inputs": [walk(i, None, depth + 1) for i in rec.inputs],
        }
        return node

    return walk(cid, receipt, 0)


def to_dot(tree: dict[str, Any]) -> str:
    """Graphviz DOT of a lineage tree: artifacts as boxes, task runs as ellipses."""
    lines = ["digraph lineage {", "  rankdir=BT;", '  node [fontname="Helvetica"];']
    done: set[str] = set()

    def visit(node: dict[str, Any]) -> None:
        cid = node["cid"]
        if cid not in done:
            lines.append(f'  "{cid}" [shape=box, label="{cid[:16]}…"];')
            done.add(cid)
        run = node["produced_by"]
        if run is None:
            return
        rid = run["receipt"]
        if rid not in done:
            lines.append(f'  "{rid}" [shape=ellipse, label="{run["task"]}\\n{run["ended"]}"];')
            done.add(rid)
        lines.append(f'  "{rid}" -> "{cid}";')
        for child in run["inputs"]:
            visit(child)
            lines.append(f'  "{child["cid"]}" -> "{rid}";')

    visit(tree)
    lines.append("}")
    return "\n".join(dict.fromkeys(lines)) + "\n"
