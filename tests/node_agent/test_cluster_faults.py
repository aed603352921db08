"""Faults against real node-agent processes (``cidflow node start``) on 127.0.0.1.

Four nodes run as separate processes for the whole module: ``n1``-``n3`` were given one token
by hand (as an operator of three machines might), ``n4`` made its own token and holds a private
dataset. The client side is built here
(:class:`ReplicatedBlobStore` over :class:`HTTPBlobStore`, or a home with ``cluster.json``).
Faults are real: bytes flipped in a node's blob files, processes stopped with SIGSTOP,
terminated, or killed with SIGKILL in the middle of an upload. A test that damages a node
leaves it to the ``nodes`` fixture, which restarts or resumes it before the next test.

Cheap tests come first: the repair over all four nodes then has little to copy. An upload over
the node's size limit (413) is tested in-process only (``test_blobs_app.py``): ``cidflow node
start`` offers no way to lower the limit from 128 MiB.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import snapshot

from artifacts.blobstore import LocalBlobStore
from artifacts.blobstore.http import HTTPBlobStore
from artifacts.blobstore.replicated import Replica, ReplicatedBlobStore
from artifacts.blobstore.tiered import TieredBlobStore
from artifacts.cid import CID, compute_cid
from artifacts.cluster import open_store
from artifacts.errors import (
    BlobNotFoundError,
    CorruptBlobError,
    ReplicationError,
)
from artifacts.store import ArtifactStore

pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]

MiB = 1 << 20
CLUSTER = ("n1", "n2", "n3")
PRIVATE_NODE = "n4"
#: The routes anyone may call; every other operation in the live OpenAPI document needs the token.
PUBLIC = {
    ("get", "/v1/health"),
    ("get", "/v1/info"),
    ("get", "/v1/blobs/{cid}"),
    ("head", "/v1/blobs/{cid}"),
}


def _clean_env() -> dict[str, str]:
    """This environment without cidflow or Prefect settings (a developer's must not leak in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith(("CIDFLOW_", "PREFECT_"))}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass
class Node:
    """One ``cidflow node start`` process: its home, port and (while running) its process."""

    name: str
    home: Path
    port: int
    extra: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    paused: bool = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return (self.home / "token").read_text(encoding="utf-8").strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- process control ------------------------------------------------------------------------
    def spawn(self) -> None:
        cmd = [
            sys.executable,
            "-m",
            "cidflow",
            "node",
            "start",
            "--name",
            self.name,
            "--home",
            str(self.home),
            "--port",
            str(self.port),
            *self.extra,
        ]
        with open(self.home / "node.log", "ab") as log:
            self.proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=_clean_env(),
                start_new_session=True,
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if not self.running:
                log = (self.home / "node.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"node {self.name} exited while starting:\n{log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v1/health", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {self.name} did not answer /v1/health in {timeout} s")
            time.sleep(0.05)

    def signal_group(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the node's process group and reap it."""
        if self.proc is None:
            return
        self.resume()
        self.signal_group(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def terminate(self) -> None:
        """A graceful stop (SIGTERM), as an operator would do."""
        assert self.proc is not None
        self.resume()
        self.signal_group(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def pause(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.paused and self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
        self.paused = False

    # -- what it holds --------------------------------------------------------------------------
    def disk(self) -> LocalBlobStore:
        """The node's blob folder, read directly (read-only: never cleans its temp files)."""
        return LocalBlobStore(self.home, read_only=True)

    def blob_path(self, cid: CID | str) -> Path:
        text = str(cid)
        return self.home / "blobs" / text[-3:-1] / text

    def holds_intact(self, cid: CID | str) -> bool:
        """Whether the node's disk holds a copy of ``cid`` that re-hashes correctly."""
        try:
            self.disk().verify(cid)
        except (FileNotFoundError, CorruptBlobError):
            return False
        return True

    def temp_files(self) -> list[Path]:
        return sorted((self.home / "tmp").glob("*.incomplete"))

    def client(
        self, *, token: str | None = None, timeout: float = 10.0, connect_timeout: float = 3.0
    ) -> HTTPBlobStore:
        return HTTPBlobStore(
            self.url,
            token=self.token if token is None else token,
            timeout=timeout,
            connect_timeout=connect_timeout,
        )


class Nodes:
    """The module's node processes, by name."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.by_name = {node.name: node for node in nodes}

    def __getitem__(self, name: str) -> Node:
        return self.by_name[name]

    @property
    def cluster(self) -> list[Node]:
        return [self.by_name[name] for name in CLUSTER]

    def heal(self) -> None:
        """Resume paused nodes and restart dead ones (same home, same port)."""
        dead = []
        for node in self.by_name.values():
            node.resume()
            if not node.running:
                if node.proc is not None:
                    node.proc.wait(timeout=30)
                node.spawn()
                dead.append(node)
        for node in dead:
            node.wait_ready()

    def stop_all(self) -> None:
        for node in self.by_name.values():
            node.kill()


def replicated(
    nodes: Iterable[Node],
    r: int = 2,
    *,
    timeout: float = 10.0,
    connect_timeout: float = 3.0,
) -> ReplicatedBlobStore:
    """A fresh client of ``nodes`` (its own suspects and back-off), each with its own token."""
    replicas = [
        Replica(n.name, n.client(timeout=timeout, connect_timeout=connect_timeout)) for n in nodes
    ]
    return ReplicatedBlobStore(replicas, r=r)


def payload(size: int) -> bytes:
    return secrets.token_bytes(size)


def blob_ranked_first(store: ReplicatedBlobStore, node: str, size: int = 64 << 10) -> bytes:
    """Random bytes whose CID ranks ``node`` first (about one try in three with three nodes)."""
    while True:
        data = payload(size)
        if store.ranking(compute_cid(data))[0] == node:
            return data


def artifact_blobs(store: ArtifactStore, cid: CID | str) -> list[str]:
    """Every blob of an artifact: root manifest, table nodes and chunks."""
    art = store.open_artifact(cid)
    return [str(art.cid), *map(str, art.tree_nodes()), *map(str, art.blob_cids())]


def corrupt(node: Node, cid: CID | str) -> None:
    """Flip bytes of the node's copy of ``cid`` in place (same size, read-only again after)."""
    path = node.blob_path(cid)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    for i in range(0, len(data), max(1, len(data) // 7)):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    path.chmod(0o444)


def write_cluster_json(home: Path, nodes: Iterable[Node], replication: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    nodes = list(nodes)
    storage = {
        "replication": replication,
        "cache": False,
        "nodes": [
            {"name": n.name, "url": n.url, "token_file": str(n.home / "token")} for n in nodes
        ],
    }
    (home / "cluster.json").write_text(json.dumps({"storage": storage}), encoding="utf-8")


def cli(home: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "cidflow", "--home", str(home), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=_clean_env(), timeout=timeout)


def run_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Start ``fn`` in a daemon thread; the dict gets ``result`` or ``error`` when it ends."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def joined(thread: threading.Thread, box: dict[str, Any], timeout: float = 60.0) -> Any:
    """The thread's result (re-raising its error); fails instead of hanging if it never ends."""
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s"
    if "error" in box:
        raise box["error"]
    return box["result"]


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("private") / "secret.npz"
    rng = np.random.default_rng(7)
    np.savez(path, x=rng.normal(size=(64, 4)).astype(np.float32), y=np.arange(64) % 2)
    return path


@pytest.fixture(scope="module")
def all_nodes(tmp_path_factory: pytest.TempPathFactory, private_npz: Path) -> Iterator[Nodes]:
    """n1-n3 with one shared token written before start; n4 with the token it made itself
    and a private dataset. Started together; killed (process groups) at the end."""
    shared = secrets.token_urlsafe(32)
    nodes = []
    for name in CLUSTER:
        home = tmp_path_factory.mktemp(name)
        fd = os.open(home / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(shared + "\n")
        nodes.append(Node(name, home, _free_port()))
    home = tmp_path_factory.mktemp(PRIVATE_NODE)
    nodes.append(Node(PRIVATE_NODE, home, _free_port(), ("--private", f"secret={private_npz}")))
    group = Nodes(nodes)
    try:
        for node in nodes:
            node.spawn()
        for node in nodes:
            node.wait_ready()
        yield group
    finally:
        group.stop_all()


@pytest.fixture
def nodes(all_nodes: Nodes) -> Iterator[Nodes]:
    """The module's nodes, every one running and answering; paused ones resumed afterwards."""
    all_nodes.heal()
    try:
        yield all_nodes
    finally:
        for node in all_nodes.by_name.values():
            node.resume()  # never leave a SIGSTOPped process behind, even on failure


# -- auth on the real process ----------------------------------------------------------------------
def test_real_node_refuses_every_write_list_and_delete_route_without_its_own_token(
    nodes: Nodes,
) -> None:
    node = nodes[PRIVATE_NODE]  # started without a token file: it made its own
    token_file = node.home / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = node.token
    assert len(token) >= 16
    cluster_token = nodes["n1"].token
    assert token != cluster_token

    doc = httpx.get(f"{node.url}/openapi.json", timeout=10).json()
    operations = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "put", "post", "patch", "delete", "head")
    }
    guarded = sorted(operations - PUBLIC)
    assert {("put", "/v1/blobs/{cid}"), ("delete", "/v1/blobs/{cid}"), ("get", "/v1/blobs")} <= set(
        guarded
    )

    data = payload(4096)
    cid = str(compute_cid(data))
    wrong_tokens = [cluster_token, token[:-1], "x" * len(token)]
    with httpx.Client(base_url=node.url, timeout=10) as client:

        def call(method: str, path: str, headers: dict[str, str]) -> httpx.Response:
            body = data if method in ("put", "post", "patch") else None
            return client.request(method, path.replace("{cid}", cid), content=body, headers=headers)

        for method, path in guarded:
            assert call(method, path, {}).status_code == 401, (method, path)
            for wrong in wrong_tokens:
                answer = call(method, path, {"Authorization": f"Bearer {wrong}"})
                assert answer.status_code == 403, (method, path, answer.text)
        assert not node.holds_intact(cid)  # nothing refused left anything behind

        # The content of the 0600 file is the token that works.
        good = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        assert call("put", "/v1/blobs/{cid}", good).status_code == 201
        assert node.holds_intact(cid)
        listing = call("get", "/v1/blobs", good)
        assert listing.status_code == 200
        assert cid in listing.json()["cids"]
        assert call("delete", "/v1/blobs/{cid}", good).status_code == 204
        assert not node.holds_intact(cid)


# -- private data ----------------------------------------------------------------------------------
def private_blobs(node: Node) -> list[str]:
    """Every blob of the node's private dataset 'secret' (read from its own home)."""
    datasets = json.loads((node.home / "private.json").read_text(encoding="utf-8"))
    return artifact_blobs(ArtifactStore(node.home, read_only=True), datasets["secret"]["cid"])


EMPTY_GROUP = {"attributes": {}, "zarr_format": 3, "node_type": "group"}


def hidden_blobs(node: Node) -> list[str]:
    """The private blobs a node hides: all but the content-free empty-group metadata, which
    every zarr hierarchy shares (served, see the next test)."""
    store = ArtifactStore(node.home, read_only=True).blobs

    def content_free(cid: str) -> bool:
        try:
            return bool(json.loads(store.get(cid)) == EMPTY_GROUP)
        except ValueError:
            return False

    return [c for c in private_blobs(node) if not content_free(c)]


def test_private_blobs_are_never_served_listed_or_copied_by_repair(nodes: Nodes) -> None:
    owner = nodes[PRIVATE_NODE]
    secret = hidden_blobs(owner)
    assert len(secret) > 3
    assert all(owner.holds_intact(c) for c in secret)
    with owner.client() as peer:
        for cid in secret:
            assert httpx.get(f"{owner.url}/v1/blobs/{cid}", timeout=10).status_code == 404
            assert httpx.head(f"{owner.url}/v1/blobs/{cid}", timeout=10).status_code == 404
            with pytest.raises(BlobNotFoundError):
                peer.get(cid)
        listed = {str(c) for c in peer.iter_cids()}
    assert not listed & set(secret)
    # Deleting over HTTP is refused as if absent too: the data stays.
    answer = httpx.delete(
        f"{owner.url}/v1/blobs/{secret[0]}",
        headers={"Authorization": f"Bearer {owner.token}"},
        timeout=10,
    )
    assert answer.status_code == 404
    assert owner.holds_intact(secret[0])

    # A public blob held only by the private node: repair must copy it (so repair does look at
    # that node), and must not copy any private blob anywhere.
    public = payload(8192)
    with owner.client() as peer:
        public_cid = str(peer.put(public))
    others = [nodes[n] for n in CLUSTER]
    before = {cid: {n.name for n in others if n.holds_intact(cid)} for cid in secret}
    store = replicated([*others, owner], r=2)
    report = store.repair()
    assert report.ok, report
    assert any(n.holds_intact(public_cid) for n in others)  # copied off the private node
    after = {cid: {n.name for n in others if n.holds_intact(cid)} for cid in secret}
    assert after == before
    assert all(owner.holds_intact(c) for c in secret)


def test_a_public_blob_shared_with_a_private_dataset_is_served_and_a_put_unhides_nothing(
    nodes: Nodes, tmp_path: Path
) -> None:
    """The blobs a public artifact shares with the private dataset are content-free (a group's
    metadata without attributes): the node serves them. Every other private blob stays hidden
    even after someone PUTs its bytes, which answers 201 as for a blob not held (200 would tell
    that the node holds it)."""
    owner = nodes[PRIVATE_NODE]
    other = ArtifactStore(tmp_path / "elsewhere")  # any public artifact
    (other.home / "f.bin").write_bytes(payload(1000))
    shared = set(artifact_blobs(other, other.put_path(other.home / "f.bin")))
    shared &= set(private_blobs(owner))
    assert shared  # the group metadata every zarr hierarchy has
    with owner.client() as peer:
        for cid in shared:
            assert peer.get(cid) == other.blobs.get(cid)  # no secret: served without any PUT
    hidden = sorted(set(private_blobs(owner)) - shared)
    assert hidden == sorted(set(hidden_blobs(owner)))
    private = ArtifactStore(owner.home, read_only=True).blobs
    before = snapshot(owner.home / "blobs")
    with httpx.Client(base_url=owner.url, timeout=10) as client:
        auth = {"Authorization": f"Bearer {owner.token}"}
        for cid in hidden:
            answer = client.put(f"/v1/blobs/{cid}", content=private.get(cid), headers=auth)
            assert answer.status_code == 201, answer.text
            for method in ("GET", "HEAD", "DELETE"):
                assert client.request(method, f"/v1/blobs/{cid}", headers=auth).status_code == 404
        assert not set(hidden) & set(client.get("/v1/blobs", headers=auth).json()["cids"])
    assert {k: v[:3] + v[4:] for k, v in snapshot(owner.home / "blobs").items()} == {
        k: v[:3] + v[4:] for k, v in before.items()
    }  # the same files, bytes and modes (only a time refreshed)
    assert all(owner.holds_intact(c) for c in hidden)
    for cid in hidden:
        assert stat.S_IMODE(owner.blob_path(cid).stat().st_mode) == 0o400


# -- a node serving corrupted bytes ----------------------------------------------------------------
def test_a_corrupt_copy_is_passed_over_suspected_repaired_and_never_cached(
    nodes: Nodes, tmp_path: Path
) -> None:
    writer = replicated(nodes.cluster)
    good = blob_ranked_first(writer, "n2")
    cid = writer.put(good)
    writer.flush()
    home_nodes = writer.placement(cid)
    assert home_nodes[0] == "n2"
    assert all(nodes[n].holds_intact(cid) for n in home_nodes)
    corrupt(nodes["n2"], cid)
    assert not nodes["n2"].holds_intact(cid)

    reader = replicated(nodes.cluster)  # a fresh client: no suspicion yet, n2 is tried first
    assert reader.get(cid) == good
    assert "corrupt" in reader.suspects["n2"]
    # Read repair gave n2 the verified bytes back.
    assert nodes["n2"].holds_intact(cid)

    # The same through a local cache in front of the cluster: the cache gets the good bytes.
    good2 = blob_ranked_first(writer, "n3")
    cid2 = writer.put(good2)
    corrupt(nodes["n3"], cid2)
    cache = LocalBlobStore(tmp_path / "cache")
    remote = replicated(nodes.cluster)
    tiered = TieredBlobStore(cache, remote)
    assert tiered.get(cid2) == good2
    assert "n3" in remote.suspects
    assert cache.get(cid2) == good2  # verified again on the way out of the cache
    assert cache.path_of(cid2).read_bytes() == good2


def test_a_blob_corrupt_on_every_node_is_an_error_naming_it_and_is_not_cached(
    nodes: Nodes, tmp_path: Path
) -> None:
    writer = replicated(nodes.cluster)
    data = payload(100_000)
    cid = writer.put(data)
    writer.flush()
    holders = [n for n in nodes.cluster if n.holds_intact(cid)]
    assert len(holders) == 2
    try:
        for node in holders:
            corrupt(node, cid)

        reader = replicated(nodes.cluster)
        with pytest.raises(CorruptBlobError) as caught:  # every node answered: none is intact
            reader.get(cid)
        assert str(cid) in str(caught.value)
        assert {n.name for n in holders} <= set(reader.suspects)

        cache = LocalBlobStore(tmp_path / "cache")
        with pytest.raises((CorruptBlobError, ReplicationError)) as through_cache:
            TieredBlobStore(cache, replicated(nodes.cluster)).get(cid)
        assert str(cid) in str(through_cache.value)
        assert not cache.has(cid)
        assert not list(cache.iter_cids())
        # Nothing "repaired" a node with bad bytes: the copies are still the damaged ones.
        assert not any(n.holds_intact(cid) for n in nodes.cluster)
    finally:  # leave no unrepairable blob for later repairs to report
        for node in holders:
            with node.client() as peer:
                peer.delete(cid)


# -- a slow node (SIGSTOP: it accepts connections and never answers) -------------------------------
def test_a_node_that_stops_answering_is_passed_over_for_reads_and_writes(nodes: Nodes) -> None:
    slow = nodes["n1"]
    writer = replicated(nodes.cluster)
    data = blob_ranked_first(writer, slow.name)
    cid = writer.put(data)
    writer.flush()
    assert slow.holds_intact(cid)

    slow.pause()
    try:
        store = replicated(nodes.cluster, timeout=1.0, connect_timeout=1.0)
        thread, box = run_in_thread(lambda: store.get(cid))
        assert joined(thread, box, timeout=30) == data
        assert "unavailable" in store.suspects[slow.name]

        # A put whose first home node is the stopped one: the copies go to the other two.
        fresh = replicated(nodes.cluster, timeout=1.0, connect_timeout=1.0)
        more = blob_ranked_first(fresh, slow.name)
        thread, box = run_in_thread(lambda: fresh.put(more))
        new = joined(thread, box, timeout=30)
        others = [n for n in nodes.cluster if n is not slow]
        assert all(n.holds_intact(new) for n in others)
        assert slow.name in fresh.suspects
    finally:
        slow.resume()
    # Resumed, it works through what queued up; an upload cut short leaves no temp file.
    slow.wait_ready()
    _wait_for("the resumed node's temp files to go", lambda: not slow.temp_files())


# -- a stopped node --------------------------------------------------------------------------------
def test_a_stopped_node_fails_over_and_store_repair_restores_r(
    nodes: Nodes, tmp_path: Path
) -> None:
    home = tmp_path / "client"
    write_cluster_json(home, nodes.cluster, replication=2)
    source = tmp_path / "data.bin"
    source.write_bytes(payload(6 * MiB))
    store = open_store(home)
    cid = store.put_path(source)
    blobs = artifact_blobs(store, cid)
    victim = next(n for n in nodes.cluster if n.holds_intact(blobs[-1]))
    live = [n for n in nodes.cluster if n is not victim]
    assert any(victim.holds_intact(b) for b in blobs)
    assert not all(all(n.holds_intact(b) for n in live) for b in blobs)  # repair has work

    victim.terminate()
    # Reads fail over (a fresh process: the CLI, through cluster.json).
    out = tmp_path / "out"
    got = cli(home, "get", str(cid), str(out))
    assert got.returncode == 0, got.stderr
    assert (out / "data.bin").read_bytes() == source.read_bytes()

    repaired = cli(home, "store", "repair", "--json")
    assert repaired.returncode == 0, repaired.stderr
    report = json.loads(repaired.stdout.strip().splitlines()[-1])
    assert report["ok"] is True
    assert report["copied"] > 0
    assert report["unreachable"] == [victim.name]
    for blob in blobs:
        assert all(n.holds_intact(blob) for n in live), blob  # r = 2 on the 2 live nodes


# -- a node killed in the middle of a transfer -----------------------------------------------------
def kill_mid_upload(victim: Node, still_running: Callable[[], bool]) -> None:
    """SIGKILL ``victim`` once it has stored a few blobs and is receiving another (or as soon as
    the client is done, on a machine fast enough to finish first)."""

    def receiving() -> bool:
        if not still_running():
            return True
        stored = sum(1 for _ in victim.disk().iter_cids())
        return stored >= 2 and bool(victim.temp_files())

    _wait_for(f"an upload to {victim.name}", receiving, timeout=120)
    victim.kill()


def test_a_node_killed_mid_add_loses_nothing_acknowledged(nodes: Nodes, tmp_path: Path) -> None:
    victim = nodes["n1"]
    live = [n for n in nodes.cluster if n is not victim]
    source = tmp_path / "big.bin"
    source.write_bytes(payload(64 * MiB))
    home = tmp_path / "client"
    store = ArtifactStore(home, blobs=replicated(nodes.cluster, r=2))
    thread, box = run_in_thread(lambda: store.put_path(source))
    kill_mid_upload(victim, thread.is_alive)
    # r = 2 with one of three nodes lost: the add goes on on the other two.
    cid = joined(thread, box, timeout=300)
    assert [a.cid for a in store.list()] == [str(cid)]

    blobs = artifact_blobs(store, cid)
    on_victim = victim.disk()
    for blob in blobs:
        copies = [n.name for n in live if n.holds_intact(blob)]
        # Every acknowledged copy exists: on live nodes, or intact on the killed node's disk.
        assert len(copies) + victim.holds_intact(blob) >= 2, (blob, copies)
        assert copies, blob  # and one node that answers has it
    # The killed node's disk holds whole blobs only (atomic writes): an upload it was receiving
    # is at most a temp file, never under a CID's name.
    for held in on_victim.iter_cids():
        on_victim.verify(held)
    for node in live:  # the live nodes finished every upload: nothing half-written is left
        assert not node.temp_files(), node.name

    # Reads fail over to the live nodes: the file comes back whole.
    out = tmp_path / "out"
    ArtifactStore(home, blobs=replicated(nodes.cluster)).export(cid, out)
    assert (out / "big.bin").read_bytes() == source.read_bytes()
    # Restarted, the node removes the dead upload's temp file.
    nodes.heal()
    assert not victim.temp_files()


def no_temp_files(node: Node) -> Callable[[], bool]:
    return lambda: not node.temp_files()


def test_an_add_that_cannot_keep_r_copies_fails_in_one_line_and_records_nothing(
    nodes: Nodes, tmp_path: Path
) -> None:
    victim = nodes["n2"]
    home = tmp_path / "client"
    write_cluster_json(home, nodes.cluster, replication=3)  # every node must hold every blob
    source = tmp_path / "big.bin"
    source.write_bytes(payload(32 * MiB))
    cmd = [sys.executable, "-m", "cidflow", "--home", str(home), "add", str(source), "--json"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_clean_env()
    )
    try:
        kill_mid_upload(victim, lambda: proc.poll() is None)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    refs = sorted(p.name for p in (home / "refs" / "artifacts").glob("*"))
    if proc.returncode == 0:  # it finished before the kill: three copies of everything
        cid = json.loads(stdout.strip().splitlines()[-1])["cid"]
        assert refs == [cid]
        for blob in artifact_blobs(open_store(home, read_only=True), cid):
            assert all(n.holds_intact(blob) for n in nodes.cluster), blob
        return
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: blob "), lines[0]
    assert "of 3 copies" in lines[0], lines[0]
    assert victim.name in lines[0], lines[0]
    assert refs == []  # no artifact record claims an incomplete add
    assert not stdout.strip()
    for node in nodes.cluster:
        if node is not victim:  # uploads the client dropped when it quit are cleaned up
            _wait_for(f"{node.name}'s temp files to go", no_temp_files(node))
