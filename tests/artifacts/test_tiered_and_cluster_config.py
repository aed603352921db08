"""The local cache in front of a remote store (``TieredBlobStore``) and reading a home's
``cluster.json`` (``artifacts.cluster``), on real local stores."""

from __future__ import annotations

import json
import pickle  # noqa: TID251 - a same-process round trip of our own object
from pathlib import Path

import pytest

from artifacts.blobstore import LocalBlobStore
from artifacts.blobstore.tiered import TieredBlobStore
from artifacts.cid import compute_cid
from artifacts.cluster import KeyFileSigner, load_cluster_storage, open_store
from artifacts.errors import (
    ArtifactError,
    BlobNotFoundError,
    ClusterConfigError,
    CorruptBlobError,
)
from artifacts.store import ArtifactStore


@pytest.fixture
def tiers(tmp_path: Path) -> tuple[LocalBlobStore, LocalBlobStore, TieredBlobStore]:
    local, remote = LocalBlobStore(tmp_path / "local"), LocalBlobStore(tmp_path / "remote")
    return local, remote, TieredBlobStore(local, remote)


def test_writes_go_to_both_tiers(tiers: tuple[LocalBlobStore, ...]) -> None:
    local, remote, store = tiers
    cid = store.put(b"hello cluster")
    assert local.get(cid) == remote.get(cid) == b"hello cluster"


def test_reads_fill_the_cache_and_deletes_stay_local(tiers: tuple[LocalBlobStore, ...]) -> None:
    local, remote, store = tiers
    cid = remote.put(b"only remote")
    assert not local.has(cid)
    assert store.get(cid) == b"only remote"
    assert local.has(cid)  # cached, verified
    assert store.delete(cid)
    assert not local.has(cid)
    assert remote.has(cid)  # gc on one machine never deletes another's copy
    assert list(store.iter_cids()) == []
    with pytest.raises(BlobNotFoundError):
        store.get(compute_cid(b"nowhere"))


def test_a_corrupt_local_copy_is_replaced_from_the_remote(
    tiers: tuple[LocalBlobStore, ...],
) -> None:
    local, _remote, store = tiers
    cid = store.put(b"x" * 1000)
    local.path_of(cid).chmod(0o644)
    local.path_of(cid).write_bytes(b"y" * 1000)
    assert store.get(cid) == b"x" * 1000
    assert local.get(cid) == b"x" * 1000  # repaired


def test_bad_remote_bytes_are_never_cached(tiers: tuple[LocalBlobStore, ...]) -> None:
    local, remote, store = tiers
    cid = remote.put(b"z" * 100)
    remote.path_of(cid).chmod(0o644)
    remote.path_of(cid).write_bytes(b"w" * 100)
    with pytest.raises(CorruptBlobError):
        store.get(cid)
    assert not local.has(cid)


def _cluster_json(home: Path, doc: object) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "cluster.json").write_text(json.dumps(doc))


def test_cluster_configuration_is_read_and_checked(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert load_cluster_storage(home) is None
    assert isinstance(open_store(home).blobs, LocalBlobStore)
    (tmp_path / "token").write_text("t" * 32)
    storage = {
        "replication": 2,
        "key_file": str(tmp_path / "keys" / "coordinator.pem"),
        "nodes": [
            {"name": "a", "url": "http://127.0.0.1:1", "token_file": str(tmp_path / "token")},
            {"name": "b", "url": "http://127.0.0.1:2"},
        ],
    }
    _cluster_json(home, {"storage": storage})
    found = load_cluster_storage(home)
    assert found is not None
    assert [(n.name, n.url) for n in found.nodes] == [
        ("a", "http://127.0.0.1:1"),
        ("b", "http://127.0.0.1:2"),
    ]
    assert [n.token() for n in found.nodes] == ["t" * 32, None]  # each node its own, or none
    assert found.key_file == tmp_path / "keys" / "coordinator.pem"
    store = open_store(home)
    assert type(store.blobs).__name__ == "ReplicatedBlobStore"
    with pytest.raises(ArtifactError, match="gc refused"):
        store.gc()
    with pytest.raises(ArtifactError, match="gc refused"):
        ArtifactStore(home).gc()  # not even through a plain local view of that home
    _cluster_json(home, {"storage": storage | {"cache": True}})
    assert isinstance(open_store(home).blobs, TieredBlobStore)

    for bad, message in [
        ({"nothing": 1}, "no 'storage'"),
        ({"storage": {"nodes": []}}, "malformed|needs nodes"),
        ({"storage": storage | {"nodes": []}}, "needs nodes"),
        ({"storage": storage | {"replication": "x"}}, "malformed"),
    ]:
        _cluster_json(home, bad)
        with pytest.raises(ArtifactError, match=message):
            open_store(home)
    (home / "cluster.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="not readable JSON"):
        open_store(home)
    missing = [storage["nodes"][0] | {"token_file": str(tmp_path / "missing")}]
    _cluster_json(home, {"storage": storage | {"nodes": missing}})
    with pytest.raises(ArtifactError, match="cannot read the token of node a"):
        open_store(home)
    # The format of older cidflow (one token file for every node) is refused, naming the fix.
    _cluster_json(home, {"storage": storage | {"token_file": str(tmp_path / "token")}})
    with pytest.raises(ArtifactError, match=r"older cidflow.*cluster down"):
        open_store(home)


def test_key_file_signer_is_an_identity_from_its_file(tmp_path: Path) -> None:
    """The artifacts layer signs with the key file an ``Identity`` wrote: same fingerprint,
    signatures that ``registry.identity`` verifies; a key others may read is refused."""
    from registry.identity import Identity, verify_signature

    identity = Identity.create(tmp_path, "coordinator")
    signer = KeyFileSigner(Identity.path(tmp_path, "coordinator"))
    assert (signer.id, signer.public_key) == (identity.id, identity.public_key)
    verify_signature(identity.public_key, signer.sign(b"PUT /v1/blobs/x 1"), b"PUT /v1/blobs/x 1")
    assert pickle.loads(pickle.dumps(signer)).id == identity.id  # the path travels, not the key
    Identity.path(tmp_path, "coordinator").chmod(0o644)
    with pytest.raises(ClusterConfigError, match="readable by others"):
        KeyFileSigner(Identity.path(tmp_path, "coordinator")).sign(b"x")
    with pytest.raises(ClusterConfigError, match="cannot read the cluster key"):
        KeyFileSigner(tmp_path / "none.pem").sign(b"x")
