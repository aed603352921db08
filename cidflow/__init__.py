"""cidflow: an orchestrator for decentralized AI built on content-addressed artifacts.

The public API is re-exported here lazily, so ``import cidflow`` (and ``cidflow --help``) stays
fast: heavy modules (zarr, numpy, torch) load on first use of a name that needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "CID": "artifacts.cid",
    "cid_of": "artifacts.cid",
    "Artifact": "artifacts.artifact",
    "ArtifactStore": "artifacts.store",
    "ArtifactSettings": "artifacts.settings",
    "CASStore": "artifacts.zarr_store",
    "LocalBlobStore": "artifacts.blobstore",
    "MemoryBlobStore": "artifacts.blobstore",
    "ArtifactError": "artifacts.errors",
    "ArtifactNotFoundError": "artifacts.errors",
    "CorruptBlobError": "artifacts.errors",
    "InvalidCIDError": "artifacts.errors",
    "ManifestError": "artifacts.errors",
    "HTTPBlobStore": "artifacts.blobstore",
    "ReplicatedBlobStore": "artifacts.blobstore",
    "open_store": "artifacts.cluster",
    "Identity": "registry.identity",
    "open_registry": "registry.local",
    "cid_task": "flows.tasks",
    "train_flow": "flows.pipelines",
    "evaluate_flow": "flows.pipelines",
    "infer_flow": "flows.pipelines",
    "CodeTrust": "flows.code",
    "trusting": "flows.code",
    "put_code": "flows.code",
    "UntrustedCodeError": "flows.errors",
    "import_hf": "flows.hf",
    "export_hf": "flows.hf",
    "lineage": "flows.lineage",
}

__all__ = sorted([*_EXPORTS, "__version__"])

if TYPE_CHECKING:
    from artifacts.artifact import Artifact as Artifact
    from artifacts.blobstore import HTTPBlobStore as HTTPBlobStore
    from artifacts.blobstore import LocalBlobStore as LocalBlobStore
    from artifacts.blobstore import MemoryBlobStore as MemoryBlobStore
    from artifacts.blobstore import ReplicatedBlobStore as ReplicatedBlobStore
    from artifacts.cid import CID as CID
    from artifacts.cid import cid_of as cid_of
    from artifacts.cluster import open_store as open_store
    from artifacts.errors import ArtifactError as ArtifactError
    from artifacts.errors import ArtifactNotFoundError as ArtifactNotFoundError
    from artifacts.errors import CorruptBlobError as CorruptBlobError
    from artifacts.errors import InvalidCIDError as InvalidCIDError
    from artifacts.errors import ManifestError as ManifestError
    from artifacts.settings import ArtifactSettings as ArtifactSettings
    from artifacts.store import ArtifactStore as ArtifactStore
    from artifacts.zarr_store import CASStore as CASStore
    from flows.code import CodeTrust as CodeTrust
    from flows.code import put_code as put_code
    from flows.code import trusting as trusting
    from flows.errors import UntrustedCodeError as UntrustedCodeError
    from flows.hf import export_hf as export_hf
    from flows.hf import import_hf as import_hf
    from flows.lineage import lineage as lineage
    from flows.pipelines import evaluate_flow as evaluate_flow
    from flows.pipelines import infer_flow as infer_flow
    from flows.pipelines import train_flow as train_flow
    from flows.tasks import cid_task as cid_task
    from registry.identity import Identity as Identity
    from registry.local import open_registry as open_registry


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cidflow' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
