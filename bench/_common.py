"""Shared helpers for the benchmarks: timing whole processes, machine facts, JSON output.

Every benchmark measures whole processes (``subprocess`` + ``time.perf_counter``), takes the
median of several runs and compares against a named peer measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent  # the repository
BIN = ROOT / ".venv" / "bin"
OUT = ROOT / "bench" / "out"
DATA = OUT / "data"
GIB = 1 << 30
TIME = "/usr/bin/time"


def run(
    cmd: list[str],
    *,
    cwd: str | Path | None = None,
    env: dict[str, str] | None = None,
    check: bool = True,
) -> dict[str, Any]:
    """Run ``cmd`` once; return wall seconds, peak RSS (bytes, via /usr/bin/time) and output."""
    fd, rss_file = tempfile.mkstemp(prefix="rss-", dir=OUT)
    os.close(fd)
    full = [TIME, "-f", "%M", "-o", rss_file, *cmd] if os.path.exists(TIME) else cmd
    os.sync()  # earlier runs' dirty pages must not be written back on this run's clock
    t0 = time.perf_counter()
    proc = subprocess.run(full, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    try:
        lines = Path(rss_file).read_text().split()
        rss = int(lines[-1]) * 1024 if lines else 0
    except (OSError, ValueError):
        rss = 0
    finally:
        os.unlink(rss_file)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return {
        "seconds": wall,
        "peak_rss": rss,
        "stdout": proc.stdout,
        "stderr": proc.stderr,
        "rc": proc.returncode,
    }


def median(values: list[float]) -> float:
    return statistics.median(values)


def fresh_dir(name: str) -> Path:
    """An empty scratch folder under bench/out (removed first if it exists)."""
    path = OUT / "work" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def tree_bytes(path: str | Path) -> dict[str, int]:
    """Apparent bytes (st_size), disk bytes (st_blocks * 512) and file count below ``path``."""
    apparent = disk = files = 0
    for folder, _, names in os.walk(path):
        for n in names:
            try:
                st = os.lstat(os.path.join(folder, n))
            except FileNotFoundError:
                continue
            apparent += st.st_size
            disk += st.st_blocks * 512
            files += 1
    return {"apparent": apparent, "disk": disk, "files": files}


def big_npy() -> Path:
    """The shared 1 GiB float32 .npy (262144 x 1024, standard normal, seed 0); written once."""
    path = DATA / "big.npy"
    if not path.exists() or path.stat().st_size != GIB + 128:
        import numpy as np

        DATA.mkdir(parents=True, exist_ok=True)
        arr = np.random.default_rng(0).standard_normal((262144, 1024), dtype=np.float32)
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    return path


def versions() -> dict[str, str]:
    def out(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout.strip()
        except Exception as exc:
            return f"? ({exc})"

    pyv = "import importlib.metadata as m;print(*(m.version(p) for p in %r))"
    names = ["cidflow", "dvc", "zarr", "prefect", "numpy", "numcodecs"]
    vals = out([str(BIN / "python"), "-c", pyv % (names,)]).split()
    return dict(zip(names, vals, strict=False)) | {"python": platform.python_version()}


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = subprocess.run(["free", "-g"], capture_output=True, text=True).stdout.strip()
    fs = subprocess.run(["df", "-hT", str(OUT)], capture_output=True, text=True).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [
            "git",
            "-C",
            str(ROOT),
            "status",
            "--short",
            "--",
            "artifacts",
            "cidflow",
            "pyproject.toml",
        ],
        capture_output=True,
        text=True,
    ).stdout
    return {
        "code": head + (" (+ uncommitted changes)" if dirty.strip() else ""),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "free_g": mem,
        "filesystem": fs.splitlines()[-1] if fs else "?",
        "kernel": platform.release(),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    result = {"name": name, "machine": machine(), **result}
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["DVC_NO_ANALYTICS"] = "1"
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    return env


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
