"""Sandbox overhead per node run (issue 13, part 4): the same small model job run by the worker
(`python -m flows.sandbox_worker JOB`) in a plain child process vs in the sandbox
(`flows.sandbox.run_sandboxed`, bwrap or unshare: namespaces, binds, privilege drop, rlimits).

Jobs: "noop" (`python -c pass`: the sandbox's fixed cost alone, 3x the repeats), predict of a
tiny MLP (64 -> 64 -> 10) on 2000 x 64 float32, and a short train (the same model, 2000 rows,
2 epochs). Each repeat makes a fresh job folder (inputs written, not timed),
then times the whole process wall to wall; plain and sandboxed alternate. Medians; the
overhead is the difference of medians, in ms. The plain child gets the same scrubbed
environment (one thread per numeric library) so only the sandbox differs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import OUT, ROOT, log, median, write_result

sys.path.insert(0, str(ROOT))

NET = """
from torch import nn

def build(input_shape, n_classes):
    return nn.Sequential(nn.Linear(input_shape[0], 64), nn.ReLU(), nn.Linear(64, n_classes))
"""


def _job_dir(parent: Path, op: str) -> Path:
    import numpy as np

    job = Path(tempfile.mkdtemp(prefix=f"bench-{op}-", dir=parent))
    (job / "code").mkdir()
    (job / "code" / "net.py").write_text(NET)
    (job / "in").mkdir()
    rng = np.random.default_rng(0)
    np.save(job / "in" / "x.npy", rng.standard_normal((2000, 64), dtype=np.float32))
    np.save(job / "in" / "y.npy", rng.integers(0, 10, 2000))
    inputs = {"x": "in/x.npy"} if op == "predict" else {"x": "in/x.npy", "y": "in/y.npy"}
    doc = {
        "op": op,
        "code": "code",
        "module": "net",
        "factory": "build",
        "input_shape": [64],
        "n_classes": 10,
        "seed": 0,
        "epochs": 2,
        "batch_size": 64,
        "lr": 0.001,
        "inputs": inputs,
        "state": None,
    }
    (job / "job.json").write_text(json.dumps(doc))
    return job


def _argv(op: str, job: str) -> list[str]:
    if op == "noop":
        return [sys.executable, "-c", "pass"]
    return [sys.executable, "-m", "flows.sandbox_worker", job]


def _plain(job: Path, op: str) -> float:
    from flows.sandbox import sandbox_env

    t0 = time.perf_counter()
    proc = subprocess.run(
        _argv(op, str(job)), cwd=job, env=sandbox_env(), capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"plain worker failed: {proc.stderr[-2000:]}")
    return wall


def _sandboxed(job: Path, op: str) -> float:
    from flows.sandbox import JOB_MOUNT, run_sandboxed

    t0 = time.perf_counter()
    res = run_sandboxed(_argv(op, JOB_MOUNT), job_dir=job)
    wall = time.perf_counter() - t0
    if not res.ok:
        raise RuntimeError(f"sandboxed worker failed ({res.reason}): {res.stderr[-2000:]}")
    return wall


def measure(op: str, runs: int, parent: Path) -> dict[str, Any]:
    plain: list[float] = []
    boxed: list[float] = []
    for i in range(runs + 1):  # the first pair warms the page cache and is dropped
        order = [(_plain, plain), (_sandboxed, boxed)]
        for fn, into in order if i % 2 else reversed(order):
            job = _job_dir(parent, op)
            try:
                t = fn(job, op)
            finally:
                shutil.rmtree(job, ignore_errors=True)
            if i:
                into.append(t)
    p, b = median(plain), median(boxed)
    return {
        "plain_s": plain,
        "sandboxed_s": boxed,
        "plain_median_ms": round(p * 1000, 1),
        "sandboxed_median_ms": round(b * 1000, 1),
        "overhead_ms": round((b - p) * 1000, 1),
        "ratio": round(b / p, 3),
        "spread_ms": round(statistics.pstdev([t * 1000 for t in boxed]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    from flows.sandbox import sandbox_backend

    backend = sandbox_backend()
    OUT.mkdir(parents=True, exist_ok=True)
    parent = Path(tempfile.mkdtemp(prefix="sandbox-", dir=OUT))
    try:
        results = {"noop": measure("noop", 3 * args.runs, parent)}
        results |= {op: measure(op, args.runs, parent) for op in ("predict", "train")}
    finally:
        shutil.rmtree(parent, ignore_errors=True)
    result = {"backend": backend, "runs": args.runs, **results}
    path = write_result("sandbox", result)
    log(f"wrote {path}")
    print(json.dumps({k: v for k, v in result.items()}, default=str))
    n, p, t = results["noop"], results["predict"], results["train"]
    print(
        f"| sandbox overhead per node run ({backend}, median of {args.runs}) | fixed cost "
        f"(python -c pass) {n['plain_median_ms']:.0f} → {n['sandboxed_median_ms']:.0f} ms "
        f"(+{n['overhead_ms']:.0f} ms); predict "
        f"{p['plain_median_ms']:.0f} → {p['sandboxed_median_ms']:.0f} ms "
        f"(+{p['overhead_ms']:.0f} ms, {p['ratio']:.2f}×); train 2 epochs "
        f"{t['plain_median_ms']:.0f} → {t['sandboxed_median_ms']:.0f} ms "
        f"(+{t['overhead_ms']:.0f} ms, {t['ratio']:.2f}×) | recorded |"
    )


if __name__ == "__main__":
    main()
