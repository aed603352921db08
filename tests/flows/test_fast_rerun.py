"""The fast path of a cached rerun (``flows.cache.lookup_cached``, used by the CLI's train,
evaluate and infer): it must compute the very key Prefect's cache policy computes, serve what
Prefect would serve without starting Prefect (or importing torch), and fall through to a real
run on a miss or when the cached outputs are gone from the store."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from artifacts.store import ArtifactStore
from flows.cache import (
    MODEL_CODE_MODULES,
    _task_source,
    code_hash,
    lookup_cached,
    prefect_results_dir,
)

# Runs the CLI and says on stderr whether Prefect / torch were imported by it.
RUNNER = (
    "import runpy, sys\n"
    "try:\n"
    "    runpy.run_module('cidflow', run_name='__main__', alter_sys=True)\n"
    "finally:\n"
    "    sys.stderr.write('IMPORTED prefect=%s torch=%s\\n'\n"
    "                     % ('prefect' in sys.modules, 'torch' in sys.modules))\n"
)


def _cli(
    home: Path, env: dict[str, str], *args: str, user_model: bool = False
) -> tuple[dict[str, object], bool]:
    """(the printed JSON, whether Prefect was imported) of ``cidflow --home HOME ARGS --json``;
    a fast hit imports no torch either, unless the key needs a user model's module (which
    imports torch itself)."""
    cmd = [sys.executable, "-c", RUNNER, "--home", str(home), *args, "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    marker = [ln for ln in proc.stderr.splitlines() if ln.startswith("IMPORTED ")][-1]
    if "prefect=False" in marker and not user_model:
        assert "torch=False" in marker
    return out, "prefect=True" in marker


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def _dataset(home: Path) -> str:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 8)).astype("f4")
    y = (x[:, 0] > 0).astype("i8")
    arrays = {"train/x": x[:160], "train/y": y[:160], "test/x": x[160:], "test/y": y[160:]}
    return str(ArtifactStore(home).put_arrays(arrays))


def _drop_blobs(home: Path, cid: str, keep: str) -> None:
    """Delete the blobs of ``cid`` that ``keep`` does not share (identical zarr metadata
    documents are one blob)."""
    store = ArtifactStore(home)
    shared = set(store.open_artifact(keep).blob_cids())
    for blob in set(store.open_artifact(cid).blob_cids()) - shared:
        store.blobs.path_of(blob).unlink()


@pytest.mark.parametrize("name", ["train", "evaluate", "infer"])
def test_source_and_defaults_read_from_the_file_match_the_imported_task(name: str) -> None:
    from flows import pipelines

    task = getattr(pipelines, name)
    found = _task_source(f"flows.pipelines:{name}")
    assert found is not None
    assert found.name == task.name
    assert found.source == inspect.getsource(inspect.unwrap(task.fn)).encode()
    signature = inspect.signature(task.fn)
    assert found.params == tuple(signature.parameters)
    assert found.defaults == {
        k: p.default for k, p in signature.parameters.items() if p.default is not p.empty
    }
    from flows.cache import _code_hash

    assert _code_hash(found.source, []) == code_hash(task.fn)


def test_importing_the_cache_module_does_not_import_prefect() -> None:
    code = "import sys, flows.cache; print('prefect' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_results_dir_only_when_prefect_settings_cannot_point_elsewhere(tmp_path: Path) -> None:
    base = {"PREFECT_HOME": str(tmp_path / "p"), "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path)}
    assert prefect_results_dir(base, tmp_path) == tmp_path
    assert prefect_results_dir({**base, "PREFECT_LOGGING_LEVEL": "INFO"}, tmp_path) == tmp_path
    assert prefect_results_dir({"PREFECT_HOME": str(tmp_path)}, tmp_path) is None
    for extra in ("PREFECT_TASKS_REFRESH_CACHE", "PREFECT_RESULTS_LOCAL_STORAGE_PATH",
                  "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK", "PREFECT_PROFILE",
                  "CIDFLOW_NO_FAST_PATH"):  # fmt: skip
        assert prefect_results_dir({**base, extra: "1"}, tmp_path) is None, extra
    assert prefect_results_dir({**base, "CIDFLOW_NO_FAST_PATH": "0"}, tmp_path) == tmp_path
    (tmp_path / "pyproject.toml").write_text("[tool.prefect.tasks]\nrefresh_cache = true\n")
    assert prefect_results_dir(base, tmp_path) is None
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    assert prefect_results_dir(base, tmp_path) == tmp_path
    (tmp_path / "prefect.toml").write_text("")
    assert prefect_results_dir(base, tmp_path) is None


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_fast_rerun_agrees_with_prefect_and_falls_through(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = _env()
    data = _dataset(home)
    args = ["train", "--dataset", data, "--model", "mlp", "--epochs", "2", "--seed", "3"]

    # the first run, and Prefect's own cache hit (fast path off)
    first, prefect = _cli(home, _env(CIDFLOW_NO_FAST_PATH="1"), *args)
    assert first["cached"] is False
    assert prefect
    by_prefect, prefect = _cli(home, _env(CIDFLOW_NO_FAST_PATH="1"), *args)
    assert by_prefect["cached"] is True
    assert prefect
    # the fast path: the same key, the same answer, without Prefect
    fast, prefect = _cli(home, env, *args)
    assert not prefect
    assert fast == by_prefect
    assert fast["model"] == first["model"]
    assert fast["receipt"] == first["receipt"]
    assert fast["metrics"] == first["metrics"]

    # one parameter changed: a miss, a real run
    other, prefect = _cli(home, env, *args[:-1], "4")
    assert other["cached"] is False
    assert prefect
    assert other["model"] != first["model"]

    # evaluate and infer share the mechanism
    model = str(first["model"])
    for cmd in (["evaluate", "--model", model, "--dataset", data],
                ["infer", "--model", model, "--dataset", data, "--batch-size", "16"]):  # fmt: skip
        ran, prefect = _cli(home, env, *cmd)
        assert ran["cached"] is False
        assert prefect
        again, prefect = _cli(home, env, *cmd)
        assert not prefect
        assert again == {**ran, "cached": True}

    # the model's blobs are gone: the stale record is dropped and training runs again
    _drop_blobs(home, model, keep=data)
    redone, prefect = _cli(home, env, *args)
    assert redone["cached"] is False
    assert prefect
    assert redone["model"] == model  # training is deterministic: the same weights
    assert redone["receipt"] != first["receipt"]  # a new execution, a new receipt
    assert ArtifactStore(home).verify([model]).ok
    again, prefect = _cli(home, env, *args)
    assert again == {**redone, "cached": True}
    assert not prefect

    # a receipt that is gone makes a miss too
    ArtifactStore(home).blobs.path_of(str(redone["receipt"])).unlink()
    redone2, prefect = _cli(home, env, *args)
    assert redone2["cached"] is False
    assert prefect


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_user_model_module_is_part_of_the_fast_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = tmp_path / "models"
    models.mkdir()
    module = models / "fastnets.py"
    module.write_text(
        "import torch\n\n"
        "def tiny(input_shape, n_classes, width=4):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(),\n"
        "                               torch.nn.Linear(input_shape[0], n_classes))\n"
    )
    env = _env(PYTHONPATH=str(models))
    data = _dataset(home)
    args = ["train", "--dataset", data, "--model", "fastnets:tiny", "--epochs", "1"]
    first, _ = _cli(home, env, *args, user_model=True)
    assert first["cached"] is False
    again, prefect = _cli(home, env, *args, user_model=True)
    assert again == {**first, "cached": True}
    assert not prefect

    params = {"dataset": data, "model": "fastnets:tiny", "epochs": 1, "seed": 0,
              "batch_size": 64, "lr": 1e-3, "model_kwargs": None}  # fmt: skip
    results = home / "prefect" / "results"
    sys.path.insert(0, str(models))
    try:
        modules = [*MODEL_CODE_MODULES, "fastnets"]
        found = lookup_cached("flows.pipelines:train", params, home=home, results=results,
                              extra_modules=modules)  # fmt: skip
        assert found == {k: v for k, v in first.items() if k != "cached"}
        # the same call without the module in the key, or after the module changed: a miss
        assert lookup_cached("flows.pipelines:train", params, home=home, results=results) is None
        sys.modules.pop("fastnets", None)
        module.write_text(module.read_text().replace("width=4", "width=55"))
        found = lookup_cached("flows.pipelines:train", params, home=home, results=results,
                              extra_modules=modules)  # fmt: skip
        assert found is None
    finally:
        sys.path.remove(str(models))
        sys.modules.pop("fastnets", None)
