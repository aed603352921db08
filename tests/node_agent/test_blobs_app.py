"""The node agent's blob server over real HTTP (uvicorn on 127.0.0.1).

Every route answers as documented; every route that writes, deletes or lists refuses a missing
or wrong token (the routes are read from the OpenAPI document, so a new one cannot be
forgotten); bad hosts, malformed CIDs, path tricks, lying and oversize uploads are refused and
leave the store as it was.
"""

from __future__ import annotations

import http.client as http_client
import json
import os
import random
import stat
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from helpers import snapshot
from servers import (
    NODE_TOKEN,
    TEST_HARDWARE,
    TEST_MAX_BLOB,
    BlobNode,
    SharedBlobServer,
    serve_blobs,
)

from artifacts.blobstore import LocalBlobStore
from artifacts.blobstore.http import MTIME_HEADER, HTTPBlobStore, signature_header
from artifacts.cid import CID, compute_cid
from artifacts.errors import AccessDeniedError
from node_agent.auth import SIGNATURE_WINDOW, TOKEN_FILE, load_or_create_token
from node_agent.blobs_app import create_app
from node_agent.errors import InsecureTokenError, InvalidTokenError, NodeConfigError
from node_agent.hardware import Gpu, probe_hardware
from registry.identity import Identity

MiB = 1 << 20

#: The routes anyone may call; every other operation in the OpenAPI document needs the token.
PUBLIC = {
    ("get", "/v1/health"),
    ("get", "/v1/info"),
    ("get", "/v1/blobs/{cid}"),
    ("head", "/v1/blobs/{cid}"),
}
#: Operations that must exist (so that removing one is noticed too).
EXPECTED = PUBLIC | {
    ("put", "/v1/blobs/{cid}"),
    ("delete", "/v1/blobs/{cid}"),
    ("get", "/v1/blobs"),
}


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(f"{seed}-{size}").randbytes(size)


def put(client: httpx.Client, data: bytes, cid: CID | str | None = None) -> httpx.Response:
    return client.put(f"/v1/blobs/{cid or compute_cid(data)}", content=data)


def stored(node: BlobNode) -> set[CID]:
    return set(node.store.iter_cids())


def raw_request(
    port: int, method: str, target: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """Send ``target`` exactly as written (httpx would normalise ``..`` away)."""
    conn = http_client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, target, body=b"x" if method == "PUT" else None, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    return resp.status, json.loads(body) if body else None


# -- open routes ----------------------------------------------------------------------------------


def test_health_and_info(node: BlobNode, http: httpx.Client, anonymous: httpx.Client) -> None:
    assert anonymous.get("/v1/health").json() == {"status": "ok"}
    info = anonymous.get("/v1/info").json()
    assert info == {
        "node_id": "node-test",
        "name": "test",
        "capacity": None,
        "used": 0,
        "max_blob": TEST_MAX_BLOB,
        "hardware": {
            "cpu_count": 4,
            "memory_bytes": 8 << 30,
            "gpus": [{"name": "Test GPU", "memory_bytes": 16 << 30}],
        },
    }
    assert put(http, payload(1000)).status_code == 201
    assert anonymous.get("/v1/info").json()["used"] == 1000


def test_openapi_is_published(anonymous: httpx.Client) -> None:
    doc = anonymous.get("/openapi.json").json()
    assert doc["info"]["title"] == "cidflow node agent"
    ops = {(m, p) for p, item in doc["paths"].items() for m in item}
    assert ops >= EXPECTED
    put_body = doc["paths"]["/v1/blobs/{cid}"]["put"]["requestBody"]["content"]
    assert "application/octet-stream" in put_body
    assert anonymous.get("/docs").status_code == 404  # no HTML pages pulling in CDN scripts


# -- blob routes ----------------------------------------------------------------------------------


def test_put_get_head_delete(node: BlobNode, http: httpx.Client, anonymous: httpx.Client) -> None:
    data = payload(300_000)
    cid = compute_cid(data)
    first = put(http, data)
    assert first.status_code == 201
    assert first.json() == {"cid": str(cid), "size": len(data), "created": True}
    assert node.store.get(cid) == data

    got = anonymous.get(f"/v1/blobs/{cid}")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-type"] == "application/octet-stream"
    assert int(got.headers["content-length"]) == len(data)
    head = anonymous.head(f"/v1/blobs/{cid}")
    assert head.status_code == 200
    assert int(head.headers["content-length"]) == len(data)
    mtime = float(head.headers[MTIME_HEADER])
    assert mtime == node.store.stat(cid).mtime

    time.sleep(0.02)
    again = put(http, data)  # idempotent; refreshes the time a gc grace period reads
    assert again.status_code == 200
    assert again.json()["created"] is False
    assert float(anonymous.head(f"/v1/blobs/{cid}").headers[MTIME_HEADER]) > mtime
    assert stored(node) == {cid}

    assert http.delete(f"/v1/blobs/{cid}").status_code == 204
    assert stored(node) == set()
    missing = http.delete(f"/v1/blobs/{cid}")
    assert missing.status_code == 404
    assert missing.json() == {"error": "BlobNotFoundError", "detail": f"blob {cid} not found"}
    assert anonymous.get(f"/v1/blobs/{cid}").status_code == 404
    assert anonymous.head(f"/v1/blobs/{cid}").status_code == 404
    assert node.store.temp_files() == []


def test_get_streams_a_large_blob(node: BlobNode, anonymous: httpx.Client) -> None:
    data = payload(5 * MiB + 3)
    cid = node.store.put(data)  # over the upload limit, but a node may hold it (local writes)
    with anonymous.stream("GET", f"/v1/blobs/{cid}") as resp:
        assert resp.status_code == 200
        pieces = list(resp.iter_raw())
    assert b"".join(pieces) == data
    assert len(pieces) > 1


def test_empty_blob(node: BlobNode, http: httpx.Client) -> None:
    cid = compute_cid(b"")
    assert put(http, b"").status_code == 201
    assert http.get(f"/v1/blobs/{cid}").content == b""
    assert http.head(f"/v1/blobs/{cid}").headers["content-length"] == "0"


def test_listing_pages_in_cid_order(node: BlobNode, http: httpx.Client) -> None:
    cids = sorted(str(node.store.put(payload(100, seed=i))) for i in range(7))
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 3} | ({"after": after} if after else {})
        page = http.get("/v1/blobs", params=params).json()
        assert page["cids"] == sorted(page["cids"])
        seen += page["cids"]
        pages += 1
        after = page["next"]
        if after is None:
            break
        assert after == page["cids"][-1]
    assert seen == cids
    assert pages == 3
    assert http.get("/v1/blobs").json() == {"cids": cids, "next": None}
    assert http.get("/v1/blobs", params={"after": cids[-1]}).json() == {"cids": [], "next": None}
    assert http.get("/v1/blobs", params={"limit": 10**9}).json()["cids"] == cids  # capped
    for bad in ({"after": "garbage"}, {"limit": 0}, {"limit": "many"}):
        resp = http.get("/v1/blobs", params=bad)
        assert resp.status_code == 400, bad
        assert resp.json()["error"] in ("InvalidCIDError", "InvalidRequestError")


# -- authentication -------------------------------------------------------------------------------


def guarded_operations(client: httpx.Client) -> list[tuple[str, str]]:
    doc = client.get("/openapi.json").json()
    ops = [(m, p) for p, item in doc["paths"].items() for m in item if (m, p) not in PUBLIC]
    for method, path in ops:  # the document says so too
        assert doc["paths"][path][method].get("security") == [{"NodeToken": []}], (method, path)
    return ops


def call(client: httpx.Client, method: str, path: str, headers: dict[str, Any]) -> httpx.Response:
    data = b"guarded"
    url = path.replace("{cid}", str(compute_cid(data)))
    return client.request(method.upper(), url, content=data, headers=headers)


@pytest.mark.parametrize(
    "auth",
    [None, "", "Bearer", "Basic " + NODE_TOKEN, NODE_TOKEN],
    ids=["none", "empty", "no-credentials", "basic", "no-scheme"],
)
def test_every_guarded_route_needs_a_token(
    node: BlobNode, anonymous: httpx.Client, auth: str | None
) -> None:
    ops = guarded_operations(anonymous)
    assert set(ops) >= EXPECTED - PUBLIC
    headers = {} if auth is None else {"Authorization": auth}
    for method, path in ops:
        resp = call(anonymous, method, path, headers)
        assert resp.status_code == 401, (method, path)
        assert resp.json()["error"] == "AuthError"
        assert resp.headers["www-authenticate"] == "Bearer"
    assert stored(node) == set()


@pytest.mark.parametrize(
    "token",
    [NODE_TOKEN + "x", NODE_TOKEN[:-1], "x" * len(NODE_TOKEN), NODE_TOKEN.upper(), "é" * 8],
    ids=["longer", "shorter", "same-length", "upper", "non-ascii"],
)
def test_every_guarded_route_refuses_a_wrong_token(
    node: BlobNode, anonymous: httpx.Client, token: str
) -> None:
    cid = node.store.put(b"kept")
    for method, path in guarded_operations(anonymous):
        headers = {"Authorization": f"Bearer {token}".encode()}
        resp = call(anonymous, method, path, headers)
        assert resp.status_code == 403, (method, path)
        assert resp.json()["error"] == "AuthError"
    assert stored(node) == {cid}


def test_public_routes_need_no_token(node: BlobNode, anonymous: httpx.Client) -> None:
    cid = node.store.put(b"public")
    for method, path in PUBLIC:
        resp = anonymous.request(method.upper(), path.replace("{cid}", str(cid)))
        assert resp.status_code == 200, (method, path)


# -- what is refused ------------------------------------------------------------------------------


def test_host_header_is_checked(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "n")
    with (
        serve_blobs(store, allowed_hosts=["node.example"]) as n,
        httpx.Client(base_url=n.url) as client,
    ):
        bad = (
            "evil.example",
            "evil.example:80",
            "127.0.0.1.evil.example",
            "a:b:c",
            "[::1",
            "",
            "node.example.evil",
        )
        for host in bad:
            resp = client.get("/v1/health", headers={"Host": host})
            assert resp.status_code == 400, host
            assert resp.json()["error"] == "InvalidHostError"
        for host in ("node.example", "NODE.example:8470", "localhost", "[::1]:1", "127.0.0.1"):
            assert client.get("/v1/health", headers={"Host": host}).status_code == 200, host
        # Checked before the token: a rebinding page cannot even probe the guarded routes.
        resp = client.delete(f"/v1/blobs/{compute_cid(b'x')}", headers={"Host": "evil.example"})
        assert resp.status_code == 400


CID_TEXT = str(compute_cid(b"target"))
BAD_TARGETS = [
    "/v1/blobs/..",
    "/v1/blobs/.",
    "/v1/blobs/%2e%2e",
    "/v1/blobs/%2E%2E%2Fetc%2Fpasswd",
    "/v1/blobs/..%2f..%2fetc%2fpasswd",
    "/v1/blobs/../../etc/passwd",
    "/v1/blobs/../blobs/" + CID_TEXT,
    "/v1/blobs/./" + CID_TEXT,
    "//v1/blobs/" + CID_TEXT,
    "/v1//blobs/" + CID_TEXT,
    "/v1/blobs/" + CID_TEXT + "/",
    "/v1/blobs/" + CID_TEXT + "%00",
    "/v1/blobs/" + CID_TEXT[:-1] + "%41",
    "/v1/blobs/garbage",
    "/v1/blobs/" + CID_TEXT.upper(),
    "/v1/blobs/" + CID_TEXT[:-2],
    "/v1/blobs/" + CID_TEXT + "a",
    "/v1/blobs/Qm" + "1" * 44,
    "/v1/blobs/" + "b" * 500,
    "/v1/blobs/..\\..\\etc",
]


@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE"])
def test_malformed_cids_and_path_tricks(node: BlobNode, method: str) -> None:
    target_bytes = b"x"
    node.store.put(target_bytes)
    before = stored(node)
    auth = {"Authorization": f"Bearer {NODE_TOKEN}"}
    for target in BAD_TARGETS:
        status, body = raw_request(node.port, method, target, auth)
        assert status == 400, target
        if method != "HEAD":
            assert body["error"] in ("InvalidPathError", "InvalidCIDError"), target
            assert str(node.store.root) not in body["detail"]
    assert stored(node) == before
    assert node.store.temp_files() == []


def test_hash_mismatch_is_refused_and_stores_nothing(node: BlobNode, http: httpx.Client) -> None:
    data = payload(4096)
    wrong = compute_cid(b"other bytes")
    resp = put(http, data, wrong)
    assert resp.status_code == 400
    assert resp.json()["error"] == "CorruptBlobError"
    assert str(wrong) in resp.json()["detail"]
    assert stored(node) == set()

    cid = node.store.put(data)  # an intact copy survives a lying upload for its CID
    assert put(http, data[:-1] + b"\x00", cid).status_code == 400
    assert node.store.get(cid) == data
    assert stored(node) == {cid}
    assert node.store.temp_files() == []


def test_put_repairs_a_damaged_copy(node: BlobNode, http: httpx.Client) -> None:
    data = payload(4096)
    cid = node.store.put(data)
    path = node.store.path_of(cid)
    path.unlink()
    path.write_bytes(data[:100])
    resp = put(http, data)
    assert resp.status_code == 201
    assert node.store.get(cid) == data


def test_streamed_upload_over_the_limit_is_cut_off(node: BlobNode, http: httpx.Client) -> None:
    """64 MiB from a generator (no Content-Length) to a 1 MiB limit: 413 long before the end."""
    sent = 0
    piece = bytes(MiB)

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(64):
            sent += 1
            yield piece

    started = time.monotonic()
    resp = http.put(f"/v1/blobs/{compute_cid(b'big')}", content=body())
    assert resp.status_code == 413
    assert resp.json()["error"] == "PayloadTooLarge"
    # The server never buffered the body: it answered after about TEST_MAX_BLOB bytes, and what the
    # client sent beyond that is what the socket buffers held.
    assert sent < 48, f"the client sent {sent} MiB before the answer"
    assert time.monotonic() - started < 10
    assert stored(node) == set()
    assert node.store.temp_files() == []


def test_upload_limit_by_content_length(node: BlobNode, http: httpx.Client) -> None:
    exact = payload(TEST_MAX_BLOB)
    assert put(http, exact).status_code == 201
    over = payload(TEST_MAX_BLOB + 1)
    resp = put(http, over)
    assert resp.status_code == 413
    assert str(TEST_MAX_BLOB) in resp.json()["detail"]
    assert stored(node) == {compute_cid(exact)}
    assert node.store.temp_files() == []
    conn = http_client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    try:  # a Content-Length that is not a number
        conn.putrequest("PUT", f"/v1/blobs/{compute_cid(over)}")
        conn.putheader("Authorization", f"Bearer {NODE_TOKEN}")
        conn.putheader("Content-Length", "-1")
        conn.endheaders()
        assert conn.getresponse().status == 400
    finally:
        conn.close()
    assert stored(node) == {compute_cid(exact)}


def test_private_blobs_are_never_served(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "n")
    secret, public = store.put(b"private data"), store.put(b"public data")
    later: set[str] = set()
    with (
        serve_blobs(store, private={str(secret)}) as fixed,
        serve_blobs(store, private=lambda: later) as dynamic,
    ):
        for n, hidden in ((fixed, secret), (dynamic, None)):
            headers = {"Authorization": f"Bearer {n.token}"}
            with httpx.Client(base_url=n.url, headers=headers) as client:
                if hidden is None:
                    later.add(str(secret))  # marked private after the server started
                for method in ("GET", "HEAD", "DELETE"):
                    resp = client.request(method, f"/v1/blobs/{secret}")
                    assert resp.status_code == 404, method  # as if absent: nothing leaks
                assert client.get("/v1/blobs").json()["cids"] == [str(public)]
                assert client.get(f"/v1/blobs/{public}").content == b"public data"
                # Uploading the same bytes answers as for a blob not held (201, not 200: that
                # would tell the node holds it) and never makes it public, listable or deletable.
                answer = put(client, b"private data")
                assert answer.status_code == 201
                assert answer.json()["created"] is True
                for method in ("GET", "HEAD", "DELETE"):
                    resp = client.request(method, f"/v1/blobs/{secret}")
                    assert resp.status_code == 404, method
                assert client.get("/v1/blobs").json()["cids"] == [str(public)]
    assert store.get(secret) == b"private data"


def test_capacity(tmp_path: Path) -> None:
    with serve_blobs(LocalBlobStore(tmp_path / "n"), capacity=10_000) as n:
        headers = {"Authorization": f"Bearer {n.token}"}
        with httpx.Client(base_url=n.url, headers=headers) as client:
            first = payload(6000, seed=1)
            assert put(client, first).status_code == 201
            second = payload(6000, seed=2)
            resp = put(client, second)  # declared length: refused before reading
            assert resp.status_code == 507
            assert resp.json()["error"] == "InsufficientStorage"
            streamed = client.put(f"/v1/blobs/{compute_cid(second)}", content=iter([second]))
            assert streamed.status_code == 507  # no length: refused while reading
            assert put(client, first).status_code == 200  # already held: needs no room
            assert client.get("/v1/info").json()["used"] == 6000
            assert client.delete(f"/v1/blobs/{compute_cid(first)}").status_code == 204
            assert put(client, second).status_code == 201
            assert set(n.store.iter_cids()) == {compute_cid(second)}
            assert n.store.temp_files() == []


def test_capacity_holds_under_concurrent_uploads(tmp_path: Path) -> None:
    with serve_blobs(LocalBlobStore(tmp_path / "n"), capacity=50_000) as n:
        headers = {"Authorization": f"Bearer {n.token}"}
        blobs = [payload(10_000, seed=i) for i in range(12)]
        codes: list[int] = []

        def upload(data: bytes) -> None:
            with httpx.Client(base_url=n.url, headers=headers) as client:
                codes.append(put(client, data).status_code)

        threads = [threading.Thread(target=upload, args=(b,)) for b in blobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes) == [201] * 5 + [507] * 7
        assert sum(n.store.stat(c).size for c in n.store.iter_cids()) == 50_000


# -- configuration --------------------------------------------------------------------------------


def test_create_app_refuses_bad_configuration(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "s")
    for token in ("", "   ", "short", " " * 20):
        with pytest.raises(InvalidTokenError):
            create_app(store, token=token, node_id="n")
    with pytest.raises(NodeConfigError):
        create_app(LocalBlobStore(store.root, read_only=True), token=NODE_TOKEN, node_id="n")
    with pytest.raises(NodeConfigError):
        create_app(store, token=NODE_TOKEN, node_id="n", max_blob=0)
    with pytest.raises(NodeConfigError):
        create_app(store, token=NODE_TOKEN, node_id="n", capacity=-1)


def test_token_file_is_created_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    token = load_or_create_token(home)
    path = home / TOKEN_FILE
    assert len(token) >= 43
    assert all(c.isalnum() or c in "-_" for c in token)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == token
    assert load_or_create_token(home) == token
    assert sorted(p.name for p in home.iterdir()) == [TOKEN_FILE]
    assert load_or_create_token(tmp_path / "other") != token


def test_concurrent_first_starts_agree_on_one_token(tmp_path: Path) -> None:
    home = tmp_path / "home"
    results: list[str] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        results.append(load_or_create_token(home))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8
    assert len(set(results)) == 1
    assert sorted(p.name for p in home.iterdir()) == [TOKEN_FILE]


def test_bad_token_files_are_refused(tmp_path: Path) -> None:
    path = tmp_path / TOKEN_FILE
    path.write_text(NODE_TOKEN)
    os.chmod(path, 0o644)
    with pytest.raises(InsecureTokenError, match="chmod 600") as excinfo:
        load_or_create_token(tmp_path)
    assert isinstance(excinfo.value, PermissionError)
    os.chmod(path, 0o600)
    assert load_or_create_token(tmp_path) == NODE_TOKEN
    path.write_text("\n")
    with pytest.raises(InvalidTokenError, match="empty"):
        load_or_create_token(tmp_path)
    assert path.read_text() == "\n", "an existing token file is never replaced"


# -- hardware -------------------------------------------------------------------------------------


def test_probe_hardware_without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    found = probe_hardware(import_torch=False)
    assert found.cpu_count == os.cpu_count()
    assert found.memory_bytes is None or found.memory_bytes > 0
    assert found.gpus is None  # unknown, not "none"
    assert found.as_json()["gpus"] is None


def test_probe_hardware_counts_gpus_through_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    props = [SimpleNamespace(name="GPU A", total_memory=1 << 30)] * 2
    cuda = SimpleNamespace(device_count=lambda: 2, get_device_properties=lambda i: props[i])
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=cuda))
    assert probe_hardware(import_torch=False).gpus == (Gpu("GPU A", 1 << 30),) * 2

    def broken() -> int:
        raise RuntimeError("CUDA driver initialization failed")

    broken_cuda = SimpleNamespace(device_count=broken)
    monkeypatch.setitem(sys.modules, "torch", SimpleNamespace(cuda=broken_cuda))
    assert probe_hardware().gpus is None  # a broken torch never fails the node


def test_info_probes_hardware_when_not_given(tmp_path: Path) -> None:
    with serve_blobs(LocalBlobStore(tmp_path / "n"), hardware=None, probe_gpus=False) as n:
        info = httpx.get(f"{n.url}/v1/info").json()
    assert info["hardware"]["cpu_count"] == os.cpu_count()
    assert info["hardware"] != TEST_HARDWARE.as_json()


# -- peers: PUTs signed by an allowed key ------------------------------------------------------


@pytest.fixture(scope="module")
def peer() -> Identity:
    return Identity.generate()


@pytest.fixture
def peer_node(shared_server: SharedBlobServer, tmp_path: Path, peer: Identity) -> BlobNode:
    """A blob server that accepts PUTs signed by ``peer``."""
    return shared_server.node(LocalBlobStore(tmp_path / "peered"), peers=[peer.public_key])


def signed_put(
    node: BlobNode, signer: Identity, data: bytes, *, path: str | None = None, **header: Any
) -> httpx.Response:
    target = path or f"/v1/blobs/{compute_cid(data)}"
    auth = header.pop("auth", None) or signature_header(signer, "PUT", target, **header)
    return httpx.put(f"{node.url}{target}", content=data, headers={"Authorization": auth})


def test_a_put_signed_by_a_peer_is_stored(peer_node: BlobNode, peer: Identity) -> None:
    data = payload(3000, seed=11)
    answer = signed_put(peer_node, peer, data)
    assert answer.status_code == 201, answer.text
    assert peer_node.store.get(compute_cid(data)) == data
    assert signed_put(peer_node, peer, data).status_code == 200  # held: its time refreshed
    # Through the client: a signer signs its PUTs (and nothing else).
    with HTTPBlobStore(peer_node.url, signer=peer) as client:
        cid = client.put(b"replicated by a peer")
        assert peer_node.store.get(cid) == b"replicated by a peer"
        with pytest.raises(AccessDeniedError):
            client.delete(cid)
        with pytest.raises(AccessDeniedError):
            list(client.iter_cids())
    assert peer_node.store.has(cid)


def _tampered(header: str) -> str:
    head, sig = header.rsplit("sig=", 1)
    return f"{head}sig={'a' if sig[0] != 'a' else 'b'}{sig[1:]}"


@pytest.mark.parametrize(
    "case", ["unknown-key", "tampered", "stale", "future", "other-path", "malformed", "no-ts"]
)
def test_a_bad_peer_signature_stores_nothing(
    peer_node: BlobNode, peer: Identity, case: str
) -> None:
    kept = peer_node.store.put(b"already there")
    before = snapshot(peer_node.store.root)
    data = payload(2000, seed=12)
    cid = compute_cid(data)
    path = f"/v1/blobs/{cid}"
    now = int(time.time())
    header = {
        "unknown-key": signature_header(Identity.generate(), "PUT", path),
        "tampered": _tampered(signature_header(peer, "PUT", path)),
        "stale": signature_header(peer, "PUT", path, ts=now - SIGNATURE_WINDOW - 60),
        "future": signature_header(peer, "PUT", path, ts=now + SIGNATURE_WINDOW + 60),
        "other-path": signature_header(peer, "PUT", f"/v1/blobs/{kept}"),  # replayed elsewhere
        "malformed": signature_header(peer, "PUT", path).replace("keyid=", "key="),
        "no-ts": signature_header(peer, "PUT", path).replace(f"ts={now}", "ts="),
    }[case]
    answer = signed_put(peer_node, peer, data, auth=header)
    assert answer.status_code == (401 if case in ("malformed", "no-ts") else 403), answer.text
    assert answer.json()["error"] == "AuthError"
    assert not peer_node.store.has(cid)
    assert snapshot(peer_node.store.root) == before


def test_a_peer_signature_never_deletes_nor_lists(peer_node: BlobNode, peer: Identity) -> None:
    cid = peer_node.store.put(b"stays")
    before = snapshot(peer_node.store.root)
    for method, path in (("DELETE", f"/v1/blobs/{cid}"), ("GET", "/v1/blobs")):
        auth = signature_header(peer, method, path)
        answer = httpx.request(method, f"{peer_node.url}{path}", headers={"Authorization": auth})
        assert answer.status_code == 401, (method, answer.text)
    assert snapshot(peer_node.store.root) == before


def test_peer_keys_must_be_public_keys(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigError, match="not a base32 public key"):
        create_app(LocalBlobStore(tmp_path / "s"), token=NODE_TOKEN, node_id="n", peers=["x"])
