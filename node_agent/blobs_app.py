"""The node agent's blob server (FastAPI): a node's blobs, by CID, over HTTP.

The client is :class:`artifacts.blobstore.http.HTTPBlobStore`; the wire constants come from
there. Routes (OpenAPI at ``/openapi.json``)::

    route                        token  answers
    GET    /v1/health            -      {"status": "ok"}
    GET    /v1/info              -      node id, name, capacity, used bytes, max blob, hardware
    GET    /v1/blobs/{cid}       -      the bytes, streamed; 404 absent (or private)
    HEAD   /v1/blobs/{cid}       -      Content-Length and X-Blob-Mtime; 404 absent (or private)
    PUT    /v1/blobs/{cid}       yes*   201 stored, 200 already held (its time refreshed);
                                        400 the bytes do not hash to the CID (nothing stored);
                                        413 over max_blob; 507 over the node's capacity
    DELETE /v1/blobs/{cid}       yes    204 deleted; 404 absent (or private)
    GET    /v1/blobs             yes    ?after=CID&limit=N → {"cids": [...], "next": CID|null},
                                        CIDs in text order, so paging is stable

- **Token**: ``Authorization: Bearer TOKEN`` (the node's own ``HOME/token``), compared in
  constant time; missing → 401, wrong → 403. There is no default: :func:`create_app` refuses to
  build without one (DESIGN invariant 5). It is the only credential for DELETE and listing.
- **Peer signatures** (*): a PUT may instead carry ``Authorization: Cidflow-Signature keyid=..,
  ts=..,sig=..`` by a key on the node's peer allow-list (``peers``; see
  :class:`node_agent.auth.PeerKeys`): replication, where the node hashes the bytes it is sent.
  Malformed → 401; unknown key, false or stale signature → 403; nothing is stored.
- **Uploads** stream to a temporary file of the store while being hashed, never held in memory;
  a ``Content-Length`` over ``max_blob`` is refused before reading, a body growing past it as
  soon as it does. Refusals mid-upload close the connection, so the client stops sending.
  Capacity is checked the same way (and once more, under a lock, when the blob is stored);
  507 Insufficient Storage tells "this node is full" from 413 "this blob is too large".
- **Private blobs** (data that never leaves the machine) are, over HTTP, as if absent: GET,
  HEAD and DELETE answer 404 and listings leave them out, so a peer cannot even learn the node
  holds them. A PUT of one answers 201 as for any blob not held (never 200, which would tell
  that the node holds it), and it stays hidden: a blob sent by a peer does not make a private
  one public, nor listable or deletable by whoever administers the cluster's storage.
- **Bad requests**: a malformed CID, a path with ``.``/``..``/empty segments or any percent-
  encoding, or a ``Host`` that is not loopback or an allowed name (DNS rebinding) → 400. Every
  error answers ``{"error": TYPE, "detail": MESSAGE}`` and never names a local path.
- GET does not re-hash what it serves: the client does (DESIGN invariant 1).
"""

from __future__ import annotations

import errno
import functools
import heapq
import http
import os
import re
import secrets
import threading
import time
from collections.abc import (
    Awaitable,
    Callable,
    Collection,
    Container,
    Iterable,
    Iterator,
    Mapping,
    MutableMapping,
)
from contextlib import contextmanager
from typing import Annotated, Any, BinaryIO, Final

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from artifacts.blobstore.http import (
    LIST_PAGE,
    MAX_BLOB,
    MAX_LIST_PAGE,
    MTIME_HEADER,
    SIGNATURE_SCHEME,
)
from artifacts.blobstore.local import BlobWriter, LocalBlobStore
from artifacts.cid import CID
from artifacts.errors import BlobNotFoundError, CorruptBlobError, InvalidCIDError
from node_agent.auth import PeerKeys, check_token
from node_agent.errors import NodeConfigError, SignatureRefusedError
from node_agent.hardware import Hardware, probe_hardware
from registry.service import LOOPBACK, host_of

__all__ = ["PrivateCIDs", "create_app"]

#: The CIDs a node never serves: a fixed collection of CID texts, or a function returning the
#: current ones (called on each request that needs it, so keep it cheap).
PrivateCIDs = Collection[str] | Callable[[], Container[str]]

#: How long a computed "used bytes" total is trusted before the store is scanned again (other
#: processes, such as the node's own flow runs, write to the same store).
USAGE_RESCAN_SECONDS: Final = 60.0
_READ_CHUNK: Final = 1 << 20
_OCTETS: Final = "application/octet-stream"
_PATH_CHARS: Final = re.compile(r"/[A-Za-z0-9._~/-]*")

_PUT_OPENAPI: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {_OCTETS: {"schema": {"type": "string", "format": "binary"}}},
    }
}
_BLOB_OPENAPI: Final[dict[int | str, dict[str, Any]]] = {
    200: {"content": {_OCTETS: {"schema": {"type": "string", "format": "binary"}}}},
    404: {"description": "No such blob (or a private one)"},
}

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGI = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class _Refusal(Exception):
    """A request refused with ``status``; answered as ``{"error": kind, "detail": detail}``."""

    def __init__(self, status: int, kind: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.status, self.kind, self.detail, self.headers = status, kind, detail, headers


def _error(
    status: int, kind: str, detail: str, headers: Mapping[str, str] | None = None
) -> Response:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def _path_problem(path: str) -> str | None:
    """Why a request path (as received, before decoding) is refused; ``None`` if it is fine."""
    if not _PATH_CHARS.fullmatch(path):
        return "only letters, digits, '-', '.', '_', '~' and '/' are accepted (no %-encoding)"
    if path != "/" and any(seg in ("", ".", "..") for seg in path.split("/")[1:]):
        return "empty, '.' and '..' path segments are not accepted"
    return None


class _Guard:
    """Refuses a ``Host`` that is not an allowed name (DNS rebinding; as the registry service
    does) and a path with traversal segments or encoded characters, before any route runs."""

    def __init__(self, app: _ASGI, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw_host = dict(scope.get("headers") or []).get(b"host", b"")
            host = host_of(raw_host.decode("latin-1"))
            raw_path = scope.get("raw_path") or scope["path"].encode("utf-8")
            problem = _path_problem(raw_path.split(b"?", 1)[0].decode("latin-1"))
            if host is None or host not in self.allowed:
                refusal = _error(400, "InvalidHostError", "invalid or unexpected Host header")
            elif problem is not None:
                refusal = _error(400, "InvalidPathError", f"bad request path: {problem}")
            else:
                await self.app(scope, receive, send)
                return
            if scope["type"] == "http":
                await refusal(scope, receive, send)
            else:  # a websocket: no route takes one, close it
                await send({"type": "websocket.close", "code": 1008})


class _Usage:
    """Bytes the store holds: scanned when first asked (and again when older than
    :data:`USAGE_RESCAN_SECONDS`), kept current by this server's own writes and deletes, with
    room reserved by uploads being stored so concurrent ones cannot overshoot ``capacity``."""

    def __init__(self, store: LocalBlobStore, capacity: int | None) -> None:
        self.store = store
        self.capacity = capacity
        self._lock = threading.Lock()
        self._used: int | None = None
        self._scanned_at = 0.0
        self._reserved = 0

    def used(self) -> int:
        with self._lock:
            return self._current()

    def _current(self) -> int:
        if self._used is None or time.monotonic() - self._scanned_at > USAGE_RESCAN_SECONDS:
            total = 0
            for cid in self.store.iter_cids():
                try:
                    total += self.store.stat(cid).size
                except FileNotFoundError:
                    continue  # deleted while scanning
            self._used, self._scanned_at = total, time.monotonic()
        return self._used

    def room(self) -> int | None:
        """Bytes that may still be added (``None``: no capacity set)."""
        if self.capacity is None:
            return None
        with self._lock:
            return self.capacity - self._current() - self._reserved

    def add(self, delta: int) -> None:
        with self._lock:
            if self._used is not None:
                self._used = max(0, self._used + delta)

    @contextmanager
    def reserve(self, size: int) -> Iterator[None]:
        """Hold ``size`` bytes of room for the block (507 if there is none)."""
        size = max(size, 0)
        with self._lock:
            if self.capacity is not None and size:
                left = self.capacity - self._current() - self._reserved
                if size > left:
                    raise _full(size, max(left, 0))
            self._reserved += size
        try:
            yield
        finally:
            with self._lock:
                self._reserved -= size


def _full(size: int, room: int) -> _Refusal:
    return _Refusal(
        507,
        "InsufficientStorage",
        f"this node has room for {room} more bytes, not {size}",
        Connection="close",
    )


def _too_large(size: int, limit: int, *, at_least: bool = False) -> _Refusal:
    what = f"{size} bytes or more" if at_least else f"{size} bytes"
    return _Refusal(
        413,
        "PayloadTooLarge",
        f"a blob of {what} is over this node's limit of {limit} bytes",
        Connection="close",
    )


def _private_view(private: PrivateCIDs) -> Callable[[], Container[str]]:
    """A function giving the current private CID texts."""
    if callable(private):
        return private
    fixed = frozenset(str(c) for c in private)
    return lambda: fixed


def _blob_cid(cid: str) -> CID:
    """The ``{cid}`` of a route, parsed strictly (400 if malformed)."""
    return CID.parse(cid)


BlobCID = Annotated[CID, Depends(_blob_cid)]
_Bearer = Annotated[
    HTTPAuthorizationCredentials | None,
    Depends(HTTPBearer(auto_error=False, scheme_name="NodeToken", description="HOME/token")),
]


def _chunks(f: BinaryIO, size: int) -> Iterator[bytes]:
    """At most ``size`` bytes of ``f``, in pieces; closes ``f``."""
    with f:
        left = size
        while left > 0:
            chunk = f.read(min(_READ_CHUNK, left))
            if not chunk:
                return
            left -= len(chunk)
            yield chunk


def _blob_headers(cid: CID, st: os.stat_result) -> dict[str, str]:
    return {
        "Content-Length": str(st.st_size),
        MTIME_HEADER: repr(st.st_mtime),
        "ETag": f'"{cid}"',
        "Cache-Control": "public, max-age=31536000, immutable",
    }


def create_app(
    store: LocalBlobStore,
    *,
    token: str,
    node_id: str,
    name: str = "",
    capacity: int | None = None,
    max_blob: int = MAX_BLOB,
    allowed_hosts: Iterable[str] = (),
    private: PrivateCIDs = (),
    hardware: Hardware | None = None,
    probe_gpus: bool = True,
    peers: Iterable[str] = (),
) -> FastAPI:
    """The blob server of node ``node_id`` over ``store`` (see the module docstring).

    ``token`` (required, at least 16 characters) guards writes, deletes and listing;
    ``peers`` are the base32 public keys whose signed PUTs are accepted as well;
    ``capacity`` caps the bytes stored (``None``: no cap); ``max_blob`` caps one upload;
    ``allowed_hosts`` are accepted in the ``Host`` header besides loopback names; ``private``
    names the blobs never served. ``hardware`` is what ``/v1/info`` reports (default: probed on
    the first request, importing torch to count GPUs only if ``probe_gpus``).
    """
    expected = check_token(token).encode("utf-8")
    if store.read_only:
        raise NodeConfigError(f"the blob server needs a writable store, not {store!r}")
    if max_blob < 1 or (capacity is not None and capacity < 0):
        raise NodeConfigError("max_blob must be at least 1 and capacity not negative")
    private_now = _private_view(private)
    peer_keys = PeerKeys(peers)
    usage = _Usage(store, capacity)

    @functools.cache
    def node_hardware() -> Hardware:
        return hardware if hardware is not None else probe_hardware(import_torch=probe_gpus)

    def require_token(given: _Bearer) -> None:
        if given is None:
            raise _Refusal(
                401, "AuthError", "a bearer token is required", **{"WWW-Authenticate": "Bearer"}
            )
        if not secrets.compare_digest(given.credentials.strip().encode("utf-8"), expected):
            raise _Refusal(403, "AuthError", "the bearer token is not valid for this node")

    def require_token_or_peer(request: Request, given: _Bearer) -> None:
        header = request.headers.get("authorization", "")
        if given is not None or not header.startswith(SIGNATURE_SCHEME + " "):
            require_token(given)
            return
        try:
            peer_keys.check(header, request.method, request.url.path)
        except SignatureRefusedError as exc:
            raise _Refusal(401 if exc.malformed else 403, "AuthError", str(exc)) from None

    token_required = [Depends(require_token)]
    token_or_peer = [Depends(require_token_or_peer)]

    app = FastAPI(
        title="cidflow node agent",
        version="1",
        description="Blobs of one cidflow node, by CID.",
        docs_url=None,
        redoc_url=None,
        redirect_slashes=False,
    )

    @app.exception_handler(_Refusal)
    async def _refused(_request: Request, exc: _Refusal) -> Response:
        return _error(exc.status, exc.kind, exc.detail, exc.headers)

    @app.exception_handler(InvalidCIDError)
    async def _bad_cid(_request: Request, exc: InvalidCIDError) -> Response:
        return _error(400, "InvalidCIDError", str(exc))

    @app.exception_handler(BlobNotFoundError)
    async def _not_found(_request: Request, exc: BlobNotFoundError) -> Response:
        return _error(404, "BlobNotFoundError", f"blob {exc.cid} not found")

    @app.exception_handler(CorruptBlobError)
    async def _mismatch(_request: Request, exc: CorruptBlobError) -> Response:
        return _error(400, "CorruptBlobError", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error(400, "InvalidRequestError", f"invalid request: {problems}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> Response:
        kind = http.HTTPStatus(exc.status_code).phrase.title().replace(" ", "").replace("-", "")
        return _error(exc.status_code, kind, str(exc.detail), exc.headers)

    # -- open routes ------------------------------------------------------------------------
    @app.get("/v1/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/info")
    async def info() -> dict[str, Any]:
        """Who this node is, how much it stores, and what hardware it offers."""
        found = await run_in_threadpool(node_hardware)
        used = await run_in_threadpool(usage.used)
        return {
            "node_id": node_id,
            "name": name,
            "capacity": capacity,
            "used": used,
            "max_blob": max_blob,
            "hardware": found.as_json(),
        }

    def open_blob(cid: CID) -> tuple[BinaryIO, os.stat_result]:
        if str(cid) in private_now():
            raise BlobNotFoundError(cid)
        try:
            f = open(store.path_of(cid), "rb")  # noqa: SIM115 - closed by _chunks
        except FileNotFoundError:
            raise BlobNotFoundError(cid) from None
        return f, os.fstat(f.fileno())

    @app.get("/v1/blobs/{cid}", response_class=StreamingResponse, responses=_BLOB_OPENAPI)
    def get_blob(key: BlobCID) -> Response:
        """The blob's bytes, streamed (the client re-hashes them)."""
        f, st = open_blob(key)
        return StreamingResponse(
            _chunks(f, st.st_size), media_type=_OCTETS, headers=_blob_headers(key, st)
        )

    @app.head("/v1/blobs/{cid}", response_class=Response, responses={404: _BLOB_OPENAPI[404]})
    def head_blob(key: BlobCID) -> Response:
        """The blob's size (``Content-Length``) and last-written time (``X-Blob-Mtime``)."""
        if str(key) in private_now():
            raise BlobNotFoundError(key)
        try:
            st = os.stat(store.path_of(key))
        except FileNotFoundError:
            raise BlobNotFoundError(key) from None
        return Response(status_code=200, media_type=_OCTETS, headers=_blob_headers(key, st))

    # -- routes that need the token -----------------------------------------------------------
    def held_size(cid: CID) -> int:
        try:
            return store.stat(cid).size
        except FileNotFoundError:
            return 0

    def commit(writer: BlobWriter, held: int) -> bool:
        with usage.reserve(writer.size - held):
            created = writer.commit()
            store.flush()
        usage.add(writer.size - held if created else 0)
        return created

    @app.put(
        "/v1/blobs/{cid}", status_code=201, dependencies=token_or_peer, openapi_extra=_PUT_OPENAPI
    )
    async def put_blob(key: BlobCID, request: Request) -> Response:
        """Store the body under ``cid`` if it hashes to it (201; 200 if already held).

        Needs the node's token or a signature of an allowed peer (``Cidflow-Signature``)."""
        hidden = str(key) in private_now()  # answered as if not held, and stays hidden
        declared = request.headers.get("content-length")
        if declared is not None and not declared.isdigit():
            raise _Refusal(400, "InvalidRequestError", "Content-Length is not a number")
        if declared is not None and int(declared) > max_blob:
            raise _too_large(int(declared), max_blob)
        held = 0 if hidden else await run_in_threadpool(held_size, key)
        room = await run_in_threadpool(usage.room)
        if room is not None and declared is not None and int(declared) - held > room:
            raise _full(int(declared) - held, max(room, 0))
        writer = store.open_writer(key)
        try:
            async for chunk in request.stream():
                if writer.size + len(chunk) > max_blob:
                    raise _too_large(max_blob + 1, max_blob, at_least=True)
                if room is not None and writer.size + len(chunk) - held > room:
                    raise _full(writer.size + len(chunk) - held, max(room, 0))
                writer.write(chunk)
            created = await run_in_threadpool(commit, writer, held) or hidden
        except ClientDisconnect:
            raise _Refusal(400, "ClientDisconnect", "the upload ended early") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            raise _Refusal(507, "InsufficientStorage", "the node's disk is full") from None
        finally:
            writer.abort()
        return JSONResponse(
            {"cid": str(key), "size": writer.size, "created": created},
            status_code=201 if created else 200,
        )

    @app.delete("/v1/blobs/{cid}", status_code=204, dependencies=token_required)
    def delete_blob(key: BlobCID) -> Response:
        """Remove the blob (204; 404 if it is not there)."""
        if str(key) in private_now():
            raise BlobNotFoundError(key)
        size = held_size(key)
        if not store.delete(key):
            raise BlobNotFoundError(key)
        usage.add(-size)
        return Response(status_code=204)

    @app.get("/v1/blobs", dependencies=token_required)
    def list_blobs(
        after: Annotated[str | None, Query(max_length=128)] = None,
        limit: Annotated[int, Query(ge=1)] = LIST_PAGE,
    ) -> dict[str, Any]:
        """Up to ``limit`` CIDs greater than ``after`` in text order, and the next cursor."""
        start = str(CID.parse(after)) if after else ""
        limit = min(limit, MAX_LIST_PAGE)
        hidden = private_now()
        later = (t for cid in store.iter_cids() if (t := str(cid)) > start and t not in hidden)
        page = heapq.nsmallest(limit + 1, later)
        more = len(page) > limit
        page = page[:limit]
        return {"cids": page, "next": page[-1] if more else None}

    app.add_middleware(_Guard, allowed=set(LOOPBACK) | {h for h in allowed_hosts if h})
    return app
