"""``ArtifactStore``: put, read back, export, update, pin, gc, stats, verify, determinism."""

from __future__ import annotations

import hashlib
import io
import json
import math
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from artifacts.cid import CODEC_JSON, as_cid
from artifacts.errors import ArtifactError, ArtifactNotFoundError
from artifacts.manifest import Ref
from artifacts.store import ArtifactStore

MiB = 1 << 20
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "home")


def _items(store: ArtifactStore, cid: Any) -> dict[str, Ref]:
    return dict(store.open_artifact(cid).store.items())


def _blobs(store: ArtifactStore) -> set[str]:
    return {str(c) for c in store.blobs.iter_cids()}


def _flip_byte(store: ArtifactStore, cid: Any, offset: int = 0) -> None:
    path = store.blobs.path_of(cid)  # type: ignore[attr-defined]
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(raw))


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- arrays ----------------------------------------------------------------------------------------


def test_put_arrays_round_trip_many_dtypes(store: ArtifactStore) -> None:
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray[Any, Any]] = {
        "bool": rng.integers(0, 2, (7, 3)).astype(bool),
        "float16": rng.standard_normal(33).astype(np.float16),
        "float32": rng.standard_normal((4, 5, 6)).astype(np.float32),
        "float64": rng.standard_normal(100),
        "complex64": (rng.standard_normal(9) + 1j * rng.standard_normal(9)).astype(np.complex64),
        "scalar": np.array(3.25),
        "empty": np.zeros((0, 3), dtype=np.int32),
        "big_endian": np.array([1.5, -2.25, 1e300, np.pi], dtype=">f8"),
        "train/x": rng.standard_normal((10, 2)).astype(np.float32),
        "train/y": np.arange(10, dtype=np.int64),
    }
    for dt in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(dt)
        arrays[dt] = np.array([info.min, info.max, 0, 1, info.max // 3], dtype=dt)
    cid = store.put_arrays(arrays, attrs={"name": "demo"})
    assert cid.codec == CODEC_JSON

    art = store.open_artifact(cid)
    assert art.kind == "arrays"
    assert art.attrs == {"name": "demo"}
    infos = art.arrays()
    assert set(infos) == set(arrays)
    back = art.to_numpy()
    for name, want in arrays.items():
        got = back[name]
        assert got.shape == want.shape, name
        assert got.dtype == want.dtype.newbyteorder("="), name
        assert infos[name].shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert back["scalar"].ndim == 0
    assert float(back["scalar"]) == 3.25
    assert back["big_endian"].tolist() == [1.5, -2.25, 1e300, np.pi]
    # nested names make zarr groups
    import zarr

    assert isinstance(art.group["train"], zarr.Group)
    np.testing.assert_array_equal(art.group["train/x"][...], arrays["train/x"])


def test_arrays_export_as_npy(store: ArtifactStore, tmp_path: Path) -> None:
    arrays = {"a": np.arange(12, dtype="<i4").reshape(3, 4), "g/b": np.float64(2.5)}
    cid = store.put_arrays(arrays)
    out = tmp_path / "out"
    store.export(cid, out)
    np.testing.assert_array_equal(np.load(out / "a.npy"), arrays["a"])
    assert np.load(out / "g" / "b.npy") == 2.5


def test_chunks_of_a_large_array_are_at_most_4_mib(store: ArtifactStore) -> None:
    data = np.arange(16 * MiB, dtype=np.float32).reshape(4096, 4096)  # 64 MiB
    cid = store.put_arrays({"big": data})
    art = store.open_artifact(cid)
    info = art.arrays()["big"]
    assert math.prod(info.chunks) * 4 <= 4 * MiB
    chunk_refs = [r for k, r in art.store.items() if k.startswith("big/c/")]
    assert len(chunk_refs) >= 16
    assert all(r.size <= 4 * MiB for r in chunk_refs)
    np.testing.assert_array_equal(art.array("big")[4000:4096], data[4000:4096])


def test_codec_is_chosen_by_the_data(tmp_path: Path) -> None:
    n = 2 * MiB
    compressible = np.zeros(n, dtype=np.int32)
    compressible[::7] = np.arange(len(compressible[::7])) % 5
    noise = np.random.default_rng(1).integers(0, 2**31, n, dtype=np.int32)
    sizes = []
    for name, data in (("small", compressible), ("noise", noise)):
        s = ArtifactStore(tmp_path / name)
        s.put_arrays({"x": data})
        sizes.append(s.stats().stored_bytes)
    assert sizes[0] * 10 < sizes[1]
    assert sizes[1] >= noise.nbytes  # incompressible data is stored raw


# -- torch state_dicts -----------------------------------------------------------------------------


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().reshape(-1).view(torch.uint8)


def test_state_dict_round_trip_every_dtype(store: ArtifactStore, tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)

    def random_bits(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        size = torch.empty((), dtype=dtype).element_size()
        n = math.prod(shape) * size
        raw = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=gen)
        return raw.view(dtype).reshape(shape)

    sd: dict[str, torch.Tensor] = {}
    dtypes = [
        torch.float32, torch.float64, torch.float16, torch.bfloat16,
        torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.int16, torch.int32,
        torch.int64, torch.uint8, torch.uint16, torch.uint32, torch.uint64, torch.complex64,
        torch.complex128,
    ]  # fmt: skip
    for i, dt in enumerate(dtypes):
        sd[f"z{i:02d}.{str(dt).removeprefix('torch.')}"] = random_bits((3, 5), dt)
    sd["mask"] = torch.tensor([True, False, True])
    sd["a.scalar"] = torch.tensor(7, dtype=torch.int64)
    sd["a.bf16_scalar"] = torch.tensor(1.5, dtype=torch.bfloat16)
    sd["empty"] = torch.empty((0, 4), dtype=torch.float32)
    sd["empty_bf16"] = torch.empty((2, 0), dtype=torch.bfloat16)
    sd["transposed"] = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    sd["layers.10.weight"] = torch.ones(2)
    sd["layers.2.weight"] = torch.zeros(2)

    cid = store.put_state_dict(sd, attrs={"arch": "test"})
    art = store.open_artifact(cid)
    assert art.kind == "state_dict"
    assert art.attrs["arch"] == "test"
    back = art.to_state_dict()
    assert list(back) == list(sd), "order is preserved"
    for name, want in sd.items():
        got = back[name]
        assert got.dtype == want.dtype, name
        assert got.shape == want.shape, name
        assert torch.equal(_bits(got), _bits(want)), name
    assert art.arrays()["z03.bfloat16"].dtype == "bfloat16"

    out = tmp_path / "sd"
    store.export(cid, out)
    assert (out / "model.safetensors").is_file()


# -- files -----------------------------------------------------------------------------------------


def _make_tree(root: Path) -> dict[str, bytes]:
    root.mkdir()
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "other").mkdir()
    (root / "empty.bin").write_bytes(b"")
    (root / "readme.txt").write_text("hello\nworld\n")
    (root / "sub" / "deeper" / "blob.bin").write_bytes(np.random.default_rng(2).bytes(300_000))
    np.save(root / "c_order.npy", np.arange(60, dtype="<f4").reshape(5, 12))
    np.save(root / "sub" / "big_endian.npy", np.arange(10, dtype=">i4"))
    np.save(root / "sub" / "scalar.npy", np.float64(4.5))
    np.save(root / "other" / "fortran.npy", np.asfortranarray(np.arange(12.0).reshape(3, 4)))
    buf = io.BytesIO()
    np.savez(buf, a=np.arange(5), b=np.eye(3))
    (root / "other" / "bundle.npz").write_bytes(buf.getvalue())
    np.savez_compressed(root / "other" / "packed.npz", z=np.zeros(1000), i=np.arange(50))
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_put_path_folder_exports_byte_identical(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src"
    originals = _make_tree(src)
    assert np.load(src / "other" / "fortran.npy").flags.f_contiguous
    cid = store.put_path(src, attrs={"dataset": "tree"})
    art = store.open_artifact(cid)
    assert art.kind == "files"
    assert art.attrs["files"] == len(originals)
    assert {f.path for f in art.files()} == set(originals)

    out = tmp_path / "out"
    written = store.export(cid, out)
    assert {p.relative_to(out).as_posix() for p in written} == set(originals)
    got = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert got == originals
    for rel in originals:
        assert _sha(out / rel) == _sha(src / rel), rel
    with zipfile.ZipFile(out / "other" / "bundle.npz") as z:
        assert z.testzip() is None

    arrays = art.arrays()
    assert arrays["c_order.npy"].shape == (5, 12)
    assert arrays["c_order.npy"].dtype == "float32"
    assert arrays["sub/big_endian.npy"].shape == (10,)
    assert arrays["sub/big_endian.npy"].dtype == str(np.dtype(">i4"))
    assert arrays["sub/scalar.npy"].shape == ()
    np.testing.assert_array_equal(art.to_numpy()["c_order.npy"], np.load(src / "c_order.npy"))
    np.testing.assert_array_equal(art.to_numpy()["sub/big_endian.npy"], np.arange(10))
    # uncompressed npz members are arrays too
    assert arrays["other/bundle.npz/b"].shape == (3, 3)
    np.testing.assert_array_equal(art.to_numpy()["other/bundle.npz/b"], np.eye(3))
    # the fortran-order file is kept as plain bytes, not as a (3, 4) float array; plain files
    # are not listed as arrays
    fortran = next(e for e in art.files() if e.path == "other/fortran.npy")
    assert [kind for kind, _ in fortran.segments] == ["array"]
    for plain in ("other/fortran.npy", "readme.txt", "empty.bin", "sub/deeper/blob.bin"):
        assert plain not in arrays
    with zipfile.ZipFile(out / "other" / "packed.npz") as z:
        assert z.testzip() is None


def test_put_single_file(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "one.txt"
    src.write_bytes(b"just one file\n" * 100)
    cid = store.put_path(src)
    art = store.open_artifact(cid)
    assert [(f.path, f.size) for f in art.files()] == [("one.txt", 1400)]
    out = tmp_path / "out"
    store.export(cid, out)
    assert (out / "one.txt").read_bytes() == src.read_bytes()
    assert [p.name for p in out.iterdir()] == ["one.txt"]


# -- update ----------------------------------------------------------------------------------------


def test_update_shares_unchanged_chunks(store: ArtifactStore) -> None:
    keep = np.arange(3 * MiB, dtype=np.int32).reshape(3 * 1024, 1024)  # several chunks
    old = {"keep": keep, "replace": np.ones(10), "drop": np.zeros(4, dtype=np.int8)}
    base = store.put_arrays(old, attrs={"v": 1})
    new = store.update(
        base,
        arrays={"replace": np.full(5, 2.0), "added": np.arange(3)},
        remove=["drop"],
        attrs={"v": 2},
    )
    assert new != base
    art = store.open_artifact(new)
    assert art.attrs == {"v": 2}
    data = art.to_numpy()
    assert set(data) == {"keep", "replace", "added"}
    np.testing.assert_array_equal(data["keep"], keep)
    np.testing.assert_array_equal(data["replace"], np.full(5, 2.0))
    np.testing.assert_array_equal(data["added"], np.arange(3))

    before = store.open_artifact(base)
    assert before.attrs == {"v": 1}
    old_data = before.to_numpy()
    assert set(old_data) == set(old)
    for name, value in old.items():
        np.testing.assert_array_equal(old_data[name], value)

    base_items, new_items = _items(store, base), _items(store, new)
    keep_base = {k: r for k, r in base_items.items() if k.startswith("keep/")}
    keep_new = {k: r for k, r in new_items.items() if k.startswith("keep/")}
    assert len(keep_base) > 2
    assert keep_base == keep_new
    assert not any(k.startswith("drop/") for k in new_items)
    assert store.verify([base, new]).ok


# -- pins and gc -----------------------------------------------------------------------------------


def test_pin_unpin_pins(store: ArtifactStore) -> None:
    a = store.put_arrays({"x": np.arange(3)})
    b = store.put_arrays({"y": np.arange(4)}, pin=False)
    assert store.pins() == [str(a)]
    store.pin(b)
    assert store.pins() == sorted([str(a), str(b)])
    assert store.unpin(a) is True
    assert store.unpin(a) is False
    assert store.pins() == [str(b)]
    listed = {i.cid: i.pinned for i in store.list()}
    assert listed == {str(a): False, str(b): True}
    unknown = as_cid("bagaaierasords4njcts6vs7qvdjfcvgnume4hqohf65zsfguprqphs3icwea")
    with pytest.raises(ArtifactNotFoundError):
        store.pin(unknown)


def test_gc_collects_unpinned_and_keeps_shared(store: ArtifactStore, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    shared = rng.standard_normal(50_000)
    only_old = rng.standard_normal(50_000)
    old = store.put_arrays({"shared": shared, "only": only_old}, pin=False)
    kept = store.put_arrays({"shared": shared, "mine": np.arange(100)})
    old_only = {r.cid for k, r in _items(store, old).items() if k.startswith("only/")}
    needed = {r.cid for r in store.open_artifact(kept).refs()} | {kept}
    assert old_only
    assert not old_only & needed

    before = _blobs(store)
    dry = store.gc(grace=0, dry_run=True)
    assert dry.dry_run
    assert dry.removed_blobs > 0
    assert dry.forgotten_artifacts == (str(old),)
    assert _blobs(store) == before, "dry run deletes nothing"
    assert {i.cid for i in store.list()} == {str(old), str(kept)}

    report = store.gc(grace=0)
    assert report.removed_blobs == dry.removed_blobs
    assert report.freed_bytes == dry.freed_bytes
    assert report.forgotten_artifacts == (str(old),)
    after = _blobs(store)
    assert not {str(c) for c in old_only} & after
    assert str(old) not in after
    assert {str(c) for c in needed} <= after
    with pytest.raises(ArtifactNotFoundError):
        store.open_artifact(old)
    assert [i.cid for i in store.list()] == [str(kept)]

    assert store.verify([kept]).ok
    assert store.verify().ok
    out = tmp_path / "out"
    store.export(kept, out)
    np.testing.assert_array_equal(np.load(out / "shared.npy"), shared)


def test_gc_default_grace_keeps_recent_unpinned(store: ArtifactStore) -> None:
    cid = store.put_arrays({"x": np.arange(1000)}, pin=False)
    before = _blobs(store)
    report = store.gc()
    assert report.removed_blobs == 0
    assert report.forgotten_artifacts == ()
    assert _blobs(store) == before
    np.testing.assert_array_equal(store.open_artifact(cid).to_numpy()["x"], np.arange(1000))


def test_gc_refuses_when_a_pinned_manifest_is_missing(store: ArtifactStore) -> None:
    pinned = store.put_arrays({"p": np.arange(10)})
    store.put_arrays({"u": np.arange(20)}, pin=False)
    store.blobs.path_of(pinned).unlink()  # type: ignore[attr-defined]
    before = _blobs(store)
    records = sorted(p.name for p in (store.home / "refs" / "artifacts").iterdir())
    with pytest.raises(ArtifactError, match=str(pinned)):
        store.gc(grace=0)
    assert _blobs(store) == before
    assert sorted(p.name for p in (store.home / "refs" / "artifacts").iterdir()) == records


# -- stats and verify ------------------------------------------------------------------------------


def test_stats_dedup_ratio(store: ArtifactStore) -> None:
    data = np.random.default_rng(4).standard_normal(10 * MiB // 8)
    a = store.put_arrays({"x": data}, attrs={"copy": 1})
    b = store.put_arrays({"x": data}, attrs={"copy": 2})
    assert a != b
    stats = store.stats()
    assert stats.artifacts == 2
    assert stats.pinned == 2
    assert stats.logical_bytes >= 2 * data.nbytes
    assert stats.stored_bytes < 1.5 * data.nbytes  # one copy (edge chunk padded), not two
    assert stats.dedup_ratio > 1.9
    assert json.loads(json.dumps(stats.as_json()))["artifacts"] == 2


def test_verify_reports_a_flipped_byte(store: ArtifactStore) -> None:
    cid = store.put_arrays({"x": np.random.default_rng(5).standard_normal(2000)})
    report = store.verify()
    assert report.ok
    assert report.checked_blobs > 0
    assert store.verify([cid]).ok
    chunk = next(r.cid for k, r in _items(store, cid).items() if k.startswith("x/c/"))
    _flip_byte(store, chunk, offset=100)
    for report in (store.verify(), store.verify([cid])):
        assert not report.ok
        assert str(chunk) in {c for c, _ in report.problems}
        assert any(str(chunk) in msg for _, msg in report.problems)


# -- determinism -----------------------------------------------------------------------------------

_ARRAYS = """
import numpy as np
rng = np.random.default_rng(42)
arrays = {
    "w": rng.standard_normal((300, 70)).astype("f4"),
    "zeros": np.zeros(100_000, dtype="i8"),
    "n/i": np.arange(17, dtype="u2"),
}
"""
_PUT = """
import sys
from artifacts.store import ArtifactStore
print(ArtifactStore(sys.argv[1]).put_arrays(arrays, attrs={"seed": 42}))
"""


def test_same_arrays_give_same_cid_across_processes(tmp_path: Path) -> None:
    cids = []
    for i in range(2):
        done = subprocess.run(
            [sys.executable, "-c", _ARRAYS + _PUT, str(tmp_path / f"home{i}")],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        cids.append(done.stdout.strip())
    namespace: dict[str, Any] = {}
    exec(_ARRAYS, namespace)
    here = ArtifactStore(tmp_path / "here").put_arrays(namespace["arrays"], attrs={"seed": 42})
    assert as_cid(cids[0]).codec == CODEC_JSON
    assert cids[0] == cids[1] == str(here)
