"""Running a node-side flow on a cluster from a coordinator home (``cidflow --home DIR train``
after ``cluster up``).

Pick the node (:mod:`node_agent.scheduler`, or the one asked for), run deployment
``FLOW/NODE`` through Prefect (:func:`flows.remote.run_on_node`, the reason passed along so the
run's log says why it is there) with a run request signed by this home's coordinator key, then
trust nothing in the answer (:func:`flows.remote.verify_answer`): the receipt must be signed by
the key the node registered, be for these parameters, claim exactly the outputs the answer
names and no time in the future; it is then recorded in this home for ``lineage``.
"""

from __future__ import annotations

import time
from typing import Any

from artifacts.cid import cids_in
from artifacts.store import ArtifactStore
from flows.errors import FlowError, one_line
from flows.private import PRIVATE_PREFIX
from node_agent.errors import NodeAgentError
from node_agent.scheduler import choose_node, input_blobs

__all__ = ["run_on_cluster"]


def _inputs(params: dict[str, Any]) -> list[str]:
    """The input CIDs the scheduler weighs: the dataset's and the model's (a private dataset's
    name is no CID: only its node knows it)."""
    return cids_in([params.get("dataset"), params.get("model")])


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
    from flows.remote import Coordinator, run_on_node, verify_answer

    coordinator = Coordinator.for_home(store.home)
    nodes = [(n["name"], n["url"]) for n in cluster["storage"]["nodes"]]
    names = [name for name, _ in nodes]
    if node is not None:
        if node not in names:
            raise NodeAgentError(f"no node {node!r} in this cluster (nodes: {', '.join(names)})")
        reason = f"{node} was asked for (--node)"
    elif any(str(v).startswith(PRIVATE_PREFIX) for v in params.values()):
        raise NodeAgentError("a private dataset lives on one node: name it with --node")
    else:
        placement = choose_node(nodes, input_blobs(store, _inputs(params)), needs_gpu=needs_gpu)
        node, reason = placement.node, placement.reason
    sent = time.time()
    result = run_on_node(
        flow,
        node,
        {**params, "note": reason},
        timeout=timeout,
        api_url=cluster["prefect_api"],
        coordinator=coordinator,
    )
    private = [k for k, v in params.items() if str(v).startswith(PRIVATE_PREFIX)]
    try:
        verify_answer(store, coordinator, node, flow, params, result, sent=sent, private=private)
    except FlowError as exc:
        raise NodeAgentError(one_line(exc)) from None
    result["node"] = node
    result["scheduling"] = reason
    return result
