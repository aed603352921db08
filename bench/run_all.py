"""Run every benchmark in bench/ (``make bench``); each prints one summary line and writes
bench/out/<name>.json. Pass --quick for fewer runs and no 4 GiB .npy."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable

BENCHES = [
    ("bench_help.py", [], []),
    ("bench_add.py", [], ["--runs", "3"]),
    ("bench_zarr_write.py", [], ["--runs", "1", "--no-diagnostic"]),
    ("bench_version.py", [], []),
    ("bench_rss.py", [], ["--no-npy"]),
    ("bench_registry.py", [], ["--versions", "10000", "--lookups", "500"]),
    ("bench_flows.py", [], ["--runs", "1", "--tasks", "5", "--compute-tasks", "2"]),
    ("bench_hf.py", [], ["--runs", "1"]),
    ("bench_cluster.py", [], ["--runs", "1"]),
    ("bench_federated.py", [], ["--rounds", "5", "--strategies", "fedavg", "krum"]),
]


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    only = [a for a in sys.argv[1:] if not a.startswith("--")]
    failed = []
    for script, args, quick_args in BENCHES:
        if only and not any(o in script for o in only):
            continue
        t0 = time.perf_counter()
        rc = subprocess.run([PY, str(HERE / script), *(quick_args if quick else args)]).returncode
        print(f"  ({script}: {time.perf_counter() - t0:.0f}s, rc {rc})", flush=True)
        if rc:
            failed.append(script)
    if failed:
        print("failed: " + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
