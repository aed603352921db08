"""Node agents over 127.0.0.1 (issue 5).

1. Blob GET/PUT throughput: 64 blobs of 4 MiB (random) through ``HTTPBlobStore`` against one
   node agent process (``cidflow node start``), against writing (with fsync, as the node does)
   and reading the same 4 MiB files locally in the same process. Ratio = HTTP MB/s / local MB/s.
2. ``cidflow add`` of a 256 MiB file to a 3-node cluster with r=2 (``cluster up``) against a
   local-only add (whole process, median of ``--runs``).
3. ``cidflow store repair`` after killing one node of that cluster (which held about 2/3 of
   the blobs' copies): the time to restore r=2 on the two survivors.

Everything runs on one machine, so the nodes share its disk and 2 cores with the client.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _common import BIN, env_with, fresh_dir, log, median, run, write_result

BLOB = 4 << 20
COUNT = 64


def _wait(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer")


def blob_throughput(runs: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from artifacts.blobstore.http import HTTPBlobStore
    from artifacts.cid import compute_cid

    work = fresh_dir("cluster-blobs")
    port = 18000 + os.getpid() % 1000
    node_home = work / "node"
    proc = subprocess.Popen(
        [str(BIN / "cidflow"), "node", "start", "--name", "bench", "--home", str(node_home),
         "--port", str(port)],
        env=env_with(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(f"http://127.0.0.1:{port}/v1/health")
        token = (node_home / "token").read_text().strip()
        payloads = [os.urandom(BLOB) for _ in range(COUNT)]
        cids = [compute_cid(p) for p in payloads]
        mb = COUNT * BLOB / 1e6
        put, get, wloc, rloc = [], [], [], []
        for i in range(runs):
            for c in cids:  # a fresh node store each run: delete what the last run stored
                with HTTPBlobStore(f"http://127.0.0.1:{port}", token=token) as s:
                    s.delete(c)
            with HTTPBlobStore(f"http://127.0.0.1:{port}", token=token, timeout=60) as s:
                t = time.perf_counter()
                for p, c in zip(payloads, cids, strict=True):
                    s.put(p, cid=c)
                put.append(mb / (time.perf_counter() - t))
                t = time.perf_counter()
                for c in cids:
                    s.get(c)
                get.append(mb / (time.perf_counter() - t))
            local = work / f"local-{i}"
            local.mkdir()
            t = time.perf_counter()
            for p, c in zip(payloads, cids, strict=True):
                with open(local / str(c), "wb") as f:
                    f.write(p)
                    f.flush()
                    os.fsync(f.fileno())
            wloc.append(mb / (time.perf_counter() - t))
            t = time.perf_counter()
            for c in cids:
                (local / str(c)).read_bytes()
            rloc.append(mb / (time.perf_counter() - t))
            log(f"  blobs run {i}: PUT {put[-1]:.0f} MB/s (local write {wloc[-1]:.0f}), "
                f"GET {get[-1]:.0f} MB/s (local read {rloc[-1]:.0f})")  # fmt: skip
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    return {
        "put_mb_s": median(put), "get_mb_s": median(get),
        "local_write_mb_s": median(wloc), "local_read_mb_s": median(rloc),
        "put_vs_local_write": median(put) / median(wloc),
        "get_vs_local_read": median(get) / median(rloc),
        "runs": runs, "blob_bytes": BLOB, "blobs": COUNT,
    }  # fmt: skip


def cluster_add_and_repair(runs: int) -> dict:
    work = fresh_dir("cluster-add")
    data = work / "data.bin"
    data.write_bytes(os.urandom(256 << 20))
    cl = work / "cluster"
    up = run([str(BIN / "cidflow"), "cluster", "up", "--nodes", "3", "--home", str(cl), "--json"],
             env=env_with())  # fmt: skip
    info = json.loads(up["stdout"])
    try:
        cluster_s, local_s = [], []
        for i in range(runs):
            r = run([str(BIN / "cidflow"), "--home", str(cl), "add", str(data), "--json"],
                    env=env_with())  # fmt: skip
            cluster_s.append(r["seconds"])
            home = work / f"local-{i}"
            r = run([str(BIN / "cidflow"), "--home", str(home), "add", str(data), "--json"],
                    env=env_with())  # fmt: skip
            local_s.append(r["seconds"])
            log(f"  add run {i}: cluster {cluster_s[-1]:.2f}s  local {local_s[-1]:.2f}s")
            if i + 1 < runs:  # next run stores everything again: new bytes, same size
                data.write_bytes(os.urandom(256 << 20))
        victim = info["nodes"][0]
        held = sum(f.stat().st_size for f in (Path(victim["home"]) / "blobs").rglob("*")
                   if f.is_file())  # fmt: skip
        os.killpg(victim["pid"], signal.SIGKILL)
        time.sleep(1)
        rep = run([str(BIN / "cidflow"), "--home", str(cl), "store", "repair", "--json"],
                  env=env_with(), check=False)  # fmt: skip
        report = json.loads(rep["stdout"]) if rep["stdout"].strip() else {}
    finally:
        run([str(BIN / "cidflow"), "cluster", "down", "--home", str(cl)], env=env_with(),
            check=False)  # fmt: skip
    return {
        "add_cluster_s": cluster_s, "add_local_s": local_s,
        "add_cluster_median_s": median(cluster_s), "add_local_median_s": median(local_s),
        "cluster_vs_local_time": median(cluster_s) / median(local_s),
        "repair_s": rep["seconds"], "repair_ok": report.get("ok"),
        "repair_copied": report.get("copied"), "lost_node_bytes": held,
        "repair_mb_s": held / 1e6 / rep["seconds"] if rep["seconds"] else None,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    blobs = blob_throughput(args.runs)
    add = cluster_add_and_repair(args.runs)
    res = {"what": "node agents on 127.0.0.1", **blobs, **add}
    write_result("bench_cluster", res)
    print(
        f"bench_cluster: PUT {blobs['put_mb_s']:.0f} MB/s = {blobs['put_vs_local_write']:.2f}x "
        f"local write; GET {blobs['get_mb_s']:.0f} MB/s = {blobs['get_vs_local_read']:.2f}x "
        f"local read; add 256 MiB r=2 on 3 nodes {add['add_cluster_median_s']:.2f}s vs local "
        f"{add['add_local_median_s']:.2f}s ({add['cluster_vs_local_time']:.2f}x the time); "
        f"repair after losing {add['lost_node_bytes'] / 2**20:.0f} MiB node: "
        f"{add['repair_s']:.2f}s (ok={add['repair_ok']})"
    )


if __name__ == "__main__":
    main()
