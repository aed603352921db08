"""Why the CAS zarr store writes slower than LocalStore: the same 1 GiB write (codec none,
chunks 1024x1024) in one process into a ladder of stores, each step adding one cost:

  zarr MemoryStore                  zarr's own encode/dispatch overhead
  CASStore(MemoryBlobStore)         + sha2-256 of every chunk, CAS bookkeeping, commit
  CASStore(LocalBlobStore, no fsync)+ one temp file + rename per chunk
  CASStore(LocalBlobStore)          + fsync of every chunk (the default)
  zarr LocalStore                   the peer

plus a plain loop of 256 x 4 MiB blob puts without zarr. Diagnostic only (no budget);
median of --runs, `sync` before every step.

    .venv/bin/python bench/profile_zarr_write.py [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

from _common import big_npy, fresh_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    import numpy as np
    import zarr

    from artifacts import CASStore, LocalBlobStore, MemoryBlobStore

    data = np.load(big_npy())

    def cas(fsync: bool | None):
        def make(folder):
            blobs = MemoryBlobStore() if fsync is None else LocalBlobStore(folder, fsync=fsync)
            return CASStore(blobs)

        return make

    ladder = {
        "zarr MemoryStore": lambda folder: zarr.storage.MemoryStore(),
        "CAS(MemoryBlobStore)": cas(None),
        "CAS(LocalBlobStore, fsync=False)": cas(False),
        "CAS(LocalBlobStore, fsync=True)": cas(True),
        "zarr LocalStore": lambda folder: zarr.storage.LocalStore(folder),
    }
    times: dict[str, list[float]] = {k: [] for k in ladder}
    for _ in range(args.runs):
        for name, make in ladder.items():
            folder = fresh_dir("profile-zarr")
            os.sync()
            t0 = time.perf_counter()
            store = make(str(folder / "s"))
            a = zarr.create_array(
                store,
                name="x",
                shape=data.shape,
                chunks=(1024, 1024),
                dtype=data.dtype,
                compressors=None,
                filters=None,
                fill_value=0,
            )
            a[:] = data
            if isinstance(store, CASStore):
                store.commit("arrays", {})
            times[name].append(time.perf_counter() - t0)
            del store, a
            shutil.rmtree(folder)
    for fsync in (False, True):
        loop = []
        for _ in range(args.runs):
            folder = fresh_dir("profile-put")
            blobs = LocalBlobStore(folder, fsync=fsync)
            os.sync()
            t0 = time.perf_counter()
            for i in range(256):
                blobs.put(memoryview(data[i * 1024 : (i + 1) * 1024]).cast("B"))
            blobs.flush()
            loop.append(time.perf_counter() - t0)
            shutil.rmtree(folder)
        times[f"256 x blobs.put(4 MiB) serial, fsync={fsync}"] = loop
    for name, ts in times.items():
        med = statistics.median(ts)
        runs = [round(t, 2) for t in ts]
        print(f"{name:45s} {med:6.2f}s  {data.nbytes / med / 1e6:7.0f} MB/s   runs {runs}")


if __name__ == "__main__":
    main()
