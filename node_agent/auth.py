"""The node's bearer token: ``HOME/token``, created on first start.

A node's token is the content of the file ``token`` in its home folder (surrounding whitespace
ignored). It is made of 32 random bytes (URL-safe base64), written with mode 0600, and
refused if other users may read it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path
from typing import Final

from node_agent.errors import InsecureTokenError, InvalidTokenError

__all__ = ["MIN_TOKEN", "TOKEN_FILE", "check_token", "load_or_create_token"]

TOKEN_FILE: Final = "token"
MIN_TOKEN: Final = 16
_TOKEN_BYTES: Final = 32


def check_token(token: str, path: Path | None = None) -> str:
    """``token`` without surrounding whitespace; :class:`InvalidTokenError` if too short."""
    token = token.strip()
    if len(token) < MIN_TOKEN:
        what = "is empty" if not token else f"is shorter than {MIN_TOKEN} characters"
        raise InvalidTokenError(what, path)
    return token


def read_token(path: Path) -> str:
    """The token in ``path``; :class:`InsecureTokenError` if others can read or write it."""
    with open(path, encoding="utf-8") as f:
        if os.fstat(f.fileno()).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InsecureTokenError(path)
        return check_token(f.read(), path)


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
