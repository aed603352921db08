"""Chunking and codec choice, and the direct chunk encoder against zarr's own write path."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import zarr

from artifacts.blobstore import MemoryBlobStore
from artifacts.encoding import choose_compressors, chunk_shape, sample_ranges
from artifacts.writers import EncodeOptions, write_array
from artifacts.zarr_store import CASStore

rng = np.random.default_rng(7)
SMALL = EncodeOptions(chunk_bytes=4096, zstd_level=3)

CASES: dict[str, Any] = {
    "float32 rows, edge chunk": rng.standard_normal((1000, 7)).astype("f4"),
    "int64 1-d": rng.integers(-(2**40), 2**40, 3001),
    "uint8 3-d, axis 1 split": rng.integers(0, 255, (5, 300, 40), dtype="u1"),
    "bool": rng.random((333, 5)) > 0.5,
    "complex64": (rng.standard_normal((70, 9)) + 1j).astype("c8"),
    "float16 with zero chunks": np.concatenate([np.zeros((2048, 4)), np.ones((10, 4))]).astype(
        "f2"
    ),
    "compressible int32": np.repeat(np.arange(50, dtype="i4"), 200),
    "0-d": np.float64(2.5),
    "empty": np.zeros((0, 3), dtype="f8"),
    "big-endian input": np.arange(5000, dtype=">f8"),
}


def _direct(data: np.ndarray[Any, Any]) -> CASStore:
    cas = CASStore(MemoryBlobStore())
    write_array(
        cas,
        "a",
        shape=data.shape,
        dtype=data.dtype,
        read_rows=(lambda s, e: data[s:e]) if data.ndim else (lambda s, e: data),
        options=SMALL,
    )
    return cas


def _via_zarr(direct: CASStore, data: np.ndarray[Any, Any]) -> CASStore:
    """The same array created from the direct store's metadata, written by zarr itself."""
    meta = direct.blobs.get(dict(direct.items())["a/zarr.json"].cid)
    cas = CASStore(MemoryBlobStore())
    zarr.open_group(cas, mode="w")
    zarr.core.sync.sync(cas.set("a/zarr.json", zarr.core.buffer.cpu.Buffer.from_bytes(meta)))
    array = zarr.open_array(cas, path="a", mode="r+")
    array[...] = data.astype(data.dtype.newbyteorder("="))
    return cas


@pytest.mark.parametrize("name", list(CASES))
def test_direct_encoder_matches_zarr_blob_for_blob(name: str) -> None:
    data = np.asarray(CASES[name])
    direct = _direct(data)
    reference = _via_zarr(direct, data)
    ours = {k: r.cid for k, r in direct.items() if "/c" in k}
    theirs = {k: r.cid for k, r in reference.items() if "/c" in k}
    assert ours == theirs
    read = zarr.open_array(direct, path="a", mode="r")[...]
    np.testing.assert_array_equal(read, data)


def test_negative_zero_chunk_is_kept_bit_for_bit() -> None:
    data = np.full((2048,), -0.0, dtype="f4")
    direct = _direct(data)
    back = zarr.open_array(direct, path="a", mode="r")[...]
    assert np.signbit(back).all()  # zarr's own path would drop it as "equal to the fill value"


def test_chunk_shape_caps_bytes_and_keeps_trailing_axes() -> None:
    assert chunk_shape((262144, 1024), 4, 4 << 20) == (1024, 1024)
    assert chunk_shape((10, 5_000_000), 1, 4 << 20) == (1, 4194304)
    assert chunk_shape((3,), 8, 4 << 20) == (3,)
    assert chunk_shape((0, 3), 8, 4 << 20) == (1, 3)
    for shape, item in [((1000, 7), 4), ((5, 300, 40), 1), ((123457,), 8)]:
        chunks = chunk_shape(shape, item, 4096)
        assert np.prod(chunks) * item <= 4096


def test_codec_choice_depends_on_the_data_only() -> None:
    noise = rng.integers(0, 256, 1 << 16, dtype="u1").tobytes()
    assert choose_compressors([noise], 3) is None
    zeros = bytes(1 << 16)
    chosen = choose_compressors([zeros], 3)
    assert chosen is not None
    assert chosen[0].to_dict()["name"] == "zstd"
    assert sample_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert sample_ranges(0, 4) == []
