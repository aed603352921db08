"""Blob stores: immutable bytes under their CID. Backends: local folder, memory."""

from artifacts.blobstore.base import BlobStat, BlobStore
from artifacts.blobstore.local import LocalBlobStore
from artifacts.blobstore.memory import MemoryBlobStore

__all__ = ["BlobStat", "BlobStore", "LocalBlobStore", "MemoryBlobStore"]
