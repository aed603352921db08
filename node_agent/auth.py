"""A node's credentials: its operator's bearer token, and the peer keys it accepts on PUT.

A node's token is the content of the file ``token`` in its home folder (surrounding whitespace
ignored). It is made of 32 random bytes (URL-safe base64), written with mode 0600, and
refused if other users may read it. It is this node's alone: it authorises everything on this
node (PUT, DELETE, listing) and nothing on any other.

Peers (the other nodes of a cluster, its coordinator) replicate blobs to a node with a PUT
signed by their ed25519 key (see :mod:`artifacts.blobstore.http`)::

    Authorization: Cidflow-Signature keyid=<fingerprint>,ts=<unix seconds>,sig=<base32>

:class:`PeerKeys` accepts it when ``keyid`` is the fingerprint of a key on the node's
allow-list, ``sig`` verifies over ``"PUT /v1/blobs/<cid> <ts>"`` and ``ts`` is within
:data:`SIGNATURE_WINDOW` seconds of the node's clock. A replay inside the window can only
store again the bytes its sender sends, which the node hashes: a signature lets a peer add
blobs it holds, never delete, list or replace anything.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

from artifacts.blobstore.http import SIGNATURE_SCHEME, signed_message
from node_agent.errors import (
    InsecureTokenError,
    InvalidTokenError,
    NodeConfigError,
    SignatureRefusedError,
)
from registry.errors import RegistryError
from registry.identity import fingerprint, verify_signature

__all__ = [
    "MIN_TOKEN",
    "SIGNATURE_WINDOW",
    "TOKEN_FILE",
    "PeerKeys",
    "check_token",
    "load_or_create_token",
]

TOKEN_FILE: Final = "token"
MIN_TOKEN: Final = 16
#: Seconds a request signature's ``ts`` may differ from the node's clock (either way).
SIGNATURE_WINDOW: Final = 120
_TOKEN_BYTES: Final = 32
_SIGNATURE = re.compile(
    rf"{SIGNATURE_SCHEME} keyid=(pk[a-z2-7]{{32}}),ts=([0-9]{{1,12}}),sig=([a-z2-7]{{103}})"
)


class PeerKeys:
    """The public keys whose signed PUTs a node accepts (by fingerprint)."""

    def __init__(self, public_keys: Iterable[str] = ()) -> None:
        self._keys: dict[str, str] = {}
        for key in public_keys:
            try:
                self._keys[fingerprint(key)] = key
            except RegistryError:
                raise NodeConfigError(f"peer key {key[:60]!r} is not a base32 public key") from None

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, public_key: object) -> bool:
        return public_key in self._keys.values()

    def check(self, header: str, method: str, path: str, now: float | None = None) -> str:
        """The fingerprint of the peer that signed ``method path`` in ``header`` (an
        ``Authorization`` value); :class:`SignatureRefusedError` if it is not a valid, fresh
        signature of a key on this list."""
        m = _SIGNATURE.fullmatch(header.strip())
        if m is None:
            raise SignatureRefusedError("malformed signature header", malformed=True)
        keyid, ts, sig = m.group(1), int(m.group(2)), m.group(3)
        key = self._keys.get(keyid)
        if key is None:
            raise SignatureRefusedError(f"key {keyid} is not an allowed peer of this node")
        now = time.time() if now is None else now
        if abs(now - ts) > SIGNATURE_WINDOW:
            raise SignatureRefusedError(
                f"the signature's time is {now - ts:+.0f} s off this node's clock "
                f"(at most {SIGNATURE_WINDOW} s are accepted)"
            )
        try:
            verify_signature(key, sig, signed_message(method, path, ts))
        except RegistryError:
            raise SignatureRefusedError(f"the signature of {keyid} does not verify") from None
        return keyid


def check_token(token: str, path: Path | None = None) -> str:
    """``token`` without surrounding whitespace; :class:`InvalidTokenError` if too short."""
    token = token.strip()
    if len(token) < MIN_TOKEN:
        what = "is empty" if not token else f"is shorter than {MIN_TOKEN} characters"
        raise InvalidTokenError(what, path)
    return token


def read_secret(path: Path) -> str:
    """The content of a secret file (a token, the Prefect API's credentials), whitespace
    stripped; :class:`InsecureTokenError` if others can read or write it."""
    with open(path, encoding="utf-8") as f:
        if os.fstat(f.fileno()).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InsecureTokenError(path)
        return f.read().strip()


def read_token(path: Path) -> str:
    """The token in ``path``; :class:`InsecureTokenError` if others can read or write it."""
    return check_token(read_secret(path), path)


def load_or_create_token(home: Path) -> str:
    """The token in ``HOME/token``, created first (random, mode 0600) if there is none.

    Creation is atomic: the token is written and fsynced under a temporary name, then linked
    to ``token`` only if that does not exist yet, so concurrent first starts agree on one token.
    """
    path = home / TOKEN_FILE
    with contextlib.suppress(FileNotFoundError):
        return read_token(path)
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = home / f".{TOKEN_FILE}.{os.getpid()}.{secrets.token_hex(8)}.incomplete"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(_TOKEN_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):  # another start won: use its token
            os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    _fsync_dir(home)
    return read_token(path)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
