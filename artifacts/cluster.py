"""A home that stores its blobs on a cluster of node agents.

``cidflow cluster up`` writes ``HOME/cluster.json``; from then on every command with that home
reads and writes blobs through a :class:`ReplicatedBlobStore` over the nodes' HTTP blob
servers (rendezvous placement, ``replication`` copies). A node agent's own home holds the same
file with ``"cache": true``: its local blob store then sits in front of the cluster
(:class:`TieredBlobStore`), so inputs are fetched once and outputs are pushed to the cluster.

The file (only the ``storage`` part is read here; other layers add their own keys)::

    {"storage": {"replication": 2, "token_file": "/abs/token", "cache": false,
                 "nodes": [{"name": "node-1", "url": "http://127.0.0.1:8471"}, ...]}, ...}
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.blobstore.base import BlobStore
from artifacts.blobstore.local import LocalBlobStore
from artifacts.errors import ClusterConfigError
from artifacts.settings import ArtifactSettings

__all__ = ["CLUSTER_FILE", "ClusterStorage", "load_cluster_storage", "open_store"]

CLUSTER_FILE = "cluster.json"


@dataclass(frozen=True, slots=True)
class ClusterStorage:
    nodes: tuple[tuple[str, str], ...]  # (name, url)
    replication: int
    token_file: Path
    cache: bool = False

    def token(self) -> str:
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            msg = f"cannot read the cluster token {self.token_file}: {exc}"
            raise ClusterConfigError(msg) from None
        if not text:
            raise ClusterConfigError(f"the cluster token file {self.token_file} is empty")
        return text

    def blob_store(self, *, timeout: float = 10.0, read_only: bool = False) -> BlobStore:
        """The replicated store over the nodes' HTTP blob servers."""
        from artifacts.blobstore.http import HTTPBlobStore
        from artifacts.blobstore.replicated import Replica, ReplicatedBlobStore

        token = self.token()
        replicas = [
            Replica(name, HTTPBlobStore(url, token=token, timeout=timeout, read_only=read_only))
            for name, url in self.nodes
        ]
        return ReplicatedBlobStore(replicas, r=self.replication, read_only=read_only)


def load_cluster_storage(home: str | os.PathLike[str]) -> ClusterStorage | None:
    """The storage part of ``HOME/cluster.json``, or None when the home is not on a cluster."""
    path = Path(home) / CLUSTER_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ClusterConfigError(f"{path} is not readable JSON: {exc}") from None
    storage: Any = doc.get("storage") if isinstance(doc, dict) else None
    if not isinstance(storage, dict):
        raise ClusterConfigError(f"{path} has no 'storage' object")
    try:
        nodes = tuple((str(n["name"]), str(n["url"])) for n in storage["nodes"])
        replication = int(storage.get("replication", 2))
        token_file = Path(str(storage["token_file"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ClusterConfigError(f"{path}: malformed storage section ({exc})") from None
    if not nodes or replication < 1:
        raise ClusterConfigError(f"{path}: a cluster needs nodes and a replication of at least 1")
    return ClusterStorage(nodes, replication, token_file, bool(storage.get("cache", False)))


def open_store(
    home: str | os.PathLike[str] | None = None, *, read_only: bool = False, timeout: float = 10.0
) -> Any:
    """The :class:`~artifacts.store.ArtifactStore` of ``home``: local blobs, or the cluster's
    (behind a local cache on a node agent) when ``HOME/cluster.json`` says so."""
    from artifacts.blobstore.tiered import TieredBlobStore
    from artifacts.store import ArtifactStore

    settings = ArtifactSettings()
    root = Path(home).expanduser().absolute() if home else settings.home.expanduser()
    storage = load_cluster_storage(root)
    if storage is None:
        return ArtifactStore(root, read_only=read_only, settings=settings)
    remote = storage.blob_store(timeout=timeout, read_only=read_only)
    blobs: BlobStore = remote
    if storage.cache:
        local = LocalBlobStore(root, read_only=read_only, hash=settings.hash, fsync=settings.fsync)
        blobs = TieredBlobStore(local, remote)
    return ArtifactStore(root, read_only=read_only, settings=settings, blobs=blobs)
