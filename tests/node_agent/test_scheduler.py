"""Choosing a node: hardware first (a GPU when asked), then the most input bytes already held;
the reason names both. Real blob servers on 127.0.0.1 with fixed hardware reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from servers import serve_blobs

from artifacts.blobstore import LocalBlobStore
from artifacts.store import ArtifactStore
from node_agent.hardware import Hardware
from node_agent.scheduler import NoNodeError, choose_node, input_blobs

CPU_ONLY = Hardware(cpu_count=8, memory_bytes=16 << 30, gpus=())


def test_prefers_the_node_holding_the_inputs_and_honours_gpu_needs(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "client")
    cid = store.put_arrays({"x": np.random.default_rng(0).normal(size=(300_000, 8))})
    blobs = input_blobs(store, [str(cid)])
    assert str(cid) in blobs
    assert sum(blobs.values()) > 10 << 20  # the chunks, with their sizes

    holder, empty, gpu = (LocalBlobStore(tmp_path / n) for n in ("holder", "empty", "gpu"))
    for blob in store.blobs.iter_cids():
        holder.put(store.blobs.get(blob), cid=blob)
    with (
        serve_blobs(holder, hardware=CPU_ONLY) as a,
        serve_blobs(empty, hardware=CPU_ONLY) as b,
        serve_blobs(gpu) as c,  # the test hardware has one GPU
    ):
        nodes = [("holder", a.url), ("empty", b.url), ("gpu", c.url)]
        chosen = choose_node(nodes, blobs)
        assert chosen.node == "holder"
        assert "holds" in chosen.reason
        assert "100%" in chosen.reason
        needs_gpu = choose_node(nodes, blobs, needs_gpu=True)
        assert needs_gpu.node == "gpu"
        assert "GPU was required" in needs_gpu.reason
        with pytest.raises(NoNodeError, match="needs a GPU"):
            choose_node(nodes[:2], blobs, needs_gpu=True)
        with_dead = choose_node([("down", "http://127.0.0.1:9"), *nodes[:2]], blobs, timeout=0.5)
        assert with_dead.node == "holder"
        assert not with_dead.candidates[0].live
        assert "down not answering" in with_dead.reason
    with pytest.raises(NoNodeError, match="not answering"):
        choose_node([("down", "http://127.0.0.1:9")], blobs, timeout=0.5)


def test_placement_options_need_a_cluster(tmp_path: Path) -> None:
    import subprocess
    import sys

    store = ArtifactStore(tmp_path / "home")
    cid = str(store.put_arrays({"x": np.zeros((4, 2))}))
    for flag in (["--node", "node-1"], ["--gpu"]):
        proc = subprocess.run(
            [sys.executable, "-m", "cidflow", "--home", str(tmp_path / "home"), "train",
             "--dataset", cid, *flag],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1
        assert "need a home on a cluster" in lines[0]
