"""The content-addressed zarr store: zarr's own ``StoreTests``, plus what only a CAS store does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.core.buffer import Buffer, cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.testing.store import StoreTests

from artifacts.blobstore import LocalBlobStore
from artifacts.cid import CID, CODEC_JSON
from artifacts.errors import CorruptBlobError
from artifacts.manifest import Ref
from artifacts.store import ArtifactStore
from artifacts.zarr_store import CASStore


class TestCASStore(StoreTests[CASStore, cpu.Buffer]):
    store_cls = CASStore
    buffer_cls = cpu.Buffer

    async def set(self, store: CASStore, key: str, value: Buffer) -> None:
        data = value.to_bytes()
        cid = store.blobs.put(data)
        store._changes[key] = Ref(cid, len(data))

    async def get(self, store: CASStore, key: str) -> Buffer:
        ref = store._changes[key]
        assert ref is not None
        return self.buffer_cls.from_bytes(store.blobs.get(ref.cid))

    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"blobs": LocalBlobStore(tmp_path)}

    def test_store_repr(self, store: CASStore) -> None:
        assert repr(store) == f"CASStore({store.blobs!r}, root=None)"

    def test_store_supports_writes(self, store: CASStore) -> None:
        assert store.supports_writes
        assert store.supports_deletes

    def test_store_supports_listing(self, store: CASStore) -> None:
        assert store.supports_listing


# -- CAS-specific behaviour ------------------------------------------------------------------------


@pytest.fixture
def blobs(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def _write(store: CASStore, name: str, data: np.ndarray[Any, Any], chunks: tuple[int, ...]) -> None:
    array = zarr.create_array(
        store, name=name, shape=data.shape, dtype=data.dtype, chunks=chunks, overwrite=True
    )
    array[...] = data


def _read(blobs: LocalBlobStore, cid: CID, name: str) -> np.ndarray[Any, Any]:
    group = zarr.open_group(CASStore(blobs, cid, read_only=True), mode="r")
    node = group[name]
    assert isinstance(node, zarr.Array)
    return np.asarray(node[...])


def test_commit_returns_json_cid_and_reopens_read_only(blobs: LocalBlobStore) -> None:
    store = CASStore(blobs)
    root = zarr.open_group(store, mode="w")
    root.attrs["title"] = "demo"
    data = np.arange(60, dtype="f8").reshape(6, 10)
    _write(store, "a", data, (2, 5))
    _write(store, "nested/b", np.arange(7, dtype="i2"), (3,))
    assert store.dirty
    cid = store.commit(kind="zarr", attrs={"who": "test"})
    assert isinstance(cid, CID)
    assert cid.codec == CODEC_JSON
    assert str(cid).startswith("b")
    assert store.root == cid
    assert not store.dirty

    reader = CASStore(blobs, cid, read_only=True)
    assert reader.read_only
    assert reader.manifest is not None
    assert reader.manifest.kind == "zarr"
    assert reader.manifest.attrs == {"who": "test"}
    group = zarr.open_group(reader, mode="r")
    assert group.attrs["title"] == "demo"
    np.testing.assert_array_equal(group["a"][...], data)
    np.testing.assert_array_equal(group["nested/b"][...], np.arange(7, dtype="i2"))
    with pytest.raises(ValueError, match="read-only"):
        sync(reader.set("x", cpu.Buffer.from_bytes(b"no")))


def test_copy_on_write_shares_unchanged_chunks(blobs: LocalBlobStore) -> None:
    store = CASStore(blobs)
    zarr.open_group(store, mode="w")
    data = np.arange(100 * 4, dtype="i8").reshape(100, 4)
    _write(store, "x", data, (1, 4))  # 100 chunks
    base = store.commit()
    base_items = dict(CASStore(blobs, base, read_only=True).items())
    assert sum(k.startswith("x/c/") for k in base_items) == 100

    session = CASStore(blobs, base)
    node = zarr.open_array(session, path="x", mode="r+")
    node[42] = [-1, -2, -3, -4]
    new = session.commit()
    assert new != base
    new_items = dict(CASStore(blobs, new, read_only=True).items())
    assert new_items.keys() == base_items.keys()
    changed = {k for k in base_items if base_items[k] != new_items[k]}
    assert changed == {"x/c/42/0"}

    expected = data.copy()
    expected[42] = [-1, -2, -3, -4]
    np.testing.assert_array_equal(_read(blobs, new, "x"), expected)
    np.testing.assert_array_equal(_read(blobs, base, "x"), data)


def test_identical_content_gives_identical_cid(tmp_path: Path) -> None:
    cids = []
    for i in range(2):
        blobs = LocalBlobStore(tmp_path / f"home{i}")
        store = CASStore(blobs)
        zarr.open_group(store, mode="w")
        _write(store, "v", np.linspace(0, 1, 50), (10,))
        cids.append(store.commit(kind="zarr", attrs={"n": 1}))
    assert cids[0] == cids[1]
    # and again in the same store: nothing changes
    store = CASStore(LocalBlobStore(tmp_path / "home0"))
    zarr.open_group(store, mode="w")
    _write(store, "v", np.linspace(0, 1, 50), (10,))
    assert store.commit(kind="zarr", attrs={"n": 1}) == cids[0]


def test_large_chunk_table_becomes_a_tree(blobs: LocalBlobStore) -> None:
    store = CASStore(blobs)
    zarr.open_group(store, mode="w")
    data = np.arange(3000, dtype="u2")
    _write(store, "big", data, (2,))  # 1500 chunks > 512 inline entries
    _write(store, "small", np.arange(5, dtype="u1"), (5,))
    cid = store.commit()
    reader = CASStore(blobs, cid, read_only=True)
    manifest = reader.manifest
    assert manifest is not None
    assert "tree" in manifest.tables["big"]
    assert manifest.tables["big"]["count"] == 1500
    assert "entries" in manifest.tables["small"]
    np.testing.assert_array_equal(_read(blobs, cid, "big"), data)
    assert sync(reader.exists("big/c/1499"))
    assert not sync(reader.exists("big/c/1500"))

    session = CASStore(blobs, cid)
    node = zarr.open_array(session, path="big", mode="r+")
    node[1000:1004] = [7, 7, 7, 7]
    new = session.commit()
    expected = data.copy()
    expected[1000:1004] = 7
    np.testing.assert_array_equal(_read(blobs, new, "big"), expected)
    np.testing.assert_array_equal(_read(blobs, cid, "big"), data)
    new_manifest = CASStore(blobs, new, read_only=True).manifest
    assert new_manifest is not None
    assert "tree" in new_manifest.tables["big"]


def test_xarray_reads_an_artifact(tmp_path: Path) -> None:
    arts = ArtifactStore(tmp_path / "home")
    temp = np.arange(24, dtype="f4").reshape(4, 6)
    labels = np.arange(4, dtype="i8")
    cid = arts.put_arrays({"temp": temp, "labels": labels})
    ds = xr.open_zarr(CASStore(arts.blobs, cid, read_only=True), consolidated=False)
    assert set(ds.data_vars) == {"temp", "labels"}
    np.testing.assert_array_equal(ds["temp"].values, temp)
    np.testing.assert_array_equal(ds["labels"].values, labels)
    assert ds["temp"].dtype == np.float32


def test_corrupt_blob_on_disk_raises_naming_the_cid(blobs: LocalBlobStore) -> None:
    store = CASStore(blobs)
    zarr.open_group(store, mode="w")
    _write(store, "x", np.arange(16, dtype="i4"), (4,))
    cid = store.commit()
    reader = CASStore(blobs, cid, read_only=True)
    chunk = dict(reader.items())["x/c/1"].cid
    path = blobs.path_of(chunk)
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(raw))

    with pytest.raises(CorruptBlobError, match=str(chunk)) as info:
        sync(reader.get("x/c/1", default_buffer_prototype()))
    assert info.value.cid == str(chunk)
    with pytest.raises(CorruptBlobError, match=str(chunk)):
        _read(blobs, cid, "x")
    # other chunks still read
    assert sync(reader.get("x/c/0", default_buffer_prototype())) is not None
