"""Blob stores: immutable bytes under their CID. Backends: local folder, memory, replicated,
HTTP peer (``HTTPBlobStore``, imported on first use: it brings in httpx)."""

from typing import TYPE_CHECKING, Any

from artifacts.blobstore.base import BlobStat, BlobStore
from artifacts.blobstore.local import LocalBlobStore
from artifacts.blobstore.memory import MemoryBlobStore
from artifacts.blobstore.replicated import RepairReport, Replica, ReplicatedBlobStore

if TYPE_CHECKING:
    from artifacts.blobstore.http import HTTPBlobStore

__all__ = [
    "BlobStat",
    "BlobStore",
    "HTTPBlobStore",
    "LocalBlobStore",
    "MemoryBlobStore",
    "RepairReport",
    "Replica",
    "ReplicatedBlobStore",
]


def __getattr__(name: str) -> Any:
    if name == "HTTPBlobStore":
        from artifacts.blobstore.http import HTTPBlobStore

        return HTTPBlobStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
