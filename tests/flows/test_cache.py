"""The CID cache policy: key properties, and real Prefect flow runs hitting the cache across
processes (and missing it on a code, parameter or input change)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from artifacts.cid import compute_cid
from flows.cache import cache_key, canonical_inputs, code_hash
from flows.errors import UncacheableInputError

A = str(compute_cid(b"dataset v1", codec="json"))
B = str(compute_cid(b"dataset v2", codec="json"))


def test_key_depends_on_code_inputs_and_parameters_only() -> None:
    base = cache_key("train", "c0de", {"dataset": A, "epochs": 3, "opts": {"lr": 0.1}})
    assert base == cache_key("train", "c0de", {"opts": {"lr": 0.1}, "epochs": 3, "dataset": A})
    assert base != cache_key("train", "c0de", {"dataset": B, "epochs": 3, "opts": {"lr": 0.1}})
    assert base != cache_key("train", "c0de", {"dataset": A, "epochs": 4, "opts": {"lr": 0.1}})
    assert base != cache_key("train", "c0df", {"dataset": A, "epochs": 3, "opts": {"lr": 0.1}})
    assert base != cache_key("eval", "c0de", {"dataset": A, "epochs": 3, "opts": {"lr": 0.1}})


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (np.zeros(3), "never in-memory objects"),
        (Path("data.npy"), "pass the CID"),
        (float("nan"), "not a finite number"),
        (b"raw", "never in-memory objects"),
        ({1: "x"}, "non-string key"),
    ],
)
def test_in_memory_objects_never_enter_a_key(value: object, reason: str) -> None:
    with pytest.raises(UncacheableInputError, match=reason):
        canonical_inputs({"x": value})


def test_code_hash_follows_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = tmp_path / "usermodel_for_hash.py"
    module.write_text("def factory(width=4):\n    return width\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def task() -> None:
        return None

    first = code_hash(task, ["usermodel_for_hash"])
    assert first == code_hash(task, ["usermodel_for_hash"])
    assert first != code_hash(task)
    sys.modules.pop("usermodel_for_hash", None)  # read from the file: no import needed
    module.write_text("def factory(width=8):\n    return width\n")
    assert code_hash(task, ["usermodel_for_hash"]) != first


FLOW = """
import json, sys
from prefect import flow, task
from flows.cache import CIDCachePolicy

@task(cache_policy=CIDCachePolicy(), persist_result=True, result_serializer="json")
def scale(dataset: str, factor: int) -> dict:
    with open(sys.argv[1], "a") as f:
        f.write("ran\\n")
    return {"dataset": dataset, "factor": FACTOR * factor}

@flow
def pipeline(dataset: str, factor: int) -> dict:
    return scale(dataset, factor)

print(json.dumps(pipeline(sys.argv[2], int(sys.argv[3]))))
"""


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_rerun_hits_the_cache_across_processes(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect"),
        PREFECT_LOCAL_STORAGE_PATH=str(tmp_path / "results"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
    )
    marker = tmp_path / "ran.txt"
    script = tmp_path / "pipeline.py"

    def run(dataset: str, factor: int, code_factor: int = 10) -> dict[str, object]:
        script.write_text(FLOW.replace("FACTOR", str(code_factor)))
        proc = subprocess.run(
            [sys.executable, str(script), str(marker), dataset, str(factor)],
            capture_output=True, text=True, env=env, timeout=240,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
        return result

    def executions() -> int:
        return len(marker.read_text().splitlines()) if marker.exists() else 0

    assert run(A, 2) == {"dataset": A, "factor": 20}
    assert executions() == 1
    assert run(A, 2) == {"dataset": A, "factor": 20}  # another process: served from the cache
    assert executions() == 1
    assert run(A, 3) == {"dataset": A, "factor": 30}  # a parameter changed
    assert run(B, 2) == {"dataset": B, "factor": 20}  # one byte of input data: a new CID
    assert executions() == 3
    assert run(A, 2, code_factor=11) == {"dataset": A, "factor": 22}  # the code changed
    assert executions() == 4
    stored = list((tmp_path / "results").iterdir())
    assert stored
    assert all(
        json.loads(p.read_text())["metadata"]["serializer"]["type"] == "json" for p in stored
    )
