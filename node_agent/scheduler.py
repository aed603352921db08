"""Choosing the node a flow run goes to.

A node qualifies when it answers ``GET /v1/info`` and has the hardware the run needs (a GPU,
say); among those, the one already holding the most bytes of the run's input artifacts wins
(fewest bytes to fetch), ties going to the most CPUs and then the name. The reason is a
sentence the coordinator logs and passes to the run, so the run's own log says why it is
there. Prefect does the executing; this only picks the deployment ``FLOW/NODE``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from artifacts.store import ArtifactStore
from node_agent.errors import NodeAgentError

__all__ = ["Candidate", "NoNodeError", "Placement", "choose_node", "input_blobs"]

#: Blobs probed per node at most (a large input is judged on an even sample).
SAMPLE = 256


class NoNodeError(NodeAgentError, RuntimeError):
    """No live node satisfies the run's needs."""


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    url: str
    live: bool
    cpus: int = 0
    gpus: int = 0
    held_bytes: int = 0
    held_blobs: int = 0
    why_not: str = ""


@dataclass(frozen=True, slots=True)
class Placement:
    node: str
    reason: str
    candidates: tuple[Candidate, ...] = field(default_factory=tuple)


def input_blobs(store: ArtifactStore, cids: Iterable[str]) -> dict[str, int]:
    """CID → size of every blob of the artifacts ``cids`` (root, tables, chunks)."""
    out: dict[str, int] = {}
    for cid in cids:
        art = store.open_artifact(cid)
        out[str(art.cid)] = 0
        for _key, ref in art.store.items():
            out[str(ref.cid)] = int(ref.size)
        for node in art.tree_nodes():
            out.setdefault(str(node), 0)
    return out


def _probe(name: str, url: str, blobs: Sequence[tuple[str, int]], timeout: float) -> Candidate:
    import httpx

    try:
        with httpx.Client(base_url=url, timeout=timeout) as client:
            info: Any = client.get("/v1/info").json()
            hardware = info.get("hardware") or {}
            gpus = len(hardware.get("gpus") or [])
            held = held_bytes = 0
            for cid, size in blobs:
                if client.head(f"/v1/blobs/{cid}").status_code == 200:
                    held += 1
                    held_bytes += size
    except (httpx.HTTPError, ValueError, AttributeError) as exc:
        return Candidate(name, url, live=False, why_not=f"not answering ({type(exc).__name__})")
    return Candidate(name, url, True, int(hardware.get("cpu_count") or 0), gpus, held_bytes, held)


def choose_node(
    nodes: Sequence[tuple[str, str]],
    blobs: dict[str, int],
    *,
    needs_gpu: bool = False,
    timeout: float = 2.0,
) -> Placement:
    """The best of ``nodes`` ((name, url)) for a run reading ``blobs`` (CID → size)."""
    items = sorted(blobs.items())
    if len(items) > SAMPLE:
        step = len(items) / SAMPLE
        items = [items[int(i * step)] for i in range(SAMPLE)]
    with ThreadPoolExecutor(max(1, min(8, len(nodes)))) as pool:
        found = list(pool.map(lambda n: _probe(n[0], n[1], items, timeout), nodes))
    fit = [c for c in found if c.live and (c.gpus > 0 or not needs_gpu)]
    if not fit:
        why = "; ".join(
            f"{c.name}: {c.why_not or 'no GPU'}" for c in found
        ) or "no nodes configured"  # fmt: skip
        raise NoNodeError(f"no node can run this{' (needs a GPU)' if needs_gpu else ''}: {why}")
    best = max(fit, key=lambda c: (c.held_bytes, c.held_blobs, c.cpus, [-ord(x) for x in c.name]))
    total = sum(size for _, size in items)
    others = ", ".join(
        f"{c.name} {_share(c.held_bytes, total)}" if c.live else f"{c.name} {c.why_not}"
        for c in found if c is not best
    )  # fmt: skip
    reason = (
        f"chose {best.name}: holds {best.held_blobs}/{len(items)} input blobs "
        f"({_share(best.held_bytes, total)} of the input bytes), {best.cpus} CPU(s), "
        f"{best.gpus} GPU(s){' (a GPU was required)' if needs_gpu else ''}"
        + (f"; others: {others}" if others else "")
    )
    return Placement(best.name, reason, tuple(found))


def _share(part: int, total: int) -> str:
    return f"{100 * part / total:.0f}%" if total else "0%"
