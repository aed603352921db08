"""Compute nodes in the registry: signed ``node`` entries, the latest one per node, liveness.

A node agent announces itself with a ``node`` entry signed by its own key::

    {"type": "node", "key": PUBKEY, "timestamp": ..., "nonce": ..., "node_id": "pk...",
     "endpoint": "http://10.0.0.7:8470", "capacity": 107374182400, "hardware": {...},
     "name": "lab-gpu-1", "used": 52428800}

``node_id`` must be the fingerprint of the signing key (a registry rule), so nobody can announce
on another node's behalf; ``capacity`` is in bytes (``null``: no limit); ``name`` and ``used``
are optional. The registry keeps the latest entry per node id (:class:`NodeInfo`).

**Heartbeats** are re-announcements: a fresh signed entry whose timestamp is the heartbeat. The
log keeps every entry forever, so a node adds one entry per heartbeat: the intended interval is
minutes, not seconds (:data:`HEARTBEAT_INTERVAL`, one minute; about 1,440 entries a day per
node), and a node is *stale* once its last heartbeat is older than ``stale_after``
(:data:`STALE_AFTER`, three missed heartbeats). :func:`node_status` also calls a node stale
whose timestamp lies further in the future than :data:`CLOCK_SKEW` (a node cannot make itself
live forever by dating its entry ahead). With ``probe``, a node is live only if it also answers
``GET {endpoint}/v1/info`` with its own ``node_id`` (:func:`probe_node`).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, Literal

from artifacts.canonical import loads_strict
from registry.entries import Record, Signed, check_endpoint, make_body
from registry.errors import InvalidEntryError
from registry.identity import Identity

__all__ = [
    "CLOCK_SKEW",
    "HEARTBEAT_INTERVAL",
    "STALE_AFTER",
    "NodeInfo",
    "NodeStatus",
    "check_nodes",
    "node_entry",
    "node_status",
    "probe_node",
]

HEARTBEAT_INTERVAL: Final = 60.0
STALE_AFTER: Final = 180.0
CLOCK_SKEW: Final = 60.0
MAX_INFO_BYTES: Final = 64 << 10  # the most of a /v1/info answer a probe reads
PROBE_THREADS: Final = 16

NodeStatus = Literal["live", "stale"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """The latest announcement of one node; ``timestamp`` is its last heartbeat."""

    node_id: str
    name: str | None
    endpoint: str
    capacity: int | None
    used: int | None
    hardware: dict[str, Any]
    seq: int
    timestamp: str

    @classmethod
    def from_body(cls, body: dict[str, Any], seq: int) -> NodeInfo:
        """The info a validated ``node`` body, appended at ``seq``, gives."""
        if body.get("type") != "node":
            raise InvalidEntryError(f"a {body.get('type')} entry is not a node announcement")
        return cls(
            body["node_id"], body.get("name"), body["endpoint"], body["capacity"],
            body.get("used"), dict(body["hardware"]), seq, body["timestamp"],
        )  # fmt: skip

    @classmethod
    def from_record(cls, record: Record) -> NodeInfo:
        return cls.from_body(record.entry.body, record.seq)

    @property
    def heartbeat(self) -> float:
        """The last heartbeat as seconds since the epoch."""
        return float(calendar.timegm(time.strptime(self.timestamp, "%Y-%m-%dT%H:%M:%SZ")))

    def as_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id, "name": self.name, "endpoint": self.endpoint,
            "capacity": self.capacity, "used": self.used, "hardware": self.hardware,
            "seq": self.seq, "timestamp": self.timestamp,
        }  # fmt: skip


def sort_key(info: NodeInfo) -> tuple[bool, str, str]:
    """Listing order: named nodes by name, then unnamed ones, each by node id."""
    return (info.name is None, info.name or "", info.node_id)


def node_entry(
    identity: Identity,
    *,
    endpoint: str,
    capacity: int | None,
    hardware: dict[str, Any],
    name: str | None = None,
    used: int | None = None,
) -> Signed:
    """A signed ``node`` announcement (or heartbeat) of the node whose key is ``identity``."""
    check_endpoint(endpoint)  # the clearest error first
    fields: dict[str, Any] = {
        "node_id": identity.id, "endpoint": endpoint, "capacity": capacity, "hardware": hardware,
    }  # fmt: skip
    if name:
        fields["name"] = name
    if used is not None:
        fields["used"] = used
    return Signed.sign(make_body("node", identity, **fields), identity)


def fresh(info: NodeInfo, now: float, *, stale_after: float = STALE_AFTER) -> bool:
    """Whether the last heartbeat is at most ``stale_after`` seconds old (and not dated more
    than :data:`CLOCK_SKEW` ahead of ``now``)."""
    age = now - info.heartbeat
    return -CLOCK_SKEW <= age <= stale_after


def probe_node(endpoint: str, node_id: str, timeout: float = 1.0) -> bool:
    """Whether ``GET {endpoint}/v1/info`` answers, within ``timeout`` seconds, a JSON object
    naming ``node_id``. Never raises: anything else (unreachable, slow, another node, not JSON,
    more than :data:`MAX_INFO_BYTES`) is ``False``. Connects directly (proxy settings from the
    environment are ignored) and follows no redirects."""
    import httpx

    try:
        check_endpoint(endpoint)
    except InvalidEntryError:
        return False
    deadline = time.monotonic() + timeout
    body = bytearray()
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as http,
            http.stream(
                "GET", endpoint.rstrip("/") + "/v1/info", headers={"Accept": "application/json"}
            ) as resp,
        ):
            if resp.status_code != 200:
                return False
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > MAX_INFO_BYTES or time.monotonic() > deadline:
                    return False
        obj = loads_strict(bytes(body))
    except (httpx.HTTPError, ValueError):  # (UnicodeDecodeError is a ValueError)
        return False
    return isinstance(obj, dict) and obj.get("node_id") == node_id


def node_status(
    info: NodeInfo,
    now: float,
    *,
    stale_after: float = STALE_AFTER,
    probe: bool = False,
    timeout: float = 1.0,
) -> NodeStatus:
    """``"live"`` when the last heartbeat is fresh (see :func:`fresh`) and, with ``probe``, the
    node answers for its id at its endpoint (:func:`probe_node`); ``"stale"`` otherwise."""
    if not fresh(info, now, stale_after=stale_after):
        return "stale"
    if probe and not probe_node(info.endpoint, info.node_id, timeout):
        return "stale"
    return "live"


def check_nodes(
    infos: Iterable[NodeInfo],
    *,
    now: float | None = None,
    stale_after: float = STALE_AFTER,
    probe: bool = True,
    timeout: float = 1.0,
) -> list[tuple[NodeInfo, NodeStatus, bool | None]]:
    """``(info, status, probed)`` for each node, in order; ``probed`` is the probe's answer, or
    ``None`` where no probe ran (``probe`` off, or the heartbeat already stale). Probes run in
    parallel, so a listing takes about one ``timeout`` however many nodes are down."""
    found = list(infos)
    now = time.time() if now is None else now
    is_fresh = [fresh(i, now, stale_after=stale_after) for i in found]
    todo = [i for i, ok in zip(found, is_fresh, strict=True) if ok and probe]
    answers: dict[int, bool] = {}
    if todo:
        with ThreadPoolExecutor(min(PROBE_THREADS, len(todo))) as pool:
            results = pool.map(lambda i: probe_node(i.endpoint, i.node_id, timeout), todo)
            answers = {id(i): ok for i, ok in zip(todo, results, strict=True)}
    out: list[tuple[NodeInfo, NodeStatus, bool | None]] = []
    for info, ok in zip(found, is_fresh, strict=True):
        probed = answers.get(id(info))
        live = ok and probed is not False
        out.append((info, "live" if live else "stale", probed))
    return out
