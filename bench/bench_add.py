"""Budget: `cidflow add` of a 1 GiB float32 .npy is >= 2x faster than `dvc add`, whole process.

Each run gets a fresh folder holding its own copy of big.npy (copied before the clock starts,
so the file is in the page cache for both tools; nothing is dropped from the page cache;
`sync` runs before each timed process so earlier writes are not flushed on its clock), a
fresh cidflow home, and for DVC a fresh `git init` + `dvc init` repository (default cache
link type: reflink,copy -> a full copy on ext4). Runs alternate cidflow / dvc.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess

from _common import BIN, big_npy, env_with, fresh_dir, log, median, run, verdict, write_result

BUDGET = 2.0


def one_cidflow(src, i: int) -> dict:
    work = fresh_dir(f"add-cidflow-{i}")
    shutil.copyfile(src, work / "big.npy")
    r = run(
        [str(BIN / "cidflow"), "--home", str(work / "home"), "add", "big.npy"],
        cwd=work,
        env=env_with(),
    )
    shutil.rmtree(work)
    return r


def one_dvc(src, i: int) -> dict:
    work = fresh_dir(f"add-dvc-{i}")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=work, check=True, env=env_with())
    shutil.copyfile(src, work / "big.npy")
    r = run([str(BIN / "dvc"), "add", "-q", "big.npy"], cwd=work, env=env_with())
    shutil.rmtree(work)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    args = p.parse_args()
    src = big_npy()
    cid, dvc = [], []
    for i in range(args.runs):
        cid.append(one_cidflow(src, i))
        log(f"  cidflow add run {i}: {cid[-1]['seconds']:.2f}s")
        dvc.append(one_dvc(src, i))
        log(f"  dvc add run {i}: {dvc[-1]['seconds']:.2f}s")
    c = median([r["seconds"] for r in cid])
    d = median([r["seconds"] for r in dvc])
    ratio = d / c
    ok = ratio >= BUDGET
    write_result(
        "bench_add",
        {
            "what": "add a 1 GiB float32 .npy (whole process)",
            "peer": "dvc add",
            "runs": args.runs,
            "cidflow_seconds": [r["seconds"] for r in cid],
            "dvc_seconds": [r["seconds"] for r in dvc],
            "cidflow_peak_rss": [r["peak_rss"] for r in cid],
            "dvc_peak_rss": [r["peak_rss"] for r in dvc],
            "cidflow_median_s": c,
            "dvc_median_s": d,
            "speedup": ratio,
            "budget": f">= {BUDGET}x faster",
            "verdict": verdict(ok),
            "page_cache": "not dropped; file freshly copied (hot) before each timed run",
        },
    )
    print(
        f"bench_add: cidflow {c:.2f}s  dvc {d:.2f}s  speedup {ratio:.2f}x "
        f"(budget >= {BUDGET}x) {verdict(ok)}"
    )


if __name__ == "__main__":
    main()
