"""A real local cluster (``cidflow cluster up``): a Prefect server and three node agents as
separate processes on 127.0.0.1. Replicated adds and reads, flows run on a node through
Prefect deployments, a private dataset that never leaves its node, a killed node (reads fail
over, ``store repair`` restores r), and ``cluster down`` stopping exactly what it started."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import cli, ok, one_error, snapshot

from artifacts.cluster import open_store

pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]


def copies(cluster: dict[str, Any], cid: str) -> list[str]:
    """The nodes whose blob folder holds ``cid`` (read from disk, not over HTTP)."""
    return [
        n["name"]
        for n in cluster["nodes"]
        if (Path(n["home"]) / "blobs" / cid[-3:-1] / cid).exists()
    ]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("cluster")
    private = tmp_path_factory.mktemp("private") / "mine.npz"
    rng = np.random.default_rng(1)
    np.savez(private, x=rng.normal(size=(120, 8)).astype(np.float32), y=np.arange(120) % 3)
    out = ok(
        cli(
            home,
            "cluster",
            "up",
            "--nodes",
            "3",
            "--home",
            str(home),
            "--private",
            f"node-1:secret={private}",
            "--json",
            timeout=240,
        )
    )
    out["home"] = home
    try:
        yield out
    finally:
        cli(home, "cluster", "down", "--home", str(home))


def token_of(node: dict[str, Any]) -> str:
    return (Path(node["home"]) / "token").read_text().strip()


def test_up_reports_prefect_and_nodes_and_tokens_guard_writes(cluster: dict[str, Any]) -> None:
    assert {"prefect_api", "nodes"} <= set(cluster)
    assert httpx.get(f"{cluster['prefect_api']}/health", timeout=5).status_code == 200
    assert [n["name"] for n in cluster["nodes"]] == ["node-1", "node-2", "node-3"]
    tokens = [token_of(n) for n in cluster["nodes"]]
    assert len(set(tokens)) == 3  # each node its own token (they used to share one)
    assert not (cluster["home"] / "token").exists()
    for node, token in zip(cluster["nodes"], tokens, strict=True):
        assert {"name", "url", "pid"} <= set(node)
        assert oct((Path(node["home"]) / "token").stat().st_mode & 0o777) == "0o600"
        assert oct(Path(node["home"]).stat().st_mode & 0o777) == "0o700"
        assert oct((Path(node["home"]) / "blobs").stat().st_mode & 0o777) == "0o700"
        listing = httpx.get(f"{node['url']}/v1/blobs", timeout=5)
        assert listing.status_code == 401
        authed = httpx.get(
            f"{node['url']}/v1/blobs", headers={"Authorization": f"Bearer {token}"}, timeout=5
        )
        assert authed.status_code == 200
        # A node's own cluster.json names no token (no node holds another node's credential).
        own = (Path(node["home"]) / "cluster.json").read_text()
        assert not any(t in own for t in tokens)
        assert "token_file" not in own
    # The home administers every node: one token file per node, and a coordinator key.
    storage = json.loads((cluster["home"] / "cluster.json").read_text())["storage"]
    assert [Path(n["token_file"]).read_text().strip() for n in storage["nodes"]] == tokens
    assert Path(storage["key_file"]) == cluster["home"] / "keys" / "coordinator.pem"
    # No secret on any command line (what ps shows) nor in any log; the registry target
    # travels in the environment.
    pids = [cluster["prefect_pid"], *(n["pid"] for n in cluster["nodes"])]
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert not any(t.encode() in cmdline for t in tokens), pid
        assert b"--registry" not in cmdline
    for log in (cluster["home"] / "logs").glob("*.log"):
        text = log.read_text(errors="replace")
        assert not any(t in text for t in tokens), log


def test_a_nodes_token_deletes_and_lists_nothing_on_another_node(cluster: dict[str, Any]) -> None:
    """node-2's token on node-1: DELETE and listing are refused and the blob stays."""
    node1, node2 = cluster["nodes"][0], cluster["nodes"][1]
    data = os.urandom(4096)
    from artifacts.cid import compute_cid

    cid = str(compute_cid(data))
    own = {"Authorization": f"Bearer {token_of(node1)}"}
    assert httpx.put(f"{node1['url']}/v1/blobs/{cid}", content=data, headers=own).status_code == 201
    blobs = Path(node1["home"]) / "blobs"
    before = snapshot(blobs)
    other = {"Authorization": f"Bearer {token_of(node2)}"}
    answer = httpx.delete(f"{node1['url']}/v1/blobs/{cid}", headers=other, timeout=5)
    assert answer.status_code in (401, 403), answer.text
    listing = httpx.get(f"{node1['url']}/v1/blobs", headers=other, timeout=5)
    assert listing.status_code in (401, 403), listing.text
    assert "cids" not in listing.text
    assert snapshot(blobs) == before
    assert httpx.get(f"{node1['url']}/v1/blobs/{cid}", timeout=5).content == data
    # node-1's own token still does everything on node-1.
    assert httpx.delete(f"{node1['url']}/v1/blobs/{cid}", headers=own).status_code == 204
    again = cli(cluster["home"], "cluster", "up", "--nodes", "3", "--home", str(cluster["home"]))
    one_error(again, "already up")
    # up returned only once every node flow was deployed on every node: a run can start now
    from flows.remote import node_flows
    from node_agent.serve_flows import NODE_FLOW_NAMES

    assert set(NODE_FLOW_NAMES) == set(node_flows())
    auth = httpx.BasicAuth(*(cluster["home"] / "prefect-auth").read_text().strip().split(":", 1))
    for node in cluster["nodes"]:
        for flow in NODE_FLOW_NAMES:
            url = f"{cluster['prefect_api']}/deployments/name/{flow}/{node['name']}"
            assert httpx.get(url, timeout=5, auth=auth).status_code == 200, url


def test_add_replicates_and_get_reads_back(cluster: dict[str, Any], tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(os.urandom(9 << 20))
    added = ok(cli(cluster["home"], "add", str(data), "--json"))
    listing = ok(cli(cluster["home"], "show", added["cid"], "--json"))
    assert listing["cid"] == added["cid"]
    art = open_store(cluster["home"], read_only=True).open_artifact(added["cid"])
    blobs = [added["cid"], *map(str, art.tree_nodes()), *map(str, art.blob_cids())]
    assert len(blobs) > 3
    for cid in blobs:
        assert len(copies(cluster, cid)) == 2  # r = 2, on disk
    out = tmp_path / "out"
    assert cli(cluster["home"], "get", added["cid"], str(out)).returncode == 0
    assert (out / "weights.bin").read_bytes() == data.read_bytes()
    nodes = ok(cli(cluster["home"], "nodes", "--json"))
    assert sorted(n["name"] for n in nodes) == ["node-1", "node-2", "node-3"]
    assert {n["status"] for n in nodes} == {"live"}


def test_flows_run_on_a_chosen_node_and_private_data_stays_there(
    cluster: dict[str, Any],
) -> None:
    home = cluster["home"]
    assert cli(home, "key", "new").returncode == 0
    pub = ok(
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
    trained = ok(
        cli(
            home,
            "train",
            "--dataset",
            "demo/digits",
            "--model",
            "mlp",
            "--epochs",
            "3",
            "--seed",
            "0",
            "--json",
        )
    )
    assert trained["node"] in {"node-1", "node-2", "node-3"}
    assert "chose" in trained["scheduling"]
    assert len(copies(cluster, trained["model"])) >= 2  # on the cluster (+ the node's cache)
    lineage = ok(cli(home, "lineage", trained["model"], "--json"))
    assert lineage["produced_by"]["inputs"][0]["cid"] == pub["cid"]
    ev = ok(cli(home, "evaluate", "--model", trained["model"], "--dataset", pub["cid"], "--json"))
    assert 0.5 < ev["metrics"]["accuracy"] <= 1.0

    # The private dataset: trains on node-1 only; its blobs are never served or replicated.
    private = json.loads((Path(cluster["nodes"][0]["home"]) / "private.json").read_text())
    secret = private["secret"]["cid"]
    assert copies(cluster, secret) == ["node-1"]
    secret_file = Path(cluster["nodes"][0]["home"]) / "blobs" / secret[-3:-1] / secret
    assert oct(secret_file.stat().st_mode & 0o777) == "0o400"  # its owner's only
    for node in cluster["nodes"]:
        assert httpx.get(f"{node['url']}/v1/blobs/{secret}", timeout=5).status_code == 404
    mine = ok(
        cli(
            home,
            "train",
            "--dataset",
            "private:secret",
            "--node",
            "node-1",
            "--model",
            "logreg",
            "--epochs",
            "1",
            "--json",
        )
    )
    assert mine["node"] == "node-1"
    assert len(copies(cluster, mine["model"])) >= 2
    assert copies(cluster, secret) == ["node-1"]
    one_error(
        cli(
            home,
            "train",
            "--dataset",
            "private:secret",
            "--node",
            "node-2",
            "--model",
            "logreg",
            "--epochs",
            "1",
        ),
        "private dataset 'secret' is not available for train on this node",
    )


def test_a_killed_node_fails_over_and_repair_restores_r(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    data = tmp_path / "more.bin"
    data.write_bytes(os.urandom(6 << 20))
    added = ok(cli(cluster["home"], "add", str(data), "--json"))
    victim = next(n for n in cluster["nodes"] if n["name"] in copies(cluster, added["cid"]))
    os.killpg(victim["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{victim['url']}/v1/health", timeout=0.5)
        except httpx.HTTPError:
            break
        time.sleep(0.2)
    out = tmp_path / "out"
    assert cli(cluster["home"], "get", added["cid"], str(out)).returncode == 0
    assert (out / "more.bin").read_bytes() == data.read_bytes()
    report = ok(cli(cluster["home"], "store", "repair", "--json"))
    assert report["ok"] is True
    assert report["copied"] > 0
    assert report["unreachable"] == [victim["name"]]
    live = [n for n in cluster["nodes"] if n is not victim]
    alive = {n["name"] for n in live}
    assert set(copies(cluster, added["cid"])) & alive == alive  # both live nodes hold it now
    status = ok(cli(cluster["home"], "cluster", "status", "--home", str(cluster["home"]), "--json"))
    assert {n["name"]: n["status"] for n in status["nodes"]}[victim["name"]] == "down"


def test_down_stops_exactly_what_up_started(cluster: dict[str, Any]) -> None:
    home = cluster["home"]
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        out = ok(cli(home, "cluster", "down", "--home", str(home), "--json"))
        assert {p["role"] for p in out["stopped"]} == {"prefect", "node"}
        for node in cluster["nodes"]:
            with pytest.raises(ProcessLookupError):
                os.kill(node["pid"], 0)
        assert bystander.poll() is None
        assert not (home / "cluster.json").exists()
        one_error(cli(home, "cluster", "down", "--home", str(home)), "no cluster")
    finally:
        bystander.kill()
