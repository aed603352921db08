"""The HTTP blob store (a client of a node agent) against a real server on 127.0.0.1.

It passes the whole blob store conformance suite, with damage done to the server's own files;
and it turns every way a peer can fail (down, slow, refusing the token, lying) into a clear
error naming the peer. Also here: the local store's streaming writer, which the node's uploads
go through.
"""

from __future__ import annotations

import asyncio
import os
import pickle  # noqa: TID251 - a same-process round trip of our own object, nothing received
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import NODE_TOKEN, BlobNode, LiveServer, SharedBlobServer, blob_app, serve_blobs

from artifacts.blobstore import HTTPBlobStore, LocalBlobStore
from artifacts.cid import CID, compute_cid
from artifacts.errors import (
    AccessDeniedError,
    ArtifactError,
    BlobNotFoundError,
    CorruptBlobError,
    PeerError,
    PeerTimeoutError,
    PeerUnavailableError,
    ReadOnlyError,
)
from artifacts.testing import BlobStoreTests


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(f"{seed}-{size}").randbytes(size)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[SharedBlobServer]:
    """One live server for the module; each test gets a fresh store and app on it."""
    server = SharedBlobServer()
    yield server
    server.stop()


class TestHTTPBlobStore(BlobStoreTests[HTTPBlobStore]):
    """The conformance suite through HTTP; the server's local store is the ground truth."""

    node: BlobNode
    views: list[HTTPBlobStore]

    @pytest.fixture
    def store(self, shared_server: SharedBlobServer, tmp_path: Path) -> Iterator[HTTPBlobStore]:
        self.views = []
        self.node = shared_server.node(LocalBlobStore(tmp_path / "node"))
        with HTTPBlobStore(self.node.url, token=self.node.token) as client:
            yield client
        for view in self.views:
            view.close()

    def open_read_only(self, store: HTTPBlobStore) -> HTTPBlobStore:
        view = HTTPBlobStore(store.url, token=self.node.token, read_only=True)
        self.views.append(view)
        return view

    def corrupt(self, store: HTTPBlobStore, cid: CID, data: bytes) -> None:
        path = self.node.store.path_of(cid)
        path.unlink(missing_ok=True)  # blob files are read-only (0o444): replace, don't open
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    # -- what only the HTTP store has ---------------------------------------------------------
    def test_lists_through_several_pages(self, store: HTTPBlobStore) -> None:
        cids = {store.put(payload(50, seed=i)) for i in range(7)}
        with HTTPBlobStore(store.url, token=self.node.token, page_size=2) as paged:
            listed = list(paged.iter_cids())
        assert sorted(listed, key=str) == listed
        assert set(listed) == cids
        assert len(listed) == 7

    def test_reads_need_no_token(self, store: HTTPBlobStore) -> None:
        cid = store.put(b"open to all")
        with HTTPBlobStore(store.url) as anonymous:
            assert anonymous.get(cid) == b"open to all"
            assert anonymous.stat(cid).size == 11
            assert anonymous.has(cid)

    @pytest.mark.parametrize("token", [None, "wrong-token-" + "w" * 20])
    def test_refused_token(self, store: HTTPBlobStore, token: str | None) -> None:
        cid = store.put(b"kept")
        status = 401 if token is None else 403
        with HTTPBlobStore(store.url, token=token) as other:
            attempts: list[Callable[[], object]] = [
                lambda: other.put(b"new"),
                lambda: other.delete(cid),
                lambda: list(other.iter_cids()),
            ]
            for attempt in attempts:
                with pytest.raises(AccessDeniedError) as excinfo:
                    attempt()
                err = excinfo.value
                assert isinstance(err, PermissionError)
                assert isinstance(err, ArtifactError)
                assert err.status == status
                assert store.url in str(err)
        assert self.listed(store) == [cid]

    def test_refusals_name_the_peer_and_status(self, tmp_path: Path) -> None:
        with (
            serve_blobs(LocalBlobStore(tmp_path / "n"), capacity=1000, max_blob=600) as node,
            HTTPBlobStore(node.url, token=node.token) as client,
        ):
            with pytest.raises(PeerError) as too_big:
                client.put(payload(700))
            assert too_big.value.status == 413
            assert "PayloadTooLarge" in str(too_big.value)
            client.put(payload(500, seed=1))
            with pytest.raises(PeerError) as full:
                client.put(payload(501, seed=2))
            assert full.value.status == 507
            assert node.url in str(full.value)

    def test_download_over_the_client_limit(self, store: HTTPBlobStore) -> None:
        data = payload(3000)
        cid = store.put(data)
        with (
            HTTPBlobStore(store.url, max_blob=2999) as small,
            pytest.raises(PeerError, match="limit"),
        ):
            small.get(cid)
        self.corrupt(store, cid, data * 2)  # a peer sending more than the CID's bytes
        with (
            HTTPBlobStore(store.url, max_blob=4000) as small,
            pytest.raises(PeerError, match="limit"),
        ):
            small.get(cid)
        with pytest.raises(CorruptBlobError):
            store.get(cid)

    def test_pickles_without_its_connections(self, store: HTTPBlobStore) -> None:
        cid = store.put(b"pickled")
        copy = pickle.loads(pickle.dumps(store))
        try:
            assert isinstance(copy, HTTPBlobStore)
            assert copy.url == store.url
            assert copy.get(cid) == b"pickled"
            copy.put(b"written by the copy")  # the token came along
        finally:
            copy.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_stopped_server_is_unavailable(tmp_path: Path) -> None:
    with serve_blobs(LocalBlobStore(tmp_path / "n")) as node:
        client = HTTPBlobStore(node.url, token=node.token)
        cid = client.put(b"before the stop")
    with client:
        for attempt in (
            lambda: client.get(cid),
            lambda: client.has(cid),  # never "absent": the peer did not answer
            lambda: client.put(b"after"),
            lambda: list(client.iter_cids()),
        ):
            started = time.monotonic()
            with pytest.raises(PeerUnavailableError) as excinfo:
                attempt()
            assert time.monotonic() - started < 2
            assert isinstance(excinfo.value, ConnectionError)
            assert node.url in str(excinfo.value)
    with (
        HTTPBlobStore(f"http://127.0.0.1:{_free_port()}") as nowhere,
        pytest.raises(PeerUnavailableError, match="cannot reach"),
    ):
        nowhere.stat(cid)


class _SlowPeer:
    """An ASGI app that answers nothing until released."""

    def __init__(self) -> None:
        self.release = threading.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        await send({"type": "http.response.start", "status": 503, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_slow_server_times_out() -> None:
    slow = _SlowPeer()
    server = LiveServer(slow)
    try:
        with HTTPBlobStore(server.url, token=NODE_TOKEN, timeout=0.3) as client:
            cid = compute_cid(b"x")
            for attempt in (lambda: client.get(cid), lambda: client.stat(cid)):
                started = time.monotonic()
                with pytest.raises(PeerTimeoutError, match=r"0\.3 s") as excinfo:
                    attempt()
                assert 0.25 < time.monotonic() - started < 2
                err = excinfo.value
                assert isinstance(err, TimeoutError)
                assert isinstance(err, PeerUnavailableError)
                assert server.url in str(err)
    finally:
        slow.release.set()
        server.stop()


class _LyingPeer:
    """An ASGI app that answers the blob routes with what the protocol does not allow."""

    def __init__(self, listing: bytes) -> None:
        self.listing = listing

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "HEAD":  # no X-Blob-Mtime
            headers = [(b"content-length", b"5")]
            body = b""
        else:
            headers = [(b"content-type", b"application/json")]
            body = self.listing
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    "listing",
    [
        b"not json",
        b'{"cids": "bafk", "next": null}',
        b'{"cids": ["garbage"], "next": null}',
        b'{"cids": [], "next": "bafkreia"}',  # a cursor that does not advance: no endless loop
        b'{"next": null}',
    ],
)
def test_lying_peer(listing: bytes) -> None:
    with LiveServer(_LyingPeer(listing)) as server, HTTPBlobStore(server.url) as client:
        with pytest.raises(PeerError) as excinfo:
            list(client.iter_cids())
        assert server.url in str(excinfo.value)
        with pytest.raises(PeerError, match="X-Blob-Mtime"):
            client.stat(compute_cid(b"x"))


def test_client_arguments_are_checked() -> None:
    bad: list[dict[str, Any]] = [
        {"timeout": 0},
        {"connect_timeout": -1},
        {"page_size": 0},
        {"max_blob": -1},
    ]
    for kwargs in bad:
        with pytest.raises(ValueError, match="must be"):
            HTTPBlobStore("http://127.0.0.1:1", **kwargs)


# -- the local store's streaming writer (what node uploads use) ----------------------------------


@pytest.fixture
def local(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "store")


def test_writer_streams_and_commits(local: LocalBlobStore) -> None:
    data = payload(3 << 20)
    cid = compute_cid(data)
    with local.open_writer(str(cid)) as writer:
        for start in range(0, len(data), 100_000):
            writer.write(memoryview(data)[start : start + 100_000])
        assert local.temp_files() != []
        assert writer.commit() is True
    assert writer.size == len(data)
    assert local.get(cid) == data
    assert local.temp_files() == []
    assert not local.path_of(cid).stat().st_mode & 0o222, "stored blobs are read-only"
    with pytest.raises(ValueError, match="closed"):
        writer.write(b"more")


def test_writer_refuses_a_mismatch(local: LocalBlobStore) -> None:
    cid = compute_cid(b"expected")
    writer = local.open_writer(cid)
    writer.write(b"something else")
    with pytest.raises(CorruptBlobError, match=str(cid)):
        writer.commit()
    assert list(local.iter_cids()) == []
    assert local.temp_files() == []
    assert not local.has(cid)


def test_writer_keeps_an_intact_copy_and_replaces_a_damaged_one(local: LocalBlobStore) -> None:
    data = payload(5000)
    cid = local.put(data)
    old = local.stat(cid).mtime
    inode = local.path_of(cid).stat().st_ino
    time.sleep(0.02)
    with local.open_writer(cid) as writer:
        writer.write(data)
        assert writer.commit() is False
    assert local.path_of(cid).stat().st_ino == inode  # kept, not rewritten
    assert local.stat(cid).mtime > old

    path = local.path_of(cid)
    path.unlink()
    path.write_bytes(data[:10])
    with local.open_writer(cid) as writer:
        writer.write(data)
        assert writer.commit() is True
    assert local.get(cid) == data
    assert local.temp_files() == []


def test_writer_left_without_commit_leaves_nothing(local: LocalBlobStore) -> None:
    cid = compute_cid(b"abandoned")
    with local.open_writer(cid) as writer:
        writer.write(b"aband")
    assert local.temp_files() == []
    assert not local.has(cid)
    writer.abort()  # again: a no-op


def test_writer_on_a_read_only_store(local: LocalBlobStore) -> None:
    view = LocalBlobStore(local.root, read_only=True)
    with pytest.raises(ReadOnlyError):
        view.open_writer(compute_cid(b"x"))
    assert os.listdir(local.root / "tmp") == []


def test_writer_missing_blob_is_not_found_after_abort(local: LocalBlobStore) -> None:
    cid = compute_cid(b"never")
    local.open_writer(cid).abort()
    with pytest.raises(BlobNotFoundError):
        local.get(cid)


class _Recorder:
    """An ASGI app in front of another that records each request's method and headers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[tuple[str, dict[bytes, bytes]]] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.seen.append((scope["method"], dict(scope["headers"])))
        await self.app(scope, receive, send)


def test_credentials_go_only_where_they_are_needed(tmp_path: Path) -> None:
    """No credential on GET/HEAD; the token on DELETE and listing; a signature on PUT when the
    store has a signer (else the token)."""
    from registry.identity import Identity

    signer = Identity.generate()
    app = blob_app(LocalBlobStore(tmp_path / "n"), peers=[signer.public_key])
    recorder = _Recorder(app)
    with (
        LiveServer(recorder) as server,
        HTTPBlobStore(server.url, token=NODE_TOKEN, signer=signer) as client,
    ):
        cid = client.put(b"signed")
        assert client.get(cid) == b"signed"
        assert client.stat(cid).size == 6
        assert client.has(cid)
        assert list(client.iter_cids()) == [cid]
        assert client.delete(cid)
    auth = [
        (method, headers.get(b"authorization", b"").decode()) for method, headers in recorder.seen
    ]
    assert [m for m, _ in auth] == ["PUT", "GET", "HEAD", "HEAD", "GET", "DELETE"]
    assert auth[0][1].startswith(f"Cidflow-Signature keyid={signer.id},ts=")
    assert [a for m, a in auth[1:4]] == ["", "", ""]  # reads carry nothing
    assert auth[4][1] == auth[5][1] == f"Bearer {NODE_TOKEN}"
