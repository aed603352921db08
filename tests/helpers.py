"""Helpers shared by the test suites (on pytest's path via ``pythonpath`` in pyproject)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

MiB = 1 << 20


def snapshot(root: Path, *, hash_limit: int | None = MiB) -> dict[str, tuple[Any, ...]]:
    """Everything under ``root``: type, size, mode, mtime and content hash (files up to
    ``hash_limit`` bytes; ``None`` hashes every file). Equal snapshots: nothing changed."""
    out: dict[str, tuple[Any, ...]] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_dir():
            out[rel] = ("dir", st.st_mode)
        else:
            small = hash_limit is None or st.st_size <= hash_limit
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if small else None
            out[rel] = ("file", st.st_size, st.st_mode, st.st_mtime_ns, digest)
    return out
