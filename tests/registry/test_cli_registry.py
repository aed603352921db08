"""The registry commands as a user runs them: real ``python -m cidflow`` processes on a SQLite
registry (the embedded default), including the external contract other projects rely on."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from artifacts.blobstore import LocalBlobStore
from artifacts.canonical import canonical_json


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIDFLOW_")}
    env["NO_COLOR"] = "1"
    return env


def run(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cidflow", "--home", str(home), *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=120,
    )


def ok(home: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    done = run(home, *args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    return done


def one_json(done: subprocess.CompletedProcess[str]) -> Any:
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0])


def fails(home: Path, *args: str | Path) -> str:
    """The command exits 1 with exactly one ``error:`` line; returns that line."""
    done = run(home, *args)
    assert done.returncode == 1, (args, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:"), done.stderr
    return lines[0]


def log_length(home: Path, *registry: str | Path) -> int:
    done = ok(home, "log", "--json", *registry)
    return len(done.stdout.strip().splitlines())


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def src(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    (root / "sub").mkdir(parents=True)
    (root / "notes.txt").write_text("some notes\n")
    (root / "empty").write_bytes(b"")
    (root / "sub" / "noise.bin").write_bytes(np.random.default_rng(0).bytes(300_000))
    np.save(root / "sub" / "weights.npy", np.arange(24, dtype="<f4").reshape(4, 6))
    return root


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    ok(home, "key", "new")
    return home


@pytest.fixture
def published(home: Path, src: Path) -> dict[str, Any]:
    done = ok(home, "publish", src, "--name", "alice/digits", "--version", "1.0.0",
              "--license", "CC-BY-4.0", "--description", "handwritten digits",
              "--tag", "vision", "--json")  # fmt: skip
    return one_json(done)  # type: ignore[no-any-return]


# -- keys ---------------------------------------------------------------------------------------


def test_key_new_is_private_and_never_printed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    done = ok(home, "key", "new", "--json")
    path = home / "keys" / "default.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    pem = path.read_text()
    assert "PRIVATE KEY" in pem
    body = "".join(pem.strip().splitlines()[1:-1])
    for stream in (done.stdout, done.stderr):
        assert "PRIVATE" not in stream
        assert body not in stream
        assert body[:24] not in stream
    shown = one_json(done)
    assert set(shown) == {"name", "publisher", "public_key"}
    assert shown["publisher"].startswith("pk")

    again = ok(home, "key", "show", "--json")
    assert one_json(again) == shown
    assert body not in again.stdout + again.stderr
    text = ok(home, "key", "show").stdout
    assert shown["publisher"] in text
    assert shown["public_key"] in text
    assert body not in text
    # a second `key new` refuses to replace the key
    assert "exists" in fails(home, "key", "new")
    assert path.read_text() == pem


def test_key_show_without_a_key_says_how_to_make_one(tmp_path: Path) -> None:
    assert "key new" in fails(tmp_path / "home", "key", "show")


def test_publishing_without_a_key_is_refused(tmp_path: Path, src: Path) -> None:
    home = tmp_path / "home"
    assert "key new" in fails(home, "publish", src, "--name", "a/b", "--version", "1.0.0")
    assert not (home / "keys" / "default.pem").exists()


# -- the external contract -----------------------------------------------------------------------


def test_publish_info_pull_contract(
    home: Path, src: Path, published: dict[str, Any], tmp_path: Path
) -> None:
    assert {"name", "version", "cid", "seq"} <= set(published)
    assert (published["name"], published["version"], published["seq"]) == ("alice/digits",
                                                                            "1.0.0", 1)  # fmt: skip
    assert published["cid"].startswith("bagaaiera")  # a json-codec artifact CID
    assert (home / "registry.db").is_file()  # no --registry: a SQLite file under HOME

    info = one_json(ok(home, "info", "alice/digits@1.0.0", "--json"))
    assert {"name", "version", "cid", "kind", "license", "publisher"} <= set(info)
    assert info["cid"] == published["cid"]
    assert info["license"] == "CC-BY-4.0"
    assert info["name"] == "alice/digits"
    assert info["version"] == "1.0.0"
    key = one_json(ok(home, "key", "show", "--json"))
    assert info["publisher"] == key["publisher"]
    assert one_json(ok(home, "info", "alice/digits", "--json")) == info  # @latest
    text = ok(home, "info", "alice/digits@1.0.0").stdout
    assert published["cid"] in text
    assert "CC-BY-4.0" in text

    out = tmp_path / "out"
    ok(home, "pull", "alice/digits@1.0.0", out)
    assert files(out) == files(src)
    ok(home, "pull", "alice/digits@^1", tmp_path / "out2")
    assert files(tmp_path / "out2") == files(src)

    # the same publish again is idempotent: same seq, nothing appended
    again = one_json(ok(home, "publish", src, "--name", "alice/digits", "--version", "1.0.0",
                        "--license", "CC-BY-4.0", "--json"))  # fmt: skip
    assert (again["seq"], again["cid"]) == (1, published["cid"])
    assert log_length(home) == 1
    assert ok(home, "registry", "verify").stdout.startswith("ok")


def test_publish_by_cid_of_a_stored_artifact(home: Path, src: Path) -> None:
    cid = ok(home, "add", src).stdout.strip()
    out = one_json(ok(home, "publish", cid, "--name", "alice/raw", "--version", "0.1.0", "--json"))
    assert out["cid"] == cid


# -- registry verify ---------------------------------------------------------------------------


def test_registry_verify_names_the_seq_of_an_edited_entry(home: Path, src: Path) -> None:
    for v in ["1.0.0", "1.1.0", "1.2.0"]:
        ok(home, "publish", src, "--name", "alice/digits", "--version", v)
    done = ok(home, "registry", "verify", "--json")
    assert one_json(done)["ok"] is True
    assert one_json(done)["seq"] == 3

    db = sqlite3.connect(home / "registry.db")
    try:
        (raw,) = db.execute("SELECT record FROM entries WHERE seq = 2").fetchone()
        record = json.loads(raw)
        record["entry"]["body"]["description"] = "edited behind your back"
        db.execute(
            "UPDATE entries SET record = ? WHERE seq = 2", (canonical_json(record).decode(),)
        )
        db.commit()
    finally:
        db.close()
    done = run(home, "registry", "verify")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "seq 2" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    done = run(home, "registry", "verify", "--json")
    assert done.returncode == 1
    assert one_json(done)["seq"] == 2
    assert one_json(done)["ok"] is False


# -- refusals -------------------------------------------------------------------------------


def _blob_files(home: Path, cid: str) -> list[Path]:
    """Every stored blob file but the root manifest, largest first."""
    root = LocalBlobStore(home).path_of(cid)  # type: ignore[arg-type]
    blobs = [p for p in (home / "blobs").rglob("*") if p.is_file() and p != root]
    return sorted(blobs, key=lambda p: p.stat().st_size, reverse=True)


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_publish_refuses_an_artifact_with_a_missing_or_corrupt_blob(
    home: Path, src: Path, published: dict[str, Any], damage: str
) -> None:
    cid = ok(home, "add", src / "sub").stdout.strip()
    victim = _blob_files(home, cid)[0]
    if damage == "missing":
        os.chmod(victim.parent, 0o755)
        victim.unlink()
    else:
        os.chmod(victim, 0o644)
        data = bytearray(victim.read_bytes())
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    before = (home / "registry.db").read_bytes(), log_length(home)
    line = fails(home, "publish", cid, "--name", "alice/sub", "--version", "1.0.0", "--json")
    assert cid in line or victim.name in line
    assert log_length(home) == before[1] == 1
    assert "alice/sub" not in ok(home, "search", "--json").stdout
    assert run(home, "info", "alice/sub").returncode == 1
    assert ok(home, "registry", "verify").returncode == 0


@pytest.mark.parametrize(
    ("name", "version"),
    [
        ("alice", "1.0.0"),
        ("alice/../bob", "1.0.0"),
        ("../digits", "1.0.0"),
        ("alice/sub/digits", "1.0.0"),
        ("\u0430lice/digits", "1.0.0"),  # Cyrillic a
        ("alice/my data", "1.0.0"),
        ("alice/digits", "1.0"),
        ("alice/digits", "v1.0.0"),
        ("alice/digits", "latest"),
    ],
)
def test_bad_names_and_versions_are_refused(
    home: Path, src: Path, published: dict[str, Any], name: str, version: str
) -> None:
    fails(home, "publish", src, "--name", name, "--version", version)
    assert log_length(home) == 1


def test_bad_fields_are_refused(home: Path, src: Path, published: dict[str, Any]) -> None:
    base = ["publish", src, "--name", "alice/digits", "--version", "2.0.0"]
    fails(home, *base, "--description", "x" * 4097)
    fails(home, *base, "--license", "MIT; DROP TABLE entries")
    fails(home, *base, "--price", "-3 USD")
    fails(home, *base, "--tag", "Not A Tag")
    assert log_length(home) == 1


def test_confusable_and_conflicting_versions_are_refused(
    home: Path, src: Path, published: dict[str, Any], tmp_path: Path
) -> None:
    assert "confusable" in fails(home, "publish", src, "--name", "alice/Digi_ts",
                                 "--version", "1.0.0")  # fmt: skip
    other = tmp_path / "other"
    other.mkdir()
    (other / "f.txt").write_text("different content\n")
    line = fails(home, "publish", other, "--name", "alice/digits", "--version", "1.0.0")
    assert "1.0.0" in line
    assert published["cid"] in line
    assert log_length(home) == 1
    assert one_json(ok(home, "info", "alice/digits@1.0.0", "--json"))["cid"] == published["cid"]


def test_another_key_cannot_publish_into_my_namespace(tmp_path: Path, src: Path) -> None:
    shared = tmp_path / "shared.db"
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    ok(alice, "key", "new")
    ok(bob, "key", "new")
    ok(alice, "publish", src, "--name", "alice/digits", "--version", "1.0.0", "--registry", shared)
    before = shared.read_bytes()
    line = fails(bob, "publish", src, "--name", "alice/digits", "--version", "1.0.1",
                 "--registry", shared)  # fmt: skip
    assert "alice" in line
    fails(bob, "yank", "alice/digits@1.0.0", "--registry", shared)
    assert log_length(alice, "--registry", shared) == 1
    assert ok(bob, "registry", "verify", "--registry", shared).returncode == 0
    info = one_json(ok(bob, "info", "alice/digits", "--json", "--registry", shared))
    assert not info["yanked"]
    del before


def test_a_second_home_can_publish_its_own_namespace_into_a_shared_file(
    tmp_path: Path, src: Path
) -> None:
    shared = tmp_path / "shared.db"
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    ok(alice, "key", "new")
    ok(bob, "key", "new")
    ok(alice, "publish", src, "--name", "alice/digits", "--version", "1.0.0", "--registry", shared)
    out = one_json(ok(bob, "publish", src, "--name", "bob/digits", "--version", "1.0.0",
                      "--registry", shared, "--json"))  # fmt: skip
    assert out["seq"] == 2
    assert ok(alice, "registry", "verify", "--registry", shared).returncode == 0


# -- yank, versions, search, log ------------------------------------------------------------------


def test_yank_versions_search_and_log(home: Path, src: Path, published: dict[str, Any]) -> None:
    ok(home, "publish", src, "--name", "alice/digits", "--version", "1.1.0", "--tag", "vision")
    ok(home, "publish", src / "sub", "--name", "alice/noise", "--version", "0.1.0",
       "--license", "MIT", "--description", "random 100% noise")  # fmt: skip
    yanked = one_json(ok(home, "yank", "alice/digits@1.1.0", "--reason", "broken", "--json"))
    assert yanked == {"name": "alice/digits", "version": "1.1.0", "seq": 4}
    assert "exact version" in fails(home, "yank", "alice/digits")

    versions = one_json(ok(home, "versions", "alice/digits", "--json"))
    assert [(v["version"], v["yanked"]) for v in versions] == [("1.1.0", True), ("1.0.0", False)]
    at2 = one_json(ok(home, "versions", "alice/digits", "--at", "2", "--json"))
    assert [(v["version"], v["yanked"]) for v in at2] == [("1.1.0", False), ("1.0.0", False)]
    assert one_json(ok(home, "info", "alice/digits", "--json"))["version"] == "1.0.0"
    assert one_json(ok(home, "info", "alice/digits", "--at", "3", "--json"))["version"] == "1.1.0"
    exact = one_json(ok(home, "info", "alice/digits@1.1.0", "--json"))
    assert exact["yanked"] is True

    found = one_json(ok(home, "search", "--json"))
    assert [(f["name"], f["version"]) for f in found] == [("alice/digits", "1.0.0"),
                                                          ("alice/noise", "0.1.0")]  # fmt: skip
    assert [f["name"] for f in one_json(ok(home, "search", "--license", "MIT", "--json"))] == [
        "alice/noise"
    ]
    assert [f["name"] for f in one_json(ok(home, "search", "100%", "--json"))] == ["alice/noise"]
    assert one_json(ok(home, "search", "'; DROP TABLE entries; --", "--json")) == []
    page = one_json(ok(home, "search", "--limit", "1", "--offset", "1", "--json"))
    assert [f["name"] for f in page] == ["alice/noise"]

    log = [json.loads(line) for line in ok(home, "log", "--json").stdout.splitlines()]
    assert [r["seq"] for r in log] == [1, 2, 3, 4]
    assert [r["entry"]["body"]["type"] for r in log] == ["publish"] * 3 + ["yank"]
    since = [
        json.loads(line) for line in ok(home, "log", "--since", "2", "--json").stdout.splitlines()
    ]
    assert [r["seq"] for r in since] == [3, 4]
    assert ok(home, "registry", "verify").returncode == 0


def test_export_and_sync_a_mirror(
    home: Path, src: Path, published: dict[str, Any], tmp_path: Path
) -> None:
    ok(home, "publish", src, "--name", "alice/digits", "--version", "1.1.0")
    export = tmp_path / "log.jsonl"
    ok(home, "registry", "export", export)
    mirror = tmp_path / "mirror-home"
    ok(mirror, "registry", "sync", export)
    assert ok(mirror, "registry", "verify").returncode == 0
    theirs = one_json(ok(mirror, "info", "alice/digits", "--json"))
    assert theirs == one_json(ok(home, "info", "alice/digits", "--json"))
    # an older export offered after a newer one: a rollback, refused; nothing changes
    old = tmp_path / "old.jsonl"
    lines = export.read_text().splitlines()
    ok(home, "publish", src, "--name", "alice/digits", "--version", "1.2.0")
    ok(home, "registry", "export", export)
    ok(mirror, "registry", "sync", export)
    old.write_text(lines[0] + "\n" + lines[1] + "\n")
    head = json.loads(lines[0])["head"]
    assert head["seq"] == 2
    before = (mirror / "registry.db").read_bytes()
    fails(mirror, "registry", "sync", old)
    assert log_length(mirror) == 3
    del before
