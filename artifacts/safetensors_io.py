"""Reading the layout of a ``.safetensors`` file, so each tensor can be stored as a zarr array.

A safetensors file is an 8-byte little-endian header length ``N``, ``N`` bytes of JSON (one
entry per tensor: ``dtype``, ``shape``, ``data_offsets`` relative to the end of the header,
plus an optional ``__metadata__`` object), then the tensors' bytes in C order, little endian.

:func:`read_safetensors_layout` checks all of it and returns the tensors in file order, or
``None`` when anything is unusual (unknown dtype, overlapping or out-of-range offsets, a size
that does not match the shape): such a file is then stored as plain bytes, which still comes
back byte-identical, only without per-tensor arrays. Dtypes numpy lacks (``BF16``, the ``F8``
family) are stored as unsigned integers of the same width; the tensor's own dtype is kept.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

__all__ = ["SAFETENSORS_DTYPES", "SafetensorsTensor", "read_safetensors_layout"]

#: safetensors dtype -> (numpy storage dtype, torch dtype name).
SAFETENSORS_DTYPES: dict[str, tuple[str, str]] = {
    "F64": ("<f8", "float64"), "F32": ("<f4", "float32"), "F16": ("<f2", "float16"),
    "BF16": ("<u2", "bfloat16"), "F8_E4M3": ("|u1", "float8_e4m3fn"),
    "F8_E5M2": ("|u1", "float8_e5m2"), "I64": ("<i8", "int64"), "I32": ("<i4", "int32"),
    "I16": ("<i2", "int16"), "I8": ("|i1", "int8"), "U64": ("<u8", "uint64"),
    "U32": ("<u4", "uint32"), "U16": ("<u2", "uint16"), "U8": ("|u1", "uint8"),
    "BOOL": ("|b1", "bool"), "C64": ("<c8", "complex64"),
}  # fmt: skip

#: Headers are JSON of a few KiB to a few MiB; anything larger is not a safetensors file.
MAX_HEADER = 100 << 20


@dataclass(frozen=True, slots=True)
class SafetensorsTensor:
    """One tensor of a safetensors file: where its bytes lie and how to read them."""

    name: str
    start: int  # absolute file offset of the first byte
    end: int  # absolute file offset past the last byte
    shape: tuple[int, ...]
    dtype: np.dtype[Any]  # storage dtype
    st_dtype: str  # safetensors dtype name, e.g. "BF16"
    torch_dtype: str


def read_safetensors_layout(f: BinaryIO, size: int) -> list[SafetensorsTensor] | None:
    """The non-empty tensors of the safetensors image ``f`` (``size`` bytes) in file order."""
    f.seek(0)
    prefix = f.read(8)
    if len(prefix) != 8:
        return None
    n = int.from_bytes(prefix, "little")
    if n < 2 or n > MAX_HEADER or 8 + n > size:
        return None
    try:
        header = json.loads(f.read(n).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(header, dict):
        return None
    base = 8 + n
    tensors: list[SafetensorsTensor] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        tensor = _tensor(name, info, base)
        if tensor is None or tensor.end > size:
            return None
        tensors.append(tensor)
    tensors = sorted((t for t in tensors if t.end > t.start), key=lambda t: t.start)
    for before, after in itertools.pairwise(tensors):
        if after.start < before.end:
            return None  # overlapping data: not a layout we can split safely
    return tensors


def _tensor(name: str, info: Any, base: int) -> SafetensorsTensor | None:
    if not isinstance(info, dict) or not name:
        return None
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_DTYPES or not isinstance(shape, list):
        return None
    if not isinstance(offsets, list) or len(offsets) != 2:
        return None
    if not all(_nonneg_int(v) for v in (*shape, *offsets)):
        return None
    begin, end = offsets
    storage, torch_dtype = SAFETENSORS_DTYPES[dtype]
    np_dtype = np.dtype(storage)
    if end < begin or int(np.prod(shape, dtype=np.int64)) * np_dtype.itemsize != end - begin:
        return None
    return SafetensorsTensor(
        name, base + begin, base + end, tuple(shape), np_dtype, dtype, torch_dtype
    )


def _nonneg_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
