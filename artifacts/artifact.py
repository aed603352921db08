"""Reading an artifact: kind, attributes, lazy zarr access, numpy / torch views, export."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from artifacts.canonical import canonical_json
from artifacts.cid import CID
from artifacts.errors import ArtifactError, ManifestError, UnsafePathError
from artifacts.manifest import Ref, RootManifest, validate_key
from artifacts.writers import ARRAY_ATTR, BLOCK_BYTES, FILE_ATTR
from artifacts.zarr_store import CASStore

if TYPE_CHECKING:
    import torch
    import zarr

__all__ = ["ArrayInfo", "Artifact", "FileEntry"]

Progress = Callable[[int], None]
TENSOR_ATTR = "cidflow.tensor"


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    """Shape, dtype and chunking of one zarr array of an artifact."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    attributes: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype, "chunks": list(self.chunks)}


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of a ``files`` artifact: its relative path, size and segments."""

    path: str
    size: int
    segments: tuple[tuple[str, str], ...]


class Artifact:
    """An artifact opened by CID. Nothing but the root manifest is read until asked for."""

    def __init__(self, store: CASStore) -> None:
        manifest = store.manifest
        if manifest is None or store.root is None:
            raise ManifestError(None, "an artifact needs a root CID")
        self.store = store
        self.cid: CID = store.root
        self.manifest: RootManifest = manifest
        self._metadata: dict[str, dict[str, Any]] | None = None

    def __repr__(self) -> str:
        return f"Artifact('{self.cid}', kind={self.kind!r})"

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def attrs(self) -> dict[str, Any]:
        return self.manifest.attrs

    @cached_property
    def group(self) -> zarr.Group:
        """The artifact as a read-only zarr group (chunks are fetched and verified lazily)."""
        import zarr

        return zarr.open_group(self.store, mode="r")

    # -- structure -----------------------------------------------------------------------------
    def refs(self) -> Iterator[Ref]:
        """The blob of every zarr key (metadata documents and chunks), with its size."""
        for group in sorted(self.manifest.tables):
            table = self.store._table(group)
            assert table is not None
            yield from (ref for _, ref in table.items())

    def tree_nodes(self) -> Iterator[CID]:
        """The manifest's own blobs below the root: the nodes of its large tables."""
        for group in sorted(self.manifest.tables):
            table = self.store._table(group)
            assert table is not None
            yield from table.tree_cids

    def blob_cids(self) -> Iterator[CID]:
        """Every blob this artifact needs: root manifest, table nodes and key blobs."""
        yield self.cid
        yield from self.tree_nodes()
        yield from (ref.cid for ref in self.refs())

    @property
    def size(self) -> int:
        """Logical bytes: the sum of the stored sizes of every entry."""
        total = 0
        for group in self.manifest.tables:
            table = self.store._table(group)
            assert table is not None
            total += table.bytes
        return total

    def metadata(self) -> dict[str, dict[str, Any]]:
        """Every zarr node's metadata document, by node path (``""`` is the root group).

        Read once per :class:`Artifact`: an artifact never changes under its CID."""
        if self._metadata is None:
            self._metadata = self._read_metadata()
        return self._metadata

    def _read_metadata(self) -> dict[str, dict[str, Any]]:
        table = self.store._table("")
        out: dict[str, dict[str, Any]] = {}
        if table is None:
            return out
        for key, ref in table.items():
            if key == "zarr.json" or key.endswith("/zarr.json"):
                try:
                    doc = json.loads(self.store.blobs.get(ref.cid))
                except ValueError as exc:
                    raise ManifestError(self.cid, f"{key} is not JSON: {exc}") from None
                if isinstance(doc, dict):
                    out[key.removesuffix("zarr.json").rstrip("/")] = doc
        return out

    def arrays(self) -> dict[str, ArrayInfo]:
        """The arrays of this artifact by user-facing name (file path for npy files)."""
        out: dict[str, ArrayInfo] = {}
        for path, doc in sorted(self.metadata().items()):
            if doc.get("node_type") != "array":
                continue
            attributes = doc.get("attributes") or {}
            name = path
            if self.kind == "files":
                meta = attributes.get(ARRAY_ATTR, {})
                if meta.get("raw"):
                    continue  # the bytes of a plain file (or of zip structure): not an array
                name = meta.get("path", path)
            elif self.kind == "state_dict" and TENSOR_ATTR in attributes:
                name = attributes[TENSOR_ATTR]["name"]
            grid = doc.get("chunk_grid", {}).get("configuration", {}).get("chunk_shape", [])
            dtype = _dtype_name(doc, attributes)
            out[name] = ArrayInfo(
                path, tuple(doc.get("shape", ())), dtype, tuple(grid), dict(attributes)
            )
        return out

    def files(self) -> list[FileEntry]:
        """The files of a ``files`` artifact, sorted by path (validated: never escapes)."""
        if self.kind != "files":
            raise ArtifactError(f"artifact {self.cid} is a {self.kind!r} artifact, not files")
        entries: list[FileEntry] = []
        for _, doc in sorted(self.metadata().items()):
            meta = (doc.get("attributes") or {}).get(FILE_ATTR)
            if meta is None:
                continue
            try:
                path = validate_key(meta["path"], cid=self.cid)
                segs = tuple((str(k), str(v)) for k, v in meta["segments"])
                size = int(meta["size"])
            except (KeyError, TypeError, ValueError) as exc:
                if isinstance(exc, UnsafePathError):
                    raise
                raise ManifestError(self.cid, f"malformed file entry: {exc}") from None
            entries.append(FileEntry(path, size, segs))
        entries.sort(key=lambda e: e.path)
        return entries

    # -- data ----------------------------------------------------------------------------------
    def array(self, name: str) -> zarr.Array[Any]:
        """The zarr array called ``name`` (as listed by :meth:`arrays`), lazily read."""
        info = self.arrays().get(name)
        if info is None:
            raise KeyError(f"artifact {self.cid} has no array {name!r}")
        node = self.group[info.path]
        import zarr

        assert isinstance(node, zarr.Array)
        return node

    def to_numpy(self) -> dict[str, np.ndarray[Any, Any]]:
        """Every array, read whole into memory, by name (original dtype for npy files)."""
        out: dict[str, np.ndarray[Any, Any]] = {}
        for name, info in self.arrays().items():
            node: Any = self.group[info.path]
            data = np.asarray(node[...])
            original = info.attributes.get(ARRAY_ATTR, {}).get("dtype")
            out[name] = data.astype(np.dtype(original)) if original else data
        return out

    def to_state_dict(self) -> dict[str, torch.Tensor]:
        """The torch state_dict this artifact was made from: same names, order, dtypes, bits."""
        from artifacts.torch_io import numpy_to_tensor

        if self.kind != "state_dict":
            raise ArtifactError(f"artifact {self.cid} is a {self.kind!r} artifact, not state_dict")
        items: list[tuple[int, str, torch.Tensor]] = []
        for info in self.arrays().values():
            meta = info.attributes[TENSOR_ATTR]
            tensor_node: Any = self.group[info.path]
            data = np.asarray(tensor_node[...])
            items.append((int(meta["index"]), meta["name"], numpy_to_tensor(data, meta["dtype"])))
        return {name: tensor for _, name, tensor in sorted(items, key=lambda t: t[0])}

    # -- export --------------------------------------------------------------------------------
    def export(
        self,
        out: str | os.PathLike[str],
        *,
        overwrite: bool = False,
        progress: Progress | None = None,
    ) -> list[Path]:
        """Write the artifact under folder ``out``; return the written paths.

        ``files`` artifacts come back byte-identical; ``arrays`` as one ``.npy`` per array;
        ``state_dict`` as ``model.safetensors``; anything else as a zarr v3 folder. Everything
        is written to a staging folder first, so a failure (a corrupt blob, say) leaves ``out``
        as it was.
        """
        target = Path(out).absolute()
        if target.exists() and not target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder")
        non_empty = target.is_dir() and any(target.iterdir())
        if non_empty and not overwrite:
            raise FileExistsError(f"{target} is not empty (use overwrite to merge into it)")
        plan = self._export_plan()
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.{secrets.token_hex(6)}.incomplete"
        staging.mkdir()
        try:
            for rel, write in plan:
                dest = _inside(staging, rel, self.cid)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "xb") as f:
                    write(f, progress)
            if not target.exists() or not non_empty:
                with contextlib.suppress(FileNotFoundError):
                    target.rmdir()
                os.replace(staging, target)
            else:
                for rel, _ in plan:
                    dest = _inside(target, rel, self.cid)
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(staging / rel, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return [target / rel for rel, _ in plan]

    def _export_plan(self) -> list[tuple[str, Callable[[Any, Progress | None], None]]]:
        if self.kind == "files":
            return [(e.path, self._file_writer(e)) for e in self.files()]
        if self.kind == "arrays":
            plan = []
            for name, info in self.arrays().items():
                validate_key(name, cid=self.cid)
                plan.append((f"{name}.npy", self._npy_writer(info)))
            return plan
        if self.kind == "state_dict":
            return [("model.safetensors", self._safetensors_writer())]
        plan = []
        for key, ref in sorted(self.store.items()):
            validate_key(key, cid=self.cid)
            plan.append((key, self._blob_writer(ref)))
        return plan

    def _blob_writer(self, ref: Ref) -> Callable[[Any, Progress | None], None]:
        def write(f: Any, progress: Progress | None) -> None:
            data = self.store.blobs.get(ref.cid)
            f.write(data)
            if progress:
                progress(len(data))

        return write

    def _file_writer(self, entry: FileEntry) -> Callable[[Any, Progress | None], None]:
        def write(f: Any, progress: Progress | None) -> None:
            written = 0
            for kind, value in entry.segments:
                if kind == "bytes":
                    data = base64.b64decode(value, validate=True)
                    f.write(data)
                    written += len(data)
                elif kind == "array":
                    node: Any = self.group[validate_key(value, cid=self.cid)]
                    dtype = (node.attrs.get(ARRAY_ATTR) or {}).get("dtype")
                    written += _stream_array(
                        node, f, np.dtype(dtype) if dtype else None, progress, self.store
                    )
                else:
                    raise ManifestError(self.cid, f"unknown segment kind {kind!r}")
            if written != entry.size:
                raise ManifestError(
                    self.cid, f"{entry.path}: rebuilt {written} bytes, manifest says {entry.size}"
                )

        return write

    def _npy_writer(self, info: ArrayInfo) -> Callable[[Any, Progress | None], None]:
        def write(f: Any, progress: Progress | None) -> None:
            node: Any = self.group[info.path]
            original = info.attributes.get(ARRAY_ATTR, {}).get("dtype")
            dtype = np.dtype(original) if original else node.dtype
            header = {
                "descr": np.lib.format.dtype_to_descr(dtype),
                "fortran_order": False,
                "shape": tuple(node.shape),
            }
            np.lib.format.write_array_header_2_0(f, header) if _needs_v2(header) else (
                np.lib.format.write_array_header_1_0(f, header)
            )
            _stream_array(node, f, dtype, progress, self.store)

        return write

    def _safetensors_writer(self) -> Callable[[Any, Progress | None], None]:
        def write(f: Any, progress: Progress | None) -> None:
            tensors = sorted(
                (info.attributes[TENSOR_ATTR]["index"], name, info)
                for name, info in self.arrays().items()
            )
            header: dict[str, Any] = {}
            offset = 0
            for _, name, info in tensors:
                meta = info.attributes[TENSOR_ATTR]
                tensor_node: Any = self.group[info.path]
                itemsize = tensor_node.dtype.itemsize
                nbytes = int(np.prod(info.shape, dtype=np.int64)) * itemsize
                header[name] = {
                    "dtype": _SAFETENSORS_DTYPES.get(meta["dtype"], meta["dtype"].upper()),
                    "shape": list(info.shape),
                    "data_offsets": [offset, offset + nbytes],
                }
                offset += nbytes
            raw = canonical_json(header)
            raw += b" " * (-len(raw) % 8)
            f.write(len(raw).to_bytes(8, "little"))
            f.write(raw)
            for _, _, info in tensors:
                _stream_array(self.group[info.path], f, None, progress, self.store)

        return write


_SAFETENSORS_DTYPES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "bool": "BOOL",
    "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "complex64": "C64",
}  # fmt: skip


def _needs_v2(header: dict[str, Any]) -> bool:
    return len(repr(header)) > 60000


def _dtype_name(doc: dict[str, Any], attributes: dict[str, Any]) -> str:
    original = attributes.get(ARRAY_ATTR, {}).get("dtype")
    if original:
        return str(np.dtype(original))
    tensor = attributes.get(TENSOR_ATTR)
    if tensor:
        return str(tensor["dtype"])
    dtype = doc.get("data_type")
    return dtype if isinstance(dtype, str) else json.dumps(dtype)


def _stream_array(
    node: Any,
    f: Any,
    dtype: np.dtype[Any] | None,
    progress: Progress | None,
    cas: CASStore | None = None,
) -> int:
    """Write ``node``'s data in C order, block by block; return the bytes written."""
    if cas is not None:
        written = _stream_chunk_rows(node, f, dtype, progress, cas)
        if written is not None:
            return written
    shape = tuple(node.shape)
    if not shape:
        data = np.asarray(node[...])
        raw = (data.astype(dtype) if dtype is not None else data).tobytes()
        f.write(raw)
        return len(raw)
    row = node.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    chunk_rows = node.chunks[0] if node.chunks else 1
    step = max(chunk_rows, (BLOCK_BYTES // max(1, row)) // chunk_rows * chunk_rows)
    written = 0
    for start in range(0, shape[0], step):
        block = np.asarray(node[start : start + step])
        if dtype is not None and block.dtype != dtype:
            block = block.astype(dtype)
        view = np.ascontiguousarray(block).data
        f.write(view)
        written += view.nbytes
        if progress:
            progress(view.nbytes)
    return written


_READ_AHEAD = 4  # chunks fetched (read, hashed, decoded) ahead of the one being written


def _stream_chunk_rows(
    node: Any, f: Any, dtype: np.dtype[Any] | None, progress: Progress | None, cas: CASStore
) -> int | None:
    """The fast path of :func:`_stream_array` for what cidflow itself writes: chunks spanning
    whole trailing axes, little-endian bytes, optional zstd, fill value 0. Then the array's
    bytes are its chunks' decoded bytes in order (the last one trimmed, absent ones zero), so
    no zarr indexing is needed. Anything else: None (the caller uses zarr)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    md = node.metadata
    shape, chunks = tuple(node.shape), tuple(node.chunks)
    if not shape or chunks[1:] != shape[1:] or getattr(md, "zarr_format", 3) != 3:
        return None
    if md.fill_value not in (0, False) or (dtype is not None and np.dtype(dtype) != node.dtype):
        return None
    names = [type(c).__name__ for c in md.codecs]
    endian = getattr(md.codecs[0], "endian", None)
    if names not in (["BytesCodec"], ["BytesCodec", "ZstdCodec"]):
        return None
    if node.dtype.itemsize > 1 and getattr(endian, "value", endian) != "little":
        return None
    if np.little_endian is False:
        return None
    import numcodecs

    zstd = numcodecs.Zstd() if len(names) == 2 else None
    row = node.dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
    chunk_bytes = chunks[0] * row
    total = shape[0] * row
    prefix = f"{node.path}/" if node.path else ""
    tail = (0,) * (len(shape) - 1)
    keys = [prefix + str(md.encode_chunk_key((i, *tail))) for i in range(-(-shape[0] // chunks[0]))]

    def fetch(key: str) -> bytes:
        data = cas.get_blob(key)
        if data is None:
            return bytes(chunk_bytes)
        return bytes(zstd.decode(data)) if zstd is not None else data

    written = 0
    with ThreadPoolExecutor(2, thread_name_prefix="cidflow-read") as pool:
        pending: list[Future[bytes]] = [pool.submit(fetch, k) for k in keys[:_READ_AHEAD]]
        for i in range(len(keys)):
            data = pending.pop(0).result()
            if i + _READ_AHEAD < len(keys):
                pending.append(pool.submit(fetch, keys[i + _READ_AHEAD]))
            if len(data) != chunk_bytes:
                raise ManifestError(cas.root, f"chunk {keys[i]} holds {len(data)} bytes, "
                                    f"expected {chunk_bytes}")  # fmt: skip
            piece = memoryview(data)[: min(chunk_bytes, total - written)]
            f.write(piece)
            written += len(piece)
            if progress:
                progress(len(piece))
    return written


def _inside(root: Path, rel: str, cid: CID) -> Path:
    validate_key(rel, cid=cid)
    dest = (root / rel).resolve()
    if not dest.is_relative_to(root.resolve()):
        raise UnsafePathError(rel, "resolves outside the output folder", cid)
    return dest
