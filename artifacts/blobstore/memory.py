"""An in-memory blob store, for tests and short-lived pipelines."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

from artifacts.blobstore.base import BlobStat, BlobStore
from artifacts.cid import CID, HashName, as_cid
from artifacts.errors import BlobNotFoundError

__all__ = ["MemoryBlobStore"]


class MemoryBlobStore(BlobStore):
    """Blobs in a dict, guarded by a lock; nothing survives the process."""

    def __init__(self, *, read_only: bool = False, hash: HashName = "sha2-256") -> None:
        super().__init__(read_only=read_only, hash=hash)
        self._blobs: dict[CID, tuple[bytes, float]] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryBlobStore(blobs={len(self._blobs)}, read_only={self.read_only})"

    def _read(self, cid: CID) -> bytes:
        try:
            return self._blobs[cid][0]
        except KeyError:
            raise BlobNotFoundError(cid, "memory") from None

    def _write(self, cid: CID, data: bytes | memoryview) -> None:
        with self._lock:
            old = self._blobs.get(cid)
            # Keep an intact existing copy (refreshing its time); replace a damaged one.
            payload = old[0] if old is not None and cid.matches(old[0]) else bytes(data)
            self._blobs[cid] = (payload, time.time())

    def stat(self, cid: str | CID) -> BlobStat:
        key = as_cid(cid)
        try:
            data, mtime = self._blobs[key]
        except KeyError:
            raise BlobNotFoundError(key, "memory") from None
        return BlobStat(len(data), mtime)

    def _delete(self, cid: CID) -> bool:
        with self._lock:
            return self._blobs.pop(cid, None) is not None

    def iter_cids(self) -> Iterator[CID]:
        with self._lock:
            keys = list(self._blobs)
        return iter(keys)

    def _replace_raw(self, cid: str | CID, data: bytes) -> None:
        """Overwrite stored bytes without hashing: a fault-injection hook for tests."""
        key = as_cid(cid)
        with self._lock:
            self._blobs[key] = (data, time.time())
