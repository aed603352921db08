"""Writing data into a :class:`~artifacts.zarr_store.CASStore`: arrays, npy files, raw files.

Everything is written block by block (whole chunk rows, about 64 MiB at a time), so adding a
file many times larger than memory keeps a bounded footprint. Files are described by
*segments*: inline bytes (an npy header) and arrays (its data, or the raw bytes as ``uint8``),
which concatenate back to the exact original bytes on export.
"""

from __future__ import annotations

import base64
import itertools
import os
import struct
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from artifacts.encoding import (
    choose_compressors,
    chunk_shape,
    native_dtype,
    rows_per_block,
    sample_ranges,
)
from artifacts.safetensors_io import read_safetensors_layout
from artifacts.zarr_store import CASStore

__all__ = ["BLOCK_BYTES", "FILE_ATTR", "EncodeOptions", "write_array", "write_file"]

BLOCK_BYTES = 64 << 20
FILE_ATTR = "cidflow.file"
ARRAY_ATTR = "cidflow.array"
Progress = Callable[[int], None]
ReadRows = Callable[[int, int], np.ndarray[Any, Any]]


@dataclass(frozen=True, slots=True)
class EncodeOptions:
    chunk_bytes: int = 4 << 20
    zstd_level: int = 3


def write_array(
    cas: CASStore,
    path: str,
    *,
    shape: tuple[int, ...],
    dtype: np.dtype[Any],
    read_rows: ReadRows,
    options: EncodeOptions,
    attributes: dict[str, Any] | None = None,
    dimension_names: Sequence[str] | None = None,
    progress: Progress | None = None,
) -> None:
    """Create array ``path`` in ``cas`` and fill it from ``read_rows(start, stop)`` (axis 0)."""
    import zarr

    dtype = native_dtype(dtype)
    chunks = chunk_shape(shape, dtype.itemsize, options.chunk_bytes)
    if shape:
        samples = [
            np.asarray(read_rows(a, b), dtype=dtype).tobytes()
            for a, b in sample_ranges(shape[0], chunks[0])
        ]
    else:
        samples = [np.asarray(read_rows(0, 1), dtype=dtype).tobytes()]
    compressors = choose_compressors(samples, options.zstd_level)
    array = zarr.create_array(
        cas,
        name=path,
        shape=shape,
        dtype=dtype,
        chunks=chunks if shape else (),
        compressors=compressors,
        filters=None,
        fill_value=0,
        attributes=attributes or {},
        dimension_names=list(dimension_names) if dimension_names is not None else None,
        overwrite=True,
    )
    encoder = _ChunkEncoder(
        cas, path, array.metadata, chunks, dtype, options if compressors else None
    )
    if not shape:
        encoder.store(encoder.key(()), np.asarray(read_rows(0, 1), dtype=dtype).reshape(()))
        if progress:
            progress(dtype.itemsize)
        return
    step = rows_per_block(shape, chunks, dtype.itemsize, BLOCK_BYTES)
    workers = min(8, (os.cpu_count() or 2) + 2)
    with ThreadPoolExecutor(workers, thread_name_prefix="cidflow-chunk") as pool:
        pending: list[Future[None]] = []
        for start in range(0, shape[0], step):
            stop = min(shape[0], start + step)
            block = np.asarray(read_rows(start, stop), dtype=dtype)  # overlaps the last block's
            for future in pending:  # encoding; at most two blocks are ever held
                future.result()
            pending = [
                pool.submit(encoder.store, key, piece)
                for key, piece in encoder.pieces(block, start, shape)
            ]
            if progress:
                progress(block.nbytes)
        for future in pending:
            future.result()


class _ChunkEncoder:
    """Encodes chunks exactly as zarr's own pipeline does (bytes codec, little endian, edge
    chunks padded with the fill value 0, then optional zstd) and stores them by CID.

    Writing chunks directly rather than through ``array[...] = block`` is several times faster
    (zarr's async write path copies and compares every chunk); a test checks that both give
    the same blobs. A chunk whose bytes are all zero is not stored (it reads back as the fill
    value), as zarr does, but unlike zarr a chunk of ``-0.0`` is kept bit-for-bit.
    """

    def __init__(
        self,
        cas: CASStore,
        path: str,
        metadata: Any,
        chunks: tuple[int, ...],
        dtype: np.dtype[Any],
        zstd: EncodeOptions | None,
    ) -> None:
        import numcodecs

        self._cas = cas
        self._prefix = f"{path}/" if path else ""
        self._metadata = metadata
        self._chunks = chunks
        self._dtype = dtype.newbyteorder("<") if dtype.byteorder not in ("|",) else dtype
        self._zstd = numcodecs.Zstd(level=zstd.zstd_level, checksum=False) if zstd else None

    def key(self, coords: tuple[int, ...]) -> str:
        return self._prefix + str(self._metadata.encode_chunk_key(coords))

    def pieces(
        self, block: np.ndarray[Any, Any], row0: int, shape: tuple[int, ...]
    ) -> Iterator[tuple[str, np.ndarray[Any, Any]]]:
        """(key, view) for every chunk inside ``block`` (rows ``row0``.., chunk-aligned)."""
        ranges = [range(row0 // self._chunks[0], -(-(row0 + len(block)) // self._chunks[0]))]
        ranges += [range(-(-n // c)) for n, c in zip(shape[1:], self._chunks[1:], strict=True)]
        for coords in itertools.product(*ranges):
            index = tuple(
                slice(i * c - (row0 if axis == 0 else 0), (i + 1) * c - (row0 if axis == 0 else 0))
                for axis, (i, c) in enumerate(zip(coords, self._chunks, strict=True))
            )
            yield self.key(coords), block[index]

    def store(self, key: str, piece: np.ndarray[Any, Any]) -> None:
        if piece.shape != self._chunks:
            padded = np.zeros(self._chunks, dtype=self._dtype)
            padded[tuple(slice(0, n) for n in piece.shape)] = piece
            raw = padded
        else:
            raw = np.ascontiguousarray(piece, dtype=self._dtype)
        flat = raw.reshape(-1).view(np.uint8)
        if not (flat[0] or flat[-1] or flat[len(flat) // 2]) and not flat.any():
            return  # all zero: reads back as the fill value
        data: Any = memoryview(flat)  # type: ignore[arg-type]
        if self._zstd is not None:
            data = self._zstd.encode(data)
        self._cas.set_blob(key, data)


# -- files ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NpyLayout:
    header: bytes
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def read_npy_layout(f: BinaryIO, start: int, size: int) -> NpyLayout | None:
    """The header of a C-order numeric npy image at ``start`` filling ``size`` bytes, or None."""
    f.seek(start)
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
    except (ValueError, OSError, SyntaxError, TypeError):
        return None
    header = f.tell() - start
    if fortran or dtype.hasobject or dtype.kind not in "biufc" or dtype.fields or dtype.subdtype:
        return None
    if header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
        return None
    f.seek(start)
    return NpyLayout(f.read(header), tuple(int(n) for n in shape), dtype)


@dataclass(frozen=True, slots=True)
class _Region:
    """A byte range of a file: raw bytes, or an npy image (header + array data)."""

    start: int
    end: int
    npy: NpyLayout | None = None
    name: str = ""
    extra: dict[str, Any] | None = None  # more ARRAY_ATTR fields (a tensor's own dtype)


def _npz_regions(f: BinaryIO, size: int) -> list[_Region] | None:
    """The stored (uncompressed) ``.npy`` members of a zip, in file order; None if none."""
    try:
        with zipfile.ZipFile(f) as zf:
            infos = sorted(zf.infolist(), key=lambda i: i.header_offset)
    except (zipfile.BadZipFile, OSError, ValueError):
        return None
    regions: list[_Region] = []
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED or not info.filename.endswith(".npy"):
            continue
        f.seek(info.header_offset)
        local = f.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        end = start + info.compress_size
        if end > size or (regions and start < regions[-1].end):
            return None
        layout = read_npy_layout(f, start, info.compress_size)
        if layout is not None:
            regions.append(_Region(start, end, layout, info.filename.removesuffix(".npy")))
    return regions or None


def _safetensors_regions(f: BinaryIO, size: int) -> list[_Region] | None:
    """Each tensor of a safetensors file as a typed array region (no per-region header)."""
    tensors = read_safetensors_layout(f, size)
    if not tensors:
        return None
    return [
        _Region(t.start, t.end, NpyLayout(b"", t.shape, t.dtype), t.name,
                {"tensor": {"name": t.name, "dtype": t.st_dtype, "torch_dtype": t.torch_dtype}})
        for t in tensors
    ]  # fmt: skip


def write_file(
    cas: CASStore,
    index: int,
    source: Path,
    rel_path: str,
    *,
    options: EncodeOptions,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Store one file under node ``files/<index>``; return its file entry.

    A plain file is one ``uint8`` array; an ``.npy`` file is its header plus a typed array; an
    ``.npz`` whose members are stored uncompressed keeps its zip structure as small byte
    segments and each member as a typed array; a ``.safetensors`` file keeps its header as
    bytes and each tensor as a typed array (so models sharing tensors share chunks).
    Concatenated, the segments are the file.
    """
    size = source.stat().st_size
    node = f"files/{index}"
    suffix = Path(rel_path).suffix.lower()  # the name, not a link target (hub cache blobs)
    with open(source, "rb") as f:
        regions: list[_Region] | None = None
        if suffix == ".npy":
            layout = read_npy_layout(f, 0, size)
            regions = [_Region(0, size, layout)] if layout else None
        elif suffix == ".npz":
            regions = _npz_regions(f, size)
        elif suffix == ".safetensors":
            regions = _safetensors_regions(f, size)
        if not regions:
            entry = {"path": rel_path, "size": size, "segments": [["array", node]]}
            _write_range(cas, f, node, 0, size, rel_path, entry, options, progress)
            return entry
        if len(regions) == 1 and regions[0].start == 0 and regions[0].end == size:
            layout = regions[0].npy
            assert layout is not None
            header = base64.b64encode(layout.header).decode("ascii")
            entry = {
                "path": rel_path,
                "size": size,
                "segments": [["bytes", header], ["array", node]],
            }
            _write_npy(cas, f, node, 0, layout, rel_path, entry, options, progress)
            return entry
        # An archive: the node is a group holding one array per member (and big gaps).
        import zarr

        segments: list[list[str]] = []
        pos = 0
        pieces: list[tuple[str, _Region]] = []
        for k, region in enumerate(regions):
            layout = region.npy
            assert layout is not None
            gap_end = region.start + len(layout.header)
            segments += _gap_segments(f, node, f"g{k}", pos, gap_end, pieces)
            member = f"{node}/{k}"
            segments.append(["array", member])
            pieces.append((member, region))
            pos = region.end
        segments += _gap_segments(f, node, "tail", pos, size, pieces)
        entry = {"path": rel_path, "size": size, "segments": segments}
        zarr.create_group(cas, path=node, attributes={FILE_ATTR: entry}, overwrite=True)
        for member, region in pieces:
            if region.npy is None:
                _write_range(
                    cas, f, member, region.start, region.end, None, None, options, progress
                )
            else:
                name = f"{rel_path}/{region.name}"
                _write_npy(cas, f, member, region.start, region.npy, name, None, options, progress,
                           extra=region.extra)  # fmt: skip
    return entry


_INLINE_GAP = 64 << 10


def _gap_segments(
    f: BinaryIO, node: str, label: str, start: int, end: int, pieces: list[tuple[str, _Region]]
) -> list[list[str]]:
    """Bytes between members: inline when small, else a uint8 array written later."""
    if end <= start:
        return []
    if end - start <= _INLINE_GAP:
        f.seek(start)
        return [["bytes", base64.b64encode(f.read(end - start)).decode("ascii")]]
    member = f"{node}/{label}"
    pieces.append((member, _Region(start, end)))
    return [["array", member]]


def _write_npy(
    cas: CASStore,
    f: BinaryIO,
    node: str,
    start: int,
    layout: NpyLayout,
    name: str,
    entry: dict[str, Any] | None,
    options: EncodeOptions,
    progress: Progress | None,
    *,
    extra: dict[str, Any] | None = None,
) -> None:
    offset = start + len(layout.header)
    row = layout.dtype.itemsize * int(np.prod(layout.shape[1:], dtype=np.int64))
    attributes: dict[str, Any] = {ARRAY_ATTR: {"dtype": layout.dtype.str, "path": name}}
    if extra:
        attributes[ARRAY_ATTR].update(extra)
    if entry is not None:
        attributes[FILE_ATTR] = entry
    write_array(
        cas,
        node,
        shape=layout.shape,
        dtype=layout.dtype,
        read_rows=_file_rows(f, offset, row, layout.dtype, layout.shape),
        options=options,
        attributes=attributes,
        dimension_names=_dims(name, len(layout.shape)),
        progress=progress,
    )


def _write_range(
    cas: CASStore,
    f: BinaryIO,
    node: str,
    start: int,
    end: int,
    name: str | None,
    entry: dict[str, Any] | None,
    options: EncodeOptions,
    progress: Progress | None,
) -> None:
    attributes: dict[str, Any] = {ARRAY_ATTR: {"dtype": "|u1", "raw": True}}
    if name is not None:
        attributes[ARRAY_ATTR]["path"] = name
    if entry is not None:
        attributes[FILE_ATTR] = entry
    write_array(
        cas,
        node,
        shape=(end - start,),
        dtype=np.dtype("u1"),
        read_rows=_file_rows(f, start, 1, np.dtype("u1"), (end - start,)),
        options=options,
        attributes=attributes,
        dimension_names=["byte"],
        progress=progress,
    )


def _file_rows(
    f: BinaryIO, offset: int, row_bytes: int, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> ReadRows:
    """``read_rows`` over a file region, reading into two alternating buffers.

    Reusing buffers spares the kernel zeroing fresh pages for every 64 MiB block. It is safe
    because :func:`write_array` holds at most two blocks: the one being read and the one
    being encoded (it waits for a block's chunks before it reads the block after next).
    """
    buffers: list[bytearray] = [bytearray(), bytearray()]
    turn = [0]

    def read_rows(start: int, stop: int) -> np.ndarray[Any, Any]:
        if not shape:
            f.seek(offset)
            return np.frombuffer(f.read(dtype.itemsize), dtype=dtype).reshape(())
        count = (stop - start) * row_bytes
        turn[0] ^= 1
        buf = buffers[turn[0]]
        if len(buf) < count:
            buf = buffers[turn[0]] = bytearray(count)
        f.seek(offset + start * row_bytes)
        view = memoryview(buf)[:count]
        got = f.readinto(view)  # type: ignore[attr-defined]
        if got != count:
            raise OSError(f"{getattr(f, 'name', 'file')} changed while being read")
        return np.frombuffer(view, dtype=dtype).reshape((stop - start, *shape[1:]))

    return read_rows


def _dims(name: str, ndim: int) -> list[str]:
    leaf = name.rsplit("/", 1)[-1].removesuffix(".npy") or "a"
    return [f"{leaf}_dim{i}" for i in range(ndim)]


def array_dims(name: str, ndim: int) -> list[str]:
    """Default xarray dimension names of array ``name``: unique per array."""
    return _dims(name, ndim)
