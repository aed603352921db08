"""The local cache in front of a remote store (``TieredBlobStore``) and reading a home's
``cluster.json`` (``artifacts.cluster``), on real local stores."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from artifacts.blobstore import LocalBlobStore
from artifacts.blobstore.tiered import TieredBlobStore
from artifacts.cid import compute_cid
from artifacts.cluster import load_cluster_storage, open_store
from artifacts.errors import ArtifactError, BlobNotFoundError, CorruptBlobError
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
    storage = {"replication": 2, "token_file": str(tmp_path / "token"),
               "nodes": [{"name": "a", "url": "http://127.0.0.1:1"},
                         {"name": "b", "url": "http://127.0.0.1:2"}]}  # fmt: skip
    _cluster_json(home, {"storage": storage})
    found = load_cluster_storage(home)
    assert found is not None
    assert found.nodes == (("a", "http://127.0.0.1:1"), ("b", "http://127.0.0.1:2"))
    assert found.token() == "t" * 32
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
    _cluster_json(home, {"storage": storage | {"token_file": str(tmp_path / "missing")}})
    with pytest.raises(ArtifactError, match="cannot read the cluster token"):
        open_store(home)
