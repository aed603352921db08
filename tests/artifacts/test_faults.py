"""Fault injection against the artifact store: bad CIDs, damaged blobs, forged manifests,
symbolic links, ``kill -9`` during an add, concurrent adds, and gc racing an add.

Everything here uses real files and, for the process faults, real ``cidflow`` processes. Each
test asserts the error *and* that trusted state (the home folder, the export destination's
parent) did not change.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import MiB, snapshot

from artifacts.blobstore import LocalBlobStore
from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import CID, compute_cid
from artifacts.errors import (
    ArtifactError,
    ArtifactNotFoundError,
    CorruptBlobError,
    InvalidCIDError,
    ManifestError,
    UnsafePathError,
)
from artifacts.manifest import ARTIFACT_FORMAT, TABLE_FORMAT
from artifacts.settings import ArtifactSettings
from artifacts.store import ArtifactStore
from artifacts.writers import ARRAY_ATTR, FILE_ATTR

# -- helpers ---------------------------------------------------------------------------------------


def blob_files(home: Path) -> list[Path]:
    return sorted(p for p in (home / "blobs").rglob("*") if p.is_file())


def blob_path(home: Path, cid: CID) -> Path:
    return LocalBlobStore(home, read_only=True).path_of(cid)


def temp_files(home: Path) -> list[Path]:
    return sorted((home / "tmp").glob("*.incomplete")) if (home / "tmp").is_dir() else []


def damage_blob(path: Path, how: str) -> None:
    """Change a stored blob file in place, bypassing the store (blob files are 0444)."""
    data = path.read_bytes()
    if how == "flip":
        middle = len(data) // 2
        new = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
    elif how == "truncate":
        new = data[: len(data) // 2]
    elif how == "empty":
        new = b""
    else:  # pragma: no cover - test bug
        raise AssertionError(how)
    os.chmod(path, 0o644)
    path.write_bytes(new)
    os.chmod(path, 0o444)


def chunk_cids(store: ArtifactStore, cid: CID | str) -> list[CID]:
    """The CIDs of an artifact's array chunks (keys ``.../c/...``), in key order."""
    art = store.open_artifact(cid)
    return [ref.cid for key, ref in sorted(art.store.items()) if "/c/" in f"/{key}"]


def cli(home: Path, *args: object) -> list[str]:
    return [sys.executable, "-m", "cidflow", "--home", str(home), *map(str, args)]


def run_cli(home: Path, *args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cli(home, *args), capture_output=True, text=True, timeout=timeout)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def forge_root(store: ArtifactStore, tables: dict[str, Any], kind: str = "zarr") -> CID:
    body = canonical_json({"format": ARTIFACT_FORMAT, "kind": kind, "attrs": {}, "tables": tables})
    return store.blobs.put(body, codec="json")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def store(home: Path) -> ArtifactStore:
    # Small chunks, so an array of a few hundred KiB has several chunk blobs.
    return ArtifactStore(home, settings=ArtifactSettings(chunk_bytes=64 << 10))


@pytest.fixture
def data() -> np.ndarray[Any, Any]:
    return np.random.default_rng(3).standard_normal((256, 256)).astype(np.float32)


# -- CIDs ------------------------------------------------------------------------------------------

MALFORMED = [
    "",
    "notacid",
    "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
    "BAFKREIBM6JG3UX5QUMHCN2B3FLC3TYU6DMLB4XA7U5BF44YEGNRJHC4YEQ",
    "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4ye",
    "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq1",
    "bafkrei/../../etc/passwd",
    "b" + "a" * 500,
]


@pytest.mark.parametrize("bad", MALFORMED)
def test_malformed_cid_is_refused_and_changes_nothing(
    store: ArtifactStore, data: np.ndarray[Any, Any], home: Path, tmp_path: Path, bad: str
) -> None:
    store.put_arrays({"x": data})
    before = snapshot(home)
    out = tmp_path / "out"
    for call in (
        lambda: store.open_artifact(bad),
        lambda: store.export(bad, out),
        lambda: store.verify([bad]),
        lambda: store.pin(bad),
        lambda: store.unpin(bad),
    ):
        with pytest.raises(InvalidCIDError):
            call()
    assert not out.exists()
    assert snapshot(home) == before


@pytest.mark.parametrize("codec", ["json", "raw"])
def test_unknown_cid_is_not_found_and_changes_nothing(
    store: ArtifactStore, data: np.ndarray[Any, Any], home: Path, tmp_path: Path, codec: str
) -> None:
    store.put_arrays({"x": data})
    unknown = compute_cid(b"never stored", codec=codec)  # type: ignore[arg-type]
    before = snapshot(home)
    out = tmp_path / "out"
    for call in (
        lambda: store.open_artifact(unknown),
        lambda: store.export(unknown, out),
        lambda: store.pin(unknown),
    ):
        with pytest.raises(ArtifactNotFoundError) as info:
            call()
        assert str(unknown) in str(info.value)
    report = store.verify([unknown])
    assert not report.ok
    assert [cid for cid, _ in report.problems] == [str(unknown)]
    assert not out.exists()
    assert snapshot(home) == before


# -- damaged blobs ---------------------------------------------------------------------------------


def test_flipped_byte_in_a_chunk_is_named_by_verify_and_every_read(
    store: ArtifactStore, data: np.ndarray[Any, Any], home: Path, tmp_path: Path
) -> None:
    cid = store.put_arrays({"x": data})
    chunks = chunk_cids(store, cid)
    assert len(chunks) > 1
    bad = chunks[len(chunks) // 2]
    damage_blob(blob_path(home, bad), "flip")
    before = snapshot(home)

    report = store.verify()
    assert [c for c, _ in report.problems] == [str(bad)] * len(report.problems)
    assert report.problems  # reported as a blob, and again as part of the artifact
    assert not store.verify([cid]).ok

    with pytest.raises(CorruptBlobError) as info:
        store.open_artifact(cid).to_numpy()
    assert str(bad) in str(info.value)

    import zarr

    group = zarr.open_group(store.open_artifact(cid).store, mode="r")
    array = group["x"]
    assert isinstance(array, zarr.Array)
    with pytest.raises(CorruptBlobError) as info:
        array[...]
    assert str(bad) in str(info.value)

    exports = tmp_path / "exports"
    exports.mkdir()
    listing = sorted(os.listdir(exports))
    with pytest.raises(CorruptBlobError) as info:
        store.export(cid, exports / "out")
    assert str(bad) in str(info.value)
    assert sorted(os.listdir(exports)) == listing  # no OUT, no *.incomplete staging folder

    empty = exports / "empty"
    empty.mkdir()
    with pytest.raises(CorruptBlobError):
        store.export(cid, empty)
    assert list(empty.iterdir()) == []
    assert sorted(os.listdir(exports)) == sorted([*listing, "empty"])
    assert snapshot(home) == before


@pytest.mark.parametrize("how", ["truncate", "empty"])
def test_truncated_or_empty_blob_is_reported_and_repaired_by_re_adding(
    store: ArtifactStore, data: np.ndarray[Any, Any], home: Path, tmp_path: Path, how: str
) -> None:
    cid = store.put_arrays({"x": data})
    bad = chunk_cids(store, cid)[0]
    path = blob_path(home, bad)
    damage_blob(path, how)
    before = snapshot(home)

    report = store.verify()
    assert str(bad) in {c for c, _ in report.problems}
    assert {c for c, _ in report.problems} == {str(bad)}
    with pytest.raises(CorruptBlobError) as info:
        store.open_artifact(cid).to_numpy()
    assert str(bad) in str(info.value)
    with pytest.raises(CorruptBlobError):
        store.export(cid, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".*.incomplete"))
    assert snapshot(home) == before

    again = store.put_arrays({"x": data})
    assert again == cid
    assert store.verify().ok
    assert path.stat().st_size == len(store.blobs.get(bad))
    np.testing.assert_array_equal(store.open_artifact(cid).to_numpy()["x"], data)


# -- forged manifests ------------------------------------------------------------------------------

BAD_KEYS = {
    "dotdot": "../evil",
    "inner-dotdot": "a/../../evil",
    "absolute": "/etc/passwd",
    "backslash": "a\\..\\evil",
    "nul": "a\x00b",
    "empty-segment": "a//b",
    "trailing-slash": "a/",
    "dot": "./a",
    "empty": "",
}


UNSAFE_CASES = [
    pytest.param(layout, key, id=f"{layout}-{name}")
    for layout in ("inline", "tree", "group")
    for name, key in BAD_KEYS.items()
    if not (layout == "group" and key == "")  # the empty group is the root table: allowed
]


@pytest.mark.parametrize(("layout", "key"), UNSAFE_CASES)
def test_manifest_with_unsafe_key_is_refused(
    store: ArtifactStore, home: Path, tmp_path: Path, key: str, layout: str
) -> None:
    payload = store.blobs.put(b"payload")
    entries = [[key, str(payload), 7]]
    if layout == "inline":
        tables: dict[str, Any] = {"": {"entries": entries}}
    elif layout == "tree":
        node = store.blobs.put(
            canonical_json({"format": TABLE_FORMAT, "entries": entries}), codec="json"
        )
        tables = {"": {"tree": str(node), "count": 1, "bytes": 7}}
    else:
        tables = {key: {"entries": [["c/0", str(payload), 7]]}}
    forged = forge_root(store, tables)
    exports = tmp_path / "exports"
    exports.mkdir()
    listing = sorted(os.listdir(tmp_path))
    before = snapshot(home)

    def refused(call: Callable[[], object]) -> None:
        with pytest.raises(ManifestError) as info:
            call()
        assert isinstance(info.value, UnsafePathError)
        assert str(forged) in str(info.value) or layout == "tree"

    if layout == "tree":
        art = store.open_artifact(forged)  # only the root is read on open
        refused(lambda: list(art.refs()))
    else:
        refused(lambda: store.open_artifact(forged))
    refused(lambda: store.export(forged, exports / "out"))
    report = store.verify([forged])
    assert not report.ok
    assert str(forged) in {c for c, _ in report.problems}

    assert sorted(os.listdir(tmp_path)) == listing
    assert os.listdir(exports) == []
    assert snapshot(home) == before

    if layout == "tree":  # opens, so it can be pinned: gc must then refuse, deleting nothing
        store.pin(forged)
        blobs = blob_files(home)
        with pytest.raises(ArtifactError, match="gc refused"):
            store.gc(grace=0)
        assert blob_files(home) == blobs
    else:
        with pytest.raises(ManifestError):
            store.pin(forged)
        assert snapshot(home) == before


def _forge_files(
    store: ArtifactStore, cid: CID, target: str, mutate: Callable[[dict[str, Any]], None]
) -> CID:
    """A copy of files artifact ``cid`` whose entry for file ``target`` was changed by
    ``mutate(attributes)``; the zarr.json blob and the root manifest are rewritten to match."""
    root = loads_strict(store.blobs.get(cid))
    entries = root["tables"][""]["entries"]
    for entry in entries:
        if not entry[0].endswith("zarr.json"):
            continue
        doc = loads_strict(store.blobs.get(entry[1]))
        attributes = doc.get("attributes") or {}
        if attributes.get(FILE_ATTR, {}).get("path") == target:
            mutate(attributes)
            body = json.dumps(doc).encode()
            entry[1], entry[2] = str(store.blobs.put(body)), len(body)
            break
    else:  # pragma: no cover - test bug
        raise AssertionError(f"no file entry {target}")
    return store.blobs.put(canonical_json(root), codec="json")


def _set_path(path: str) -> Callable[[dict[str, Any]], None]:
    def mutate(attributes: dict[str, Any]) -> None:
        attributes[FILE_ATTR]["path"] = path
        if ARRAY_ATTR in attributes:
            attributes[ARRAY_ATTR]["path"] = path

    return mutate


def _set_segment(attributes: dict[str, Any]) -> None:
    attributes[FILE_ATTR]["segments"] = [["array", "../../files/0"]]


def _set_size(attributes: dict[str, Any]) -> None:
    attributes[FILE_ATTR]["size"] += 1


FORGERIES: dict[str, tuple[Callable[[dict[str, Any]], None], type[Exception]]] = {
    "path-dotdot": (_set_path("../evil"), UnsafePathError),
    "path-absolute": (_set_path("/etc/x"), UnsafePathError),
    "path-deep-dotdot": (_set_path("z/../../../evil"), UnsafePathError),
    "segment-dotdot": (_set_segment, UnsafePathError),
    "size-mismatch": (_set_size, ManifestError),
}


@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_file_entry_is_refused_and_nothing_is_written(
    store: ArtifactStore, home: Path, tmp_path: Path, forgery: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"first file, written before the forged one\n")
    (src / "z.txt").write_bytes(b"the file whose entry is forged\n")
    cid = store.put_path(src)
    mutate, error = FORGERIES[forgery]
    forged = _forge_files(store, cid, "z.txt", mutate)
    art = store.open_artifact(forged)  # the manifest itself is well-formed
    assert art.kind == "files"

    exports = tmp_path / "exports" / "deeper"
    exports.mkdir(parents=True)
    outer = sorted(os.listdir(tmp_path))
    listing = sorted(os.listdir(tmp_path / "exports"))
    before = snapshot(home)
    if forgery.startswith("path"):
        with pytest.raises(UnsafePathError) as unsafe:
            art.files()
        assert str(forged) in str(unsafe.value)
    with pytest.raises(error) as info:
        store.export(forged, exports / "out")
    assert str(forged) in str(info.value)
    with pytest.raises(error):
        store.export(forged, exports)  # an existing, empty OUT
    assert os.listdir(exports) == []
    assert sorted(os.listdir(tmp_path / "exports")) == listing
    assert sorted(os.listdir(tmp_path)) == outer
    assert not (tmp_path / "evil").exists()
    assert not (tmp_path / "exports" / "evil").exists()
    assert snapshot(home) == before


# -- symbolic links --------------------------------------------------------------------------------


def test_symlinks_out_of_the_folder_are_not_followed(
    store: ArtifactStore, home: Path, tmp_path: Path
) -> None:
    rng = random.Random(11)
    secret, secret2, inside = rng.randbytes(8192), rng.randbytes(8192), rng.randbytes(8192)
    (tmp_path / "secret.bin").write_bytes(secret)
    (tmp_path / "secret_dir").mkdir()
    (tmp_path / "secret_dir" / "more.bin").write_bytes(secret2)
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "inside.bin").write_bytes(inside)
    (src / "sub" / "link_in.bin").symlink_to("../inside.bin")
    (src / "link_file_out.bin").symlink_to(tmp_path / "secret.bin")
    (src / "link_dir_out").symlink_to("../secret_dir")

    skipped: list[tuple[Path, str]] = []
    cid = store.put_path(src, on_skip=lambda p, why: skipped.append((p, why)))
    assert sorted(p.name for p, _ in skipped) == ["link_dir_out", "link_file_out.bin"]

    art = store.open_artifact(cid)
    assert [f.path for f in art.files()] == ["inside.bin", "sub/link_in.bin"]
    out = tmp_path / "out"
    store.export(cid, out)
    got = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert got == ["inside.bin", "sub/link_in.bin"]
    assert not (out / "sub" / "link_in.bin").is_symlink()
    assert (out / "sub" / "link_in.bin").read_bytes() == inside
    stored = b"".join(p.read_bytes() for p in blob_files(home))
    assert inside in stored  # random bytes are stored raw: the scan would see the secret
    assert secret not in stored
    assert secret2 not in stored


# -- process faults --------------------------------------------------------------------------------


def _write_rotated(path: Path, base: bytes, shift: int) -> None:
    view = memoryview(base)
    with open(path, "wb") as f:
        f.write(view[shift:])
        f.write(view[:shift])


def _wait_for_write(home: Path, proc: subprocess.Popen[bytes], limit: float = 60.0) -> None:
    """Until ``proc`` has a blob write in flight (its temp file exists) or has exited."""
    deadline = time.monotonic() + limit
    while proc.poll() is None and time.monotonic() < deadline:
        if (home / "tmp").is_dir() and any((home / "tmp").glob(f"{proc.pid}-*.incomplete")):
            return
        time.sleep(0.005)


@pytest.mark.slow
@pytest.mark.xdist_group("faults")
def test_kill_9_during_add_leaves_a_verifiable_store(home: Path, tmp_path: Path) -> None:
    base = np.random.default_rng(5).bytes(200 * MiB)
    big = tmp_path / "big.bin"
    rng = random.Random(20240611)
    killed = 0
    left_temp = 0
    for round_ in range(8):
        # A different rotation every round, so every round writes new chunks for real.
        _write_rotated(big, base, (round_ * 1_048_573) % len(base))
        proc = subprocess.Popen(
            cli(home, "add", big), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if round_ % 2:  # odd rounds count the delay from the first blob write, even from spawn
            _wait_for_write(home, proc)
        time.sleep(rng.uniform(0.05, 1.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed += proc.returncode == -signal.SIGKILL
        left_temp += bool(temp_files(home))
    assert killed >= 4, killed
    # Whether a kill lands inside a blob write is down to timing; so that the clean-up below is
    # always exercised, add the temp file a writer that died mid-write leaves (a reaped pid).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "tmp" / f"{dead.pid}-00000000deadbeef.incomplete").write_bytes(b"partial")

    result = run_cli(home, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    blobs = blob_files(home)
    result = run_cli(home, "gc", "--dry-run")  # the next writable open removes dead temp files
    assert result.returncode == 0, result.stderr
    assert temp_files(home) == []
    assert blob_files(home) == blobs

    result = run_cli(home, "add", big)
    assert result.returncode == 0, result.stderr
    cid = result.stdout.strip()
    out = tmp_path / "out"
    result = run_cli(home, "get", cid, out)
    assert result.returncode == 0, result.stderr
    assert sha256_file(out / "big.bin") == sha256_file(big)
    print(f"killed {killed}/8 adds, {left_temp} left temp files behind")


_WAITER = r"""
import sys, time
from pathlib import Path
import numpy, zarr  # warm imports, so the adds really start together
import artifacts.store
from cidflow.cli import main
ready, barrier = Path(sys.argv[1]), Path(sys.argv[2])
ready.touch()
while not barrier.exists():
    time.sleep(0.002)
sys.argv = ["cidflow", *sys.argv[3:]]
main()
"""


@pytest.mark.slow
@pytest.mark.xdist_group("faults")
def test_eight_processes_adding_the_same_folder_at_once(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    rng = np.random.default_rng(9)
    for i in range(6):
        (src / ("sub" if i % 2 else ".") / f"part{i}.bin").write_bytes(rng.bytes(5 * MiB))
    np.save(src / "table.npy", np.arange(100_000, dtype=np.float64).reshape(1000, 100))
    (src / "README.txt").write_text("eight writers, one artifact\n")

    reference = ArtifactStore(tmp_path / "reference")
    expected = str(reference.put_path(src))
    expected_blobs = sorted(p.name for p in blob_files(tmp_path / "reference"))

    barrier = tmp_path / "go"
    procs = []
    for i in range(8):
        ready = tmp_path / f"ready{i}"
        args = [str(ready), str(barrier), "--home", str(home), "add", str(src)]
        procs.append(
            (
                ready,
                subprocess.Popen(
                    [sys.executable, "-c", _WAITER, *args],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                ),
            )
        )
    deadline = time.monotonic() + 120
    while not all(r.exists() for r, _ in procs):
        assert all(p.poll() is None for _, p in procs), "a writer died before the barrier"
        assert time.monotonic() < deadline, "writers never got ready"
        time.sleep(0.01)
    barrier.touch()
    results = [(p.wait(timeout=300), *p.communicate()) for _, p in procs]

    assert [rc for rc, _, _ in results] == [0] * 8, [err for _, _, err in results]
    assert {out.strip() for _, out, _ in results} == {expected}
    names = [p.name for p in blob_files(home)]
    assert sorted(names) == expected_blobs  # every blob exactly once, nothing else
    assert len(names) == len(set(names))
    assert temp_files(home) == []
    assert sorted(os.listdir(home / "refs" / "artifacts")) == [expected]
    assert sorted(os.listdir(home / "refs" / "pins")) == [expected]
    result = run_cli(home, "verify")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.xdist_group("faults")
def test_gc_running_while_a_large_add_is_in_progress(home: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(13).bytes(300 * MiB))
    ArtifactStore(home).put_arrays({"old": np.arange(10)}, pin=False)  # something gc may take

    add = subprocess.Popen(cli(home, "add", big), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    gcs = []
    while add.poll() is None:
        gc = run_cli(home, "gc", "--grace", "0", "--json")
        gcs.append(gc)
    stdout, stderr = add.communicate()
    gcs.append(run_cli(home, "gc", "--grace", "0", "--json"))

    assert add.returncode == 0, stderr.decode()
    assert all(g.returncode == 0 for g in gcs), [g.stderr for g in gcs]
    assert len(gcs) >= 2
    assert sum(json.loads(g.stdout)["removed_blobs"] for g in gcs) > 0  # gc really collected
    cid = stdout.decode().strip()
    result = run_cli(home, "verify", cid)
    assert result.returncode == 0, result.stdout + result.stderr
    out = tmp_path / "out"
    result = run_cli(home, "get", cid, out)
    assert result.returncode == 0, result.stderr
    assert sha256_file(out / "big.bin") == sha256_file(big)


def test_a_manifest_nested_100000_deep_is_a_manifest_error_not_a_recursion_error() -> None:
    from artifacts.errors import ManifestError
    from artifacts.manifest import decode_root

    deep = b'{"format":"' + ARTIFACT_FORMAT.encode() + b'","kind":"arrays","attrs":'
    deep += b'{"a":' * 100_000 + b"1" + b"}" * 100_000 + b',"tables":{}}'
    with pytest.raises(ManifestError, match="nests too deep"):
        decode_root(compute_cid(deep, codec="json"), deep)
    with pytest.raises(ValueError, match="nests too deep"):
        loads_strict(b"[" * 100_000 + b"]" * 100_000)
    value: Any = 1
    for _ in range(100_000):
        value = [value]
    with pytest.raises(ValueError, match="nests too deep"):
        canonical_json(value)
