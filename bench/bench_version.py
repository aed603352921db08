"""Budget: a new version after changing 1% of a 1 GiB dataset stores <= 1/50 of the new
bytes DVC stores for it.

The change: a contiguous 1% of the rows of big.npy (2622 of 262144 rows starting at row
100000, deliberately not chunk-aligned) get new values. New bytes = growth of the blob folder
(HOME/blobs, resp. .dvc/cache) between the two versions, apparent size (st_size) and disk
usage (st_blocks). Three ways:

  (a) python: base = ArtifactStore.put_arrays({"x": arr});
              ArtifactStore.update(base, arrays={"x": modified})
  (b) cli:    cidflow add data.npy; overwrite data.npy with the modified file; cidflow add data.npy
  dvc:        dvc add data.npy;     overwrite data.npy with the modified file; dvc add data.npy

Byte counts are deterministic, so one run each (times are recorded for information).
"""

from __future__ import annotations

import os
import shutil
import subprocess

from _common import (
    BIN,
    DATA,
    big_npy,
    env_with,
    fresh_dir,
    log,
    run,
    tree_bytes,
    verdict,
    write_result,
)

BUDGET = 50  # DVC new bytes / our new bytes must be >= this
ROW0, NROWS = 100_000, 2622  # 1% of 262144 rows


def modified_npy(src) -> os.PathLike:
    path = DATA / "big_mod.npy"
    if not path.exists():
        import numpy as np

        arr = np.load(src)
        arr[ROW0 : ROW0 + NROWS] = np.random.default_rng(1).standard_normal(
            (NROWS, arr.shape[1]), dtype=np.float32
        )
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, arr)
        os.replace(tmp, path)
    return path


PY_BASE = r"""
import sys, numpy as np
from artifacts import ArtifactStore
print(ArtifactStore(sys.argv[1]).put_arrays({"x": np.load(sys.argv[2])}))
"""
PY_UPDATE = r"""
import sys, numpy as np
from artifacts import ArtifactStore
print(ArtifactStore(sys.argv[1]).update(sys.argv[2], arrays={"x": np.load(sys.argv[3])}))
"""


def delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in before}


def via_python(src, mod) -> dict:
    work = fresh_dir("version-python")
    home = work / "home"
    py = str(BIN / "python")
    r1 = run([py, "-c", PY_BASE, str(home), str(src)], env=env_with())
    base = r1["stdout"].strip().splitlines()[-1]
    before = tree_bytes(home / "blobs")
    r2 = run([py, "-c", PY_UPDATE, str(home), base, str(mod)], env=env_with())
    after = tree_bytes(home / "blobs")
    shutil.rmtree(work)
    return outcome(before, after, r1, r2)


def outcome(before: dict, after: dict, r1: dict, r2: dict) -> dict:
    return {
        "first": before,
        "new": delta(before, after),
        "first_seconds": r1["seconds"],
        "update_seconds": r2["seconds"],
    }


def replace_with(path, new) -> None:
    os.chmod(path, 0o644) if os.path.exists(path) else None
    os.remove(path)
    shutil.copyfile(new, path)


def via_cli(src, mod) -> dict:
    work = fresh_dir("version-cli")
    home = work / "home"
    shutil.copyfile(src, work / "data.npy")
    cmd = [str(BIN / "cidflow"), "--home", str(home), "add", "data.npy"]
    r1 = run(cmd, cwd=work, env=env_with())
    before = tree_bytes(home / "blobs")
    replace_with(work / "data.npy", mod)
    r2 = run(cmd, cwd=work, env=env_with())
    after = tree_bytes(home / "blobs")
    shutil.rmtree(work)
    return outcome(before, after, r1, r2)


def via_dvc(src, mod) -> dict:
    work = fresh_dir("version-dvc")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=work, check=True, env=env_with())
    shutil.copyfile(src, work / "data.npy")
    cmd = [str(BIN / "dvc"), "add", "-q", "data.npy"]
    r1 = run(cmd, cwd=work, env=env_with())
    before = tree_bytes(work / ".dvc" / "cache")
    replace_with(work / "data.npy", mod)
    r2 = run(cmd, cwd=work, env=env_with())
    after = tree_bytes(work / ".dvc" / "cache")
    shutil.rmtree(work)
    return {
        "first": before,
        "new": delta(before, after),
        "first_seconds": r1["seconds"],
        "update_seconds": r2["seconds"],
    }


def main() -> None:
    src = big_npy()
    mod = modified_npy(src)
    res = {}
    for name, fn in (("python_update", via_python), ("cli_readd", via_cli), ("dvc", via_dvc)):
        res[name] = fn(src, mod)
        log(f"  {name}: new {res[name]['new']['apparent'] / 2**20:.1f} MiB")
    dvc_new = res["dvc"]["new"]["apparent"]
    summary = []
    ok_all = True
    for name in ("python_update", "cli_readd"):
        ours = res[name]["new"]["apparent"]
        ratio = dvc_new / ours if ours else float("inf")
        ok = ratio >= BUDGET
        ok_all &= ok
        res[name]["dvc_over_ours"] = ratio
        res[name]["verdict"] = verdict(ok)
        summary.append(f"{name} {ours / 2**20:.1f} MiB (1/{ratio:.0f} of dvc) {verdict(ok)}")
    os.remove(mod)
    write_result(
        "bench_version",
        {
            "what": f"new bytes for a new version after changing rows {ROW0}:{ROW0 + NROWS} "
            "(1%) of the 1 GiB float32 array",
            "peer": "dvc add of the modified file",
            "budget": f"<= 1/{BUDGET} of DVC's new bytes",
            "results": res,
            "verdict": verdict(ok_all),
        },
    )
    print(f"bench_version: dvc {dvc_new / 2**20:.1f} MiB | " + " | ".join(summary))


if __name__ == "__main__":
    main()
