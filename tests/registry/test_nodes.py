"""Node announcements and heartbeats (signed ``node`` entries) and ``cidflow nodes``.

On SQLite and PostgreSQL, locally and through the real service on 127.0.0.1; probes go to real
HTTP servers on 127.0.0.1 (a node's ``/v1/info``, another node's, a dead port); a service that
lies about nodes is a real HTTP server too, serving edited answers.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from servers import LiveServer

from registry.client import RegistryClient
from registry.entries import Signed, make_body, validate_body
from registry.errors import InvalidEntryError, LogIntegrityError, ServiceError, SignatureError
from registry.identity import Identity
from registry.local import open_registry
from registry.nodes import (
    CLOCK_SKEW,
    NodeInfo,
    check_nodes,
    node_entry,
    node_status,
    probe_node,
)
from registry.registry import Registry
from registry.service import create_app
from registry.sql import nodes as nodes_table

TOKEN = "test-token-" + "n" * 24
HARDWARE = {
    "cpu_count": 8,
    "memory_bytes": 32 << 30,
    "gpus": [{"name": "Test GPU", "memory_bytes": 16 << 30}],
}


# -- real servers on 127.0.0.1 --------------------------------------------------------------------


class JsonServer:
    """A tiny HTTP server (stdlib) answering ``GET PATH`` with ``routes[PATH]`` as JSON (bytes
    as they are), 404 for other paths."""

    def __init__(self, routes: dict[str, Any]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.partition("?")[0]
                if path not in routes:
                    self.send_error(404)
                    return
                answer = routes[path]
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=20)


@pytest.fixture
def serve_json() -> Iterator[Callable[[dict[str, Any]], JsonServer]]:
    servers: list[JsonServer] = []

    def start(routes: dict[str, Any]) -> JsonServer:
        servers.append(JsonServer(routes))
        return servers[-1]

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def dead_endpoint() -> str:
    """An http URL on 127.0.0.1 where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def live(reg: Registry) -> Iterator[LiveServer]:
    server = LiveServer(create_app(reg, token=TOKEN))
    yield server
    server.stop()


@pytest.fixture
def client(live: LiveServer) -> Iterator[RegistryClient]:
    with RegistryClient(live.url, token=TOKEN) as c:
        yield c


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def node_signed(who: Identity, *, timestamp: str | None = None, **fields: Any) -> Signed:
    """A ``node`` entry signed by ``who`` (fields default to a valid announcement of ``who``)."""
    values: dict[str, Any] = {
        "node_id": who.id, "endpoint": "http://127.0.0.1:8470", "capacity": 1 << 30,
        "hardware": HARDWARE,
    }  # fmt: skip
    values.update(fields)
    body = make_body("node", who, **values)
    if timestamp is not None:
        body["timestamp"] = timestamp
    return Signed.sign(body, who)


# -- announce and list, locally on both backends and through the service ------------------------


def test_announce_and_list(reg: Registry, alice: Identity, bob: Identity) -> None:
    assert reg.nodes() == []
    a = reg.announce_node(
        alice, endpoint="http://10.0.0.7:8470", capacity=100 << 30, hardware=HARDWARE,
        name="lab-gpu-1", used=5 << 20,
    )  # fmt: skip
    b = reg.announce_node(bob, endpoint="https://node.example:8443/", capacity=None, hardware={})
    assert (a.node_id, a.name, a.capacity, a.used, a.seq) == (alice.id, "lab-gpu-1", 100 << 30,
                                                              5 << 20, 1)  # fmt: skip
    assert (b.node_id, b.name, b.capacity, b.used, b.seq) == (bob.id, None, None, None, 2)
    assert reg.nodes() == [a, b]  # named nodes first
    assert a.hardware == HARDWARE
    assert a.endpoint == "http://10.0.0.7:8470"
    assert abs(a.heartbeat - time.time()) < 5
    assert [r.entry.body["type"] for r in reg.log()] == ["node", "node"]
    assert reg.node_records() == reg.log()
    assert reg.verify().seq == 2


def test_heartbeat_replaces_the_previous_info(reg: Registry, alice: Identity) -> None:
    first = reg.announce_node(
        alice, endpoint="http://10.0.0.7:8470", capacity=1 << 30, hardware=HARDWARE, used=0
    )
    beat = reg.announce_node(
        alice, endpoint="http://10.0.0.8:8470", capacity=1 << 30, hardware=HARDWARE, used=4096,
        name="renamed",
    )  # fmt: skip
    assert reg.nodes() == [beat]
    assert (beat.seq, beat.used, beat.endpoint, beat.name) == (2, 4096, "http://10.0.0.8:8470",
                                                               "renamed")  # fmt: skip
    assert first.seq == 1
    assert len(reg.log()) == 2
    assert reg.verify().seq == 2


def test_nodes_through_the_service_equal_local(
    client: RegistryClient, reg: Registry, live: LiveServer, alice: Identity, bob: Identity
) -> None:
    assert client.nodes() == []
    a = client.announce_node(
        alice, endpoint="http://127.0.0.1:9001", capacity=7, hardware=HARDWARE, name="alpha"
    )
    client.announce_node(bob, endpoint="http://127.0.0.1:9002", capacity=None, hardware={})
    beat = client.announce_node(
        alice, endpoint="http://127.0.0.1:9001", capacity=7, hardware=HARDWARE, name="alpha",
        used=3,
    )  # fmt: skip
    assert (a.seq, beat.seq, beat.used) == (1, 3, 3)
    assert client.nodes() == reg.nodes()
    assert [n.node_id for n in client.nodes()] == [alice.id, bob.id]
    answer = httpx.get(f"{live.url}/v1/nodes").json()["nodes"]
    assert [n["entry"] for n in answer] == [r.entry.as_json() for r in reg.node_records()]
    assert answer[0]["seq"] == 3
    assert answer[0]["entry"]["body"]["used"] == 3
    assert client.verify() == reg.verify()


# -- refusals ---------------------------------------------------------------------------------


def test_forged_node_entry_is_refused(
    reg: Registry, client: RegistryClient, live: LiveServer, alice: Identity, bob: Identity
) -> None:
    forged = node_signed(alice, node_id=bob.id)  # alice announces as bob
    with pytest.raises(InvalidEntryError, match="fingerprint of the signing key"):
        reg.append(forged)
    with pytest.raises(InvalidEntryError, match="fingerprint of the signing key"):
        client.append(forged)
    resp = httpx.post(
        f"{live.url}/v1/entries", json=forged.as_json(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )  # fmt: skip
    assert resp.status_code == 400
    assert resp.json()["error"] == "InvalidEntryError"
    tampered = forged.as_json()
    tampered["body"]["node_id"] = alice.id  # now the right id, but no longer what alice signed
    with pytest.raises(SignatureError, match="signature"):
        reg.append(tampered)
    assert reg.head().seq == 0
    assert reg.nodes() == []


BAD_ENDPOINTS = [
    "", "10.0.0.7:8470", "ftp://10.0.0.7/", "file:///etc/passwd", "http://", "http://:80",
    "http://user:secret@10.0.0.7:8470", "http://10.0.0.7:99999", "http://10.0.0.7:port",
    "http://10.0.0.7/?q=1", "http://10.0.0.7/#x", "http://10.0.0.7 /", "http://10.0.0.7/\nx",
    "javascript:alert(1)", "HTTP://10.0.0.7", "http://" + "a" * 600,
]  # fmt: skip


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS)
def test_bad_endpoint_is_one_line_error_and_nothing_appended(
    reg: Registry, alice: Identity, endpoint: str
) -> None:
    with pytest.raises(InvalidEntryError) as caught:
        reg.announce_node(alice, endpoint=endpoint, capacity=1, hardware={})
    message = str(caught.value)
    assert message.startswith("endpoint must be an http(s) URL")
    assert "\n" not in message
    assert len(message) < 200
    body = node_signed(alice).body | {"endpoint": endpoint}
    with pytest.raises(InvalidEntryError):
        validate_body(body)  # the registry refuses it from anyone, not only from this library
    assert reg.head().seq == 0
    assert reg.log() == []


def test_bad_endpoint_through_the_service(
    client: RegistryClient, reg: Registry, live: LiveServer, alice: Identity
) -> None:
    with pytest.raises(InvalidEntryError, match="endpoint must be an http"):
        client.announce_node(alice, endpoint="ftp://x/", capacity=1, hardware={})
    entry = node_signed(alice).as_json()
    entry["body"]["endpoint"] = "ftp://x/"  # bypass the library: the service must refuse it
    resp = httpx.post(
        f"{live.url}/v1/entries", json=entry, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert resp.status_code == 400
    assert "endpoint must be an http" in resp.json()["detail"]
    assert reg.head().seq == 0


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"hardware": {"blob": "x" * 5000}}, "hardware larger than 4096"),
        ({"hardware": [1, 2]}, "hardware must be an object"),
        ({"capacity": -1}, "capacity"),
        ({"capacity": True}, "capacity"),
        ({"capacity": "1"}, "capacity"),
        ({"name": "Lab_GPU"}, "invalid node name"),
        ({"name": "x" * 65}, "invalid node name"),
        ({"name": ""}, "invalid node name"),
        ({"used": -5}, "used must be"),
        ({"used": 1.5}, "used must be"),
        ({"extra": 1}, "unexpected fields"),
    ],
)
def test_bad_node_fields_are_refused(
    reg: Registry, alice: Identity, fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidEntryError, match=match):
        node_signed(alice, **fields)
    body = make_body("node", alice, node_id=alice.id, endpoint="http://h:1", capacity=1,
                     hardware={})  # fmt: skip
    with pytest.raises(InvalidEntryError, match=match):
        reg.append({"body": body | fields, "sig": alice.sign(b"x")})
    assert reg.head().seq == 0


def test_capacity_is_required_and_old_shape_stays_valid(alice: Identity) -> None:
    old = node_signed(alice)  # node_id, endpoint, capacity, hardware: the original fields only
    assert set(old.body) == {"type", "key", "timestamp", "nonce", "node_id", "endpoint",
                             "capacity", "hardware"}  # fmt: skip
    validate_body(old.body)
    body = dict(old.body)
    del body["capacity"]
    with pytest.raises(InvalidEntryError, match="capacity"):
        validate_body(body)


def test_verify_catches_an_edited_nodes_table(reg: Registry, alice: Identity) -> None:
    reg.announce_node(alice, endpoint="http://127.0.0.1:1", capacity=1, hardware={})
    evil = node_signed(alice, endpoint="http://evil.example:1").body
    with reg.engine.begin() as conn:
        conn.execute(sa.update(nodes_table).values(body=json.dumps(evil)))
    with pytest.raises(LogIntegrityError, match="table 'nodes' disagrees"):
        reg.verify()


# -- a lying service --------------------------------------------------------------------------


def _edit(field: str, value: Any) -> Callable[[list[Any], Identity, Identity], None]:
    return lambda nodes, *_: nodes[0].__setitem__(field, value)


def _forged(nodes: list[Any], alice: Identity, bob: Identity) -> None:
    """Swap in an entry alice validly signed, announcing herself as bob."""
    forged = node_signed(alice, node_id=bob.id)
    nodes[0] = {**NodeInfo.from_body(forged.body, 1).as_json(), "entry": forged.as_json()}


def _resigned_body(nodes: list[Any], *_: Identity) -> None:
    nodes[0]["entry"]["body"]["used"] = 1
    nodes[0]["used"] = 1


def _duplicate(nodes: list[Any], *_: Identity) -> None:
    nodes.append(dict(nodes[0]))


def _no_entry(nodes: list[Any], *_: Identity) -> None:
    del nodes[0]["entry"]


def _other_type(nodes: list[Any], alice: Identity, _: Identity) -> None:
    entry = Signed.sign(make_body("grant", alice, namespace="alice", grantee=alice.public_key),
                        alice)  # fmt: skip
    nodes[0]["entry"] = entry.as_json()


@pytest.mark.parametrize(
    "change",
    [
        _edit("endpoint", "http://evil.example:1"),
        _edit("capacity", 1 << 50),
        _edit("timestamp", "2999-01-01T00:00:00Z"),
        _edit("seq", 0),
        _edit("extra", 1),
        _forged,
        _resigned_body,
        _duplicate,
        _no_entry,
        _other_type,
    ],
)
def test_lying_service_is_caught(
    client: RegistryClient,
    live: LiveServer,
    serve_json: Callable[[dict[str, Any]], JsonServer],
    alice: Identity,
    bob: Identity,
    change: Callable[[list[Any], Identity, Identity], None],
) -> None:
    client.announce_node(alice, endpoint="http://127.0.0.1:9001", capacity=1, hardware=HARDWARE)
    answer = httpx.get(f"{live.url}/v1/nodes").json()
    with RegistryClient(serve_json({"/v1/nodes": answer}).url) as honest_copy:
        assert honest_copy.nodes() == client.nodes()
    change(answer["nodes"], alice, bob)
    with (
        RegistryClient(serve_json({"/v1/nodes": answer}).url) as liar,
        pytest.raises((LogIntegrityError, ServiceError)),
    ):
        liar.nodes()


# -- live or stale --------------------------------------------------------------------------------


def _info(timestamp: str, endpoint: str = "http://127.0.0.1:1", node_id: str = "pkx") -> NodeInfo:
    return NodeInfo(node_id, None, endpoint, None, None, {}, 1, timestamp)


def test_status_by_heartbeat_timestamp() -> None:
    beat = 1_800_000_000.0
    info = _info(stamp(beat))
    assert info.heartbeat == beat
    assert node_status(info, beat, stale_after=180) == "live"
    assert node_status(info, beat + 180, stale_after=180) == "live"
    assert node_status(info, beat + 181, stale_after=180) == "stale"
    assert node_status(info, beat + 30, stale_after=10) == "stale"
    assert node_status(info, beat - CLOCK_SKEW, stale_after=180) == "live"  # clocks differ a bit
    assert node_status(info, beat - CLOCK_SKEW - 1, stale_after=180) == "stale"  # dated ahead


def test_stale_and_live_nodes_in_a_registry(reg: Registry, alice: Identity, bob: Identity) -> None:
    now = time.time()
    reg.append(node_signed(alice, timestamp=stamp(now - 600), name="old"))
    reg.append(node_signed(bob, timestamp=stamp(now - 5), name="new"))
    reg.append(node_signed(Identity.generate(), timestamp="2999-01-01T00:00:00Z", name="future"))
    checked = check_nodes(reg.nodes(), now=now, stale_after=180, probe=False)
    assert [(i.name, status, probed) for i, status, probed in checked] == [
        ("future", "stale", None), ("new", "live", None), ("old", "stale", None),
    ]  # fmt: skip
    assert [s for _, s, _ in check_nodes(reg.nodes(), now=now, stale_after=900, probe=False)] == [
        "stale", "live", "live",
    ]  # fmt: skip
    # a heartbeat makes the old node live again
    reg.append(node_signed(alice, name="old"))
    assert dict((i.name, s) for i, s, _ in check_nodes(reg.nodes(), stale_after=180, probe=False))[
        "old"
    ] == "live"  # fmt: skip


def test_probe(
    serve_json: Callable[[dict[str, Any]], JsonServer], dead_endpoint: str, alice: Identity
) -> None:
    right = serve_json({"/v1/info": {"node_id": alice.id, "name": "n", "capacity": None}})
    other = serve_json({"/v1/info": {"node_id": Identity.generate().id}})
    junk = serve_json({"/v1/info": b"not json", "/x/v1/info": [alice.id]})
    big = serve_json({"/v1/info": {"node_id": alice.id, "pad": "x" * (100 << 10)}})
    assert probe_node(right.url, alice.id)
    assert probe_node(right.url + "/", alice.id)
    assert not probe_node(other.url, alice.id)  # someone else answers there
    assert not probe_node(dead_endpoint, alice.id, timeout=1.0)
    assert not probe_node(junk.url, alice.id)
    assert not probe_node(junk.url + "/x", alice.id)  # JSON, but not an object
    assert not probe_node(junk.url + "/nowhere", alice.id)  # 404
    assert not probe_node(big.url, alice.id)  # more than a probe reads
    assert not probe_node("ftp://127.0.0.1/", alice.id)


def test_live_needs_a_fresh_heartbeat_and_a_matching_probe(
    reg: Registry,
    serve_json: Callable[[dict[str, Any]], JsonServer],
    dead_endpoint: str,
    alice: Identity,
    bob: Identity,
) -> None:
    carol, dave = Identity.generate(), Identity.generate()
    right = serve_json({"/v1/info": {"node_id": alice.id}})
    wrong = serve_json({"/v1/info": {"node_id": alice.id}})  # bob's endpoint answers as alice
    now = time.time()
    reg.announce_node(alice, endpoint=right.url, capacity=1, hardware={}, name="a")
    reg.announce_node(bob, endpoint=wrong.url, capacity=1, hardware={}, name="b")
    reg.announce_node(carol, endpoint=dead_endpoint, capacity=1, hardware={}, name="c")
    reg.append(node_signed(dave, endpoint=right.url, timestamp=stamp(now - 3600), name="d"))
    started = time.monotonic()
    checked = check_nodes(reg.nodes(), stale_after=180, probe=True, timeout=1.0)
    assert time.monotonic() - started < 5
    assert [(i.name, s, p) for i, s, p in checked] == [
        ("a", "live", True), ("b", "stale", False), ("c", "stale", False), ("d", "stale", None),
    ]  # fmt: skip
    without = check_nodes(reg.nodes(), stale_after=180, probe=False)
    assert [s for _, s, _ in without] == ["live", "live", "live", "stale"]
    by_name = {i.name: i for i in reg.nodes()}
    assert node_status(by_name["a"], time.time(), stale_after=180, probe=True) == "live"
    assert node_status(by_name["c"], time.time(), stale_after=180, probe=True) == "stale"


# -- the command ----------------------------------------------------------------------------------


def _cidflow(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIDFLOW_")}
    env["NO_COLOR"] = "1"
    env["COLUMNS"] = "200"
    return subprocess.run(
        [sys.executable, "-m", "cidflow", "--home", str(home), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_cli_nodes(
    tmp_path: Path,
    serve_json: Callable[[dict[str, Any]], JsonServer],
    dead_endpoint: str,
    alice: Identity,
    bob: Identity,
) -> None:
    home = tmp_path / "home"
    done = _cidflow(home, "nodes", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    right = serve_json({"/v1/info": {"node_id": alice.id}})
    with open_registry(None, home) as reg:
        reg.announce_node(alice, endpoint=right.url, capacity=2 << 30, hardware=HARDWARE,
                          name="lab-gpu-1", used=1 << 20)  # fmt: skip
        reg.announce_node(bob, endpoint=dead_endpoint, capacity=None, hardware={})
    done = _cidflow(home, "nodes", "--json")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1
    listed = json.loads(lines[0])
    assert [(n["name"], n["node_id"], n["status"], n["probe"]) for n in listed] == [
        ("lab-gpu-1", alice.id, "live", True), (None, bob.id, "stale", False),
    ]  # fmt: skip
    assert listed[0]["hardware"] == HARDWARE
    assert listed[0]["capacity"] == 2 << 30
    assert listed[0]["used"] == 1 << 20
    assert listed[0]["endpoint"] == right.url
    assert set(listed[0]) == {"node_id", "name", "endpoint", "capacity", "used", "hardware",
                              "seq", "timestamp", "status", "probe"}  # fmt: skip
    done = _cidflow(home, "nodes", "--json", "--no-probe")
    assert [(n["status"], n["probe"]) for n in json.loads(done.stdout)] == [
        ("live", None), ("live", None),
    ]  # fmt: skip
    done = _cidflow(home, "nodes")
    assert done.returncode == 0, done.stderr
    row = next(line for line in done.stdout.splitlines() if "lab-gpu-1" in line)
    assert alice.id[:12] in row
    assert "8 CPU, 32.0 GiB, 1 GPU" in row
    assert "live" in row
    assert "2.0 GiB" in row
    assert "1.0 MiB" in row
    row = next(line for line in done.stdout.splitlines() if bob.id[:12] in line)
    assert "unlimited" in row
    assert "stale (probe failed)" in row


def test_cli_nodes_over_the_service(
    client: RegistryClient, live: LiveServer, tmp_path: Path, alice: Identity, bob: Identity
) -> None:
    client.announce_node(alice, endpoint="http://127.0.0.1:9", capacity=1, hardware={}, name="a")
    client.append(node_signed(bob, timestamp=stamp(time.time() - 600), name="b"))
    done = _cidflow(tmp_path, "nodes", "--json", "--no-probe", "--registry", live.url)
    assert done.returncode == 0, done.stderr
    listed = [(n["name"], n["status"]) for n in json.loads(done.stdout)]
    assert listed == [("a", "live"), ("b", "stale")]
    done = _cidflow(tmp_path, "nodes", "--json", "--no-probe", "--stale-after", "3600",
                    "--registry", live.url)  # fmt: skip
    assert [n["status"] for n in json.loads(done.stdout)] == ["live", "live"]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("--registry", "http://127.0.0.1:9"), "unreachable"),
        (("--stale-after", "0"), "stale-after"),
        (("--stale-after", "soon"), "stale-after"),
    ],
)
def test_cli_nodes_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], match: str) -> None:
    done = _cidflow(tmp_path, "nodes", *args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error:")
    assert match in lines[0]


def test_node_entry_is_signed_by_the_node(alice: Identity) -> None:
    entry = node_entry(alice, endpoint="http://[::1]:8470", capacity=0, hardware={}, name="v6")
    entry.verify()
    assert entry.body["node_id"] == alice.id
    assert entry.body["name"] == "v6"
    assert "used" not in entry.body
