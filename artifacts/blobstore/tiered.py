"""A local blob store in front of a remote one: reads fill the local copy, writes go to both.

This is how a node agent (or a client of a cluster) works with the cluster's replicated store:
what it reads once is then local, and what it writes is acknowledged only when the remote
store has it too (for a replicated store: when ``r`` copies are durable). Bytes fetched from
the remote are verified by the remote store's ``get`` before they are cached, and a local copy
that fails its hash is replaced from the remote, never returned (DESIGN invariant 1).

Deletes and listings concern the local tier only: gc on one machine must never delete
another machine's copies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from artifacts.blobstore.base import BlobStat, BlobStore
from artifacts.cid import CID, as_cid
from artifacts.errors import ArtifactError, BlobNotFoundError, CorruptBlobError

__all__ = ["TieredBlobStore"]


class TieredBlobStore(BlobStore):
    """``local`` caches ``remote``; ``write_through`` (default) puts every new blob on both."""

    def __init__(self, local: BlobStore, remote: BlobStore, *, write_through: bool = True) -> None:
        super().__init__(read_only=local.read_only, hash=local.hash_name)
        self.local = local
        self.remote = remote
        self.write_through = write_through

    def __repr__(self) -> str:
        return f"TieredBlobStore({self.local!r} -> {self.remote!r})"

    # -- reads ---------------------------------------------------------------------------------
    def get(self, cid: str | CID) -> bytes:
        key = as_cid(cid)
        try:
            return self.local.get(key)
        except BlobNotFoundError:
            pass
        except CorruptBlobError:
            if self.local.supports_deletes:
                with contextlib.suppress(ArtifactError, OSError):
                    self.local.delete(key)  # never serve it again; refetch below
        data = self.remote.get(key)  # verified by the remote store
        if self.local.supports_writes:
            with contextlib.suppress(ArtifactError, OSError):
                self.local.put(data, cid=key)
        return data

    def _read(self, cid: CID) -> bytes:
        return self.get(cid)

    def stat(self, cid: str | CID) -> BlobStat:
        try:
            return self.local.stat(cid)
        except FileNotFoundError:
            return self.remote.stat(cid)

    # -- writes --------------------------------------------------------------------------------
    def _write(self, cid: CID, data: bytes | memoryview) -> None:
        self.local.put(data, cid=cid)
        if self.write_through:
            self.remote.put(data, cid=cid)

    def _delete(self, cid: CID) -> bool:
        return self.local.delete(cid)

    def iter_cids(self) -> Iterator[CID]:
        return self.local.iter_cids()

    def flush(self) -> None:
        self.local.flush()
        self.remote.flush()
