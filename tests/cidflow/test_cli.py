"""The ``cidflow`` command's external contract, in-process (CliRunner) and as a real program."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from cidflow.cli import cli

CIDFLOW = shutil.which("cidflow", path=str(Path(sys.executable).parent)) or str(
    Path(sys.executable).parent / "cidflow"
)
UNKNOWN_CID = "bagaaierasords4njcts6vs7qvdjfcvgnume4hqohf65zsfguprqphs3icwea"
HEAVY = {"torch", "prefect", "zarr", "numpy"}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIDFLOW_")}
    env["NO_COLOR"] = "1"
    return env


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed ``cidflow`` program, as a user runs it."""
    return subprocess.run(
        [CIDFLOW, "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


def invoke(home: Path, *args: str) -> Result:
    return CliRunner().invoke(cli, ["--home", str(home), *args], env={"CIDFLOW_HOME": None})


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error:"), stderr
    return lines[0]


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub" / "deep").mkdir(parents=True)
    (root / "notes.txt").write_text("some notes\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "deep" / "noise.bin").write_bytes(np.random.default_rng(0).bytes(100_000))
    np.save(root / "sub" / "weights.npy", np.arange(24, dtype="<f4").reshape(4, 6))
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def added(home: Path, src: Path) -> str:
    done = run(home, "add", str(src), "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    return str(json.loads(lines[0])["cid"])


# -- the happy path, as a program --------------------------------------------------------------


def test_add_show_get_round_trip(home: Path, src: Path, added: str, tmp_path: Path) -> None:
    assert added.startswith("b")
    shown = run(home, "show", added, "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert {"cid", "kind", "attrs", "arrays"} <= set(info)
    assert info["cid"] == added
    assert info["kind"] == "files"
    assert info["attrs"]["files"] == 4
    assert info["arrays"]["sub/weights.npy"]["shape"] == [4, 6]
    assert info["arrays"]["sub/weights.npy"]["dtype"] == "float32"
    for spec in info["arrays"].values():
        assert {"shape", "dtype"} <= set(spec)

    out = tmp_path / "out"
    got = run(home, "get", added, str(out))
    assert got.returncode == 0, got.stderr
    assert _files(out) == _files(src)
    for rel in _files(src):
        assert (
            hashlib.sha256((out / rel).read_bytes()).digest()
            == hashlib.sha256((src / rel).read_bytes()).digest()
        )


def test_add_same_content_twice_gives_same_cid(home: Path, src: Path, added: str) -> None:
    again = run(home, "add", str(src), "--json")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["cid"] == added
    plain = run(home, "add", str(src))
    assert plain.returncode == 0
    assert plain.stdout.strip() == added


def test_verify_exit_codes(home: Path, added: str) -> None:
    ok = run(home, "verify")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert run(home, "verify", added).returncode == 0

    from artifacts.store import ArtifactStore

    store = ArtifactStore(home)
    art = store.open_artifact(added)
    ref = max((r for r in art.refs() if r.size > 0), key=lambda r: r.size)
    path = store.blobs.path_of(ref.cid)  # type: ignore[attr-defined]
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.chmod(0o644)
    path.write_bytes(bytes(raw))

    bad = run(home, "verify")
    assert bad.returncode == 1
    assert str(ref.cid) in bad.stdout
    bad_json = run(home, "verify", added, "--json")
    assert bad_json.returncode == 1
    report = json.loads(bad_json.stdout)
    assert report["ok"] is False
    assert str(ref.cid) in {p["cid"] for p in report["problems"]}


# -- listing, gc, pins (in-process) -------------------------------------------------------------


def test_ls_stats_pin_unpin_gc(home: Path, src: Path, added: str) -> None:
    listed = invoke(home, "ls", "--json")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert [(r["cid"], r["kind"], r["pinned"]) for r in rows] == [(added, "files", True)]

    stats = invoke(home, "stats", "--json")
    assert stats.exit_code == 0
    data = json.loads(stats.stdout)
    assert data["artifacts"] == 1
    assert data["pinned"] == 1
    assert data["blobs"] > 0
    assert data["stored_bytes"] > 0
    assert {"logical_bytes", "dedup_ratio"} <= set(data)

    assert invoke(home, "unpin", added).exit_code == 0
    assert json.loads(invoke(home, "ls", "--json").stdout)[0]["pinned"] is False
    pinned = invoke(home, "pin", added)
    assert pinned.exit_code == 0
    assert added in pinned.stdout
    assert json.loads(invoke(home, "ls", "--json").stdout)[0]["pinned"] is True

    # an unpinned second artifact: a dry run reports it, deletes nothing; a real run collects it
    other = src / "sub" / "deep" / "noise.bin"
    loose = invoke(home, "add", str(other), "--no-pin", "--json")
    assert loose.exit_code == 0, loose.output
    loose_cid = json.loads(loose.stdout)["cid"]
    blobs_before = sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file())

    dry = invoke(home, "gc", "--dry-run", "--grace", "0", "--json")
    assert dry.exit_code == 0, dry.output
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True
    assert report["forgotten_artifacts"] == [loose_cid]
    assert report["removed_blobs"] > 0
    assert sorted(p.name for p in (home / "blobs").rglob("*") if p.is_file()) == blobs_before
    assert invoke(home, "show", loose_cid, "--json").exit_code == 0

    real = invoke(home, "gc", "--grace", "0", "--json")
    assert real.exit_code == 0, real.output
    assert json.loads(real.stdout)["removed_blobs"] == report["removed_blobs"]
    assert invoke(home, "show", loose_cid).exit_code == 1
    assert invoke(home, "verify", added).exit_code == 0
    assert [r["cid"] for r in json.loads(invoke(home, "ls", "--json").stdout)] == [added]


def test_empty_home_listings(home: Path) -> None:
    assert json.loads(invoke(home, "ls", "--json").stdout) == []
    assert json.loads(invoke(home, "stats", "--json").stdout)["artifacts"] == 0


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ("show", "not-a-cid"),
        ("show", "bafy"),
        ("get", "QmNotACid", "OUT"),
        ("verify", "zzz"),
        ("pin", "b@d"),
        ("show", UNKNOWN_CID),
        ("get", UNKNOWN_CID, "OUT"),
        ("pin", UNKNOWN_CID),
    ],
)
def test_bad_cid_is_one_error_line(
    home: Path, added: str, tmp_path: Path, args: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    args = tuple(str(out) if a == "OUT" else a for a in args)
    result = invoke(home, *args)
    assert result.exit_code == 1, result.output
    _one_error_line(result.stderr)
    assert result.stdout == ""
    assert not out.exists()


def test_bad_input_as_a_program(home: Path, added: str) -> None:
    malformed = run(home, "show", "bafkreimalformed!")
    assert malformed.returncode == 1
    assert "bafkreimalformed!" in _one_error_line(malformed.stderr)
    unknown = run(home, "show", UNKNOWN_CID)
    assert unknown.returncode == 1
    assert UNKNOWN_CID in _one_error_line(unknown.stderr)


def test_get_into_non_empty_folder_needs_force(
    home: Path, src: Path, added: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_bytes(b"mine")
    refused = run(home, "get", added, str(out))
    assert refused.returncode == 1
    _one_error_line(refused.stderr)
    assert _files(out) == {"keep.txt": b"mine"}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []

    forced = invoke(home, "get", added, str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert _files(out) == {**_files(src), "keep.txt": b"mine"}


def test_attr_without_equals_is_one_error_line(home: Path, src: Path) -> None:
    done = run(home, "add", str(src), "--attr", "licence")
    assert done.returncode == 1, done.stderr
    _one_error_line(done.stderr)
    assert done.stdout == ""
    ok = run(home, "add", str(src), "--attr", "licence=MIT", "--attr", "v=a=b", "--json")
    assert ok.returncode == 0, ok.stderr
    shown = json.loads(run(home, "show", json.loads(ok.stdout)["cid"], "--json").stdout)
    assert shown["attrs"]["licence"] == "MIT"
    assert shown["attrs"]["v"] == "a=b"


# -- start-up cost and the public API ----------------------------------------------------------


def test_help_imports_no_heavy_module() -> None:
    done = subprocess.run(
        [sys.executable, "-X", "importtime", CIDFLOW, "--help"],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage:" in done.stdout
    assert "add" in done.stdout
    modules = [
        line.rsplit("|", 1)[1].strip()
        for line in done.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "click" in modules, "the import log was captured"
    heavy = sorted({m for m in modules if m.split(".")[0] in HEAVY})
    assert heavy == []


def test_public_api_exports() -> None:
    code = (
        "import json, sys, cidflow; "
        "print(json.dumps({'all': cidflow.__all__, "
        "'heavy': sorted(m for m in sys.modules if m.split('.')[0] in "
        + repr(sorted(HEAVY))
        + ")}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["heavy"] == [], "import cidflow stays light"
    names = result["all"]
    assert names
    assert "ArtifactStore" in names
    assert "CID" in names

    import cidflow

    assert names == list(cidflow.__all__)
    for name in names:
        assert getattr(cidflow, name) is not None, name
    assert cidflow.__version__
    assert sorted(dir(cidflow)) == sorted(names)
    with pytest.raises(AttributeError):
        _ = cidflow.no_such_name
