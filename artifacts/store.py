"""``ArtifactStore``: the artifacts of one home folder (``CIDFLOW_HOME``, default ``~/.cidflow``).

Layout::

    blobs/..., tmp/         the local blob store (files named by CID)
    refs/artifacts/<cid>    one small JSON record per artifact written here (ls, gc roots)
    refs/pins/<cid>         pins: gc never collects these or anything they need
    locks/gc                writers hold it shared while they write; gc holds it exclusive

An add pins its artifact unless asked not to. ``gc`` keeps pinned artifacts, artifacts and
blobs written within the grace period, and everything they reference; it refuses to run when
it cannot read the manifest of an artifact it must keep.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.artifact import TENSOR_ATTR, Artifact
from artifacts.atomic import write_atomic
from artifacts.blobstore import BlobStore, LocalBlobStore
from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import CID, CODEC_JSON, as_cid
from artifacts.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    BlobNotFoundError,
    CorruptBlobError,
    InvalidCIDError,
    ManifestError,
    StoreBusyError,
    UnsupportedInputError,
)
from artifacts.manifest import validate_key
from artifacts.settings import ArtifactSettings
from artifacts.writers import EncodeOptions, array_dims, write_array, write_file
from artifacts.zarr_store import CASStore

__all__ = ["ArtifactInfo", "ArtifactStore", "GCReport", "StoreStats", "VerifyReport"]

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class ArtifactInfo:
    cid: str
    kind: str
    created: float
    source: str
    size: int
    pinned: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "cid": self.cid,
            "kind": self.kind,
            "created": self.created,
            "source": self.source,
            "size": self.size,
            "pinned": self.pinned,
        }


@dataclass(slots=True)
class VerifyReport:
    checked_blobs: int = 0
    checked_bytes: int = 0
    problems: list[tuple[str, str]] = field(default_factory=list)  # (cid, what is wrong)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class GCReport:
    removed_blobs: int
    freed_bytes: int
    kept_blobs: int
    forgotten_artifacts: tuple[str, ...]
    removed_temp: int
    dry_run: bool


@dataclass(frozen=True, slots=True)
class StoreStats:
    artifacts: int
    pinned: int
    blobs: int
    stored_bytes: int
    logical_bytes: int

    @property
    def dedup_ratio(self) -> float:
        """Logical bytes of all artifacts over the bytes stored once (>= 1 when data is shared)."""
        return self.logical_bytes / self.stored_bytes if self.stored_bytes else 1.0

    def as_json(self) -> dict[str, Any]:
        return {
            "artifacts": self.artifacts,
            "pinned": self.pinned,
            "blobs": self.blobs,
            "stored_bytes": self.stored_bytes,
            "logical_bytes": self.logical_bytes,
            "dedup_ratio": round(self.dedup_ratio, 4),
        }


class ArtifactStore:
    """Put, open, export, verify, pin and collect artifacts under one home folder."""

    def __init__(
        self,
        home: str | os.PathLike[str] | None = None,
        *,
        read_only: bool = False,
        settings: ArtifactSettings | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self.settings = settings or ArtifactSettings()
        self.home = Path(home).expanduser().absolute() if home else self.settings.home.expanduser()
        self.read_only = read_only
        if not read_only:
            for sub in ("refs/artifacts", "refs/pins", "refs/records", "locks"):
                (self.home / sub).mkdir(parents=True, exist_ok=True)
        elif not self.home.is_dir():
            raise FileNotFoundError(f"no cidflow home at {self.home}")
        self.blobs: BlobStore = blobs or LocalBlobStore(
            self.home, read_only=read_only, hash=self.settings.hash, fsync=self.settings.fsync
        )
        self.options = EncodeOptions(self.settings.chunk_bytes, self.settings.zstd_level)

    @classmethod
    def open(cls, home: str | os.PathLike[str] | None = None, **kw: Any) -> ArtifactStore:
        return cls(home, **kw)

    def __repr__(self) -> str:
        return f"ArtifactStore('{self.home}')"

    # -- locking -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self, exclusive: bool, timeout: float = 600.0) -> Iterator[None]:
        path = self.home / "locks" / "gc"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            deadline = time.monotonic() + timeout
            while True:
                try:
                    fcntl.flock(fd, mode | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        what = "gc" if exclusive else "add"
                        raise StoreBusyError(
                            f"{what}: {self.home} is busy (another gc or add holds the lock)"
                        ) from None
                    time.sleep(0.05)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def session(self, base: str | CID | None = None) -> Iterator[CASStore]:
        """A writable CAS zarr store (empty, or copy-on-write over ``base``).

        While it is open, gc waits: nothing written here can be collected before commit.
        """
        if base is not None:
            self.open_artifact(base)  # fail early on an unknown or malformed base
        with self._lock(exclusive=False):
            yield CASStore(self.blobs, base)

    def _commit(
        self, cas: CASStore, kind: str, attrs: dict[str, Any], source: str, pin: bool
    ) -> CID:
        cid = cas.commit(kind, attrs)
        art = Artifact(CASStore(self.blobs, cid, read_only=True))
        self._record(cid, kind, source, art.size)
        if pin:
            self.pin(cid)
        return cid

    def _record(self, cid: CID, kind: str, source: str, size: int) -> None:
        body = canonical_json(
            {"cid": str(cid), "kind": kind, "source": source, "created": time.time(), "size": size}
        )
        write_atomic(self.home / "refs" / "artifacts" / str(cid), body)

    # -- put -----------------------------------------------------------------------------------
    def put_arrays(
        self,
        arrays: Mapping[str, Any],
        *,
        attrs: dict[str, Any] | None = None,
        dims: Mapping[str, Iterable[str]] | None = None,
        base: str | CID | None = None,
        source: str = "python",
        pin: bool = True,
        progress: Progress | None = None,
    ) -> CID:
        """Store named numpy arrays (``"train/x"`` makes a group); return the artifact CID.

        With ``base``, the arrays are added to (or replace those in) that artifact.
        """
        attrs = dict(attrs or {})
        with self.session(base) as cas:
            for name, value in arrays.items():
                self._put_array(cas, name, np.asarray(value), dims, progress)
            return self._commit(cas, "arrays", attrs, source, pin)

    def _put_array(
        self,
        cas: CASStore,
        name: str,
        data: np.ndarray[Any, Any],
        dims: Mapping[str, Iterable[str]] | None,
        progress: Progress | None,
        attributes: dict[str, Any] | None = None,
    ) -> None:
        validate_key(name)
        if data.dtype.kind not in "biufc" or data.dtype.fields:
            raise UnsupportedInputError(f"array {name!r}: unsupported dtype {data.dtype}")
        names = list(dims[name]) if dims and name in dims else array_dims(name, data.ndim)
        if len(names) != data.ndim:
            raise UnsupportedInputError(f"array {name!r}: {len(names)} dims for {data.ndim} axes")
        write_array(
            cas,
            name,
            shape=tuple(data.shape),
            dtype=data.dtype,
            read_rows=(lambda a, b: data[a:b]) if data.ndim else (lambda a, b: data),
            options=self.options,
            attributes=attributes,
            dimension_names=names,
            progress=progress,
        )

    def put_state_dict(
        self,
        state_dict: Mapping[str, Any],
        *,
        attrs: dict[str, Any] | None = None,
        source: str = "python",
        pin: bool = True,
        progress: Progress | None = None,
    ) -> CID:
        """Store a torch state_dict (every dtype, 0-d and empty tensors); return its CID."""
        from artifacts.torch_io import tensor_to_numpy

        attrs = dict(attrs or {})
        attrs["tensors"] = len(state_dict)
        with self.session() as cas:
            for index, (name, tensor) in enumerate(state_dict.items()):
                if not isinstance(name, str) or not name:
                    raise UnsupportedInputError(f"state_dict key {name!r} is not a non-empty str")
                data, dtype_name = tensor_to_numpy(name, tensor)
                node = f"tensors/{index}"
                self._put_array(
                    cas,
                    node,
                    data,
                    {node: [f"t{index}_dim{i}" for i in range(data.ndim)]},
                    progress,
                    attributes={TENSOR_ATTR: {"name": name, "dtype": dtype_name, "index": index}},
                )
            return self._commit(cas, "state_dict", attrs, source, pin)

    def put_path(
        self,
        path: str | os.PathLike[str],
        *,
        attrs: dict[str, Any] | None = None,
        pin: bool = True,
        progress: Progress | None = None,
        on_skip: Callable[[Path, str], None] | None = None,
        links_within: str | os.PathLike[str] | None = None,
        exclude: Callable[[str], bool] | None = None,
    ) -> CID:
        """Store a file or a folder as a ``files`` artifact, streaming every file.

        ``.npy``, ``.npz`` and ``.safetensors`` files become zarr arrays (and come back
        byte-identical). Symbolic links are never followed out of the folder (or out of
        ``links_within``, a folder around it, such as a Hugging Face cache repo whose snapshots
        link into its ``blobs/``): a link to a file inside is stored as that file, anything else
        is skipped and reported to ``on_skip``. Relative paths for which ``exclude`` is true
        are left out silently.
        """
        root = Path(path)
        if not root.exists() and not root.is_symlink():
            raise FileNotFoundError(f"no such file or folder: {root}")
        files = _collect_files(root, on_skip, Path(links_within) if links_within else None)
        if exclude is not None:
            files = [(rel, p) for rel, p in files if not exclude(rel)]
        attrs = dict(attrs or {})
        attrs["files"] = len(files)  # reserved: what was stored, not what was claimed
        attrs["bytes"] = sum(p.stat().st_size for _, p in files)
        with self.session() as cas:
            zarr_root(cas)
            for index, (rel, source) in enumerate(files):
                write_file(cas, index, source, rel, options=self.options, progress=progress)
            return self._commit(cas, "files", attrs, str(root.absolute()), pin)

    def update(
        self,
        base: str | CID,
        *,
        arrays: Mapping[str, Any] | None = None,
        remove: Iterable[str] = (),
        attrs: dict[str, Any] | None = None,
        pin: bool = True,
        progress: Progress | None = None,
    ) -> CID:
        """A new version of ``base``: replace or add ``arrays``, drop ``remove``, merge ``attrs``.

        Unchanged chunks are shared with ``base``, never copied.
        """
        old = self.open_artifact(base)
        if old.kind not in ("arrays", "zarr"):
            raise ArtifactError(f"update works on arrays artifacts; {old.cid} is {old.kind!r}")
        merged = {**old.attrs, **(attrs or {})}
        with self.session(base) as cas:
            for name in remove:
                _delete_node(cas, validate_key(name))
            for name, value in (arrays or {}).items():
                _delete_node(cas, validate_key(name))
                self._put_array(cas, name, np.asarray(value), None, progress)
            return self._commit(cas, old.kind, merged, f"update of {old.cid}", pin)

    # -- read ----------------------------------------------------------------------------------
    def open_artifact(self, cid: str | CID) -> Artifact:
        """The artifact with root ``cid`` (``ArtifactNotFoundError``, ``ManifestError``...)."""
        key = as_cid(cid)
        if key.codec != CODEC_JSON:
            if self.blobs.has(key):
                raise ManifestError(key, "this CID names a raw blob, not an artifact")
            raise ArtifactNotFoundError(key, str(self.home))
        return Artifact(CASStore(self.blobs, key, read_only=True))

    def export(
        self,
        cid: str | CID,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> builtins.list[Path]:
        return self.open_artifact(cid).export(out, overwrite=overwrite, progress=progress)

    def list(self) -> builtins.list[ArtifactInfo]:
        """Artifacts written to this home, newest first."""
        pins = set(self.pins())
        out: builtins.list[ArtifactInfo] = []
        for path in (self.home / "refs" / "artifacts").glob("b*"):
            try:
                rec = loads_strict(path.read_bytes())
                out.append(
                    ArtifactInfo(
                        str(rec["cid"]),
                        str(rec["kind"]),
                        float(rec["created"]),
                        str(rec.get("source", "")),
                        int(rec.get("size", 0)),
                        rec["cid"] in pins,
                    )
                )
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return sorted(out, key=lambda a: (-a.created, a.cid))

    # -- records -------------------------------------------------------------------------------
    def put_record(self, data: bytes) -> CID:
        """Store a small JSON document (a receipt, say) as a ``json`` blob that gc keeps."""
        try:
            loads_strict(data)
        except ValueError as exc:
            raise UnsupportedInputError(f"a record must be strict JSON: {exc}") from None
        with self._lock(exclusive=False):
            cid = self.blobs.put(data, codec="json")
            self.blobs.flush()
            write_atomic(self.home / "refs" / "records" / str(cid), b"")
        return cid

    def get_record(self, cid: str | CID) -> bytes:
        """The bytes of a stored record, re-hashed against its CID."""
        return self.blobs.get(cid)

    def records(self) -> builtins.list[str]:
        return sorted(p.name for p in (self.home / "refs" / "records").glob("b*"))

    # -- pins ----------------------------------------------------------------------------------
    def pin(self, cid: str | CID) -> None:
        key = self.open_artifact(cid).cid
        write_atomic(self.home / "refs" / "pins" / str(key), b"")

    def unpin(self, cid: str | CID) -> bool:
        try:
            (self.home / "refs" / "pins" / str(as_cid(cid))).unlink()
        except FileNotFoundError:
            return False
        return True

    def pins(self) -> builtins.list[str]:
        out: builtins.list[str] = []
        for p in (self.home / "refs" / "pins").glob("b*"):
            with contextlib.suppress(InvalidCIDError):
                out.append(str(as_cid(p.name)))
        return sorted(out)

    # -- integrity -----------------------------------------------------------------------------
    def verify(
        self, cids: Iterable[str | CID] | None = None, *, progress: Progress | None = None
    ) -> VerifyReport:
        """Re-hash blobs. With ``cids``: those artifacts, whole. Without: every blob stored and
        every listed artifact's completeness. Problems are collected, never raised."""
        report = VerifyReport()
        checked: set[CID] = set()

        def check(cid: CID) -> bool:
            if cid in checked:
                return True
            checked.add(cid)
            try:
                data = self.blobs.get(cid)
            except (BlobNotFoundError, CorruptBlobError) as exc:
                report.problems.append((str(cid), str(exc)))
                return False
            report.checked_blobs += 1
            report.checked_bytes += len(data)
            if progress:
                progress(len(data))
            return True

        if cids is None:
            for cid in self.blobs.iter_cids():
                check(cid)
            roots = [as_cid(a.cid) for a in self.list()] + [as_cid(p) for p in self.pins()]
        else:
            roots = [as_cid(c) for c in cids]
        for root in dict.fromkeys(roots):
            if not check(root):
                continue
            try:
                art = self.open_artifact(root)
                for cid in art.blob_cids():
                    check(cid)
            except (ArtifactError, ValueError) as exc:
                report.problems.append((str(root), str(exc)))
        return report

    # -- gc ------------------------------------------------------------------------------------
    def gc(
        self,
        *,
        grace: float | None = None,
        dry_run: bool = False,
        extra_roots: Iterable[str | CID] = (),
        timeout: float = 600.0,
    ) -> GCReport:
        """Delete blobs no kept artifact needs; see the module docstring for what is kept."""
        if self.read_only:
            raise ArtifactError("gc needs a writable store")
        if not isinstance(self.blobs, LocalBlobStore) or (self.home / "cluster.json").exists():
            raise ArtifactError(
                f"gc refused: {self.home} is on a cluster, whose blobs other homes need "
                "(it knows only its own artifacts); the cluster keeps every blob"
            )
        grace = self.settings.gc_grace_seconds if grace is None else grace
        with self._lock(exclusive=True, timeout=timeout):
            cutoff = time.time() - grace
            records = {a.cid: a for a in self.list()}
            recent = {
                cid for cid in records if _mtime(self.home / "refs" / "artifacts" / cid) >= cutoff
            }
            roots = set(self.pins()) | recent | {str(as_cid(c)) for c in extra_roots}
            live: set[CID] = {as_cid(c) for c in self.records()}  # receipts and such
            for root in sorted(roots):
                try:
                    art = self.open_artifact(root)
                    live.update(art.blob_cids())
                except (ArtifactError, ValueError) as exc:
                    raise ArtifactError(
                        f"gc refused: cannot read kept artifact {root}: {exc}"
                    ) from exc
            forgotten = tuple(sorted(set(records) - roots))
            if not dry_run:
                for name in forgotten:  # forget first: an interrupted gc leaves only orphans
                    with contextlib.suppress(FileNotFoundError):
                        (self.home / "refs" / "artifacts" / name).unlink()
            removed = freed = kept = 0
            for blob in builtins.list(self.blobs.iter_cids()):
                if blob in live:
                    kept += 1
                    continue
                try:
                    st = self.blobs.stat(blob)
                except FileNotFoundError:
                    continue
                if st.mtime >= cutoff:
                    kept += 1
                    continue
                if dry_run or self.blobs.delete(blob):
                    removed += 1
                    freed += st.size
            temp = 0
            if not dry_run and isinstance(self.blobs, LocalBlobStore):
                temp = self.blobs.remove_stale_temp(older_than=max(grace, 60.0))
            return GCReport(removed, freed, kept, forgotten, temp, dry_run)

    # -- stats ---------------------------------------------------------------------------------
    def stats(self) -> StoreStats:
        stored = count = 0
        for cid in self.blobs.iter_cids():
            with contextlib.suppress(FileNotFoundError):
                stored += self.blobs.stat(cid).size
                count += 1
        infos = self.list()
        logical = 0
        for info in infos:
            with contextlib.suppress(ArtifactError, ValueError):
                art = self.open_artifact(info.cid)
                manifests = [art.cid, *art.tree_nodes()]
                logical += art.size + sum(self.blobs.stat(c).size for c in manifests)
        return StoreStats(len(infos), len(self.pins()), count, stored, logical)


# -- helpers -----------------------------------------------------------------------------------


def zarr_root(cas: CASStore) -> None:
    import zarr

    zarr.open_group(cas, mode="a")


def _delete_node(cas: CASStore, name: str) -> None:
    from zarr.core.sync import sync

    sync(cas.delete_dir(name))


def _collect_files(
    root: Path, on_skip: Callable[[Path, str], None] | None, links_within: Path | None = None
) -> list[tuple[str, Path]]:
    """(relative path, real path) of every regular file under ``root``, sorted."""
    if root.is_symlink():
        raise UnsupportedInputError(f"{root} is a symbolic link: add its target instead")
    if root.is_file():
        return [(root.name, root)]
    if not root.is_dir():
        raise UnsupportedInputError(f"{root} is neither a regular file nor a folder")
    base = (links_within or root).resolve()
    out: list[tuple[str, Path]] = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs.sort()
        here = Path(folder)
        for d in list(dirs):
            if (here / d).is_symlink():
                dirs.remove(d)
                if on_skip:
                    on_skip(here / d, "symbolic link to a folder (not followed)")
        for name in sorted(names):
            p = here / name
            rel = p.relative_to(root).as_posix()
            source = p
            if p.is_symlink():
                source = p.resolve()
                if not (source.is_file() and source.is_relative_to(base)):
                    if on_skip:
                        on_skip(p, "symbolic link pointing outside the folder (not followed)")
                    continue
            elif not p.is_file():
                if on_skip:
                    on_skip(p, "not a regular file")
                continue
            try:
                validate_key(rel)
            except ValueError as exc:
                raise UnsupportedInputError(f"cannot store {p}: {exc}") from None
            out.append((rel, source))
    return sorted(out)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
