"""Budget: peak RSS of `cidflow add` of a 4 GiB file <= 600 MB (streaming), whole process.

Peak RSS comes from /usr/bin/time -f %M (max resident set size of the child). Inputs:
a 4 GiB file of random bytes (os.urandom, 64 MiB blocks; stored as a uint8 array) and, unless
--no-npy, a 4 GiB float32 .npy (1048576 x 1024, written in blocks through open_memmap).
Fresh home per file; inputs and homes are deleted afterwards.
"""

from __future__ import annotations

import argparse
import os
import shutil

from _common import BIN, GIB, env_with, fresh_dir, log, run, verdict, write_result

BUDGET = 600 * 10**6  # bytes ("600 MB")
BLOCK = 64 << 20


def random_file(path) -> None:
    with open(path, "wb") as f:
        for _ in range(4 * GIB // BLOCK):
            f.write(os.urandom(BLOCK))


def npy_file(path) -> None:
    import numpy as np

    rows = 1 << 20
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, 1024))
    rng = np.random.default_rng(0)
    step = 16384  # 64 MiB
    for start in range(0, rows, step):
        arr[start : start + step] = rng.standard_normal((step, 1024), dtype=np.float32)
        arr.flush()
    del arr


def measure(name: str, make) -> dict:
    work = fresh_dir(f"rss-{name}")
    src = work / (name + (".npy" if name == "npy" else ".bin"))
    make(src)
    r = run([str(BIN / "cidflow"), "--home", str(work / "home"), "add", str(src)], env=env_with())
    shutil.rmtree(work)
    return {
        "input_bytes": 4 * GIB,
        "peak_rss": r["peak_rss"],
        "seconds": r["seconds"],
        "verdict": verdict(r["peak_rss"] <= BUDGET),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--no-npy", action="store_true")
    args = p.parse_args()
    res = {"random_bytes": measure("random", random_file)}
    log(f"  random: {res['random_bytes']['peak_rss'] / 1e6:.0f} MB")
    if not args.no_npy:
        res["npy_float32"] = measure("npy", npy_file)
        log(f"  npy: {res['npy_float32']['peak_rss'] / 1e6:.0f} MB")
    ok = all(v["verdict"] == "PASS" for v in res.values())
    write_result(
        "bench_rss",
        {
            "what": "peak RSS of cidflow add of a 4 GiB file",
            "budget": "<= 600 MB",
            "results": res,
            "verdict": verdict(ok),
        },
    )
    print(
        "bench_rss: "
        + " | ".join(
            f"{k} {v['peak_rss'] / 1e6:.0f} MB in {v['seconds']:.1f}s {v['verdict']}"
            for k, v in res.items()
        )
        + " (budget <= 600 MB)"
    )


if __name__ == "__main__":
    main()
