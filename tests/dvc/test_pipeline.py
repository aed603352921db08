"""The reference DVC pipeline (dvc.yaml, params.yaml) runs offline in a copy of the
repository: prepare -> train -> evaluate through the cidflow CLI, then `dvc metrics show`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.xdist_group("prefect")
@pytest.mark.slow
def test_dvc_repro_runs_the_reference_pipeline(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    for name in files:
        target = repo / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    (repo / ".venv").symlink_to(VENV if VENV.exists() else Path(sys.prefix))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    git = ["git", "-c", "user.email=ci@example.org", "-c", "user.name=ci"]
    _run([*git, "init", "-q"], repo, env)
    _run([*git, "add", "-A"], repo, env)
    _run([*git, "commit", "-qm", "copy"], repo, env)
    dvc = str(repo / ".venv" / "bin" / "dvc")

    _run([dvc, "repro"], repo, env)
    metrics = json.loads(_run([dvc, "metrics", "show", "--json"], repo, env).stdout)
    values = next(iter(metrics.values()))["data"]["build/metrics.json"]["data"]
    assert values["accuracy"] >= 0.9
    model = json.loads((repo / "build" / "train.json").read_text())
    assert model["cached"] is False

    again = _run([dvc, "repro"], repo, env)
    assert "Running stage" not in again.stdout  # nothing changed, nothing runs

    params = (repo / "params.yaml").read_text().replace("seed: 0", "seed: 1")
    (repo / "params.yaml").write_text(params)
    changed = _run([dvc, "repro"], repo, env).stdout
    assert "Running stage 'train'" in changed
    assert "Running stage 'prepare'" not in changed
    retrained = json.loads((repo / "build" / "train.json").read_text())
    assert retrained["model"] != model["model"]
