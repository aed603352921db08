"""How arrays are cut into chunks and encoded: decisions that depend on the data only.

The same array with the same settings must give the same bytes in every process, so the chunk
shape is a function of shape and item size, and the codec is chosen by trial-compressing a
fixed sample of the data (first, middle and last chunk): zstd when it saves at least 10 %,
raw bytes otherwise. zstd runs single-threaded and without a checksum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "RAW_RATIO",
    "choose_compressors",
    "chunk_shape",
    "native_dtype",
    "rows_per_block",
    "sample_ranges",
]

RAW_RATIO = 0.9  # store raw unless zstd makes the sample at least 10 % smaller
_SUPPORTED_KINDS = "biufc"


def native_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """``dtype`` in native byte order; refuses dtypes zarr cannot hold losslessly here."""
    if dtype.kind not in _SUPPORTED_KINDS or dtype.fields is not None or dtype.subdtype:
        raise TypeError(f"unsupported dtype {dtype}: only bool, integer, float and complex")
    return dtype.newbyteorder("=")


def chunk_shape(shape: Sequence[int], itemsize: int, target: int) -> tuple[int, ...]:
    """Chunk shape of at most ``target`` bytes, cutting the leading axes first.

    A chunk spans whole trailing axes where it can, so a row-wise change touches few chunks.
    """
    if not shape:
        return ()
    chunk = [max(1, n) for n in shape]
    for axis in range(len(chunk)):
        inner = itemsize * math.prod(chunk[axis + 1 :])
        if inner * chunk[axis] <= target:
            break
        chunk[axis] = max(1, target // inner) if inner <= target else 1
    return tuple(chunk)


def rows_per_block(shape: Sequence[int], chunks: Sequence[int], itemsize: int, budget: int) -> int:
    """Rows (axis 0) to read at once: whole chunk rows, about ``budget`` bytes."""
    if not shape:
        return 1
    row = itemsize * math.prod(shape[1:])
    per_chunk_row = chunks[0]
    rows = max(per_chunk_row, (budget // max(1, row)) // per_chunk_row * per_chunk_row)
    return max(1, rows)


def choose_compressors(samples: Sequence[bytes], level: int) -> list[Any] | None:
    """``[ZstdCodec]`` when the samples compress by at least 10 %, else ``None`` (raw)."""
    import numcodecs
    from zarr.codecs import ZstdCodec

    total = sum(len(s) for s in samples)
    if total == 0:
        return None
    zstd = numcodecs.Zstd(level=level)
    packed = sum(len(zstd.encode(s)) for s in samples if s)
    if packed <= RAW_RATIO * total:
        return [ZstdCodec(level=level, checksum=False)]
    return None


def sample_ranges(rows: int, step: int) -> list[tuple[int, int]]:
    """Row ranges of the first, middle and last chunk row: the codec decision's sample."""
    if rows <= 0:
        return []
    starts = sorted({0, (rows // 2) // step * step, (rows - 1) // step * step})
    return [(s, min(rows, s + step)) for s in starts]
