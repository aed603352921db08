"""Federated training on a real local cluster (``cidflow cluster up``: a Prefect server and
three node agents as processes on 127.0.0.1), each node holding a private non-IID part of the
digits: FedAvg reaches 0.90 with only updates travelling, secure aggregation gives the same
curve, a stopped node is a straggler (the round goes on without it, its late update is
discarded), a killed coordinator resumes from its last round, and too few answers fail the run
cleanly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import cli, ok, one_error

from artifacts.cluster import open_store
from artifacts.store import ArtifactStore
from flows.federated.flow import FED_ATTR, write_client_parts
from flows.lineage import receipt_index
from flows.private import load_private

pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]

CLIENTS = ["--client", "node-1", "--client", "node-2", "--client", "node-3"]


@pytest.fixture(scope="module")
def fed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    scratch = tmp_path_factory.mktemp("scratch")
    assert cli(scratch, "key", "new").returncode == 0
    pub = ok(
        cli(
            scratch,
            "publish",
            "sklearn:digits",
            "--name",
            "demo/digits",
            "--version",
            "1.0.0",
            "--json",
        )
    )
    parts = write_client_parts(
        ArtifactStore(scratch, read_only=True),
        pub["cid"],
        3,
        "dirichlet:0.5",
        0,
        tmp_path_factory.mktemp("private"),
    )
    home = tmp_path_factory.mktemp("fedcluster")
    private = [a for k, p in enumerate(parts, 1) for a in ("--private", f"node-{k}:federated={p}")]
    out = ok(
        cli(
            home,
            "cluster",
            "up",
            "--nodes",
            "3",
            "--home",
            str(home),
            *private,
            "--json",
            timeout=240,
        )
    )
    out["home"] = home
    try:
        assert cli(home, "key", "new").returncode == 0
        again = ok(
            cli(
                home,
                "publish",
                "sklearn:digits",
                "--name",
                "demo/digits",
                "--version",
                "1.0.0",
                "--json",
            )
        )
        assert again["cid"] == pub["cid"]
        out["dataset"] = pub["cid"]
        yield out
    finally:
        cli(home, "cluster", "down", "--home", str(home))


def _node_pid(cluster: dict[str, Any], name: str) -> int:
    return int(next(n["pid"] for n in cluster["nodes"] if n["name"] == name))


def test_fedavg_on_private_parts_reaches_090(fed_cluster: dict[str, Any], tmp_path: Path) -> None:
    home = fed_cluster["home"]
    plot = tmp_path / "curve.png"
    out = ok(
        cli(
            home,
            "federated",
            "--dataset",
            "demo/digits",
            *CLIENTS,
            "--rounds",
            "4",
            "--seed",
            "0",
            "--plot",
            str(plot),
            "--json",
            timeout=600,
        )
    )
    history = out["history"]
    assert [h["round"] for h in history] == [1, 2, 3, 4]
    assert max(h["accuracy"] for h in history) >= 0.90
    assert all(h["clients"] == 3 and not h["missing"] for h in history)
    assert set(history[-1]["client_accuracy"]) == {"node-1", "node-2", "node-3"}
    assert out["federated_accuracy"] is not None
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fed_cluster["plain"] = history

    # Each update was trained on its node, signed by that node, from the private part it holds.
    store = open_store(home, read_only=True)
    by_node: dict[str, set[str]] = {}
    for receipts in receipt_index(store).values():
        for r in receipts:
            if r.body["task"] == "fed-client":
                by_node.setdefault(r.body["node"], set()).update(r.body["inputs"])
    assert len(by_node) == 3
    for node in fed_cluster["nodes"]:
        secret = load_private(node["home"])["federated"].cid
        holders = [n for n, inputs in by_node.items() if secret in inputs]
        assert len(holders) == 1
        # The private part's root blob is on its own node only: it never travelled.
        others = [n for n in fed_cluster["nodes"] if n["name"] != node["name"]]
        assert all(
            not (Path(o["home"]) / "blobs" / secret[-3:-1] / secret).exists() for o in others
        )
    tree = ok(cli(home, "lineage", out["model"], "--json"))
    assert tree["produced_by"]["task"] == "fed-aggregate"
    assert '"fed-client"' in json.dumps(tree)


def test_secure_aggregation_on_the_cluster_gives_the_same_curve(
    fed_cluster: dict[str, Any],
) -> None:
    home = fed_cluster["home"]
    out = ok(
        cli(
            home,
            "federated",
            "--dataset",
            "demo/digits",
            *CLIENTS,
            "--rounds",
            "2",
            "--seed",
            "0",
            "--secure",
            "--json",
            timeout=600,
        )
    )
    assert out["secure"] is True
    plain = fed_cluster.get("plain")
    if plain is not None:  # exact sums: the same accuracies as the plain run, to float noise
        for a, b in zip(out["history"], plain[:2], strict=True):
            assert abs(a["accuracy"] - b["accuracy"]) < 1e-9
    store = open_store(home, read_only=True)
    agg = store.open_artifact(out["model"]).attrs[FED_ATTR]
    for update in agg["updates"]:  # what the coordinator received: masked, uint64
        art = store.open_artifact(update)
        assert art.attrs[FED_ATTR]["masked"] is True
        assert {str(a.dtype) for a in art.to_numpy().values()} == {"uint64"}


def test_a_stopped_node_is_a_straggler_and_its_late_update_is_discarded(
    fed_cluster: dict[str, Any],
) -> None:
    home = fed_cluster["home"]
    pid = _node_pid(fed_cluster, "node-3")
    before = _aggregations(home)
    done = threading.Event()

    def resume_after_round_one() -> None:  # not a fixed delay: start-up time varies with load
        while not done.wait(0.5) and _aggregations(home) == before:
            pass
        os.killpg(pid, signal.SIGCONT)

    os.killpg(pid, signal.SIGSTOP)
    resume = threading.Thread(target=resume_after_round_one, daemon=True)
    resume.start()
    try:
        out = ok(
            cli(
                home,
                "federated",
                "--dataset",
                "demo/digits",
                *CLIENTS,
                "--rounds",
                "5",
                "--seed",
                "3",
                "--round-timeout",
                "20",
                "--min-clients",
                "2",
                "--json",
                timeout=900,
            )
        )
    finally:
        done.set()
        resume.join()
        os.killpg(pid, signal.SIGCONT)
    history = out["history"]
    assert history[0]["clients"] == 2
    assert history[0]["missing"][0][0] == "node-3"
    assert "no answer within 20s" in history[0]["missing"][0][1]
    late = [(row["round"], item) for row in history for item in row["late"]]
    assert late, history
    seen_at, item = late[0]
    assert (item["client"], item["round"]) == ("node-3", 1)
    assert seen_at > 1
    # The late update exists (node-3 did finish) but no aggregation ever used it.
    store = open_store(home, read_only=True)
    used, model = set(), out["model"]
    while "updates" in (info := store.open_artifact(model).attrs.get(FED_ATTR) or {}):
        used |= set(info["updates"])
        model = info["previous"]
    assert len(used) == sum(row["clients"] for row in history)
    assert item["update"] not in used
    assert history[-1]["clients"] == 3  # node-3 is back in the last round


def test_a_coordinator_killed_mid_run_resumes_from_its_last_round(
    fed_cluster: dict[str, Any],
) -> None:
    home = fed_cluster["home"]
    args = [
        "federated",
        "--dataset",
        "demo/digits",
        *CLIENTS,
        "--rounds",
        "3",
        "--seed",
        "7",
        "--json",
    ]
    before = _aggregations(home)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    coordinator = subprocess.Popen(
        [sys.executable, "-m", "cidflow", "--home", str(home), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while _aggregations(home) == before and coordinator.poll() is None:
            assert time.monotonic() < deadline, "round 1 was never aggregated"
            time.sleep(0.5)
    finally:
        os.killpg(coordinator.pid, signal.SIGKILL)
        coordinator.wait()
    done = _aggregations(home) - before
    assert 1 <= done < 3, "the coordinator was not killed mid-run"
    store = open_store(home, read_only=True)
    first = set(_aggregated_models(store))

    out = ok(cli(home, *args, timeout=900))
    assert [h["round"] for h in out["history"]] == [1, 2, 3]
    assert _aggregations(home) - before == 3  # the rounds done before the kill did not rerun
    chain, model = [], out["model"]
    while "updates" in (info := store.open_artifact(model).attrs.get(FED_ATTR) or {}):
        chain.append(model)
        model = info["previous"]
    assert len(chain) == 3
    assert chain[-1] in first  # round 1 is the model aggregated before the kill
    again = ok(cli(home, *args, timeout=900))
    assert again["model"] == out["model"], (out["history"], again["history"])
    assert again["history"] == out["history"]


def _warm_child(node_pid: int) -> int | None:
    """The pid of a node agent's warm flows child (``serve_flows --warm``), if one runs."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if ppid == node_pid and b"node_agent.serve_flows" in argv and b"--warm" in argv:
            return int(proc.name)
    return None


def test_a_dead_warm_client_is_restarted_and_the_node_answers_again(
    fed_cluster: dict[str, Any],
) -> None:
    """Kill a node's warm flows child (as the OOM killer would): the node agent starts it
    again, and the node takes part in the next federated run."""
    home = fed_cluster["home"]
    node = _node_pid(fed_cluster, "node-2")
    old = _warm_child(node)
    assert old is not None
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while (new := _warm_child(node)) in (None, old):
        assert time.monotonic() < deadline, "the warm child was not restarted"
        time.sleep(0.2)
    log = (home / "logs" / "node-2.log").read_text()
    assert f"warm flows child exited with code {-signal.SIGKILL}; restarting" in log
    out = ok(
        cli(
            home,
            "federated",
            "--dataset",
            "demo/digits",
            *CLIENTS,
            "--rounds",
            "1",
            "--seed",
            "11",
            "--round-timeout",
            "120",
            "--json",
            timeout=600,
        )
    )
    (row,) = out["history"]
    assert row["clients"] == 3
    assert not row["missing"]
    assert _warm_child(node) == new  # it served the run and is still up


def _aggregated_models(store: Any) -> list[str]:
    return [
        out
        for rs in receipt_index(store).values()
        for r in rs
        if r.body["task"] == "fed-aggregate"
        for out in r.body["outputs"]
    ]


def test_too_few_answers_fail_cleanly_and_bad_clients_are_refused(
    fed_cluster: dict[str, Any],
) -> None:
    home = fed_cluster["home"]
    before = _aggregations(home)
    pid = _node_pid(fed_cluster, "node-3")
    os.killpg(pid, signal.SIGSTOP)  # not a short timeout: warm clients answer in well under 1 s
    try:
        failed = cli(
            home,
            "federated",
            "--dataset",
            "demo/digits",
            *CLIENTS,
            "--rounds",
            "2",
            "--seed",
            "5",
            "--round-timeout",
            "3",
            "--min-clients",
            "3",
        )
    finally:
        os.killpg(pid, signal.SIGCONT)
    one_error(failed, "min_clients is 3")
    assert "no model published" in failed.stderr
    assert "node-3: no answer within 3s" in failed.stderr
    one_error(
        cli(home, "federated", "--dataset", "demo/digits", "--client", "node-9"), "no node 'node-9'"
    )
    one_error(
        cli(
            home,
            "federated",
            "--dataset",
            "demo/digits",
            "--client",
            "node-1",
            "--client",
            "node-1",
        ),
        "one client only",
    )
    one_error(
        cli(home, "federated", "--dataset", "demo/digits", *CLIENTS, "--byzantine", "1"),
        "simulation settings",
    )
    assert _aggregations(home) == before  # no round of the failed run was aggregated


def _aggregations(home: Path) -> int:
    store = open_store(home, read_only=True)
    return sum(
        1 for rs in receipt_index(store).values() for r in rs if r.body["task"] == "fed-aggregate"
    )
