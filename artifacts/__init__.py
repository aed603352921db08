"""Content-addressed artifacts: CIDs, blob stores, the CAS zarr store and ``ArtifactStore``.

This package imports none of the other cidflow packages.
"""

from artifacts.artifact import ArrayInfo, Artifact, FileEntry
from artifacts.blobstore import BlobStat, BlobStore, LocalBlobStore, MemoryBlobStore
from artifacts.canonical import canonical_json
from artifacts.cid import CID, as_cid, cid_of, compute_cid
from artifacts.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    BlobNotFoundError,
    CorruptBlobError,
    InvalidCIDError,
    ManifestError,
    ReadOnlyError,
    StoreBusyError,
    UnsafePathError,
    UnsupportedInputError,
)
from artifacts.settings import ArtifactSettings
from artifacts.store import ArtifactInfo, ArtifactStore, GCReport, StoreStats, VerifyReport
from artifacts.zarr_store import CASStore

__all__ = [
    "CID",
    "ArrayInfo",
    "Artifact",
    "ArtifactError",
    "ArtifactInfo",
    "ArtifactNotFoundError",
    "ArtifactSettings",
    "ArtifactStore",
    "BlobNotFoundError",
    "BlobStat",
    "BlobStore",
    "CASStore",
    "CorruptBlobError",
    "FileEntry",
    "GCReport",
    "InvalidCIDError",
    "LocalBlobStore",
    "ManifestError",
    "MemoryBlobStore",
    "ReadOnlyError",
    "StoreBusyError",
    "StoreStats",
    "UnsafePathError",
    "UnsupportedInputError",
    "VerifyReport",
    "as_cid",
    "canonical_json",
    "cid_of",
    "compute_cid",
]
