"""cid_task end to end: real Prefect flow runs in subprocesses over a real ArtifactStore —
receipts for each execution, a cached rerun that does not run, and the lineage graph."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts.store import ArtifactStore
from flows.errors import ReceiptError
from flows.lineage import lineage, to_dot
from flows.receipts import load_receipt

FLOW = """
import json, sys
import numpy as np
from prefect import flow
from flows.tasks import cid_task, current_runtime

@cid_task
def make_data(n: int) -> dict:
    with open(sys.argv[1], "a") as f:
        f.write("make\\n")
    store = current_runtime().store
    return {"dataset": str(store.put_arrays({"x": np.arange(n, dtype="f4")}))}

@cid_task
def scale(dataset: str, factor: float) -> dict:
    with open(sys.argv[1], "a") as f:
        f.write("scale\\n")
    store = current_runtime().store
    x = store.open_artifact(dataset).to_numpy()["x"]
    return {"scaled": str(store.put_arrays({"x": x * factor})), "total": float((x * factor).sum())}

@flow
def pipeline(n: int, factor: float) -> dict:
    data = make_data(n=n)
    return {"data": data, "scaled": scale(dataset=data["dataset"], factor=factor)}

print(json.dumps(pipeline(int(sys.argv[2]), float(sys.argv[3]))))
"""


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_tasks_sign_receipts_cache_and_trace_lineage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = dict(os.environ)
    env.update(
        CIDFLOW_HOME=str(home),
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_LOCAL_STORAGE_PATH=str(tmp_path / "results"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    script = tmp_path / "pipeline.py"
    script.write_text(FLOW)
    marker = tmp_path / "ran.txt"

    def run(n: int, factor: float) -> dict[str, dict[str, object]]:
        proc = subprocess.run(
            [sys.executable, str(script), str(marker), str(n), str(factor)],
            capture_output=True, text=True, env=env, timeout=240,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result: dict[str, dict[str, object]] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    first = run(10, 2.0)
    assert first["scaled"]["total"] == 90.0
    assert marker.read_text().split() == ["make", "scale"]
    again = run(10, 2.0)
    assert again == first  # served from the cache, receipts included
    assert marker.read_text().split() == ["make", "scale"]
    other = run(10, 3.0)  # only the changed step runs
    assert marker.read_text().split() == ["make", "scale", "scale"]
    assert other["data"] == first["data"]

    store = ArtifactStore(home)
    receipt = load_receipt(store, str(first["scaled"]["receipt"]))
    assert receipt.task == "scale"
    assert receipt.inputs == [first["data"]["dataset"]]
    assert receipt.outputs == [first["scaled"]["scaled"]]
    assert receipt.body["parameters"] == {"dataset": first["data"]["dataset"], "factor": 2.0}

    tree = lineage(store, str(first["scaled"]["scaled"]))
    run_ = tree["produced_by"]
    assert run_["task"] == "scale"
    source = run_["inputs"][0]
    assert source["cid"] == first["data"]["dataset"]
    assert source["produced_by"]["task"] == "make_data"
    assert source["produced_by"]["parameters"] == {"n": 10}
    dot = to_dot(tree)
    assert dot.count("shape=ellipse") == 2
    assert f'"{first["data"]["dataset"]}" -> "{run_["receipt"]}"' in dot

    cli = [sys.executable, "-m", "cidflow", "--home", str(home), "lineage"]
    out = subprocess.run([*cli, str(first["scaled"]["scaled"]), "--json"], capture_output=True,
                         text=True, check=True, env=env).stdout  # fmt: skip
    assert json.loads(out) == tree
    out = subprocess.run([*cli, str(first["scaled"]["scaled"]), "--dot"], capture_output=True,
                         text=True, check=True, env=env).stdout  # fmt: skip
    assert out == dot
    out = subprocess.run([*cli, str(first["scaled"]["scaled"])], capture_output=True,
                         text=True, check=True, env=env).stdout  # fmt: skip
    assert "make_data" in out
    assert "scale" in out

    # a receipt edited on disk is named, not followed
    path = store.blobs.path_of(run_["receipt"])  # type: ignore[attr-defined]
    data = path.read_bytes().replace(b'"factor":2.0', b'"factor":9.0')
    path.chmod(0o644)
    path.write_bytes(data)
    with pytest.raises((ReceiptError, OSError), match=run_["receipt"]):
        lineage(store, str(first["scaled"]["scaled"]))
