"""The abstract blob store: immutable byte strings stored under their CID.

A backend implements five primitive methods (``_read``, ``_write``, ``stat``, ``delete``,
``iter_cids``); everything a caller uses is built on them here, once, so every backend hashes
what it returns, refuses writes when read-only and answers the same errors.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from artifacts.cid import CID, CodecName, HashName, as_cid, compute_cid
from artifacts.errors import CorruptBlobError, ReadOnlyError

__all__ = ["BlobStat", "BlobStore"]


@dataclass(frozen=True, slots=True)
class BlobStat:
    """Size in bytes and last-written time (POSIX seconds) of a stored blob."""

    size: int
    mtime: float


class BlobStore(ABC):
    """Content-addressed storage of immutable blobs.

    ``put`` hashes the bytes and stores them under their CID; ``get`` re-hashes what it read and
    raises :class:`CorruptBlobError` naming the CID on a mismatch, so no backend ever returns
    bytes that are not the CID's.
    """

    def __init__(self, *, read_only: bool = False, hash: HashName = "sha2-256") -> None:
        self._read_only = read_only
        self._hash: HashName = hash

    # -- capabilities -------------------------------------------------------------------------
    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def hash_name(self) -> HashName:
        return self._hash

    @property
    def supports_writes(self) -> bool:
        return not self._read_only

    @property
    def supports_deletes(self) -> bool:
        return not self._read_only

    @property
    def supports_listing(self) -> bool:
        return True

    # -- primitives a backend implements ------------------------------------------------------
    @abstractmethod
    def _read(self, cid: CID) -> bytes:
        """The stored bytes, unverified; :class:`BlobNotFoundError` if absent."""

    @abstractmethod
    def _write(self, cid: CID, data: bytes | memoryview) -> None:
        """Store ``data`` (already known to hash to ``cid``) atomically and durably.

        Must be idempotent and safe against concurrent writers of the same CID; an existing
        intact copy is kept and its last-written time refreshed.
        """

    @abstractmethod
    def stat(self, cid: str | CID) -> BlobStat:
        """Size and last-written time; :class:`BlobNotFoundError` if absent."""

    @abstractmethod
    def _delete(self, cid: CID) -> bool:
        """Remove the blob; whether it existed."""

    @abstractmethod
    def iter_cids(self) -> Iterator[CID]:
        """Every stored CID, in no particular order (temporary files are never listed)."""

    def flush(self) -> None:  # noqa: B027 - optional hook, a no-op for stores without one
        """Make every completed ``put`` durable (a backend may batch directory syncs)."""

    # -- the API callers use ------------------------------------------------------------------
    def put(
        self, data: bytes | memoryview, *, codec: CodecName = "raw", cid: str | CID | None = None
    ) -> CID:
        """Store ``data``; return its CID.

        With ``cid`` given (bytes received from elsewhere), the bytes are hashed with that CID's
        function and refused with :class:`CorruptBlobError` unless they match.
        """
        self._check_writable()
        if cid is None:
            actual = compute_cid(data, codec=codec, hash=self._hash)
        else:
            actual = as_cid(cid)
            if not actual.matches(data):
                raise CorruptBlobError(actual, "received bytes do not match the CID")
        self._write(actual, data)
        return actual

    def get(self, cid: str | CID) -> bytes:
        """The bytes stored under ``cid``, verified against it."""
        key = as_cid(cid)
        data = self._read(key)
        if not key.matches(data):
            raise CorruptBlobError(key, f"stored {len(data)} bytes do not hash to the CID")
        return data

    def has(self, cid: str | CID) -> bool:
        try:
            self.stat(cid)
        except FileNotFoundError:
            return False
        return True

    def delete(self, cid: str | CID) -> bool:
        """Remove a blob; ``False`` if it was not there. Refused on a read-only store."""
        self._check_writable()
        return self._delete(as_cid(cid))

    def verify(self, cid: str | CID) -> None:
        """Re-hash the stored bytes; raise :class:`CorruptBlobError` or ``BlobNotFoundError``."""
        self.get(cid)

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyError(f"{self!r} is read-only")
