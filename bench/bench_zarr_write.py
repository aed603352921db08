"""Budget: writing an array through the CAS zarr store reaches >= 0.85x the throughput of
zarr's LocalStore, same codec.

The array is the 1 GiB float32 big.npy, shape (262144, 1024), chunks (1024, 1024) = 4 MiB,
filters none; compressors none and zstd level 3 (two variants). Each write runs in its own
subprocess with a fresh folder: ``zarr.create_array`` + ``a[:] = data`` (+ ``commit()`` for the
CAS store) is timed inside the child (loading the .npy is not); the whole-process time is
recorded too, and (diagnostic) the time until a following ``os.sync()`` returns, for both.
Diagnostics, not the budget: ``cas-nofsync`` (LocalBlobStore(fsync=False)) and ``cas-blake3``
(LocalBlobStore(hash="blake3"), needs the blake3 package).
"""

from __future__ import annotations

import argparse
import json
import sys

from _common import BIN, GIB, big_npy, env_with, fresh_dir, log, median, run, verdict, write_result

BUDGET = 0.85

CHILD = r"""
import json, sys, time
import numpy as np, zarr
from zarr.codecs import ZstdCodec
store_kind, codec, folder, src = sys.argv[1:5]
data = np.load(src)
compressors = None if codec == "none" else [ZstdCodec(level=3, checksum=False)]
from artifacts import CASStore, LocalBlobStore  # imported before the clock starts
t0 = time.perf_counter()
if store_kind == "local":
    store = zarr.storage.LocalStore(folder)
else:
    store = CASStore(LocalBlobStore(folder, fsync=(store_kind != "cas-nofsync"),
                                    hash="blake3" if store_kind == "cas-blake3" else "sha2-256"))
a = zarr.create_array(store, name="x", shape=data.shape, chunks=(1024, 1024), dtype=data.dtype,
                      compressors=compressors, filters=None, fill_value=0)
a[:] = data
root = store.commit("arrays", {}) if store_kind != "local" else None
t1 = time.perf_counter()
import os
os.sync()  # diagnostic: time until the data is on disk, for both stores
t2 = time.perf_counter()
print(json.dumps({"write_seconds": t1 - t0, "durable_seconds": t2 - t0,
                  "root": str(root) if root else None}))
"""


def one(store_kind: str, codec: str, src, i: int) -> dict:
    work = fresh_dir(f"zarr-{store_kind}-{codec}-{i}")
    r = run(
        [str(BIN / "python"), "-c", CHILD, store_kind, codec, str(work / "store"), str(src)],
        env=env_with(),
    )
    child = json.loads(r["stdout"].strip().splitlines()[-1])
    from _common import tree_bytes

    stored = tree_bytes(work / "store")["apparent"]
    import shutil

    shutil.rmtree(work)
    return {
        "process_seconds": r["seconds"],
        "peak_rss": r["peak_rss"],
        "write_seconds": child["write_seconds"],
        "durable_seconds": child["durable_seconds"],
        "stored_bytes": stored,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument(
        "--no-diagnostic", action="store_true", help="skip the cas-nofsync and cas-blake3 variants"
    )
    args = p.parse_args()
    src = big_npy()
    stores = ["local", "cas"] + ([] if args.no_diagnostic else ["cas-nofsync", "cas-blake3"])
    results: dict = {}
    lines = []
    all_ok = True
    for codec in ("none", "zstd3"):
        runs: dict[str, list[dict]] = {s: [] for s in stores}
        for i in range(args.runs):
            for s in stores:
                runs[s].append(one(s, codec, src, i))
                log(f"  {codec} {s} run {i}: {runs[s][-1]['write_seconds']:.2f}s")
        med = {s: median([r["write_seconds"] for r in runs[s]]) for s in stores}
        mbps = {s: GIB / med[s] / 1e6 for s in stores}
        dmed = {s: median([r["durable_seconds"] for r in runs[s]]) for s in stores}
        ratio = med["local"] / med["cas"]
        ok = ratio >= BUDGET
        all_ok &= ok
        results[codec] = {
            "runs": runs,
            "median_write_seconds": med,
            "throughput_MBps": mbps,
            "ratio_cas_over_local": ratio,
            "median_durable_seconds": dmed,
            "durable_ratio_cas_over_local": dmed["local"] / dmed["cas"],
            "verdict": verdict(ok),
        }
        for diag in ("cas-nofsync", "cas-blake3"):
            if diag in med:
                results[codec][f"ratio_{diag}_over_local"] = med["local"] / med[diag]
        lines.append(
            f"{codec}: local {mbps['local']:.0f} MB/s cas {mbps['cas']:.0f} MB/s "
            f"ratio {ratio:.2f} {verdict(ok)} (durable ratio {dmed['local'] / dmed['cas']:.2f})"
        )
    write_result(
        "bench_zarr_write",
        {
            "what": "zarr write of 1 GiB float32 (262144x1024, chunks 1024x1024) + commit",
            "peer": "zarr.storage.LocalStore",
            "budget": f">= {BUDGET}x throughput",
            "variants": results,
            "verdict": verdict(all_ok),
        },
    )
    print("bench_zarr_write: " + " | ".join(lines) + f" (budget >= {BUDGET}x)")
    sys.exit(0)


if __name__ == "__main__":
    main()
