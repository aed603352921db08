"""Blob store backends: the shared conformance suite, plus what only the local folder has."""

from __future__ import annotations

import os
import pickle  # noqa: TID251 - a same-process round trip of our own object, nothing received
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from artifacts.blobstore import LocalBlobStore, MemoryBlobStore
from artifacts.cid import CID, compute_cid
from artifacts.errors import BlobNotFoundError, CorruptBlobError
from artifacts.testing import BlobStoreTests


class _LocalHooks(BlobStoreTests[LocalBlobStore]):
    """What the suite needs from a local store, shared by the sha2-256 and blake3 classes."""

    def open_read_only(self, store: LocalBlobStore) -> LocalBlobStore:
        return LocalBlobStore(store.root, read_only=True, hash=store.hash_name)

    def corrupt(self, store: LocalBlobStore, cid: CID, data: bytes) -> None:
        path = store.path_of(cid)
        path.unlink(missing_ok=True)  # blob files are read-only (0o444); replace, don't open
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


class TestLocalBlobStore(_LocalHooks):
    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalBlobStore:
        return LocalBlobStore(tmp_path / "store")

    # -- layout -------------------------------------------------------------------------------
    def test_blob_is_a_file_named_by_its_cid(self, store: LocalBlobStore) -> None:
        data = b"laid out on disk"
        cid = store.put(data)
        text = str(cid)
        path = store.root / "blobs" / text[-3:-1] / text
        assert store.path_of(cid) == path
        assert store.path_of(text) == path
        assert path.is_file()
        assert path.read_bytes() == data
        assert len(path.parent.name) == 2
        assert not path.stat().st_mode & 0o222, "a stored blob is never modified in place"
        files = [p for p in (store.root / "blobs").rglob("*") if p.is_file()]
        assert files == [path]

    def test_blobs_persist_across_instances(self, store: LocalBlobStore) -> None:
        cid = store.put(b"durable")
        store.flush()
        again = LocalBlobStore(store.root)
        assert again.get(cid) == b"durable"
        assert list(again.iter_cids()) == [cid]

    def test_read_only_open_creates_nothing(self, tmp_path: Path) -> None:
        root = tmp_path / "absent"
        view = LocalBlobStore(root, read_only=True)
        assert list(view.iter_cids()) == []
        assert view.temp_files() == []
        with pytest.raises(BlobNotFoundError):
            view.get(compute_cid(b"x"))
        assert not root.exists()

    # -- temporary files ----------------------------------------------------------------------
    def test_stale_temp_files_removed_on_open(self, store: LocalBlobStore) -> None:
        done = subprocess.Popen([sys.executable, "-c", "pass"])
        done.wait()  # finished and reaped: its pid names no live process
        with _live_process() as live_pid:
            tmp = store.root / "tmp"
            dead_file = tmp / f"{done.pid}-x.incomplete"
            live_file = tmp / f"{live_pid}-x.incomplete"
            garbage_file = tmp / "nopid-x.incomplete"
            unrelated = tmp / "notes.txt"
            for p in (dead_file, live_file, garbage_file, unrelated):
                p.write_bytes(b"partial")
            assert set(store.temp_files()) == {dead_file, live_file, garbage_file}

            LocalBlobStore(store.root, read_only=True)  # a reader never deletes anything
            assert dead_file.exists()

            LocalBlobStore(store.root)
            assert not dead_file.exists()
            assert not garbage_file.exists()
            assert live_file.exists(), "a live writer's temp file must survive"
            assert unrelated.exists()
            assert list(store.iter_cids()) == []

    def test_remove_stale_temp_by_age(self, store: LocalBlobStore) -> None:
        with _live_process() as live_pid:
            old = store.root / "tmp" / f"{live_pid}-old.incomplete"
            old.write_bytes(b"abandoned")
            two_days_ago = old.stat().st_mtime - 2 * 24 * 3600
            os.utime(old, (two_days_ago, two_days_ago))
            assert store.remove_stale_temp() == 1
            assert not old.exists()

    def test_open_during_put_keeps_its_temp_file(
        self, store: LocalBlobStore, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        real_fsync = os.fsync
        opened: list[LocalBlobStore] = []

        def fsync_then_open(fd: int) -> None:
            if not opened:  # as if another thread of this process opened the store mid-write
                opened.append(LocalBlobStore(store.root))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync_then_open)
        cid = store.put(b"written while another store opens")
        assert opened
        assert store.get(cid) == b"written while another store opens"
        assert store.temp_files() == []

    def test_no_temp_file_remains(self, store: LocalBlobStore) -> None:
        data = os.urandom(300_000)
        cid = store.put(data)
        store.put(data)
        store.put(b"")
        with pytest.raises(CorruptBlobError):
            store.put(b"lies", cid=compute_cid(b"truth"))
        self.corrupt(store, cid, data[:7])
        store.put(data)
        store.flush()
        assert store.temp_files() == []
        assert list((store.root / "tmp").iterdir()) == []

    # -- listing ------------------------------------------------------------------------------
    def test_stray_files_not_listed(self, store: LocalBlobStore) -> None:
        cid = store.put(b"the only blob")
        other = compute_cid(b"misplaced")
        fan = store.path_of(cid).parent
        (fan / "README").write_text("not a blob")
        (fan / f"{cid}.bak").write_bytes(b"the only blob")
        (fan / f"{str(cid).upper()}").write_bytes(b"the only blob")
        wrong_fan = store.root / "blobs" / ("zz" if fan.name != "zz" else "yy")
        wrong_fan.mkdir()
        (wrong_fan / str(other)).write_bytes(b"misplaced")  # a valid CID in the wrong folder
        (store.root / "blobs" / str(other)).write_bytes(b"misplaced")  # not in a fan-out folder
        (store.root / "tmp" / f"{other}").write_bytes(b"misplaced")
        assert list(store.iter_cids()) == [cid]
        assert not store.has(other)

    # -- identity -----------------------------------------------------------------------------
    def test_pickles_and_compares_by_root(self, store: LocalBlobStore, tmp_path: Path) -> None:
        cid = store.put(b"pickled")
        copy = pickle.loads(pickle.dumps(store))
        assert isinstance(copy, LocalBlobStore)
        assert copy == store
        assert hash(copy) == hash(store)
        assert copy.root == store.root
        assert copy.get(cid) == b"pickled"

        assert LocalBlobStore(store.root) == store
        assert LocalBlobStore(tmp_path / "elsewhere") != store
        assert store != MemoryBlobStore()

        view = self.open_read_only(store)
        view_copy = pickle.loads(pickle.dumps(view))
        assert view_copy == view
        assert view_copy.read_only

    def test_relative_root_is_made_absolute(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        store = LocalBlobStore("rel")
        assert store.root == tmp_path / "rel"
        cid = store.put(b"x")
        monkeypatch.chdir("/")
        assert store.get(cid) == b"x"


class TestMemoryBlobStore(BlobStoreTests[MemoryBlobStore]):
    @pytest.fixture
    def store(self) -> MemoryBlobStore:
        return MemoryBlobStore()

    def open_read_only(self, store: MemoryBlobStore) -> MemoryBlobStore:
        view = MemoryBlobStore(read_only=True, hash=store.hash_name)
        view._blobs = store._blobs  # share the data and its lock: a view, not a copy
        view._lock = store._lock
        return view

    def corrupt(self, store: MemoryBlobStore, cid: CID, data: bytes) -> None:
        store._replace_raw(cid, data)


class TestBlake3LocalBlobStore(_LocalHooks):
    """The same contract with blake3 as the store's hash function."""

    @pytest.fixture
    def store(self, tmp_path: Path) -> LocalBlobStore:
        pytest.importorskip("blake3")
        return LocalBlobStore(tmp_path / "store", hash="blake3")

    def test_cids_use_blake3(self, store: LocalBlobStore) -> None:
        cid = store.put(b"hello")
        assert cid.hash_name == "blake3"
        assert cid != compute_cid(b"hello")


@contextmanager
def _live_process() -> Iterator[int]:
    """The pid of a child process that stays alive for the duration of the block."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
