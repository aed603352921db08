"""Helpers shared by the test suites (on pytest's path via ``pythonpath`` in pyproject)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
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


def cli(home: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``cidflow --home HOME ARGS`` in a subprocess, free of the caller's Prefect settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    cmd = [sys.executable, "-m", "cidflow", "--home", str(home), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def ok(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def one_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0], lines[0]
