"""Running a node-side flow on a cluster from a coordinator home (``cidflow --home DIR train``
after ``cluster up``).

Pick the node (:mod:`node_agent.scheduler`, or the one asked for), run deployment
``FLOW/NODE`` through Prefect (:func:`flows.remote.run_on_node`, the reason passed along so the
run's log says why it is there), then trust nothing in the answer: the receipt is fetched from
the cluster, re-hashed and its signature checked (it must be the chosen node's key and name the
outputs reported), every output artifact's manifest is fetched and verified, and the receipt is
recorded in this home so ``lineage`` works here.
"""

from __future__ import annotations

import contextlib
from typing import Any

from artifacts.cid import as_cid
from artifacts.errors import InvalidCIDError
from artifacts.store import ArtifactStore
from flows.remote import PRIVATE_PREFIX
from node_agent.errors import NodeAgentError
from node_agent.scheduler import choose_node, input_blobs

__all__ = ["run_on_cluster"]


def _cids_in(params: dict[str, Any]) -> list[str]:
    out = []
    for key in ("dataset", "model"):
        value = params.get(key)
        if isinstance(value, str) and not value.startswith(PRIVATE_PREFIX):
            with contextlib.suppress(InvalidCIDError):
                out.append(str(as_cid(value)))
    return out


def run_on_cluster(
    store: ArtifactStore,
    cluster: dict[str, Any],
    flow: str,
    params: dict[str, Any],
    *,
    node: str | None = None,
    needs_gpu: bool = False,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Run ``flow`` with ``params`` on the cluster described by ``cluster`` (its
    ``cluster.json``); return the node's verified result plus ``node`` and ``scheduling``."""
    from flows.receipts import load_receipt
    from flows.remote import run_on_node

    nodes = [(n["name"], n["url"]) for n in cluster["storage"]["nodes"]]
    names = [name for name, _ in nodes]
    if node is not None:
        if node not in names:
            raise NodeAgentError(f"no node {node!r} in this cluster (nodes: {', '.join(names)})")
        reason = f"{node} was asked for (--node)"
    elif any(str(v).startswith(PRIVATE_PREFIX) for v in params.values()):
        raise NodeAgentError("a private dataset lives on one node: name it with --node")
    else:
        placement = choose_node(nodes, input_blobs(store, _cids_in(params)), needs_gpu=needs_gpu)
        node, reason = placement.node, placement.reason
    result = run_on_node(
        flow, node, {**params, "note": reason}, timeout=timeout, api_url=cluster["prefect_api"]
    )

    receipt_cid = result.get("receipt")
    if not isinstance(receipt_cid, str):
        raise NodeAgentError(f"{flow}/{node} answered without a receipt")
    receipt = load_receipt(store, receipt_cid)  # fetched from the cluster, hash + signature
    if receipt.body["node"] != result.get("node_id"):
        raise NodeAgentError(f"{flow}/{node}: the receipt is signed by another node")
    outputs = set(receipt.body["outputs"])
    for key in ("model", "predictions", "metrics_artifact"):
        cid = result.get(key)
        if cid is None:
            continue
        if str(cid) not in outputs:
            raise NodeAgentError(f"{flow}/{node}: {key} {cid} is not an output of its receipt")
        store.open_artifact(cid).metadata()  # manifest and metadata fetched and verified
    store.put_record(store.get_record(receipt_cid))  # recorded here: lineage from this home
    result["node"] = node
    result["scheduling"] = reason
    return result
