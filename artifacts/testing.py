"""A conformance suite that every :class:`~artifacts.blobstore.BlobStore` backend passes.

Subclass :class:`BlobStoreTests` in a test module (its name does not start with ``Test``, so
pytest collects only the subclasses) and provide three things::

    class TestLocalBlobStore(BlobStoreTests[LocalBlobStore]):
        @pytest.fixture
        def store(self, tmp_path: Path) -> LocalBlobStore:
            return LocalBlobStore(tmp_path / "store")        # a fresh, empty, writable store

        def open_read_only(self, store: LocalBlobStore) -> LocalBlobStore:
            return LocalBlobStore(store.root, read_only=True)  # same data, read-only

        def corrupt(self, store: LocalBlobStore, cid: CID, data: bytes) -> None:
            ...  # overwrite what is stored under cid with data, bypassing the store

Every test asserts observable behaviour through the public API only (``put``, ``get``, ``has``,
``stat``, ``delete``, ``verify``, ``iter_cids``, ``flush``, ``supports_*``), so a new backend
(HTTP peer, replicated) inherits the whole contract by subclassing. Backend-specific checks
(file layout, temporary files) belong in the backend's own test class.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ClassVar, Generic, TypeVar

import pytest

from artifacts.blobstore.base import BlobStore
from artifacts.canonical import canonical_json
from artifacts.cid import CID, CodecName, compute_cid
from artifacts.errors import (
    ArtifactError,
    BlobNotFoundError,
    CorruptBlobError,
    InvalidCIDError,
    ReadOnlyError,
)

__all__ = ["DAMAGE_KINDS", "BlobStoreTests"]

S = TypeVar("S", bound=BlobStore)

MiB = 1024 * 1024


def _payload(size: int, seed: int = 0) -> bytes:
    """Reproducible pseudo-random bytes (incompressible, unlike ``b"x" * size``)."""
    return random.Random(f"{seed}-{size}").randbytes(size)


def _flip(data: bytes) -> bytes:
    """``data`` with one bit changed in the middle: same length, different hash."""
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]


# How a stored copy can go bad; each maps the good bytes to the damaged bytes.
_DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "bit-flip": _flip,
    "truncated": lambda data: data[: len(data) // 2],
    "zero-length": lambda data: b"",
    "extended": lambda data: data + b"\x00",
}
#: The kinds of damage the corruption tests parametrise over (for subclasses that override one).
DAMAGE_KINDS: tuple[str, ...] = tuple(_DAMAGE)


class BlobStoreTests(Generic[S]):
    """The behaviour every blob store backend must have. Subclass; do not instantiate."""

    #: Seconds to wait before a re-put so that a refreshed mtime is observably later.
    mtime_resolution: ClassVar[float] = 0.05
    #: Worker threads in the concurrency test.
    threads: ClassVar[int] = 8

    # -- what a subclass provides -------------------------------------------------------------
    @pytest.fixture
    def store(self) -> S:
        """A fresh, empty, writable store (override in the subclass)."""
        raise NotImplementedError(f"{type(self).__name__} must define a 'store' fixture")

    def open_read_only(self, store: S) -> S:
        """A read-only view of the same data as ``store``."""
        raise NotImplementedError(f"{type(self).__name__} must define open_read_only")

    def corrupt(self, store: S, cid: CID, data: bytes) -> None:
        """Make ``store`` hold ``data`` under ``cid`` without hashing (fault injection)."""
        raise NotImplementedError(f"{type(self).__name__} must define corrupt")

    # -- helpers ------------------------------------------------------------------------------
    @staticmethod
    def expected_cid(store: BlobStore, data: bytes, codec: CodecName = "raw") -> CID:
        return compute_cid(data, codec=codec, hash=store.hash_name)

    @staticmethod
    def listed(store: BlobStore) -> list[CID]:
        """``iter_cids`` as a list, checked to hold no duplicates."""
        cids = list(store.iter_cids())
        assert len(cids) == len(set(cids)), f"iter_cids listed a CID twice: {cids}"
        return cids

    # -- round trips --------------------------------------------------------------------------
    @pytest.mark.parametrize(
        "size", [0, 1, 1000, 64 * 1024 + 1, 5 * MiB + 3], ids=["empty", "1B", "1kB", "64kB", "5MiB"]
    )
    def test_put_get_round_trip(self, store: S, size: int) -> None:
        data = _payload(size)
        cid = store.put(data)
        assert isinstance(cid, CID)
        assert cid == self.expected_cid(store, data)
        assert cid.codec_name == "raw"
        got = store.get(cid)
        assert isinstance(got, bytes)
        assert got == data
        assert store.get(str(cid)) == data
        assert store.has(cid)
        assert store.has(str(cid))
        assert store.stat(cid).size == size
        store.verify(cid)
        assert self.listed(store) == [cid]

    def test_put_memoryview(self, store: S) -> None:
        data = _payload(4096)
        cid = store.put(memoryview(data))
        assert cid == self.expected_cid(store, data)
        assert store.get(cid) == data

    def test_put_json_codec(self, store: S) -> None:
        data = canonical_json({"kind": "test", "keys": {"b": 2, "a": [1, 2.5, None]}, "é": "ü"})
        cid = store.put(data, codec="json")
        assert cid == self.expected_cid(store, data, codec="json")
        assert cid.codec_name == "json"
        assert cid != self.expected_cid(store, data, codec="raw")
        assert store.get(cid) == data
        assert store.stat(cid).size == len(data)
        assert cid in self.listed(store)

    def test_put_with_matching_cid(self, store: S) -> None:
        data = _payload(3000)
        expected = self.expected_cid(store, data)
        assert store.put(data, cid=str(expected)) == expected
        assert store.put(data, cid=expected) == expected
        json_cid = self.expected_cid(store, data, codec="json")
        assert store.put(data, cid=json_cid) == json_cid
        assert store.get(expected) == data
        assert store.get(json_cid) == data

    def test_put_is_idempotent(self, store: S) -> None:
        data = _payload(10_000)
        first = store.put(data)
        second = store.put(data)
        third = store.put(bytes(data), cid=first)
        assert first == second == third
        assert self.listed(store) == [first]
        assert store.get(first) == data
        assert store.stat(first).size == len(data)

    # -- has / stat / delete ------------------------------------------------------------------
    def test_has_stat_delete(self, store: S) -> None:
        keep, gone = _payload(100, seed=1), _payload(200, seed=2)
        keep_cid, gone_cid = store.put(keep), store.put(gone)
        assert store.has(gone_cid)
        assert store.stat(gone_cid).size == 200

        assert store.delete(gone_cid) is True
        assert not store.has(gone_cid)
        assert store.delete(gone_cid) is False
        with pytest.raises(BlobNotFoundError) as excinfo:
            store.get(gone_cid)
        assert isinstance(excinfo.value, FileNotFoundError)
        assert str(gone_cid) in str(excinfo.value)
        with pytest.raises(BlobNotFoundError):
            store.stat(gone_cid)
        with pytest.raises(BlobNotFoundError):
            store.verify(gone_cid)
        assert self.listed(store) == [keep_cid]
        assert store.get(keep_cid) == keep

    def test_delete_accepts_text(self, store: S) -> None:
        cid = store.put(b"by text")
        assert store.delete(str(cid)) is True
        assert not store.has(cid)

    def test_put_after_delete(self, store: S) -> None:
        data = _payload(500)
        cid = store.put(data)
        store.delete(cid)
        assert store.put(data) == cid
        assert store.get(cid) == data
        assert self.listed(store) == [cid]

    def test_get_unknown_cid(self, store: S) -> None:
        store.put(b"something else")
        missing = self.expected_cid(store, b"never stored")
        with pytest.raises(BlobNotFoundError) as excinfo:
            store.get(missing)
        err = excinfo.value
        assert isinstance(err, FileNotFoundError)
        assert isinstance(err, KeyError)
        assert isinstance(err, ArtifactError)
        assert err.cid == str(missing)
        assert str(missing) in str(err)
        with pytest.raises(BlobNotFoundError, match=str(missing)):
            store.get(str(missing))
        assert not store.has(missing)
        with pytest.raises(BlobNotFoundError, match=str(missing)):
            store.stat(missing)
        with pytest.raises(BlobNotFoundError, match=str(missing)):
            store.verify(missing)
        assert store.delete(missing) is False

    @pytest.mark.parametrize("bad", ["", "not-a-cid", "Qm" + "1" * 44, "bafkrei"])
    def test_malformed_cid_is_refused(self, store: S, bad: str) -> None:
        with pytest.raises(InvalidCIDError):
            store.get(bad)
        with pytest.raises(InvalidCIDError):
            store.has(bad)
        with pytest.raises(InvalidCIDError):
            store.stat(bad)
        with pytest.raises(InvalidCIDError):
            store.delete(bad)
        with pytest.raises(InvalidCIDError):
            store.put(b"data", cid=bad)
        assert self.listed(store) == []

    # -- integrity ----------------------------------------------------------------------------
    def test_put_with_wrong_cid_stores_nothing(self, store: S) -> None:
        data = _payload(2048)
        wrong = self.expected_cid(store, b"other bytes")
        with pytest.raises(CorruptBlobError) as excinfo:
            store.put(data, cid=wrong)
        assert isinstance(excinfo.value, OSError)
        assert excinfo.value.cid == str(wrong)
        assert str(wrong) in str(excinfo.value)
        assert not store.has(wrong)
        assert not store.has(self.expected_cid(store, data))
        assert self.listed(store) == []

    def test_put_with_wrong_cid_keeps_existing_copy(self, store: S) -> None:
        good = _payload(2048)
        cid = store.put(good)
        with pytest.raises(CorruptBlobError):
            store.put(_flip(good), cid=cid)
        assert store.get(cid) == good
        assert self.listed(store) == [cid]

    @pytest.mark.parametrize("damage", DAMAGE_KINDS)
    def test_corrupt_blob_is_detected(self, store: S, damage: str) -> None:
        data = _payload(4096)
        cid = store.put(data)
        self.corrupt(store, cid, _DAMAGE[damage](data))
        with pytest.raises(CorruptBlobError) as excinfo:
            store.get(cid)
        assert isinstance(excinfo.value, OSError)
        assert excinfo.value.cid == str(cid)
        assert str(cid) in str(excinfo.value)
        with pytest.raises(CorruptBlobError, match=str(cid)):
            store.get(str(cid))
        with pytest.raises(CorruptBlobError, match=str(cid)):
            store.verify(cid)

    def test_corrupt_empty_blob_is_detected(self, store: S) -> None:
        cid = store.put(b"")
        self.corrupt(store, cid, b"\x00")
        with pytest.raises(CorruptBlobError, match=str(cid)):
            store.get(cid)
        with pytest.raises(CorruptBlobError, match=str(cid)):
            store.verify(cid)

    def test_corrupt_blob_does_not_affect_others(self, store: S) -> None:
        good, bad = _payload(1000, seed=1), _payload(1000, seed=2)
        good_cid, bad_cid = store.put(good), store.put(bad)
        self.corrupt(store, bad_cid, _flip(bad))
        assert store.get(good_cid) == good
        store.verify(good_cid)
        with pytest.raises(CorruptBlobError, match=str(bad_cid)):
            store.verify(bad_cid)

    @pytest.mark.parametrize("damage", DAMAGE_KINDS)
    def test_put_repairs_damaged_copy(self, store: S, damage: str) -> None:
        data = _payload(4096)
        cid = store.put(data)
        self.corrupt(store, cid, _DAMAGE[damage](data))
        assert store.put(data) == cid
        assert store.get(cid) == data
        store.verify(cid)
        assert store.stat(cid).size == len(data)
        assert self.listed(store) == [cid]

    def test_put_with_cid_repairs_damaged_copy(self, store: S) -> None:
        data = _payload(4096)
        cid = store.put(data)
        self.corrupt(store, cid, data[:10])
        assert store.put(data, cid=cid) == cid
        assert store.get(cid) == data

    # -- read-only ----------------------------------------------------------------------------
    def test_writable_capabilities(self, store: S) -> None:
        assert store.read_only is False
        assert store.supports_writes is True
        assert store.supports_deletes is True

    def test_read_only_view(self, store: S) -> None:
        data = _payload(1500)
        cid = store.put(data)
        store.flush()
        view = self.open_read_only(store)
        assert view.read_only is True
        assert view.supports_writes is False
        assert view.supports_deletes is False

        assert view.get(cid) == data
        assert view.has(cid)
        assert view.stat(cid).size == len(data)
        view.verify(cid)
        assert self.listed(view) == [cid]

        new = b"never written"
        attempts: list[Callable[[], CID]] = [
            lambda: view.put(new),
            lambda: view.put(new, codec="json"),
            lambda: view.put(new, cid=self.expected_cid(store, new)),
            lambda: view.put(data),  # even an existing blob (a put refreshes its mtime)
        ]
        for attempt in attempts:
            with pytest.raises(ReadOnlyError) as excinfo:
                attempt()
            assert isinstance(excinfo.value, PermissionError)
        with pytest.raises(ReadOnlyError):
            view.delete(cid)
        with pytest.raises(PermissionError):
            view.delete(self.expected_cid(store, new))

        # Nothing changed, seen through either store.
        for s in (store, view):
            assert self.listed(s) == [cid]
            assert s.get(cid) == data
            assert not s.has(self.expected_cid(store, new))

    def test_read_only_view_detects_corruption(self, store: S) -> None:
        data = _payload(1500)
        cid = store.put(data)
        self.corrupt(store, cid, _flip(data))
        view = self.open_read_only(store)
        with pytest.raises(CorruptBlobError, match=str(cid)):
            view.get(cid)
        with pytest.raises(CorruptBlobError, match=str(cid)):
            view.verify(cid)

    def test_read_only_view_sees_later_writes(self, store: S) -> None:
        view = self.open_read_only(store)
        assert self.listed(view) == []
        cid = store.put(b"written after the view was opened")
        store.flush()
        assert view.get(cid) == b"written after the view was opened"

    # -- listing ------------------------------------------------------------------------------
    def test_iter_cids_lists_exactly_what_was_put(self, store: S) -> None:
        assert self.listed(store) == []
        blobs = [b"", *(_payload(n * 37, seed=n) for n in range(1, 25))]
        cids = {store.put(b) for b in blobs}
        json_cid = store.put(canonical_json({"a": 1}), codec="json")
        cids.add(json_cid)
        assert len(cids) == len(blobs) + 1
        assert set(self.listed(store)) == cids
        assert all(isinstance(c, CID) for c in store.iter_cids())

        removed = sorted(cids, key=str)[::3]
        for cid in removed:
            assert store.delete(cid)
        assert set(self.listed(store)) == cids - set(removed)

    # -- concurrency --------------------------------------------------------------------------
    def test_concurrent_puts(self, store: S) -> None:
        n = self.threads
        shared = _payload(256 * 1024, seed=-1)
        own = [_payload(32 * 1024 + i, seed=i) for i in range(n)]
        barrier = threading.Barrier(n, timeout=60)

        def work(i: int) -> list[CID]:
            barrier.wait()
            out: list[CID] = []
            for _ in range(5):
                out.append(store.put(shared))
                out.append(store.put(own[i]))
                out.append(store.put(own[(i + 1) % n]))  # each own blob also has a rival writer
            return out

        with ThreadPoolExecutor(max_workers=n) as pool:
            results = list(pool.map(work, range(n)))

        shared_cid = self.expected_cid(store, shared)
        own_cids = [self.expected_cid(store, b) for b in own]
        for i, out in enumerate(results):
            assert out[0::3] == [shared_cid] * 5
            assert out[1::3] == [own_cids[i]] * 5
            assert out[2::3] == [own_cids[(i + 1) % n]] * 5
        store.flush()
        assert sorted(self.listed(store), key=str) == sorted({shared_cid, *own_cids}, key=str)
        assert store.get(shared_cid) == shared
        for cid, data in zip(own_cids, own, strict=True):
            assert store.get(cid) == data
            assert store.stat(cid).size == len(data)

    def test_concurrent_put_and_get(self, store: S) -> None:
        data = _payload(128 * 1024)
        cid = self.expected_cid(store, data)
        barrier = threading.Barrier(self.threads, timeout=60)

        def work(i: int) -> None:
            barrier.wait()
            for _ in range(10):
                if i % 2:
                    store.put(data)
                else:
                    try:
                        got = store.get(cid)
                    except BlobNotFoundError:
                        continue  # not written yet; a reader never sees partial bytes
                    assert got == data

        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            list(pool.map(work, range(self.threads)))
        assert store.get(cid) == data

    # -- times --------------------------------------------------------------------------------
    def test_stat_mtime_is_recent(self, store: S) -> None:
        before = time.time()
        cid = store.put(b"timed")
        after = time.time()
        mtime = store.stat(cid).mtime
        assert isinstance(mtime, float)
        # Generous slack: file systems stamp with a coarse clock; remote stores may skew.
        assert before - 5 <= mtime <= after + 5

    def test_reput_refreshes_mtime(self, store: S) -> None:
        data = _payload(1024)
        cid = store.put(data)
        first = store.stat(cid).mtime
        time.sleep(self.mtime_resolution)
        assert store.put(data) == cid
        second = store.stat(cid).mtime
        assert second > first, "a re-put must refresh the time a gc grace period reads"
        time.sleep(self.mtime_resolution)
        assert store.put(data, cid=cid) == cid
        assert store.stat(cid).mtime > second

    def test_flush(self, store: S) -> None:
        cids = [store.put(_payload(100, seed=i)) for i in range(5)]
        store.flush()
        store.flush()  # nothing pending: still fine
        for cid in cids:
            store.verify(cid)
