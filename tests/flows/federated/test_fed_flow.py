"""``cidflow federated`` end to end as a user runs it (real Prefect flow runs in subprocesses,
a real store): the contract's JSON, lineage through every round, a cached rerun, a coordinator
killed mid-run that resumes to the same model CID, a stateful server optimiser, bad input."""

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
from flows.lineage import receipt_index

pytestmark = [pytest.mark.xdist_group("prefect"), pytest.mark.slow]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    return env | {"PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def _cmd(home: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "cidflow", "--home", str(home), *args]


def _ok(home: Path, *args: str) -> Any:
    proc = subprocess.run(_cmd(home, *args), capture_output=True, text=True, env=_env(),
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _home(tmp_path: Path, name: str) -> tuple[Path, str]:
    home = tmp_path / name
    assert subprocess.run(_cmd(home, "key", "new"), env=_env(), capture_output=True).returncode == 0
    pub = _ok(home, "publish", "sklearn:digits", "--name", "demo/digits", "--version", "1.0.0",
              "--json")  # fmt: skip
    return home, str(pub["cid"])


RUN = ["federated", "--dataset", "demo/digits", "--clients", "3", "--partition",
       "dirichlet:0.5", "--rounds", "3", "--strategy", "fedavg", "--model", "mlp", "--seed", "0",
       "--json"]  # fmt: skip


def _tasks(home: Path, task: str) -> int:
    store = ArtifactStore(home, read_only=True)
    return sum(1 for rs in receipt_index(store).values() for r in rs if r.body["task"] == task)


def test_federated_contract_lineage_rerun_and_resume(tmp_path: Path) -> None:
    home, dataset = _home(tmp_path, "a")
    out = _ok(home, *RUN)
    assert {"model", "history", "accuracy"} <= set(out)
    assert [h["round"] for h in out["history"]] == [1, 2, 3]
    assert all(0 <= h["accuracy"] <= 1 for h in out["history"])
    assert out["accuracy"] == out["history"][-1]["accuracy"]
    assert out["accuracy"] > 0.8
    # Lineage: the final model <- aggregate(round 3) <- client updates <- ... <- the dataset.
    tree = _ok(home, "lineage", out["model"], "--json")
    assert tree["produced_by"]["task"] == "fed-aggregate"
    text = json.dumps(tree)
    assert '"fed-client"' in text
    assert '"fed-split"' in text
    assert dataset in text
    # The same run again: every step served from the cache, the same model.
    assert _ok(home, *RUN)["model"] == out["model"]
    assert _tasks(home, "fed-client") == 9  # 3 rounds x 3 clients (with outputs), executed once

    # A coordinator killed after its first round resumes to the same model CID.
    other, _ = _home(tmp_path, "b")
    proc = subprocess.Popen(_cmd(other, *RUN), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while _tasks(other, "fed-aggregate") < 1:
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert _tasks(other, "fed-aggregate") < 3
    resumed = _ok(other, *RUN)
    assert resumed["model"] == out["model"]
    assert resumed["history"] == out["history"]
    assert _tasks(other, "fed-client") == 9  # the rounds done before the kill did not rerun


def test_server_optimiser_strategy_and_bad_input(tmp_path: Path) -> None:
    home, _ = _home(tmp_path, "c")
    args = [a if a != "fedavg" else "fedadam" for a in RUN]
    args[args.index("3", args.index("--rounds"))] = "2"
    out = _ok(home, *args)
    assert len(out["history"]) == 2
    assert out["model"] != _ok(home, *RUN[:-1], "--rounds", "2", "--json")["model"]
    private = _ok(home, *RUN[:-1], "--rounds", "2", "--dp-epsilon", "8", "--json")
    assert 7.9 < private["privacy"]["epsilon"] <= 8.0
    assert private["privacy"]["level"] == "client"
    assert private["privacy"]["noise_multiplier"] > 0
    assert private["model"] != out["model"]
    for bad, fragment in [
        (["--strategy", "krum", "--dp-epsilon", "8"], "with --strategy fedavg only"),
        (["--strategy", "fedmagic"], "unknown strategy 'fedmagic'"),
        (["--secure", "--min-cosine", "0"], "--min-cosine needs updates in the clear"),
        (["--min-cosine", "2"], "2.0 is not in the range -1<=x<=1"),
        (["--strategy", "krum", "--min-cosine", "0"], "--min-cosine is for mean and median"),
        (["--partition", "dirichlet:-1"], "ALPHA must be a positive number"),
        (["--exclude-after", "0"], "0 is not in the range x>=1"),
        (["--strategy-arg", "beta"], "--strategy-arg 'beta' is not KEY=VALUE"),
        (["--max-norm-ratio", "0.5"], "0.5 is not in the range x>=1"),
        (["--strategy", "krum", "--max-norm-ratio", "10"], "--max-norm-ratio is for mean and"),
        (["--secure", "--max-norm-ratio", "10"], "--max-norm-ratio needs updates in the clear"),
        (["--byzantine", "1", "--attack", "silent:2"], "expected scale:K, signflip or silent"),
    ]:
        proc = subprocess.run(_cmd(home, *RUN[:-1], *bad), capture_output=True, text=True,
                              env=_env(), timeout=300)  # fmt: skip
        assert proc.returncode in (1, 2)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr[-2000:]  # refused before Prefect starts
        assert lines[0].startswith("error:")
        assert fragment in lines[0]


def test_checks_before_the_flow_leave_prefect_pointed_at_the_home(tmp_path: Path) -> None:
    """--byzantine and --min-cosine are checked before the flow starts; that check must not
    import Prefect, or its results and API database would land in ~/.prefect, shared by every
    home (and one home's cached results would name artifacts another home lacks)."""
    home, _ = _home(tmp_path, "d")
    user = tmp_path / "user"  # the $HOME whose ~/.prefect must stay untouched
    args = [a if a != "fedavg" else "fedmedian" for a in RUN]
    args[args.index("3", args.index("--rounds"))] = "1"
    proc = subprocess.run(
        _cmd(home, *args, "--byzantine", "1", "--attack", "signflip", "--min-cosine", "0"),
        capture_output=True, text=True, env=_env() | {"HOME": str(user)}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(json.loads(proc.stdout.strip().splitlines()[-1])["history"]) == 1
    assert any((home / "prefect" / "results").iterdir())
    assert not (user / ".prefect").exists()


def test_homes_sharing_prefect_result_storage_never_get_each_others_outputs(
    tmp_path: Path,
) -> None:
    """With one PREFECT_LOCAL_STORAGE_PATH for two homes (set by the user, say), the second
    home's run finds the first one's cached results, which name artifacts only the first home
    holds: such a stale hit must be recomputed, not served."""
    shared = {"PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "shared-results")}
    args = [a if a != "3" else "1" for a in RUN]  # one round (and 1 of --clients 3 -> 3 stays)
    args[args.index("--clients") + 1] = "3"
    outs = []
    for name in ("first", "second"):
        home, _ = _home(tmp_path, name)
        proc = subprocess.run(_cmd(home, *args), capture_output=True, text=True,
                              env=_env() | shared, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        outs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        store = ArtifactStore(home, read_only=True)
        assert store.open_artifact(outs[-1]["model"]).to_state_dict()  # in this home's store
    assert outs[0]["model"] == outs[1]["model"]  # the same computation, done in each home
