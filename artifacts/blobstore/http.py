"""A blob store on a peer node agent, over HTTP.

The peer serves the blob routes of :mod:`node_agent.blobs_app`; this module is the client, and
the wire constants below are shared with that server (which imports them from here)::

    GET    /v1/blobs/{cid}               the bytes (public; verified here by BlobStore.get)
    HEAD   /v1/blobs/{cid}               Content-Length, and X-Blob-Mtime (POSIX seconds)
    PUT    /v1/blobs/{cid}               token or peer signature; 201 stored, 200 already held
                                         (time refreshed), 400 bytes do not hash to the CID,
                                         413 too large, 507 the node is full
    DELETE /v1/blobs/{cid}               token; 204 deleted, 404 not there
    GET    /v1/blobs?after=CID&limit=N   token; {"cids": [...], "next": CID or null}, sorted

Every answer from the peer is untrusted: bytes are re-hashed by :meth:`BlobStore.get`, listed
CIDs are parsed strictly, and a download larger than ``max_blob`` is cut off. Errors map to
:mod:`artifacts.errors`: 404 → :class:`BlobNotFoundError`, 401/403 → :class:`AccessDeniedError`,
no connection or a broken one → :class:`PeerUnavailableError` (:class:`PeerTimeoutError` past
the timeout), anything else unexpected → :class:`PeerError`; each names the peer's URL.

Credentials are sent only where they are needed, never on reads (GET, HEAD):

- the node's own token (``Authorization: Bearer TOKEN``) on DELETE and listing: only that
  node's operator holds it;
- on PUT, a request signature when the store has a ``signer`` (replication: the node hashes
  the bytes it receives, so a peer can only add blobs it holds), else the token::

      Authorization: Cidflow-Signature keyid=<fingerprint>,ts=<unix seconds>,sig=<signature>

  ``sig`` is the signer's ed25519 signature (base32, as :mod:`registry.identity` writes it) of
  ``"PUT /v1/blobs/<cid> <ts>"`` (:func:`signed_message`); a node accepts it from a key on its
  peer allow-list within a short clock window.

Use ``https://`` for a peer that is not on a trusted network.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final, Protocol

import httpx

from artifacts.blobstore.base import BlobStat, BlobStore
from artifacts.cid import CID, HashName, as_cid
from artifacts.errors import (
    AccessDeniedError,
    BlobNotFoundError,
    CorruptBlobError,
    InvalidCIDError,
    PeerError,
    PeerTimeoutError,
    PeerUnavailableError,
)

__all__ = [
    "LIST_PAGE",
    "MAX_BLOB",
    "MAX_LIST_PAGE",
    "MTIME_HEADER",
    "SIGNATURE_SCHEME",
    "HTTPBlobStore",
    "RequestSigner",
    "signature_header",
    "signed_message",
]

#: Header of a HEAD answer giving the blob's last-written time, in POSIX seconds (a float).
MTIME_HEADER: Final = "X-Blob-Mtime"
#: CIDs asked for per listing page, and the most a server returns in one page.
LIST_PAGE: Final = 1000
MAX_LIST_PAGE: Final = 10_000
#: Default largest blob a client downloads and a node accepts, in bytes.
MAX_BLOB: Final = 128 << 20

#: The ``Authorization`` scheme of a request signed by a peer's key.
SIGNATURE_SCHEME: Final = "Cidflow-Signature"

_BLOBS: Final = "/v1/blobs"


class RequestSigner(Protocol):
    """What signs requests: an ed25519 key (``registry.identity.Identity`` is one).

    ``id`` is the key's fingerprint, ``public_key`` its base32 public key, and ``sign`` returns
    the base32 signature of a message."""

    @property
    def id(self) -> str: ...

    @property
    def public_key(self) -> str: ...

    def sign(self, message: bytes) -> str: ...


def signed_message(method: str, path: str, ts: int) -> bytes:
    """The bytes a request signature covers: ``"METHOD PATH TS"`` (path without the query)."""
    return f"{method.upper()} {path} {ts}".encode("ascii")


def signature_header(signer: RequestSigner, method: str, path: str, ts: int | None = None) -> str:
    """The ``Authorization`` value for ``method path`` signed by ``signer`` at ``ts`` (now)."""
    ts = int(time.time()) if ts is None else ts
    sig = signer.sign(signed_message(method, path, ts))
    return f"{SIGNATURE_SCHEME} keyid={signer.id},ts={ts},sig={sig}"


class HTTPBlobStore(BlobStore):
    """The blobs of the node agent at ``url`` (``http://host:port``).

    ``token`` is the node's own bearer token, sent on DELETE and listing (and on PUT when there
    is no ``signer``); ``signer`` signs PUTs (a peer's key on the node's allow-list). Reads
    carry no credential.
    ``timeout`` bounds each wait for the peer (connect, each read and write) and
    ``connect_timeout`` the connection itself, in seconds. Use as a context manager, or call
    :meth:`close`, to release its connections.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        signer: RequestSigner | None = None,
        read_only: bool = False,
        hash: HashName = "sha2-256",
        timeout: float = 10.0,
        connect_timeout: float = 3.0,
        max_blob: int = MAX_BLOB,
        page_size: int = LIST_PAGE,
    ) -> None:
        super().__init__(read_only=read_only, hash=hash)
        if timeout <= 0 or connect_timeout <= 0:
            raise ValueError("timeouts must be positive")
        if max_blob < 0 or not 1 <= page_size <= MAX_LIST_PAGE:
            raise ValueError(f"max_blob must be >= 0 and page_size in 1..{MAX_LIST_PAGE}")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.max_blob = max_blob
        self.page_size = page_size
        self._token = token
        self._signer = signer
        self._client = httpx.Client(
            base_url=self.url,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            follow_redirects=False,
        )

    def __repr__(self) -> str:
        return f"HTTPBlobStore('{self.url}', read_only={self.read_only})"

    def __enter__(self) -> HTTPBlobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections to the peer."""
        self._client.close()

    def __getstate__(self) -> dict[str, object]:
        # The token and signer travel with the pickle, like the rest of the configuration:
        # pickle a store only to hand it to a process of your own.
        return {
            "url": self.url,
            "token": self._token,
            "signer": self._signer,
            "read_only": self.read_only,
            "hash": self.hash_name,
            "timeout": self.timeout,
            "connect_timeout": self.connect_timeout,
            "max_blob": self.max_blob,
            "page_size": self.page_size,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state.pop("url"), **state)  # type: ignore[misc]

    # -- primitives ----------------------------------------------------------------------------
    def _read(self, cid: CID) -> bytes:
        path = f"{_BLOBS}/{cid}"
        with self._mapped(path), self._client.stream("GET", path) as resp:
            if resp.status_code != 200:
                resp.read()
                raise self._refusal(resp, path, cid)
            declared = resp.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_blob:
                raise PeerError(self._where(path), self._too_big(int(declared)), 200)
            chunks: list[bytes] = []
            received = 0
            for chunk in resp.iter_bytes():
                received += len(chunk)
                if received > self.max_blob:
                    raise PeerError(self._where(path), self._too_big(received), 200)
                chunks.append(chunk)
        return b"".join(chunks)

    def _write(self, cid: CID, data: bytes | memoryview) -> None:
        path = f"{_BLOBS}/{cid}"
        body = data if isinstance(data, bytes) else bytes(data)
        with self._mapped(path):
            headers = {"Content-Type": "application/octet-stream"}
            headers |= self._auth("PUT", path)
            resp = self._client.put(path, content=body, headers=headers)
        if resp.status_code not in (200, 201):
            raise self._refusal(resp, path, cid)

    def stat(self, cid: str | CID) -> BlobStat:
        key = as_cid(cid)
        path = f"{_BLOBS}/{key}"
        with self._mapped(path):
            resp = self._client.head(path)
        if resp.status_code != 200:
            raise self._refusal(resp, path, key)
        try:
            size = int(resp.headers["content-length"])
            mtime = float(resp.headers[MTIME_HEADER])
        except (KeyError, ValueError):
            raise PeerError(
                self._where(path), f"HEAD answer without a valid size and {MTIME_HEADER}", 200
            ) from None
        return BlobStat(size, mtime)

    def _delete(self, cid: CID) -> bool:
        path = f"{_BLOBS}/{cid}"
        with self._mapped(path):
            resp = self._client.delete(path, headers=self._bearer())
        if resp.status_code == 404:
            return False
        if resp.status_code not in (200, 204):
            raise self._refusal(resp, path, cid)
        return True

    def iter_cids(self) -> Iterator[CID]:
        after: str | None = None
        while True:
            params: dict[str, str | int] = {"limit": self.page_size}
            if after is not None:
                params["after"] = after
            with self._mapped(_BLOBS):
                resp = self._client.get(_BLOBS, params=params, headers=self._bearer())
            if resp.status_code != 200:
                raise self._refusal(resp, _BLOBS, None)
            cids, after = self._page(resp, after)
            yield from cids
            if after is None:
                return

    # -- helpers -------------------------------------------------------------------------------
    def _bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._token}"} if self._token else {}

    def _auth(self, method: str, path: str) -> dict[str, str]:
        """A write's credential: the signer's signature if there is one, else the token."""
        if self._signer is not None:
            return {"Authorization": signature_header(self._signer, method, path)}
        return self._bearer()

    def _page(self, resp: httpx.Response, after: str | None) -> tuple[list[CID], str | None]:
        """The CIDs of one listing page and the cursor of the next (``None``: the last page)."""
        where = self._where(_BLOBS)
        try:
            obj = resp.json()
            texts, cursor = obj["cids"], obj["next"]
            if not isinstance(texts, list) or not (cursor is None or isinstance(cursor, str)):
                raise TypeError("'cids' must be a list and 'next' a string or null")
            cids = [CID.parse(t) for t in texts]
        except (json.JSONDecodeError, KeyError, TypeError, InvalidCIDError) as exc:
            raise PeerError(where, f"malformed listing: {exc}", resp.status_code) from None
        if cursor is not None and ((after is not None and cursor <= after) or not cids):
            raise PeerError(where, "the listing does not advance", resp.status_code)
        return cids, cursor

    def _where(self, path: str) -> str:
        return f"{self.url}{path}"

    def _too_big(self, size: int) -> str:
        return f"a blob of {size} bytes or more is over this client's limit of {self.max_blob}"

    @contextmanager
    def _mapped(self, path: str) -> Iterator[None]:
        """Turn httpx's transport errors into ours, naming the URL."""
        try:
            yield
        except httpx.TimeoutException as exc:
            raise PeerTimeoutError(
                self._where(path), f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise PeerUnavailableError(self._where(path), f"cannot reach: {reason}") from exc

    def _refusal(self, resp: httpx.Response, path: str, cid: CID | None) -> Exception:
        """The error for an answer the operation did not expect."""
        status = resp.status_code
        kind, detail = _error_of(resp)
        where = self._where(path)
        if status == 404 and cid is not None:
            return BlobNotFoundError(cid, self.url)
        if status == 401:
            return AccessDeniedError(where, f"a credential is required ({detail})", status)
        if status == 403:
            return AccessDeniedError(where, f"the credential was refused ({detail})", status)
        if status == 400 and kind == "CorruptBlobError" and cid is not None:
            return CorruptBlobError(cid, f"the peer received bytes that do not match: {detail}")
        return PeerError(where, f"HTTP {status}: {kind}: {detail}", status)


def _error_of(resp: httpx.Response) -> tuple[str, str]:
    """``(error type, detail)`` from an error answer ``{"error": ..., "detail": ...}``."""
    try:
        obj = json.loads(resp.content)
        kind, detail = obj["error"], obj["detail"]
    except (ValueError, KeyError, TypeError):
        return "HTTPError", resp.reason_phrase or "no detail"
    return str(kind)[:100], str(detail)[:500]
