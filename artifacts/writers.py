"""Writing data into a :class:`~artifacts.zarr_store.CASStore`: arrays, npy files, raw files.

Everything is written block by block (whole chunk rows, about 64 MiB at a time), so adding a
file many times larger than memory keeps a bounded footprint. Files are described by
*segments*: inline bytes (an npy header) and arrays (its data, or the raw bytes as ``uint8``),
which concatenate back to the exact original bytes on export.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
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
    array = zarr.create_array(
        cas,
        name=path,
        shape=shape,
        dtype=dtype,
        chunks=chunks if shape else (),
        compressors=choose_compressors(samples, options.zstd_level),
        filters=None,
        fill_value=0,
        attributes=attributes or {},
        dimension_names=list(dimension_names) if dimension_names is not None else None,
        overwrite=True,
    )
    if not shape:
        array[...] = np.asarray(read_rows(0, 1), dtype=dtype).reshape(())
        if progress:
            progress(dtype.itemsize)
        return
    step = rows_per_block(shape, chunks, dtype.itemsize, BLOCK_BYTES)
    for start in range(0, shape[0], step):
        stop = min(shape[0], start + step)
        block = np.asarray(read_rows(start, stop), dtype=dtype)
        array[start:stop] = block
        if progress:
            progress(block.nbytes)


# -- files ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NpyLayout:
    header: bytes
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


def read_npy_layout(f: BinaryIO, size: int) -> NpyLayout | None:
    """The header of a C-order numeric ``.npy`` file whose data fills the rest, else ``None``."""
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
    offset = f.tell()
    if fortran or dtype.hasobject or dtype.kind not in "biufc" or dtype.fields or dtype.subdtype:
        return None
    if offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != size:
        return None
    f.seek(0)
    return NpyLayout(f.read(offset), tuple(int(n) for n in shape), dtype)


def write_file(
    cas: CASStore,
    index: int,
    source: Path,
    rel_path: str,
    *,
    options: EncodeOptions,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Store one file as array(s) ``files/<index>``; return its file entry."""
    size = source.stat().st_size
    node = f"files/{index}"
    with open(source, "rb") as f:
        layout = read_npy_layout(f, size) if source.suffix.lower() == ".npy" else None
        if layout is not None:
            segments: list[list[str]] = [
                ["bytes", base64.b64encode(layout.header).decode("ascii")],
                ["array", node],
            ]
            entry = {"path": rel_path, "size": size, "segments": segments}
            offset = len(layout.header)
            row = layout.dtype.itemsize * int(np.prod(layout.shape[1:], dtype=np.int64))
            write_array(
                cas,
                node,
                shape=layout.shape,
                dtype=layout.dtype,
                read_rows=_file_rows(f, offset, row, layout.dtype, layout.shape),
                options=options,
                attributes={
                    ARRAY_ATTR: {"dtype": layout.dtype.str, "path": rel_path},
                    FILE_ATTR: entry,
                },
                dimension_names=_dims(rel_path, len(layout.shape)),
                progress=progress,
            )
        else:
            segments = [["array", node]]
            entry = {"path": rel_path, "size": size, "segments": segments}
            write_array(
                cas,
                node,
                shape=(size,),
                dtype=np.dtype("u1"),
                read_rows=_file_rows(f, 0, 1, np.dtype("u1"), (size,)),
                options=options,
                attributes={ARRAY_ATTR: {"dtype": "|u1", "path": rel_path}, FILE_ATTR: entry},
                dimension_names=["byte"],
                progress=progress,
            )
    return entry


def _file_rows(
    f: BinaryIO, offset: int, row_bytes: int, dtype: np.dtype[Any], shape: tuple[int, ...]
) -> ReadRows:
    def read_rows(start: int, stop: int) -> np.ndarray[Any, Any]:
        if not shape:
            f.seek(offset)
            return np.frombuffer(f.read(dtype.itemsize), dtype=dtype).reshape(())
        count = (stop - start) * row_bytes
        f.seek(offset + start * row_bytes)
        buf = bytearray(count)
        got = f.readinto(buf)  # type: ignore[attr-defined]
        if got != count:
            raise OSError(f"{getattr(f, 'name', 'file')} changed while being read")
        return np.frombuffer(buf, dtype=dtype).reshape((stop - start, *shape[1:]))

    return read_rows


def _dims(name: str, ndim: int) -> list[str]:
    leaf = name.rsplit("/", 1)[-1].removesuffix(".npy") or "a"
    return [f"{leaf}_dim{i}" for i in range(ndim)]


def array_dims(name: str, ndim: int) -> list[str]:
    """Default xarray dimension names of array ``name``: unique per array."""
    return _dims(name, ndim)
