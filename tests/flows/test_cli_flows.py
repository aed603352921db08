"""The flow commands end to end, as a user types them: publish sklearn:digits, train, a cached
rerun, evaluate, infer, lineage; and bad input (one error line, nothing produced)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from artifacts.store import ArtifactStore


def _cli(home: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cidflow", "--home", str(home), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)


def _ok(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert proc.returncode == 0, proc.stderr
    out: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def _one_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error:")
    assert fragment in lines[0]


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_publish_train_evaluate_infer_lineage(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    assert _cli(home, env, "key", "new").returncode == 0
    pub = _ok(_cli(home, env, "publish", "sklearn:digits", "--name", "demo/digits",
                   "--version", "1.0.0", "--license", "BSD-3-Clause", "--json"))  # fmt: skip
    assert {"name", "version", "cid", "seq"} <= set(pub)
    args = ["train", "--dataset", "demo/digits", "--model", "mlp", "--epochs", "4", "--seed", "1"]
    first = _ok(_cli(home, env, *args, "--json"))
    assert set(first) >= {"model", "metrics", "cached", "receipt"}
    assert first["cached"] is False
    again = _ok(_cli(home, env, *args, "--json"))
    assert again["cached"] is True
    assert again["model"] == first["model"]
    assert again["receipt"] == first["receipt"]
    other_seed = _ok(_cli(home, env, *args[:-1], "2", "--json"))
    assert other_seed["cached"] is False
    assert other_seed["model"] != first["model"]

    model = str(first["model"])
    ev = _ok(_cli(home, env, "evaluate", "--model", model, "--dataset", "demo/digits", "--json"))
    metrics = ev["metrics"]
    assert isinstance(metrics, dict)
    assert metrics["accuracy"] >= 0.9
    inf = _ok(_cli(home, env, "infer", "--model", model, "--dataset", str(pub["cid"]), "--json"))
    store = ArtifactStore(home)
    predictions = store.open_artifact(str(inf["predictions"])).to_numpy()["predictions"]
    assert predictions.shape == (360,)
    assert set(predictions.tolist()) <= set(range(10))

    tree = _ok(_cli(home, env, "lineage", model, "--json"))
    run = tree["produced_by"]
    assert isinstance(run, dict)
    assert run["task"] == "train"
    assert run["parameters"]["seed"] == 1
    assert run["inputs"][0]["cid"] == pub["cid"]

    # bad input: one line, exit 1, no new artifact
    before = {a.cid for a in store.list()}
    _one_error(_cli(home, env, "train", "--dataset", "demo/nope", "--json"), "not published")
    _one_error(_cli(home, env, "train", "--dataset", "demo/digits", "--model", "nosuch"),
               "unknown model")  # fmt: skip
    nan = _cli(home, env, "train", "--dataset", "demo/digits", "--lr", "1e30", "--epochs", "1")
    _one_error(nan, "loss is nan")
    assert {a.cid for a in store.list()} == before


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_user_models_that_do_not_fit_or_raise_fail_clearly(tmp_path: Path) -> None:
    home = tmp_path / "home"
    models = tmp_path / "models"
    models.mkdir()
    (models / "usernets.py").write_text(
        "import torch\n\n"
        "def too_narrow(input_shape, n_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(10, n_classes))\n\n"
        "def broken(input_shape, n_classes):\n"
        "    raise RuntimeError('no GPU kernels here')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PYTHONPATH=str(models))
    data = ArtifactStore(home).put_arrays(
        {"x": np.zeros((40, 64), dtype="f4"), "y": np.arange(40) % 4}
    )
    before = {a.cid for a in ArtifactStore(home).list()}
    narrow = _cli(home, env, "train", "--dataset", str(data), "--model", "usernets:too_narrow")
    _one_error(narrow, "shape")
    broken = _cli(home, env, "train", "--dataset", str(data), "--model", "usernets:broken")
    _one_error(broken, "usernets:broken")
    assert {a.cid for a in ArtifactStore(home).list()} == before  # no model was stored
