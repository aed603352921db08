"""Flows (issue 4): three budgets of `/work/shared/DESIGN.md`, each against a peer in the same run.

(a) rerun vs first run (budget: rerun <= 10 % of the first run's time). Whole process: per
    repetition a fresh home (`key new`, `publish sklearn:digits`, not timed), then
    `cidflow --home H train --dataset demo/digits --model mlp --epochs E --seed S --json` once
    (first run) and again (rerun: the CLI's fast path), and once more with
    `CIDFLOW_NO_FAST_PATH=1` (Prefect's own cache hit, for comparison). In-process, in a fresh
    Python process per repetition: `train_flow(...)` first call vs second call (the first call
    also starts Prefect's ephemeral API), then a first/second call with another seed on the
    already-started API ("warm").
(b) cidflow task overhead vs a plain Prefect `@task` with the same body (budget <= 1.1x). One
    process, Prefect API started by a warm-up flow; per repetition a flow of N `cid_task` calls
    and a flow of N plain `@task` calls (order alternating), distinct parameters so nothing is
    served from a cache; per-task wall time measured around each call inside the flow; median
    per repetition, median over repetitions. Bodies: store a 1 MiB float32 array as an
    artifact and return its CID ("store"); about 1 s of numpy compute ("compute").
(c) infer throughput vs a plain torch loop over the same in-memory data (budget >= 0.8x).
    ROWS x 64 float32 stored as an artifact, an mlp (hidden 128, 10 classes) stored as a
    model artifact; `infer.fn(...)` (the cid_task body with its receipt, no Prefect
    orchestration) inside `runtime(Runtime(...))` vs `for batch in x: model(torch.from_numpy(
    batch)).argmax(1)` under `torch.no_grad()` writing into a preallocated array, same model,
    same batch size, same process, alternating; rows/s, median of RUNS.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from _common import BIN, ROOT, env_with, fresh_dir, log, median, run, verdict, write_result

RERUN_BUDGET = 0.10
OVERHEAD_BUDGET = 1.1
INFER_BUDGET = 0.8
CIDFLOW = str(BIN / "cidflow")
# A loaded machine can take longer than Prefect's default 20 s to start its ephemeral API.
QUIET_PREFECT = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
}


# -- (a) rerun vs first run ---------------------------------------------------------------------


def _fresh_home(name: str, env: dict[str, str]) -> Path:
    work = fresh_dir(name)
    home = work / "home"
    run([CIDFLOW, "--home", str(home), "key", "new"], env=env)
    pub = [CIDFLOW, "--home", str(home), "publish", "sklearn:digits", "--name", "demo/digits",
           "--version", "1.0.0", "--json"]  # fmt: skip
    run(pub, env=env)
    return home


def part_rerun(runs: int, epochs: int, seed: int) -> dict[str, Any]:
    env = env_with()
    env = {k: v for k, v in env.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    env.update(QUIET_PREFECT)
    slow = dict(env, CIDFLOW_NO_FAST_PATH="1")
    args = ["train", "--dataset", "demo/digits", "--model", "mlp", "--epochs", str(epochs),
            "--seed", str(seed), "--json"]  # fmt: skip
    first, fast, prefect_hit = [], [], []
    outputs: list[list[dict[str, Any]]] = []
    for i in range(runs):
        home = _fresh_home(f"flows-train-{i}", env)
        cmd = [CIDFLOW, "--home", str(home), *args]
        r1, r2, r3 = run(cmd, env=env), run(cmd, env=env), run(cmd, env=slow)
        got = [json.loads(r["stdout"].strip().splitlines()[-1]) for r in (r1, r2, r3)]
        assert [g["cached"] for g in got] == [False, True, True], got
        assert got[0]["model"] == got[1]["model"] == got[2]["model"]
        outputs.append(got)
        first.append(r1["seconds"])
        fast.append(r2["seconds"])
        prefect_hit.append(r3["seconds"])
        log(f"  train CLI run {i}: first {r1['seconds']:.2f}s  rerun {r2['seconds']:.2f}s  "
            f"rerun without fast path {r3['seconds']:.2f}s")  # fmt: skip
    inproc = []
    for i in range(runs):
        home = _fresh_home(f"flows-inproc-{i}", env)
        proc = subprocess.run(
            [sys.executable, __file__, "--worker", "inprocess", "--home", str(home),
             "--epochs", str(epochs), "--seed", str(seed)],
            env=env, capture_output=True, text=True, check=True,
        )  # fmt: skip
        inproc.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        log(
            f"  train in-process run {i}: "
            + "  ".join(f"{k} {v:.2f}s" for k, v in inproc[-1].items())
        )
    med = {
        "cli_first_s": median(first),
        "cli_rerun_s": median(fast),
        "cli_rerun_prefect_s": median(prefect_hit),
    }
    for key in inproc[0]:
        med[f"inproc_{key}_s"] = median([r[key] for r in inproc])
    ratio = med["cli_rerun_s"] / med["cli_first_s"]
    return {
        "what": "train rerun vs first run",
        "epochs": epochs,
        "seed": seed,
        "cli_first_seconds": first,
        "cli_rerun_seconds": fast,
        "cli_rerun_prefect_seconds": prefect_hit,
        "inprocess": inproc,
        "medians": med,
        "ratio": ratio,
        "ratio_without_fast_path": med["cli_rerun_prefect_s"] / med["cli_first_s"],
        "ratio_inprocess_cold": med["inproc_second_s"] / med["inproc_first_s"],
        "ratio_inprocess_warm": med["inproc_warm_second_s"] / med["inproc_warm_first_s"],
        "budget": f"<= {RERUN_BUDGET:.0%} of the first run",
        "verdict": verdict(ratio <= RERUN_BUDGET),
    }


def worker_inprocess(home: str, epochs: int, seed: int) -> None:
    os.environ["CIDFLOW_HOME"] = home
    os.environ["PREFECT_HOME"] = str(Path(home) / "prefect")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(Path(home) / "prefect" / "results")
    os.environ["PREFECT_LOGGING_LEVEL"] = "CRITICAL"
    from registry.local import open_registry

    dataset = open_registry(None, Path(home)).resolve("demo/digits").cid
    from flows.pipelines import train_flow

    out: dict[str, float] = {}
    for label, s in (("first", seed), ("second", seed), ("warm_first", seed + 1),
                     ("warm_second", seed + 1)):  # fmt: skip
        t0 = time.perf_counter()
        result = train_flow(dataset=dataset, model="mlp", epochs=epochs, seed=s)
        out[label] = time.perf_counter() - t0
        assert result["cached"] is label.endswith("second"), (label, result)
    print(json.dumps(out))


# -- (b) task overhead --------------------------------------------------------------------------


def _store_body(i: int) -> dict[str, Any]:
    import numpy as np

    from flows.tasks import current_runtime

    x = np.random.default_rng(i).standard_normal((512, 512), dtype=np.float32)  # 1 MiB
    return {"cid": str(current_runtime().store.put_arrays({"x": x}, source="bench"))}


def _compute_body(i: int) -> dict[str, Any]:
    import numpy as np

    a = np.random.default_rng(i).standard_normal((600, 600))
    acc = 0.0
    for _ in range(COMPUTE_LOOPS):
        acc += float(np.linalg.norm(a @ a.T))
    return {"value": acc}


COMPUTE_LOOPS = 400  # a fixed amount of work: about 1 s on the reference machine when idle


def worker_overhead(home: str, tasks: int, runs: int, compute_tasks: int) -> None:
    os.environ["CIDFLOW_HOME"] = home
    os.environ["PREFECT_HOME"] = str(Path(home) / "prefect")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(Path(home) / "prefect" / "results")
    os.environ["PREFECT_LOGGING_LEVEL"] = "CRITICAL"
    from prefect import flow, task

    from flows.tasks import cid_task

    def store_step(i: int) -> dict[str, Any]:
        return _store_body(i)

    def compute_step(i: int) -> dict[str, Any]:
        return _compute_body(i)

    steps = {
        ("store", "cid"): cid_task(store_step, name="bench-store"),
        ("store", "plain"): task(store_step, name="bench-store-plain"),
        ("compute", "cid"): cid_task(compute_step, name="bench-compute"),
        ("compute", "plain"): task(compute_step, name="bench-compute-plain"),
    }

    @flow(name="bench-overhead")
    def many(kind: str, which: str, start: int, n: int) -> list[float]:
        step = steps[(kind, which)]
        times = []
        for i in range(start, start + n):
            t = time.perf_counter()
            step(i)
            times.append(time.perf_counter() - t)
        return times

    many("store", "cid", 10**6, 2)  # warm-up: starts the API, imports, first writes
    many("store", "plain", 10**6, 2)
    out: dict[str, Any] = {"compute_loops": COMPUTE_LOOPS}
    base = 0
    for kind, n in (("store", tasks), ("compute", compute_tasks)):
        per: dict[str, list[float]] = {"cid": [], "plain": []}
        for r in range(runs):
            order = ("cid", "plain") if r % 2 == 0 else ("plain", "cid")
            for which in order:
                times = many(kind, which, base, n)
                base += n  # distinct parameters: nothing is served from a cache
                per[which].append(statistics.median(times))
        out[kind] = per
    print(json.dumps(out))


def part_overhead(runs: int, tasks: int, compute_tasks: int) -> dict[str, Any]:
    env = {k: v for k, v in env_with().items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    env.update(QUIET_PREFECT)
    home = fresh_dir("flows-overhead") / "home"
    run([CIDFLOW, "--home", str(home), "key", "new"], env=env)
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", "overhead", "--home", str(home), "--tasks",
         str(tasks), "--runs", str(runs), "--compute-tasks", str(compute_tasks)],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    res: dict[str, Any] = {"what": "cid_task vs plain @task, same body", "raw": got}
    ok = True
    for kind in ("store", "compute"):
        c, p = median(got[kind]["cid"]), median(got[kind]["plain"])
        res[kind] = {"cid_task_s": c, "plain_task_s": p, "ratio": c / p, "extra_s": c - p}
        ok = ok and c / p <= OVERHEAD_BUDGET
        log(f"  {kind}: cid_task {c * 1000:.1f} ms  plain {p * 1000:.1f} ms  {c / p:.2f}x")
    res["budget"] = f"<= {OVERHEAD_BUDGET}x"
    res["verdict"] = verdict(ok)
    return res


# -- (c) infer throughput -----------------------------------------------------------------------


def worker_infer(home: str, rows: int, runs: int, batch_size: int, hidden: list[int]) -> None:
    import numpy as np
    import torch

    from artifacts.store import ArtifactStore
    from flows.pipelines import MODEL_ATTR, infer
    from flows.tasks import Runtime, runtime
    from flows.zoo import build_model
    from registry.identity import Identity

    store = ArtifactStore(home)
    x = np.random.default_rng(0).standard_normal((rows, 64), dtype=np.float32)
    t0 = time.perf_counter()
    data = str(store.put_arrays({"x": x}, source="bench"))
    put_s = time.perf_counter() - t0
    kwargs = {"hidden": hidden}
    spec = {"model": "mlp", "model_kwargs": kwargs, "input_shape": [64], "n_classes": 10,
            "seed": 0, "dataset": data}  # fmt: skip
    net = build_model("mlp", input_shape=(64,), n_classes=10, seed=0, **kwargs)
    model = str(store.put_state_dict(net.state_dict(), attrs={MODEL_ATTR: spec}, source="bench"))
    net.eval()
    rt = Runtime(store, Identity.load_or_create(store.home, "node"))

    def plain() -> np.ndarray:
        out = np.empty(rows, dtype=np.int64)
        with torch.no_grad():
            for s in range(0, rows, batch_size):
                out[s : s + batch_size] = net(torch.from_numpy(x[s : s + batch_size])).argmax(1)
        return out

    def ours() -> str:
        with runtime(rt):
            return str(infer.fn(model=model, dataset=data, batch_size=batch_size)["predictions"])

    expect = plain()
    got = store.open_artifact(ours()).to_numpy()["predictions"]
    assert np.array_equal(got, expect)
    times: dict[str, list[float]] = {"cidflow": [], "plain": []}
    for r in range(runs):
        for which in ("cidflow", "plain") if r % 2 == 0 else ("plain", "cidflow"):
            t = time.perf_counter()
            ours() if which == "cidflow" else plain()
            times[which].append(time.perf_counter() - t)
    print(json.dumps({"times": times, "put_s": put_s, "threads": torch.get_num_threads()}))


def part_infer(runs: int, rows: int, batch_size: int, hidden: str) -> dict[str, Any]:
    env = {k: v for k, v in env_with().items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    home = fresh_dir("flows-infer") / "home"
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", "infer", "--home", str(home), "--rows",
         str(rows), "--runs", str(runs), "--batch-size", str(batch_size), "--hidden", hidden],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        raise RuntimeError(proc.stderr)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    c, p = median(got["times"]["cidflow"]), median(got["times"]["plain"])
    ratio = p / c  # throughput ratio = time ratio inverted
    log(
        f"  infer (mlp hidden {hidden}, {rows} rows): cidflow {rows / c:,.0f} rows/s  "
        f"plain {rows / p:,.0f} rows/s  {ratio:.2f}x"
    )
    return {
        "what": "infer throughput vs a plain torch loop over in-memory numpy",
        "model": f"mlp hidden {hidden}",
        "rows": rows,
        "features": 64,
        "batch_size": batch_size,
        "raw": got,
        "cidflow_s": c,
        "plain_s": p,
        "cidflow_rows_per_s": rows / c,
        "plain_rows_per_s": rows / p,
        "ratio": ratio,
        "budget": f">= {INFER_BUDGET}x",
        "verdict": verdict(ratio >= INFER_BUDGET),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--parts", default="rerun,overhead,infer")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", type=int, default=20, help="store tasks per flow")
    p.add_argument("--compute-tasks", type=int, default=5, help="~1 s tasks per flow")
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--hidden", default="128", help="mlp widths of the infer model")
    p.add_argument(
        "--heavy-rows",
        type=int,
        default=200_000,
        help="rows for the second infer model (mlp hidden 256,256)",
    )
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--home", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker == "inprocess":
        return worker_inprocess(args.home, args.epochs, args.seed)
    if args.worker == "overhead":
        return worker_overhead(args.home, args.tasks, args.runs, args.compute_tasks)
    if args.worker == "infer":
        hidden = [int(h) for h in args.hidden.split(",")]
        return worker_infer(args.home, args.rows, args.runs, args.batch_size, hidden)
    parts = args.parts.split(",")
    result: dict[str, Any] = {"runs": args.runs}
    summary = []
    if "rerun" in parts:
        t0 = time.perf_counter()
        result["rerun"] = r = part_rerun(args.runs, args.epochs, args.seed)
        m = r["medians"]
        summary.append(f"rerun {m['cli_rerun_s']:.2f}s / first {m['cli_first_s']:.2f}s = "
                       f"{r['ratio']:.1%} (<= 10%) {r['verdict']}")  # fmt: skip
        log(f"  (rerun part {time.perf_counter() - t0:.0f}s)")
    if "overhead" in parts:
        t0 = time.perf_counter()
        result["overhead"] = r = part_overhead(max(args.runs, 5), args.tasks, args.compute_tasks)
        summary.append(f"overhead store {r['store']['ratio']:.2f}x compute "
                       f"{r['compute']['ratio']:.2f}x (<= 1.1x) {r['verdict']}")  # fmt: skip
        log(f"  (overhead part {time.perf_counter() - t0:.0f}s)")
    if "infer" in parts:
        t0 = time.perf_counter()
        result["infer"] = r = part_infer(max(args.runs, 5), args.rows, args.batch_size,
                                         args.hidden)  # fmt: skip
        summary.append(f"infer {r['ratio']:.2f}x of plain torch (>= 0.8x) {r['verdict']}")
        if args.heavy_rows:
            result["infer_heavy"] = r = part_infer(
                max(args.runs, 5), args.heavy_rows, args.batch_size, "256,256"
            )
            summary.append(f"infer (mlp 256,256) {r['ratio']:.2f}x {r['verdict']}")
        log(f"  (infer part {time.perf_counter() - t0:.0f}s)")
    write_result("bench_flows", result)
    print("bench_flows: " + "; ".join(summary))
    return None


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
