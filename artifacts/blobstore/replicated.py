"""A blob store replicated over several stores ("nodes"), each blob kept on ``r`` of them.

Placement is rendezvous (highest-random-weight) hashing on the CID. A node's weight for a CID is
the SHA-256 of its node id and the CID's text, separated by one newline, read as a big-endian
integer::

    weight(node_id, cid) = int(sha256(node_id.encode("utf-8") + b"\\n" + str(cid).encode()))

so ``printf '%s\\n%s' "$NODE" "$CID" | sha256sum`` checks it by hand. Nodes are ranked by
descending weight (ties, practically impossible, by node id); the first ``r`` are the CID's
*home* nodes. Removing a node moves only the CIDs that had it as a home node; adding one moves
only the CIDs it now ranks among the first ``r`` for.

- **Writes** go to the home nodes in rank order (in parallel); a node that fails is replaced by
  the next one in the ranking. A put returns only when ``r`` copies were written, otherwise it
  raises :class:`ReplicationError` saying how many were. The copies it did make are left in
  place (they are correct bytes; :meth:`ReplicatedBlobStore.repair` and gc deal with them).
  As with every backend, a copy is durable once :meth:`ReplicatedBlobStore.flush` returns.
- **Reads** try the nodes in rank order, each through the replica's own ``get``, which re-hashes
  what it read. A node that serves damaged bytes or cannot be reached is recorded as a
  *suspect* and the next one is tried. After a good read, every home node that was found
  missing the blob or holding a damaged copy is given the good bytes again (read repair; best
  effort, never an error to the caller).
- **Not found** is answered only when fewer than ``r`` nodes failed to answer: a blob
  acknowledged with ``r`` copies on distinct nodes then still has a copy on a node that
  answered. With more nodes unreachable the store cannot tell, and raises
  :class:`ReplicationError` naming what each node said. The same rule applies to ``stat``,
  ``has`` and ``iter_cids``.
- **Failure awareness**: a node that raised a connection-type error (``ConnectionError`` or
  ``TimeoutError``, such as ``PeerUnavailableError``, or an ``OSError`` that is not one of our
  own errors) is tried last for ``backoff`` seconds, so hot paths do not wait on it while
  other nodes can answer. Maintenance operations (``delete``, ``iter_cids``, ``repair``) ask
  every node.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from artifacts.blobstore.base import BlobStat, BlobStore
from artifacts.cid import CID, HashName, as_cid
from artifacts.errors import (
    ArtifactError,
    BlobNotFoundError,
    CorruptBlobError,
    ReplicationError,
)

__all__ = ["NodeRepairCounts", "RepairReport", "Replica", "ReplicatedBlobStore"]

_DEFAULT_BACKOFF_SECONDS = 5.0
_MAX_WRITE_THREADS = 8

# What a replica's failure means for one operation.
_MISSING = "missing"  # answered: it does not hold the blob
_CORRUPT = "corrupt"  # answered with bytes that do not hash to the CID
_DOWN = "unavailable"  # did not answer (connection, timeout, I/O): backed off
_FAILED = "failed"  # answered with another error of ours (read-only, busy...)
_NO_ANSWER = (_DOWN, _FAILED)


@dataclass(frozen=True, slots=True)
class Replica:
    """One node of a replicated store: a unique id (what placement hashes) and its store."""

    node_id: str
    store: BlobStore


@dataclass(frozen=True, slots=True)
class NodeRepairCounts:
    """What :meth:`ReplicatedBlobStore.repair` found and did on one node."""

    verified: int = 0  # copies the node should hold that re-hashed correctly
    copied: int = 0  # verified copies written to it
    corrupt: int = 0  # damaged copies found on it (replaced when a good copy existed)
    failed: int = 0  # operations on it that failed for want of an answer


@dataclass(frozen=True, slots=True)
class RepairReport:
    """The outcome of :meth:`ReplicatedBlobStore.repair`."""

    checked: int  # distinct CIDs examined
    copied: int  # verified copies written, over all nodes
    missing: tuple[CID, ...]  # CIDs with no good copy on any reachable node: not repairable
    under_replicated: tuple[CID, ...]  # repairable CIDs still short of r copies (nodes down)
    unreachable: tuple[str, ...]  # nodes that failed to answer during the run
    per_node: Mapping[str, NodeRepairCounts] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Whether every CID now has ``r`` verified copies."""
        return not self.missing and not self.under_replicated


def rendezvous_weight(node_id: str, cid: CID) -> int:
    """The weight of ``node_id`` for ``cid``: higher ranks first (see the module docstring)."""
    digest = hashlib.sha256(node_id.encode("utf-8") + b"\n" + str(cid).encode("ascii")).digest()
    return int.from_bytes(digest, "big")


class ReplicatedBlobStore(BlobStore):
    """Blobs kept on ``r`` of several replica stores, placed by rendezvous hashing on the CID.

    ``r`` larger than the number of replicas is accepted, but then every put raises
    :class:`ReplicationError` (a put is acknowledged only with ``r`` copies). ``backoff`` is how
    long (seconds) a node that failed to answer is tried last; ``max_workers`` bounds the
    threads that write copies in parallel (1 writes them one after another).
    """

    def __init__(
        self,
        replicas: Sequence[Replica],
        r: int = 2,
        *,
        read_only: bool = False,
        hash: HashName = "sha2-256",
        backoff: float = _DEFAULT_BACKOFF_SECONDS,
        max_workers: int | None = None,
    ) -> None:
        super().__init__(read_only=read_only, hash=hash)
        replicas = tuple(replicas)
        if not replicas:
            raise ValueError("a replicated store needs at least one replica")
        ids = [rep.node_id for rep in replicas]
        if any(not isinstance(i, str) or not i for i in ids):
            raise ValueError(f"node ids must be non-empty strings, got {ids!r}")
        if len(set(ids)) != len(ids):
            raise ValueError(f"node ids must be unique, got {ids!r}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"replication factor r must be an integer >= 1, got {r!r}")
        if backoff < 0:
            raise ValueError(f"backoff must be >= 0 seconds, got {backoff!r}")
        self._replicas = replicas
        self._by_id = {rep.node_id: rep for rep in replicas}
        self._r = r
        # Copies that must exist on distinct nodes; fewer nodes failing than this still leaves
        # every acknowledged blob on a node that answers.
        self._quorum = min(r, len(replicas))
        self._backoff = float(backoff)
        if max_workers is None:
            max_workers = min(len(replicas), _MAX_WRITE_THREADS)
        self._max_workers = max(1, max_workers)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._suspects: dict[str, str] = {}
        self._down_until: dict[str, float] = {}
        self._dirty: set[str] = set()  # nodes written since the last flush

    def __repr__(self) -> str:
        nodes = ", ".join(rep.node_id for rep in self._replicas)
        return f"ReplicatedBlobStore(nodes=[{nodes}], r={self._r}, read_only={self.read_only})"

    def __getstate__(self) -> dict[str, object]:
        return {
            "replicas": self._replicas,
            "r": self._r,
            "read_only": self.read_only,
            "hash": self.hash_name,
            "backoff": self._backoff,
            "max_workers": self._max_workers,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["replicas"],
            state["r"],
            read_only=state["read_only"],
            hash=state["hash"],
            backoff=state["backoff"],
            max_workers=state["max_workers"],
        )

    def close(self) -> None:
        """Stop the write threads (a later put starts them again)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- configuration and health -------------------------------------------------------------
    @property
    def replicas(self) -> tuple[Replica, ...]:
        return self._replicas

    @property
    def r(self) -> int:
        """The replication factor: copies a put must make before it returns."""
        return self._r

    @property
    def suspects(self) -> Mapping[str, str]:
        """Nodes that failed or served damaged bytes: node id -> the latest reason (a copy)."""
        with self._lock:
            return dict(self._suspects)

    def clear_suspects(self, node_id: str | None = None) -> None:
        """Forget the suspicion on one node (or on all) and stop backing off from it."""
        with self._lock:
            if node_id is None:
                self._suspects.clear()
                self._down_until.clear()
            else:
                self._suspects.pop(node_id, None)
                self._down_until.pop(node_id, None)

    # -- placement ----------------------------------------------------------------------------
    def ranking(self, cid: str | CID) -> list[str]:
        """Every node id, in the order reads try them for ``cid`` (home nodes first)."""
        return [rep.node_id for rep in self._rank(as_cid(cid))]

    def placement(self, cid: str | CID) -> list[str]:
        """The home nodes of ``cid``: the first ``r`` of its ranking (all nodes if fewer)."""
        return self.ranking(cid)[: self._r]

    def _rank(self, cid: CID) -> list[Replica]:
        return sorted(
            self._replicas,
            key=lambda rep: (-rendezvous_weight(rep.node_id, cid), rep.node_id),
        )

    def _ordered(self, cid: CID) -> tuple[list[Replica], int]:
        """The ranking with nodes currently backed off moved to the end; how many are not."""
        ranked = self._rank(cid)
        now = time.monotonic()
        with self._lock:
            down = {node for node, until in self._down_until.items() if until > now}
        if not down:
            return ranked, len(ranked)
        live = [rep for rep in ranked if rep.node_id not in down]
        return live + [rep for rep in ranked if rep.node_id in down], len(live)

    # -- bookkeeping of failures --------------------------------------------------------------
    def _failure(self, replica: Replica, exc: Exception) -> tuple[str, str]:
        """Classify a replica's error as (kind, what it said), recording suspects and back-off.

        An error that is neither one of ours nor an ``OSError`` is a bug, not a node failure:
        it is re-raised.
        """
        if isinstance(exc, BlobNotFoundError):
            return _MISSING, "not found"
        if isinstance(exc, CorruptBlobError):
            kind, said = _CORRUPT, f"corrupt copy: {exc.detail}"
        elif isinstance(exc, ConnectionError | TimeoutError):  # PeerUnavailableError included
            kind, said = _DOWN, f"unavailable: {type(exc).__name__}: {exc}"
        elif isinstance(exc, ArtifactError):  # read-only, access denied, a protocol error...
            kind, said = _FAILED, f"{type(exc).__name__}: {exc}"
        elif isinstance(exc, OSError):  # a disk or socket error of the replica's own
            kind, said = _DOWN, f"unavailable: {type(exc).__name__}: {exc}"
        else:
            raise exc
        with self._lock:
            self._suspects[replica.node_id] = said
            if kind == _DOWN and self._backoff > 0:
                self._down_until[replica.node_id] = time.monotonic() + self._backoff
        return kind, said

    def _answered(self, replica: Replica) -> None:
        """A node answered: stop backing off from it (its suspicion stays on record)."""
        if replica.node_id in self._down_until:
            with self._lock:
                self._down_until.pop(replica.node_id, None)

    def _missing_error(
        self, cid: CID, failures: Mapping[str, tuple[str, str]]
    ) -> BlobNotFoundError | CorruptBlobError | ReplicationError:
        """The error for a blob no replica served (see "not found" in the module docstring)."""
        kinds = [kind for kind, _ in failures.values()]
        silent = sum(kind in _NO_ANSWER for kind in kinds)
        said = {node: reason for node, (_, reason) in failures.items()}
        if _CORRUPT in kinds and not silent:
            detail = "no intact copy on any replica (" + _joined(said) + ")"
            return CorruptBlobError(cid, detail)
        if _CORRUPT not in kinds and silent < self._quorum:
            where = f"{len(self._replicas)} replicas"
            if silent:
                where += f" ({silent} unreachable)"
            return BlobNotFoundError(cid, where)
        return ReplicationError(
            cid,
            f"no replica could serve it ({silent} of {len(self._replicas)} did not answer)",
            failures=said,
        )

    # -- reads --------------------------------------------------------------------------------
    def get(self, cid: str | CID) -> bytes:
        """The bytes of ``cid`` from the first replica whose copy re-hashes correctly."""
        key = as_cid(cid)
        failures: dict[str, tuple[str, str]] = {}
        for replica in self._ordered(key)[0]:
            try:
                data = replica.store.get(key)  # every BlobStore.get re-hashes what it read
            except Exception as exc:
                failures[replica.node_id] = self._failure(replica, exc)
                continue
            self._answered(replica)
            if failures and not self.read_only:
                self._read_repair(key, data, failures)
            return data
        raise self._missing_error(key, failures)

    def _read(self, cid: CID) -> bytes:
        return self.get(cid)

    def _read_repair(self, cid: CID, data: bytes, failures: Mapping[str, tuple[str, str]]) -> None:
        """Give the verified bytes back to home nodes that lacked them or held a bad copy."""
        for node in self.placement(cid):
            kind = failures.get(node, ("", ""))[0]
            if kind not in (_MISSING, _CORRUPT):
                continue
            replica = self._by_id[node]
            try:
                _write_verified(replica.store, cid, data)
            except Exception as exc:
                self._failure(replica, exc)  # recorded; a repair never fails the read
            else:
                with self._lock:
                    self._dirty.add(node)

    def stat(self, cid: str | CID) -> BlobStat:
        """Size (from the first node in rank order) and the latest write time of any copy.

        The latest time is what a gc grace period must read: a re-put that reached only some
        nodes still counts as recent.
        """
        stats = self._stats(as_cid(cid), first_only=False)
        return BlobStat(stats[0].size, max(s.mtime for s in stats))

    def has(self, cid: str | CID) -> bool:
        try:
            self._stats(as_cid(cid), first_only=True)
        except BlobNotFoundError:
            return False
        return True

    def _stats(self, cid: CID, *, first_only: bool) -> list[BlobStat]:
        """Stats of the copies on nodes that answer (backed-off nodes only if none has it)."""
        ordered, live = self._ordered(cid)
        found: list[BlobStat] = []
        failures: dict[str, tuple[str, str]] = {}
        for index, replica in enumerate(ordered):
            if found and (first_only or index >= live):
                break
            try:
                found.append(replica.store.stat(cid))
            except Exception as exc:
                failures[replica.node_id] = self._failure(replica, exc)
            else:
                self._answered(replica)
        if not found:
            raise self._missing_error(cid, failures)
        return found

    # -- writes -------------------------------------------------------------------------------
    def _write(self, cid: CID, data: bytes | memoryview) -> None:
        """Write copies in rank order until ``r`` succeeded; raise if the ranking runs out."""
        candidates = iter(self._ordered(cid)[0])
        running: dict[Future[None], Replica] = {}
        stored: list[str] = []
        failures: dict[str, str] = {}

        def launch() -> bool:
            replica = next(candidates, None)
            if replica is None:
                return False
            running[self._submit(replica, cid, data)] = replica
            return True

        while len(stored) + len(running) < self._r and launch():
            pass
        while running:
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                replica = running.pop(future)
                exc = future.exception()
                if exc is None:
                    stored.append(replica.node_id)
                    self._answered(replica)
                    continue
                if not isinstance(exc, Exception):
                    raise exc
                failures[replica.node_id] = self._failure(replica, exc)[1]
                while len(stored) + len(running) < self._r and launch():
                    pass
        with self._lock:
            self._dirty.update(stored)
        if len(stored) < self._r:
            raise ReplicationError(
                cid,
                f"stored {len(stored)} of {self._r} copies"
                + (f" (on {', '.join(stored)})" if stored else ""),
                failures=failures,
                stored=len(stored),
                required=self._r,
            )

    def _submit(self, replica: Replica, cid: CID, data: bytes | memoryview) -> Future[None]:
        """Write one copy on the pool (or right here with ``max_workers=1``)."""
        if self._max_workers == 1:
            future: Future[None] = Future()
            try:
                _write_verified(replica.store, cid, data)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(None)
            return future
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._max_workers, "cidflow-replicate")
            pool = self._pool
        return pool.submit(_write_verified, replica.store, cid, data)

    def _delete(self, cid: CID) -> bool:
        """Delete from every replica; raise if any could not be asked (after trying all)."""
        existed = False
        failures: dict[str, str] = {}
        for replica in self._replicas:
            try:
                existed |= replica.store.delete(cid)
            except Exception as exc:
                failures[replica.node_id] = self._failure(replica, exc)[1]
        if failures:
            done = len(self._replicas) - len(failures)
            raise ReplicationError(
                cid, f"deleted on {done} of {len(self._replicas)} replicas", failures=failures
            )
        return existed

    def flush(self) -> None:
        """Flush every replica; raise if one that was written since the last flush fails."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        failures: dict[str, str] = {}
        for replica in self._replicas:
            try:
                replica.store.flush()
            except Exception as exc:
                reason = self._failure(replica, exc)[1]
                if replica.node_id in dirty:
                    failures[replica.node_id] = reason
        if failures:
            with self._lock:
                self._dirty.update(failures)
            raise ReplicationError(
                None, f"could not flush {len(failures)} written replicas", failures=failures
            )

    # -- listing ------------------------------------------------------------------------------
    def iter_cids(self) -> Iterator[CID]:
        """The union of every replica's CIDs, each once.

        A replica that cannot be listed is skipped while fewer than ``r`` are: every blob still
        has a copy on one that was listed. Beyond that, :class:`ReplicationError`.
        """
        seen: set[CID] = set()
        failures: dict[str, str] = {}
        for replica in self._replicas:
            try:
                for cid in replica.store.iter_cids():
                    if cid not in seen:
                        seen.add(cid)
                        yield cid
            except Exception as exc:
                failures[replica.node_id] = self._failure(replica, exc)[1]
                if len(failures) >= self._quorum:
                    raise ReplicationError(
                        None,
                        f"could not list {len(failures)} of {len(self._replicas)} replicas; "
                        "the listing would be incomplete",
                        failures=failures,
                    ) from exc

    # -- repair -------------------------------------------------------------------------------
    def repair(self, progress: Callable[[int, int], None] | None = None) -> RepairReport:
        """Give every CID held on any replica ``r`` verified copies on its home nodes.

        For each CID, the reachable nodes are walked in rank order until ``r`` hold a copy that
        re-hashes correctly; a node that lacks it or holds a damaged copy receives the bytes of
        a copy that was verified (never anything else); a node that does not answer is passed
        over for the rest of the run and the next node in the ranking takes its place. A CID
        with no good copy anywhere is reported ``missing`` and left as it is. Copies on nodes
        that are no longer home nodes are kept. ``progress(done, total)`` is called after each
        CID.
        """
        self._check_writable()
        run = _RepairRun(self)
        cids: set[CID] = set()
        for replica in self._replicas:
            try:
                cids.update(replica.store.iter_cids())
            except Exception as exc:
                run.down(replica, exc)
        ordered = sorted(cids, key=str)
        for done, cid in enumerate(ordered, start=1):
            run.repair(cid)
            if progress is not None:
                progress(done, len(ordered))
        with self._lock:
            self._dirty.update(node for node, c in run.counts.items() if c["copied"])
        return RepairReport(
            checked=len(ordered),
            copied=sum(c["copied"] for c in run.counts.values()),
            missing=tuple(run.missing),
            under_replicated=tuple(run.under_replicated),
            unreachable=tuple(rep.node_id for rep in self._replicas if rep.node_id in run.gone),
            per_node={node: NodeRepairCounts(**c) for node, c in run.counts.items()},
        )


class _RepairRun:
    """The state of one :meth:`ReplicatedBlobStore.repair` run."""

    def __init__(self, store: ReplicatedBlobStore) -> None:
        self.store = store
        self.gone: set[str] = set()  # nodes that failed to answer: passed over from then on
        self.counts: dict[str, dict[str, int]] = {
            rep.node_id: {"verified": 0, "copied": 0, "corrupt": 0, "failed": 0}
            for rep in store.replicas
        }
        self.missing: list[CID] = []
        self.under_replicated: list[CID] = []

    def down(self, replica: Replica, exc: Exception) -> None:
        """A node failed to answer: record it and pass it over for the rest of the run."""
        self.store._failure(replica, exc)
        self._gone(replica)

    def _gone(self, replica: Replica) -> None:
        self.gone.add(replica.node_id)
        self.counts[replica.node_id]["failed"] += 1

    def _read(self, replica: Replica, cid: CID) -> bytes | None:
        """The node's copy if it re-hashes correctly; ``None`` if missing, damaged or silent."""
        try:
            return replica.store.get(cid)
        except Exception as exc:
            kind = self.store._failure(replica, exc)[0]
        if kind in _NO_ANSWER:
            self._gone(replica)
        elif kind == _CORRUPT:
            self.counts[replica.node_id]["corrupt"] += 1
        return None

    def repair(self, cid: CID) -> None:
        ranking = self.store._rank(cid)
        intact: set[str] = set()  # nodes read for this CID, by outcome
        lacking: set[str] = set()
        good: bytes | None = None

        def check(replica: Replica) -> None:
            nonlocal good
            data = self._read(replica, cid)
            if data is not None:
                intact.add(replica.node_id)
                good = data if good is None else good
            elif replica.node_id not in self.gone:
                lacking.add(replica.node_id)

        have = 0
        for replica in ranking:
            if have >= self.store.r:
                break
            if replica.node_id not in intact | lacking | self.gone:
                check(replica)
            if replica.node_id in self.gone:
                continue  # the next node in the ranking takes its place
            if replica.node_id in intact:
                self.counts[replica.node_id]["verified"] += 1
                have += 1
                continue
            # The node lacks a good copy: give it one, found on any node if need be.
            for other in ranking:
                if good is not None:
                    break
                if other.node_id not in intact | lacking | self.gone:
                    check(other)
            if good is None:
                self.missing.append(cid)
                return
            try:
                _write_verified(replica.store, cid, good)
            except Exception as exc:
                self.down(replica, exc)
                continue
            self.counts[replica.node_id]["copied"] += 1
            have += 1
        if have < self.store.r:
            self.under_replicated.append(cid)


def _write_verified(store: BlobStore, cid: CID, data: bytes | memoryview) -> None:
    """Store bytes already verified against ``cid`` without hashing them again."""
    store._check_writable()
    store._write(cid, data)


def _joined(said: Mapping[str, str]) -> str:
    return "; ".join(f"{node}: {reason}" for node, reason in said.items())
