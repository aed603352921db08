"""A blob store in a local folder: one file per blob, named by its CID.

Layout under ``root``::

    blobs/<cid[-3:-1]>/<cid>     1024 fan-out folders
    tmp/<pid>-<random>.incomplete   writes in progress (never listed)

A write goes to a unique temporary file, is fsynced, then renamed into place, so a crash leaves
either no blob or the whole blob; :meth:`flush` fsyncs the folders that received new names.
Bytes that arrive in pieces (an upload) go through :meth:`LocalBlobStore.open_writer` the same
way, hashed as they are written and never held in memory.
Temporary files left by dead processes are removed when a writable store is opened.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from artifacts.blobstore.base import BlobStat, BlobStore
from artifacts.cid import CID, HashName, as_cid
from artifacts.errors import BlobNotFoundError, CorruptBlobError, InvalidCIDError

__all__ = ["BlobWriter", "LocalBlobStore"]

_TMP_SUFFIX = ".incomplete"
_STALE_TMP_SECONDS = 24 * 3600
_READ_CHUNK = 1 << 20
# Tells this process's temp files from those of a dead process that had the same pid.
_PROCESS_TOKEN = secrets.token_hex(4)


class LocalBlobStore(BlobStore):
    """Blobs as files under ``root`` (created if missing unless read-only)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        read_only: bool = False,
        hash: HashName = "sha2-256",
        fsync: bool = True,
    ) -> None:
        super().__init__(read_only=read_only, hash=hash)
        self.root = Path(root).absolute()
        self._blobs = self.root / "blobs"
        self._tmp = self.root / "tmp"
        self._fsync = fsync
        self._dirty: set[str] = set()
        self._fans: set[str] = set()  # fan-out folders known to exist
        self._dirty_lock = threading.Lock()
        if not read_only:
            self._blobs.mkdir(parents=True, exist_ok=True)
            self._tmp.mkdir(parents=True, exist_ok=True)
            self.remove_stale_temp()

    def __repr__(self) -> str:
        return f"LocalBlobStore('{self.root}', read_only={self.read_only})"

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, LocalBlobStore)
            and self.root == other.root
            and self.read_only == other.read_only
            and self.hash_name == other.hash_name
        )

    def __hash__(self) -> int:
        return hash((self.root, self.read_only, self.hash_name))

    def __getstate__(self) -> dict[str, object]:
        return {
            "root": self.root,
            "read_only": self.read_only,
            "hash": self.hash_name,
            "fsync": self._fsync,
        }

    def __setstate__(self, state: dict[str, object]) -> None:
        root = state["root"]
        assert isinstance(root, Path)
        self.__init__(  # type: ignore[misc]
            root, read_only=bool(state["read_only"]), hash=state["hash"], fsync=bool(state["fsync"])
        )

    def path_of(self, cid: str | CID) -> Path:
        """Where the blob for ``cid`` lives (whether or not it exists)."""
        text = str(as_cid(cid))
        return self._blobs / text[-3:-1] / text

    # -- primitives ----------------------------------------------------------------------------
    def _read(self, cid: CID) -> bytes:
        try:
            with open(self.path_of(cid), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BlobNotFoundError(cid, str(self.root)) from None

    def _write(self, cid: CID, data: bytes | memoryview) -> None:
        final = self.path_of(cid)
        size = len(data) if isinstance(data, bytes) else data.nbytes
        try:
            st = os.stat(final)
        except FileNotFoundError:
            pass
        else:
            if st.st_size == size and _same_bytes(final, data):
                # Already stored intact: refresh the time so a concurrent gc's grace period
                # covers it.
                with contextlib.suppress(FileNotFoundError):
                    os.utime(final)
                    return
            # A damaged leftover (wrong size or wrong bytes) is replaced by the verified bytes.
        fan = self._make_fan(final)
        tmp = self._temp_path()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            try:
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with self._dirty_lock:
            self._dirty.add(str(fan))

    def open_writer(self, cid: str | CID) -> BlobWriter:
        """A :class:`BlobWriter` for bytes that should hash to ``cid`` and arrive in pieces.

        Its :meth:`~BlobWriter.commit` refuses a mismatch with :class:`CorruptBlobError` (storing
        nothing), keeps an intact existing copy, and otherwise moves the fsynced temporary file
        into place; leaving its ``with`` block without committing removes the temporary file.
        """
        self._check_writable()
        return BlobWriter(self, as_cid(cid))

    def _temp_path(self) -> Path:
        return self._tmp / f"{os.getpid()}-{_PROCESS_TOKEN}{secrets.token_hex(8)}{_TMP_SUFFIX}"

    def _make_fan(self, final: Path) -> Path:
        fan = final.parent
        if fan.name not in self._fans:
            fan.mkdir(exist_ok=True)
            self._fans.add(fan.name)
        return fan

    def flush(self) -> None:
        with self._dirty_lock:
            dirty, self._dirty = self._dirty, set()
        if not self._fsync:
            return
        for folder in sorted(dirty):
            _fsync_dir(folder)

    def stat(self, cid: str | CID) -> BlobStat:
        key = as_cid(cid)
        try:
            st = self.path_of(key).stat()
        except FileNotFoundError:
            raise BlobNotFoundError(key, str(self.root)) from None
        return BlobStat(st.st_size, st.st_mtime)

    def _delete(self, cid: CID) -> bool:
        try:
            os.unlink(self.path_of(cid))
        except FileNotFoundError:
            return False
        return True

    def iter_cids(self) -> Iterator[CID]:
        try:
            fans = sorted(os.scandir(self._blobs), key=lambda e: e.name)
        except FileNotFoundError:
            return
        for fan in fans:
            if not fan.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(fan.path):
                try:
                    cid = CID.parse(entry.name)
                except InvalidCIDError:
                    continue  # not ours (an editor's backup, a stray file): never listed
                if entry.name[-3:-1] == fan.name:
                    yield cid

    # -- maintenance ---------------------------------------------------------------------------
    def temp_files(self) -> list[Path]:
        """Temporary files currently present (writes in progress or left by a crash)."""
        try:
            return sorted(p for p in self._tmp.iterdir() if p.name.endswith(_TMP_SUFFIX))
        except FileNotFoundError:
            return []

    def remove_stale_temp(self, *, older_than: float = _STALE_TMP_SECONDS) -> int:
        """Delete temp files whose writer process is gone (or that are very old)."""
        removed = 0
        now = time.time()
        for path in self.temp_files():
            pid_text, _, rest = path.name.partition("-")
            try:
                pid = int(pid_text)
            except ValueError:
                alive = False
            else:
                # Our own pid: ours only with our token (another store in this process may be
                # writing it); without it, a dead process that had the same pid (containers).
                alive = rest.startswith(_PROCESS_TOKEN) if pid == os.getpid() else _pid_alive(pid)
            try:
                old = now - path.stat().st_mtime > older_than
            except FileNotFoundError:
                continue
            if not alive or old:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    removed += 1
        return removed


class BlobWriter:
    """Streams one blob into a temporary file of a :class:`LocalBlobStore`, hashing as it goes.

    Made by :meth:`LocalBlobStore.open_writer`. Call :meth:`write` with each piece, then
    :meth:`commit`; :meth:`abort` (also run when a ``with`` block ends) removes the temporary file
    unless the blob was committed. Not for use by several threads at once.
    """

    def __init__(self, store: LocalBlobStore, cid: CID) -> None:
        self.cid = cid
        self.size = 0
        self._store = store
        self._hasher = cid.hasher()
        self._tmp = store._temp_path()
        self._fd: int | None = os.open(self._tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        self._committed = False

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()

    def write(self, data: bytes | memoryview) -> None:
        if self._fd is None:
            raise ValueError(f"the writer for {self.cid} is closed")
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        self.size += view.nbytes
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def commit(self) -> bool:
        """Check the hash and store the blob; whether new bytes were put in place (``False``:
        an intact copy was already stored, and its last-written time is refreshed)."""
        if self._fd is None:
            raise ValueError(f"the writer for {self.cid} is closed")
        store, final = self._store, self._store.path_of(self.cid)
        try:
            if self._hasher.digest() != self.cid.digest:
                raise CorruptBlobError(self.cid, "received bytes do not match the CID")
            if _intact(final, self.cid, self.size):
                with contextlib.suppress(FileNotFoundError):
                    os.utime(final)
                    return False
            if store._fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            fan = store._make_fan(final)
            os.replace(self._tmp, final)
            self._committed = True
        finally:
            self.abort()
        with store._dirty_lock:
            store._dirty.add(str(fan))
        return True

    def abort(self) -> None:
        """Close and remove the temporary file (a no-op once committed or aborted)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if not self._committed:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._tmp)


def _intact(path: Path, cid: CID, size: int) -> bool:
    """Whether ``path`` holds ``size`` bytes that hash to ``cid`` (read in pieces)."""
    hasher = cid.hasher()
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size != size:
                return False
            while chunk := f.read(_READ_CHUNK):
                hasher.update(chunk)
    except FileNotFoundError:
        return False
    return hasher.digest() == cid.digest


def _same_bytes(path: Path, data: bytes | memoryview) -> bool:
    """Whether the file at ``path`` holds exactly ``data`` (cheaper than re-hashing it)."""
    try:
        with open(path, "rb") as f:
            stored = f.read()
    except FileNotFoundError:
        return False
    # numpy compares at memcmp speed; memoryview == bytes goes element by element (10x slower).
    return bool(np.array_equal(np.frombuffer(stored, np.uint8), np.frombuffer(data, np.uint8)))


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError as exc:  # pragma: no cover - platform specific
        return exc.errno != errno.ESRCH
    # A zombie (killed, not yet reaped) holds no file open; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().split(b") ", 1)[-1][:1] != b"Z"
    except OSError:
        return True


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
