"""A home that stores its blobs on a cluster of node agents.

``cidflow cluster up`` writes ``HOME/cluster.json``; from then on every command with that home
reads and writes blobs through a :class:`ReplicatedBlobStore` over the nodes' HTTP blob
servers (rendezvous placement, ``replication`` copies). A node agent's own home holds the same
file with ``"cache": true``: its local blob store then sits in front of the cluster
(:class:`TieredBlobStore`), so inputs are fetched once and outputs are pushed to the cluster.

The file (only the ``storage`` part is read here; other layers add their own keys)::

    {"storage": {"replication": 2, "cache": false, "key_file": "/abs/keys/coordinator.pem",
                 "nodes": [{"name": "node-1", "url": "http://127.0.0.1:8471",
                            "token_file": "/abs/nodes/node-1/token"}, ...]}, ...}

Credentials, each sent only where it is needed (reads carry none):

- ``key_file`` (optional): an ed25519 key (PKCS#8 PEM, mode 0600, as ``registry.identity``
  writes it) that signs every PUT; each node accepts it if the key is on its peer allow-list.
- a node's ``token_file`` (optional): that node's own operator token, sent on DELETE and
  listing (gc, ``store repair``), and on PUT only when there is no ``key_file``. A node's own
  ``cluster.json`` names no token: a node never holds another node's credential.

A ``storage`` section with one ``token_file`` for every node (written by cidflow before
per-node credentials) is refused: bring the cluster down and up again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from artifacts.blobstore.base import BlobStore
from artifacts.blobstore.local import LocalBlobStore
from artifacts.errors import ClusterConfigError
from artifacts.settings import ArtifactSettings

__all__ = [
    "CLUSTER_FILE",
    "ClusterNode",
    "ClusterStorage",
    "KeyFileSigner",
    "load_cluster_storage",
    "open_store",
]

CLUSTER_FILE = "cluster.json"


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


class KeyFileSigner:
    """Signs requests with the ed25519 key in ``path`` (a
    :class:`~artifacts.blobstore.http.RequestSigner`): the same key format, fingerprint and
    signature encoding as ``registry.identity.Identity``, which this layer cannot import. The
    key is read when first needed, and refused if other users may read it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._key: Any = None
        self._public = ""

    def __repr__(self) -> str:
        return f"KeyFileSigner('{self.path}')"

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["path"])  # type: ignore[misc]

    def _load(self) -> Any:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        with self._lock:
            if self._key is None:
                try:
                    with open(self.path, "rb") as f:
                        if os.fstat(f.fileno()).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                            msg = f"{self.path} is readable by others; run: chmod 600 {self.path}"
                            raise ClusterConfigError(msg)
                        key = serialization.load_pem_private_key(f.read(), password=None)
                except (OSError, ValueError) as exc:
                    msg = f"cannot read the cluster key {self.path}: {exc}"
                    raise ClusterConfigError(msg) from None
                if not isinstance(key, Ed25519PrivateKey):
                    raise ClusterConfigError(f"{self.path} is not an ed25519 key")
                raw = key.public_key().public_bytes(
                    serialization.Encoding.Raw, serialization.PublicFormat.Raw
                )
                self._key, self._public = key, _b32(raw)
            return self._key

    @property
    def public_key(self) -> str:
        self._load()
        return self._public

    @property
    def id(self) -> str:
        raw = base64.b32decode(self.public_key.upper() + "=" * (-len(self.public_key) % 8))
        return "pk" + _b32(hashlib.sha256(raw).digest()[:20])

    def sign(self, message: bytes) -> str:
        return _b32(self._load().sign(message))


@dataclass(frozen=True, slots=True)
class ClusterNode:
    name: str
    url: str
    token_file: Path | None = None  # this node's own operator token (DELETE, listing)

    def token(self) -> str | None:
        if self.token_file is None:
            return None
        try:
            text = self.token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            msg = f"cannot read the token of node {self.name} ({self.token_file}): {exc}"
            raise ClusterConfigError(msg) from None
        if not text:
            raise ClusterConfigError(
                f"the token file of node {self.name} {self.token_file} is empty"
            )
        return text


@dataclass(frozen=True, slots=True)
class ClusterStorage:
    nodes: tuple[ClusterNode, ...]
    replication: int
    key_file: Path | None = None  # signs PUTs (replication)
    cache: bool = False

    def blob_store(self, *, timeout: float = 10.0, read_only: bool = False) -> BlobStore:
        """The replicated store over the nodes' HTTP blob servers."""
        from artifacts.blobstore.http import HTTPBlobStore
        from artifacts.blobstore.replicated import Replica, ReplicatedBlobStore

        signer = KeyFileSigner(self.key_file) if self.key_file is not None else None
        replicas = [
            Replica(
                node.name,
                HTTPBlobStore(
                    node.url,
                    token=node.token(),
                    signer=signer,
                    timeout=timeout,
                    read_only=read_only,
                ),
            )
            for node in self.nodes
        ]
        return ReplicatedBlobStore(replicas, r=self.replication, read_only=read_only)


def _path(value: Any) -> Path | None:
    return None if value is None else Path(str(value))


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
    if "token_file" in storage:
        raise ClusterConfigError(
            f"{path} was written by an older cidflow (one token shared by every node), which "
            "is no longer supported: run 'cidflow cluster down' and 'cidflow cluster up' again"
        )
    try:
        nodes = tuple(
            ClusterNode(str(n["name"]), str(n["url"]), _path(n.get("token_file")))
            for n in storage["nodes"]
        )
        replication = int(storage.get("replication", 2))
        key_file = _path(storage.get("key_file"))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ClusterConfigError(f"{path}: malformed storage section ({exc})") from None
    if not nodes or replication < 1:
        raise ClusterConfigError(f"{path}: a cluster needs nodes and a replication of at least 1")
    return ClusterStorage(nodes, replication, key_file, bool(storage.get("cache", False)))


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
