"""The registry as an HTTP service (FastAPI): the read API, and ``POST /v1/entries`` to append.

Reads are open; the one route that writes requires ``Authorization: Bearer TOKEN`` (there is no
default token: :func:`create_app` refuses to build without one). The service judges entries
with the same :class:`~registry.registry.Registry` (and so the same rules) as the local
registry; the signature on each entry is what proves who published it, the token only says who
may reach the append route at all.

Errors answer ``{"error": TYPE, "detail": MESSAGE}`` with a status per type (see
:data:`STATUS`), so :mod:`registry.client` raises the same exception the local registry would.
Requests naming a host other than loopback or the configured one are refused (DNS rebinding),
and append bodies are capped at :data:`MAX_BODY` bytes.

Every :class:`~registry.registry.VersionInfo` in a response carries the signed entry that
published it (``"entry"``), so a client can check the publisher's signature over the CID; every
node of ``GET /v1/nodes`` carries its latest signed ``node`` entry the same way. Nodes announce
themselves and heartbeat through ``POST /v1/entries`` like any other entry.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Annotated, Any, Final

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from artifacts.canonical import loads_strict
from registry.errors import (
    InvalidEntryError,
    LogIntegrityError,
    MirrorError,
    MissingKeyError,
    NamespaceError,
    NotFoundError,
    ReadOnlyRegistryError,
    RegistryError,
    SignatureError,
    VersionConflictError,
)
from registry.names import parse_name, parse_version
from registry.nodes import NodeInfo
from registry.registry import Registry, VersionInfo

__all__ = ["LOG_PAGE", "MAX_BODY", "STATUS", "create_app"]

MAX_BODY: Final = 128 << 10
LOG_PAGE: Final = 5000
MIN_TOKEN: Final = 16
LOOPBACK: Final = frozenset({"127.0.0.1", "localhost", "::1"})

# Most specific first: the first class an error is an instance of decides its status.
STATUS: Final[tuple[tuple[type[RegistryError], int], ...]] = (
    (MirrorError, 409),
    (LogIntegrityError, 500),
    (InvalidEntryError, 400),
    (SignatureError, 400),
    (NamespaceError, 403),
    (VersionConflictError, 409),
    (NotFoundError, 404),
    (ReadOnlyRegistryError, 503),
    (MissingKeyError, 500),
    (RegistryError, 500),
)

_ENTRY_OPENAPI: Final[dict[str, Any]] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["body", "sig"],
                    "properties": {"body": {"type": "object"}, "sig": {"type": "string"}},
                    "additionalProperties": False,
                }
            }
        },
    },
    "parameters": [
        {
            "name": "Authorization",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "example": "Bearer TOKEN"},
        }
    ],
}

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGI = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


def _error(status: int, kind: str, detail: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": kind, "detail": detail}, status_code=status, headers=headers)


def status_of(exc: RegistryError) -> int:
    return next(code for cls, code in STATUS if isinstance(exc, cls))


def host_of(header: str) -> str | None:
    """The host part of a ``Host`` header (``[::1]:8000`` → ``::1``), lower-case; ``None`` if
    it is malformed."""
    header = header.strip().lower()
    if header.startswith("["):
        inside, sep, rest = header[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return inside or None
    host, _, port = header.partition(":")
    if port and not port.isdigit():
        return None
    return host or None


class _HostCheck:
    """Refuses requests whose ``Host`` is not an allowed name (a DNS-rebinding defence).

    Unlike Starlette's ``TrustedHostMiddleware`` it understands bracketed IPv6 hosts."""

    def __init__(self, app: _ASGI, allowed: Iterable[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.lower() for h in allowed)

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] in ("http", "websocket"):
            raw = dict(scope.get("headers") or []).get(b"host", b"")
            host = host_of(raw.decode("latin-1"))
            if host is None or host not in self.allowed:
                response = _error(400, "InvalidHostError", "invalid or unexpected Host header")
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _info_json(registry: Registry, info: VersionInfo) -> dict[str, Any]:
    """``info`` plus the signed entry that published it (for the client to check)."""
    records = registry.log(info.seq - 1, 1)
    if not records or records[0].seq != info.seq:
        raise LogIntegrityError("the entry that published this version is missing", info.seq)
    return {**info.as_json(), "entry": records[0].entry.as_json()}


def create_app(
    registry: Registry,
    *,
    token: str,
    host: str | None = None,
    allowed_hosts: Iterable[str] = (),
    max_body: int = MAX_BODY,
) -> FastAPI:
    """The service for ``registry``. ``token`` (required, at least 16 characters) guards
    appends; ``host`` and ``allowed_hosts`` are accepted in the ``Host`` header besides
    loopback names."""
    if not isinstance(token, str) or len(token.strip()) < MIN_TOKEN:
        raise ValueError(f"the registry service needs a token of at least {MIN_TOKEN} characters")
    expected = token.strip().encode("utf-8")
    app = FastAPI(
        title="cidflow registry",
        version="1",
        description="Versioned, signed marketplace registry of datasets and models.",
    )

    @app.exception_handler(RegistryError)
    async def _registry_error(_request: Request, exc: RegistryError) -> JSONResponse:
        return _error(status_of(exc), type(exc).__name__, str(exc))

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return _error(422, "InvalidEntryError", f"invalid request: {problems}")

    # -- reads --------------------------------------------------------------------------------
    @app.get("/v1/health")
    def health() -> dict[str, Any]:
        return {"ok": True, "seq": registry.head().seq}

    @app.get("/v1/head")
    def head() -> dict[str, Any]:
        return registry.head().as_json()

    @app.get("/v1/resolve")
    def resolve(
        ref: Annotated[str, Query(max_length=512)],
        at: Annotated[int | None, Query(ge=0)] = None,
        pre: bool = False,
    ) -> dict[str, Any]:
        return _info_json(registry, registry.resolve(ref, at=at, prerelease=pre))

    @app.get("/v1/assets/{ns}/{name}")
    def asset_versions(
        ns: str, name: str, at: Annotated[int | None, Query(ge=0)] = None
    ) -> dict[str, Any]:
        found = registry.versions(parse_name(f"{ns}/{name}"), at=at)
        return {"versions": [_info_json(registry, v) for v in found]}

    @app.get("/v1/assets/{ns}/{name}/{version}")
    def version_info(
        ns: str, name: str, version: str, at: Annotated[int | None, Query(ge=0)] = None
    ) -> dict[str, Any]:
        exact = str(parse_version(version))
        return _info_json(registry, registry.resolve(f"{ns}/{name}@{exact}", at=at))

    @app.get("/v1/search")
    def search(
        q: Annotated[str, Query(max_length=256)] = "",
        kind: str | None = None,
        license: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> dict[str, Any]:
        found = registry.search(q, kind=kind, license=license, limit=limit, offset=offset)
        return {"results": [_info_json(registry, v) for v in found]}

    @app.get("/v1/nodes")
    def list_nodes() -> dict[str, Any]:
        records = registry.node_records()
        return {
            "nodes": [
                {**NodeInfo.from_record(r).as_json(), "entry": r.entry.as_json()} for r in records
            ]
        }

    @app.get("/v1/log")
    def log(
        since: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1)] = LOG_PAGE,
    ) -> dict[str, Any]:
        records = registry.log(since, min(limit, LOG_PAGE))
        last = records[-1].seq if records else since
        return {"records": [r.as_json() for r in records], "more": registry.head().seq > last}

    # -- the one write --------------------------------------------------------------------------
    @app.post("/v1/entries", status_code=201, openapi_extra=_ENTRY_OPENAPI)
    async def append(request: Request) -> JSONResponse:
        """Append one signed entry ``{"body": ..., "sig": ...}`` (bearer token required)."""
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _error(
                401, "AuthError", "a bearer token is required to append", **{
                    "WWW-Authenticate": "Bearer"
                }
            )  # fmt: skip
        if not secrets.compare_digest(given.strip().encode("utf-8"), expected):
            return _error(403, "AuthError", "the bearer token is not valid for this registry")
        too_big = _error(413, "PayloadTooLarge", f"an entry is at most {max_body} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body):
            return too_big
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_body:
                return too_big
        try:
            obj = loads_strict(bytes(body))
        except (UnicodeDecodeError, ValueError) as exc:
            raise InvalidEntryError(f"the request body is not JSON: {exc}") from None
        result = await run_in_threadpool(registry.append, obj)
        stored = await run_in_threadpool(registry.log, result.seq - 1, 1)
        payload = {"seq": result.seq, "hash": result.hash, "existing": result.existing}
        payload["prev"] = stored[0].prev if stored else None  # lets the client re-hash it
        return JSONResponse(payload, status_code=200 if result.existing else 201)

    allowed = set(LOOPBACK) | {h for h in [host, *allowed_hosts] if h}
    app.add_middleware(_HostCheck, allowed=allowed)
    return app
