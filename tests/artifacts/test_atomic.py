"""``write_atomic``: the whole new content or the old one, with its mode from creation, and
no temporary file left behind either way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from artifacts.atomic import write_atomic


def test_replaces_with_the_mode_from_creation_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_atomic(target, b"one", mode=0o600)
    assert target.read_bytes() == b"one"
    assert target.stat().st_mode & 0o777 == 0o600
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_a_failed_write_keeps_the_old_content(tmp_path: Path) -> None:
    target = tmp_path / "f"
    write_atomic(target, b"old")
    os.chmod(tmp_path, 0o500)  # the temporary file cannot be created
    try:
        if os.geteuid() == 0:  # root ignores the folder's mode: make the rename fail instead
            os.chmod(tmp_path, 0o700)
            (tmp_path / "d").mkdir()
            with pytest.raises(IsADirectoryError):
                write_atomic(tmp_path / "d", b"new")
            assert (tmp_path / "d").is_dir()
        else:
            with pytest.raises(PermissionError):
                write_atomic(target, b"new")
    finally:
        os.chmod(tmp_path, 0o700)
    assert target.read_bytes() == b"old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
