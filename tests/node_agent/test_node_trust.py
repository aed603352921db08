"""Who may start work on a node, and what leaves it, tried as an attacker would against a real
cluster (``cidflow cluster up``: a Prefect server with credentials and two node agents, each a
process on 127.0.0.1). Every refusal is asserted with its reason *and* with the node's trusted
state unchanged: its blobs, its private data, its receipts."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import cli, ok, one_error, snapshot

from artifacts.cluster import open_store
from artifacts.store import ArtifactStore
from flows.errors import FlowError
from flows.receipts import write_receipt
from flows.remote import Coordinator, RemoteRunError, verify_answer
from flows.run_requests import sign_request
from registry.identity import Identity

pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("trust-cluster")
    data = tmp_path_factory.mktemp("owner")
    rng = np.random.default_rng(7)
    for name in ("secret", "pooled"):
        np.savez(
            data / f"{name}.npz", x=rng.normal(size=(90, 6)).astype(np.float32), y=np.arange(90) % 3
        )
    out = ok(
        cli(
            home,
            "cluster",
            "up",
            "--nodes",
            "2",
            "--home",
            str(home),
            "--private",
            f"node-1:secret={data / 'secret.npz'}",
            "--private",
            f"node-1:pooled={data / 'pooled.npz'}",
            "--policy",
            "node-1:pooled=aggregate",
            "--json",
            timeout=240,
        )
    )
    out["home"] = home
    out["doc"] = json.loads((home / "cluster.json").read_text())
    try:
        yield out
    finally:
        cli(home, "cluster", "down", "--home", str(home))


def _auth(cluster: dict[str, Any]) -> httpx.BasicAuth:
    user, _, password = (cluster["home"] / "prefect-auth").read_text().strip().partition(":")
    return httpx.BasicAuth(user, password)


def _node_home(cluster: dict[str, Any], name: str) -> Path:
    return Path(next(n["home"] for n in cluster["nodes"] if n["name"] == name))


def _run(cluster: dict[str, Any], flow: str, node: str, parameters: dict[str, Any]) -> Any:
    """Create a flow run of ``FLOW/NODE`` straight through the Prefect API (with its
    credentials, as anyone holding them could) and wait for its final state."""
    api, auth = cluster["prefect_api"], _auth(cluster)
    with httpx.Client(base_url=api, auth=auth, timeout=30) as http:
        dep = http.get(f"/deployments/name/{flow}/{node}").json()
        for _ in range(10):  # a busy SQLite server answers 503 now and then: Prefect retries
            made = http.post(
                f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}
            )
            if made.status_code != 503:
                break
            time.sleep(1)
        assert made.status_code == 201, made.text
        run_id = made.json()["id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            state = http.get(f"/flow_runs/{run_id}").json()["state"]
            if state and state["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
                return state
            time.sleep(0.3)
    raise AssertionError(f"flow run {run_id} did not finish")


def _signed(
    cluster: dict[str, Any],
    flow: str,
    node: str,
    params: dict[str, Any],
    identity: Identity | None = None,
    **kw: Any,
) -> dict[str, Any]:
    signer = identity or Identity.load(cluster["home"], "coordinator")
    node_id = cluster["doc"]["node_ids"][node]
    request = sign_request(signer, flow=flow, node_id=node_id, parameters=params, **kw)
    return {**params, "request": request}


TRAIN = {"dataset": "private:secret", "model": "logreg", "epochs": 1, "seed": 3}


def _state_of_node(cluster: dict[str, Any], node: str) -> dict[str, Any]:
    home = _node_home(cluster, node)
    return {**snapshot(home / "blobs"), "private": (home / "private.json").read_bytes()}


def test_the_prefect_api_refuses_requests_without_its_credentials(cluster: dict[str, Any]) -> None:
    api = cluster["prefect_api"]
    assert httpx.get(f"{api}/health", timeout=5).status_code == 200  # probes stay open
    for auth in (None, httpx.BasicAuth("cidflow", "wrong"), httpx.BasicAuth("admin", "admin")):
        answer = httpx.post(f"{api}/deployments/filter", json={}, auth=auth, timeout=5)
        assert answer.status_code in (401, 403)
        made = httpx.post(f"{api}/flow_runs/", json={"flow_id": "x"}, auth=auth, timeout=5)
        assert made.status_code in (401, 403)
    assert (
        httpx.post(f"{api}/deployments/filter", json={}, auth=_auth(cluster), timeout=5).status_code
        == 200
    )
    auth_file = cluster["home"] / "prefect-auth"
    assert auth_file.stat().st_mode & 0o777 == 0o600
    secret = auth_file.read_text().strip().partition(":")[2]
    for proc in Path("/proc").iterdir():  # never on a command line (what ps shows)
        try:
            assert secret.encode() not in (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ("none", "no signed run request"),
        ("stranger", "is not allowed on this node"),
        ("expired", "expired"),
        ("changed", "differ from the signed ones"),
        ("other-node", "for another flow or node"),
        ("other-flow", "for another flow or node"),
        ("forged", "signature does not verify"),
    ],
)
def test_a_run_without_a_valid_signed_request_never_starts(
    cluster: dict[str, Any], tamper: str, reason: str
) -> None:
    before = _state_of_node(cluster, "node-1")
    params: dict[str, Any]
    if tamper == "none":
        params = dict(TRAIN)
    elif tamper == "stranger":
        params = _signed(cluster, "train", "node-1", TRAIN, Identity.generate())
    elif tamper == "expired":
        params = _signed(cluster, "train", "node-1", TRAIN, now=time.time() - 1200, ttl=600)
    elif tamper == "changed":
        params = {**_signed(cluster, "train", "node-1", TRAIN), "model": "mlp", "epochs": 50}
    elif tamper == "other-node":
        params = _signed(cluster, "train", "node-2", TRAIN)
    elif tamper == "other-flow":
        params = _signed(cluster, "evaluate", "node-1", TRAIN)
    else:
        params = _signed(cluster, "train", "node-1", TRAIN)
        params["request"]["body"]["parameters"]["epochs"] = 99
        params["epochs"] = 99
    state = _run(cluster, "train", "node-1", params)
    assert state["type"] == "FAILED"
    assert reason in state["message"]
    assert _state_of_node(cluster, "node-1") == before  # nothing read, nothing written


def test_a_signed_request_runs_once_and_its_replay_is_refused(cluster: dict[str, Any]) -> None:
    params = _signed(cluster, "train", "node-1", {**TRAIN, "seed": 11})
    first = _run(cluster, "train", "node-1", params)
    assert first["type"] == "COMPLETED", first["message"]
    before = _state_of_node(cluster, "node-1")
    again = _run(cluster, "train", "node-1", params)
    assert again["type"] == "FAILED"
    assert "already used (a replay)" in again["message"]
    assert _state_of_node(cluster, "node-1") == before


def test_private_data_leaves_only_as_its_owner_allows(cluster: dict[str, Any]) -> None:
    home = cluster["home"]
    private = json.loads((_node_home(cluster, "node-1") / "private.json").read_text())
    assert private["secret"]["policy"] == "model"
    assert private["pooled"]["policy"] == "aggregate"
    assert (_node_home(cluster, "node-1") / "private.json").stat().st_mode & 0o777 == 0o600
    trained = ok(
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
            "2",
            "--json",
        )
    )
    # aggregate metrics may leave a 'model' dataset
    ok(
        cli(
            home,
            "evaluate",
            "--model",
            trained["model"],
            "--dataset",
            "private:secret",
            "--node",
            "node-1",
            "--json",
        )
    )
    before = _state_of_node(cluster, "node-1")
    # predictions are rows: crafted weights would turn them into the features themselves
    refused = cli(
        home,
        "infer",
        "--model",
        trained["model"],
        "--dataset",
        "private:secret",
        "--node",
        "node-1",
        "--json",
    )
    one_error(refused, "private dataset 'secret' is not available for infer on this node")
    # an 'aggregate' dataset lets out only federated updates: no trained model
    refused = cli(
        home,
        "train",
        "--dataset",
        "private:pooled",
        "--node",
        "node-1",
        "--model",
        "logreg",
        "--epochs",
        "1",
        "--json",
    )
    one_error(refused, "private dataset 'pooled' is not available for train on this node")
    # a name the node does not hold: the same error, naming nothing the node holds
    missing = cli(
        home,
        "train",
        "--dataset",
        "private:nothing",
        "--node",
        "node-1",
        "--model",
        "logreg",
        "--json",
    )
    one_error(missing, "private dataset 'nothing' is not available for train on this node")
    assert "secret" not in missing.stderr
    assert "pooled" not in missing.stderr
    assert _state_of_node(cluster, "node-1") == before


def _answer(cluster: dict[str, Any], signer: Identity, **body: Any) -> tuple[Any, dict[str, Any]]:
    """A receipt signed by ``signer`` as a (lying) node would write it, stored on the cluster
    as the node would, and an answer naming it."""
    store = open_store(cluster["home"])
    started = body.pop("started", time.time())
    ended = body.pop("ended", started + 1)
    outputs = body.pop("outputs")
    scratch = ArtifactStore(Path(tempfile.mkdtemp(dir=cluster["home"].parent)))
    receipt = write_receipt(
        scratch,
        signer,
        task="train",
        code="0" * 64,
        parameters=body.pop("parameters"),
        inputs=[],
        outputs=outputs,
        started=started,
        ended=ended,
    )
    store.put_record(scratch.get_record(receipt.cid))
    result = {
        "model": outputs[0],
        "metrics": {},
        "receipt": str(receipt.cid),
        "node_id": signer.id,
        "cached": False,
    }
    return store, result


def test_answers_bind_to_the_node_they_were_sent_to(cluster: dict[str, Any]) -> None:
    home = cluster["home"]
    coordinator = Coordinator.for_home(home)
    node1 = Identity.load(_node_home(cluster, "node-1"), "node")
    node2 = Identity.load(_node_home(cluster, "node-2"), "node")
    honest = ok(
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
            "--seed",
            "5",
            "--json",
        )
    )
    made = honest["model"]  # trained with seed 5
    spec = open_store(home).open_artifact(made).attrs["cidflow.model"]
    params = {"dataset": "private:secret", "model": "logreg", "epochs": 1, "seed": 5}
    on_node = {**params, "dataset": spec["dataset"]}  # what node-1 resolved it to
    journal = home / "receipts.journal"
    before = journal.read_bytes()
    sent = time.time() - 5
    cases = [
        # node-2's key answering for node-1 (what a federated answer from another node is)
        (node2, {}, [made], "not signed by node-1's registered key"),
        # a receipt claiming an output its answer does not name
        (node1, {}, [made, honest["receipt"]], "not the outputs it answered"),
        # a blob it did not write in this run: a model made with another seed
        (node1, {"seed": 6}, [made], "was not made by this run"),
        # an 'ended' in 2100
        (node1, {"ended": 4102444800.0}, [made], "a time in the future"),
        # a run that 'started' before the coordinator asked for it
        (node1, {"started": sent - 3600, "ended": sent - 3500}, [made], "before it was asked"),
        # a receipt for other parameters than the request's
        (node1, {"epochs": 7}, [made], "for other parameters"),
    ]
    for signer, changes, outputs, reason in cases:
        times = {k: changes.pop(k) for k in ("started", "ended") if k in changes}
        store, result = _answer(
            cluster,
            signer,
            outputs=outputs,
            started=times.get("started", sent + 1),
            parameters={**on_node, **changes},
            **({"ended": times["ended"]} if "ended" in times else {}),
        )
        asked = {**params, **{k: v for k, v in changes.items() if k == "seed"}}
        with pytest.raises(RemoteRunError, match=reason):
            verify_answer(
                store, coordinator, "node-1", "train", asked, result, sent=sent, private=["dataset"]
            )
    assert journal.read_bytes() == before  # nothing refused was recorded for lineage
    # the honest answer's receipt names node-1's registered id
    assert ok(cli(home, "lineage", made, "--json"))["produced_by"]["node"] == node1.id


def test_a_coordinator_record_without_node_ids_is_refused(tmp_path: Path) -> None:
    (tmp_path / "cluster.json").write_text(json.dumps({"storage": {}}))
    with pytest.raises(FlowError, match="names no node ids"):
        Coordinator.for_home(tmp_path)


PROBE = '''
import socket
import torch
from torch import nn

TOKEN = {token!r}
NODE_URL = {url!r}


def _reach() -> list[float]:
    """What this code could reach: the node's token file, the node's blob server."""
    found = [0.0, 0.0]
    try:
        with open(TOKEN) as f:
            found[0] = float(len(f.read()) > 0)
    except OSError:
        pass
    host, port = NODE_URL.removeprefix("http://").split(":")
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
        found[1] = 1.0
    except OSError:
        pass
    return found


class Probe(nn.Module):
    def __init__(self, features: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(features, classes)
        self.register_buffer("reached", torch.tensor(_reach()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


def build(input_shape, n_classes):
    return Probe(int(torch.tensor(input_shape).prod()), n_classes)
'''


def test_user_code_runs_on_a_node_only_allowed_approved_and_sandboxed(
    cluster: dict[str, Any], tmp_path: Path
) -> None:
    home = cluster["home"]
    node1 = _node_home(cluster, "node-1")
    code_dir = tmp_path / "probe"
    code_dir.mkdir()
    url = next(n["url"] for n in cluster["nodes"] if n["name"] == "node-1")
    (code_dir / "probe.py").write_text(PROBE.format(token=str(node1 / "token"), url=url))
    code = ok(cli(home, "code", "add", str(code_dir), "--json"))["cid"]
    train = [
        "train",
        "--dataset",
        "private:secret",
        "--node",
        "node-1",
        "--code",
        code,
        "--model",
        "probe:build",
        "--epochs",
        "1",
        "--seed",
        "2",
        "--json",
    ]
    before = _state_of_node(cluster, "node-1")
    # not on the operator's allow-list: refused on the node, nothing imported there
    one_error(
        cli(home, *train),
        f"is not allowed on this node: its operator allows code with 'cidflow node allow {code}'",
    )
    assert ok(cli(home, "node", "allow", code, "--home", str(node1), "--json"))["changed"]
    # allowed by the operator, not yet approved by the private dataset's owner
    one_error(
        cli(home, *train), f"private dataset 'secret' is not available for train with code {code}"
    )
    assert _state_of_node(cluster, "node-1") == before
    assert not (node1 / "code").exists()  # never even materialised
    ok(cli(home, "node", "approve", "secret", code, "--home", str(node1), "--json"))
    trained = ok(cli(home, *train))
    assert trained["node"] == "node-1"
    store = open_store(home)
    model = store.open_artifact(trained["model"])
    assert model.attrs["cidflow.model"]["code"] == code
    # inside the sandbox the code reached neither the node's token nor its blob server
    assert model.to_state_dict()["reached"].tolist() == [0.0, 0.0]
    receipt = ok(cli(home, "lineage", trained["model"], "--json"))["produced_by"]
    assert code in [i["cid"] for i in receipt["inputs"]]
    assert receipt["parameters"]["code"] == code
    # the same model evaluated on the node: sandboxed again, aggregate metrics leave
    ev = ok(
        cli(
            home,
            "evaluate",
            "--model",
            trained["model"],
            "--dataset",
            "private:secret",
            "--node",
            "node-1",
            "--trust-code",
            code,
            "--json",
        )
    )
    assert 0.0 <= ev["metrics"]["accuracy"] <= 1.0
    # the operator withdraws it: refused again
    ok(cli(home, "node", "allow", code, "--revoke", "--home", str(node1), "--json"))
    refused = cli(
        home,
        "evaluate",
        "--model",
        trained["model"],
        "--dataset",
        "private:secret",
        "--node",
        "node-1",
        "--trust-code",
        code,
        "--json",
    )
    one_error(refused, "is not allowed on this node")
