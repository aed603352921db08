"""A flow process killed (SIGKILL) in the middle of a step: nothing half-published, the store
intact, and the rerun resumes from the cached steps (train and evaluate do not run again)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from artifacts.store import ArtifactStore
from flows.datasets import put_dataset
from flows.lineage import receipt_index
from registry.errors import RegistryError
from registry.identity import Identity
from registry.local import open_registry

FLOW = """
import json, sys, time, pathlib
import numpy as np
from prefect import flow
from flows.pipelines import evaluate, train
from flows.tasks import cid_task, current_runtime
from registry.identity import Identity
from registry.local import open_registry
from registry.publish import publish

marker, dataset, pause = pathlib.Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])

@cid_task
def report(model: str, accuracy: float) -> dict:
    marker.write_text("report started")
    time.sleep(pause)  # the first run is killed here
    store = current_runtime().store
    return {"report": str(store.put_arrays({"accuracy": np.array([accuracy])}))}

@flow
def job(dataset: str) -> dict:
    states = {}
    t = train(dataset=dataset, model="logreg", epochs=2, seed=0, return_state=True)
    states["train"], trained = t.name, t.result()
    e = evaluate(model=trained["model"], dataset=dataset, return_state=True)
    states["evaluate"], evaluated = e.name, e.result()
    r = report(model=trained["model"], accuracy=evaluated["metrics"]["accuracy"],
               return_state=True)
    states["report"] = r.name
    rt = current_runtime()
    publish(rt.store, open_registry(None, rt.store.home), Identity.load(rt.store.home),
            trained["model"], name="demo/model", version="1.0.0", receipt=trained["receipt"])
    return {"states": states, "model": trained["model"], "receipt": trained["receipt"]}

print(json.dumps(job(dataset)))
"""


def _start(script: Path, env: dict[str, str], marker: Path, dataset: str, pause: float) -> Any:
    return subprocess.Popen(
        [sys.executable, str(script), str(marker), dataset, str(pause)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own group: the kill takes Prefect's temporary server too
    )  # fmt: skip


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_killed_flow_publishes_nothing_and_the_rerun_resumes_from_cache(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = ArtifactStore(home)
    Identity.create(home)
    dataset = str(put_dataset(store, "sklearn:digits"))
    script = tmp_path / "job.py"
    script.write_text(FLOW)
    marker = tmp_path / "marker"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    env["CIDFLOW_HOME"] = str(home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"

    proc = _start(script, env, marker, dataset, pause=600)
    deadline = time.monotonic() + 240
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the flow never reached the report step"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # in the middle of the third step
    proc.wait(timeout=30)
    assert proc.returncode == -9

    with pytest.raises(RegistryError):
        open_registry(None, home).resolve("demo/model@1.0.0")
    assert store.verify().ok
    trained = [r for rs in receipt_index(store).values() for r in rs if r.body["task"] == "train"]
    assert len(trained) == 1  # train finished (and was signed) before the kill

    marker.unlink()
    again = _start(script, env, marker, dataset, pause=0)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    result = json.loads(out.strip().splitlines()[-1])
    assert result["states"] == {"train": "Cached", "evaluate": "Cached", "report": "Completed"}
    assert result["receipt"] == str(trained[0].cid)
    info = open_registry(None, home).resolve("demo/model@1.0.0")
    assert info.cid == result["model"]
    assert info.receipt == result["receipt"]
    assert store.verify().ok
