"""The ``cidflow`` command under bad input and damaged stores, run as a real process.

Every failure must exit non-zero with one clear line on stderr and leave the home folder (and
the export destination's parent) exactly as it was.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import snapshot

from artifacts.blobstore import LocalBlobStore
from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import CID, compute_cid
from artifacts.manifest import ARTIFACT_FORMAT
from artifacts.store import ArtifactStore
from artifacts.writers import ARRAY_ATTR, FILE_ATTR


def snapshot_all(root: Path) -> dict[str, tuple[Any, ...]]:
    return snapshot(root, hash_limit=None)


MiB = 1 << 20


# -- helpers ---------------------------------------------------------------------------------------


def run_cli(home: Path, *args: object) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cidflow", "--home", str(home), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def one_error_line(
    result: subprocess.CompletedProcess[str], *needles: str, code: int | None = 1
) -> str:
    """Assert the command failed (exit ``code``; any non-zero when ``None``) with exactly one
    ``error:`` line on stderr that holds every one of ``needles``."""
    if code is None:
        assert result.returncode != 0, (result.stdout, result.stderr)
    else:
        assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert result.stdout == ""
    return lines[0]


def damage_blob(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "flip":
        middle = len(data) // 2
        new = data[:middle] + bytes([data[middle] ^ 0x01]) + data[middle + 1 :]
    elif how == "truncate":
        new = data[: len(data) // 2]
    else:
        new = b""
    os.chmod(path, 0o644)
    path.write_bytes(new)
    os.chmod(path, 0o444)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A folder with a binary file, an npy array and a text file."""
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "data.bin").write_bytes(random.Random(1).randbytes(300_000))
    np.save(folder / "table.npy", np.random.default_rng(2).standard_normal((200, 50)))
    (folder / "notes.txt").write_text("fault injection\n")
    return folder


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def added(home: Path, src: Path) -> CID:
    """``src`` added to ``home`` (in-process: the CLI runs are the ones under test)."""
    return ArtifactStore(home).put_path(src)


def chunk_cid(home: Path, cid: CID, path: str) -> CID:
    """The CID of the first chunk of the array holding file ``path``."""
    art = ArtifactStore(home, read_only=True).open_artifact(cid)
    node = next(
        node
        for node, doc in art.metadata().items()
        if (doc.get("attributes") or {}).get(FILE_ATTR, {}).get("path") == path
    )
    return next(ref.cid for key, ref in sorted(art.store.items()) if key.startswith(f"{node}/c/"))


# -- CIDs ------------------------------------------------------------------------------------------

MALFORMED_CALLS = [
    ("show", "notacid"),
    ("get", "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", "OUT"),
    ("verify", "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4ye"),
    ("pin", "BAFKREIBM6JG3UX5QUMHCN2B3FLC3TYU6DMLB4XA7U5BF44YEGNRJHC4YEQ"),
    ("unpin", "bafkrei/../../../etc/passwd"),
]


@pytest.mark.parametrize("call", MALFORMED_CALLS, ids=[c[0] for c in MALFORMED_CALLS])
def test_malformed_cid(home: Path, added: CID, tmp_path: Path, call: tuple[str, ...]) -> None:
    before = snapshot_all(home)
    out = tmp_path / "out"
    args = [out if a == "OUT" else a for a in call]
    one_error_line(run_cli(home, *args), "invalid CID")
    assert not out.exists()
    assert snapshot_all(home) == before


@pytest.mark.parametrize("command", ["show", "get", "pin"])
def test_unknown_cid(home: Path, added: CID, tmp_path: Path, command: str) -> None:
    unknown = str(compute_cid(b"never stored", codec="json"))
    before = snapshot_all(home)
    out = tmp_path / "out"
    args = [command, unknown, out] if command == "get" else [command, unknown]
    one_error_line(run_cli(home, *args), unknown, "not found")
    assert not out.exists()
    assert snapshot_all(home) == before


def test_verify_of_an_unknown_cid_names_it(home: Path, added: CID) -> None:
    unknown = str(compute_cid(b"never stored", codec="json"))
    before = snapshot_all(home)
    result = run_cli(home, "verify", unknown)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith(f"BAD {unknown}: ")
    assert snapshot_all(home) == before


# -- damaged blobs ---------------------------------------------------------------------------------


def test_flipped_byte_is_named_by_verify_and_get_writes_nothing(
    home: Path, added: CID, tmp_path: Path
) -> None:
    bad = chunk_cid(home, added, "data.bin")
    damage_blob(LocalBlobStore(home).path_of(bad), "flip")
    before = snapshot_all(home)

    result = run_cli(home, "verify")
    assert result.returncode == 1
    assert f"BAD {bad}" in result.stdout
    assert {line.split(":")[0] for line in result.stdout.splitlines()} == {f"BAD {bad}"}

    exports = tmp_path / "exports"
    exports.mkdir()
    one_error_line(run_cli(home, "get", added, exports / "out"), str(bad))
    assert os.listdir(exports) == []  # neither OUT nor a *.incomplete staging folder

    empty = exports / "empty"
    empty.mkdir()
    one_error_line(run_cli(home, "get", added, empty), str(bad))
    assert os.listdir(empty) == []
    assert os.listdir(exports) == ["empty"]
    assert snapshot_all(home) == before


@pytest.mark.parametrize("how", ["truncate", "empty"])
def test_truncated_or_empty_blob_is_reported_then_repaired_by_add(
    home: Path, added: CID, src: Path, tmp_path: Path, how: str
) -> None:
    bad = chunk_cid(home, added, "table.npy")
    damage_blob(LocalBlobStore(home).path_of(bad), how)
    before = snapshot_all(home)

    result = run_cli(home, "verify")
    assert result.returncode == 1
    assert f"BAD {bad}" in result.stdout
    one_error_line(run_cli(home, "get", added, tmp_path / "out"), str(bad))
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".*.incomplete"))
    assert snapshot_all(home) == before

    result = run_cli(home, "add", src)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(added)
    result = run_cli(home, "verify")
    assert result.returncode == 0, result.stdout + result.stderr
    result = run_cli(home, "get", added, tmp_path / "out")
    assert result.returncode == 0, result.stderr
    for name in ("data.bin", "table.npy", "notes.txt"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()


# -- forged manifests ------------------------------------------------------------------------------


def _forge_unsafe_key(home: Path, key: str) -> CID:
    store = ArtifactStore(home)
    payload = store.blobs.put(b"payload")
    body = canonical_json(
        {
            "format": ARTIFACT_FORMAT,
            "kind": "files",
            "attrs": {},
            "tables": {"": {"entries": [[key, str(payload), 7]]}},
        }
    )
    return store.blobs.put(body, codec="json")


def _forge_file_path(home: Path, cid: CID, path: str) -> CID:
    store = ArtifactStore(home)
    root = loads_strict(store.blobs.get(cid))
    for entry in root["tables"][""]["entries"]:
        if not entry[0].endswith("zarr.json"):
            continue
        doc = loads_strict(store.blobs.get(entry[1]))
        attributes = doc.get("attributes") or {}
        if attributes.get(FILE_ATTR, {}).get("path") == "notes.txt":
            attributes[FILE_ATTR]["path"] = path
            if ARRAY_ATTR in attributes:
                attributes[ARRAY_ATTR]["path"] = path
            body = json.dumps(doc).encode()
            entry[1], entry[2] = str(store.blobs.put(body)), len(body)
    return store.blobs.put(canonical_json(root), codec="json")


FORGERIES = {
    "key-dotdot": lambda home, cid: _forge_unsafe_key(home, "../evil/zarr.json"),
    "key-absolute": lambda home, cid: _forge_unsafe_key(home, "/etc/x"),
    "key-backslash": lambda home, cid: _forge_unsafe_key(home, "..\\evil"),
    "key-nul": lambda home, cid: _forge_unsafe_key(home, "a\x00b"),
    "key-empty-segment": lambda home, cid: _forge_unsafe_key(home, "a//zarr.json"),
    "file-path-dotdot": lambda home, cid: _forge_file_path(home, cid, "../evil"),
    "file-path-absolute": lambda home, cid: _forge_file_path(home, cid, "/etc/x"),
}


@pytest.mark.parametrize("command", ["show", "get"])
@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_forged_manifest_is_refused(
    home: Path, added: CID, tmp_path: Path, forgery: str, command: str
) -> None:
    forged = FORGERIES[forgery](home, added)
    exports = tmp_path / "exports"
    exports.mkdir()
    listing = sorted(os.listdir(tmp_path))
    before = snapshot_all(home)
    args = [command, forged, exports / "out"] if command == "get" else [command, forged]
    one_error_line(run_cli(home, *args), str(forged), "unsafe path")
    assert os.listdir(exports) == []
    assert sorted(os.listdir(tmp_path)) == listing
    assert snapshot_all(home) == before


# -- symbolic links --------------------------------------------------------------------------------


def test_add_does_not_follow_symlinks_out_of_the_folder(home: Path, tmp_path: Path) -> None:
    rng = random.Random(4)
    secret, inside = rng.randbytes(4096), rng.randbytes(4096)
    (tmp_path / "secret.bin").write_bytes(secret)
    (tmp_path / "secret_dir").mkdir()
    (tmp_path / "secret_dir" / "more.bin").write_bytes(secret)
    src = tmp_path / "src"
    src.mkdir()
    (src / "inside.bin").write_bytes(inside)
    (src / "link_in.bin").symlink_to("inside.bin")
    (src / "link_out.bin").symlink_to(tmp_path / "secret.bin")
    (src / "link_dir").symlink_to(tmp_path / "secret_dir")

    result = run_cli(home, "add", src)
    assert result.returncode == 0, result.stderr
    cid = result.stdout.strip()
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 2, result.stderr
    assert any("link_out.bin" in w for w in warnings)
    assert any("link_dir" in w for w in warnings)

    out = tmp_path / "out"
    assert run_cli(home, "get", cid, out).returncode == 0
    assert sorted(p.name for p in out.rglob("*")) == ["inside.bin", "link_in.bin"]
    assert not (out / "link_in.bin").is_symlink()
    assert (out / "link_in.bin").read_bytes() == inside
    stored = b"".join(p.read_bytes() for p in (home / "blobs").rglob("*") if p.is_file())
    assert inside in stored
    assert secret not in stored


# -- bad command-line input ------------------------------------------------------------------------


def test_attr_without_equals_sign(home: Path, added: CID, src: Path) -> None:
    before = snapshot_all(home)
    result = run_cli(home, "add", "--attr", "licence", src)
    line = one_error_line(result, "licence", code=None)
    assert "KEY=VALUE" in line
    assert snapshot_all(home) == before


def test_attr_with_empty_key(home: Path, added: CID, src: Path) -> None:
    before = snapshot_all(home)
    result = run_cli(home, "add", "--attr", "=mit", src)
    one_error_line(result, "=mit", code=None)
    assert snapshot_all(home) == before


def test_add_of_a_missing_path(home: Path, added: CID, tmp_path: Path) -> None:
    before = snapshot_all(home)
    missing = tmp_path / "no-such-folder"
    result = run_cli(home, "add", missing)
    one_error_line(result, "no-such-folder", code=None)
    assert snapshot_all(home) == before


def test_get_into_an_existing_regular_file(home: Path, added: CID, tmp_path: Path) -> None:
    target = tmp_path / "existing.txt"
    target.write_bytes(b"keep me\n")
    before = snapshot_all(home)
    listing = sorted(os.listdir(tmp_path))
    result = run_cli(home, "get", added, target)
    one_error_line(result, "existing.txt", code=None)
    assert target.read_bytes() == b"keep me\n"
    assert sorted(os.listdir(tmp_path)) == listing
    assert snapshot_all(home) == before
