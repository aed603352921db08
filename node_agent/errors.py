"""Errors raised by the node agent layer.

Every error derives from :class:`NodeAgentError` and also from the builtin that matches its
meaning, so callers may catch either::

    NodeAgentError
    ├── InvalidTokenError   (ValueError)       a token that is empty or too short to be secret
    ├── InsecureTokenError  (PermissionError)  a token file that others may read
    ├── SignatureRefusedError (PermissionError) a peer's request signature that is refused
    └── NodeConfigError     (ValueError)       settings or arguments a node cannot run with
"""

from __future__ import annotations

from pathlib import Path


class NodeAgentError(Exception):
    """Root of every error raised by :mod:`node_agent`."""


class InvalidTokenError(NodeAgentError, ValueError):
    """A bearer token (given, or read from ``path``) that is empty or too short."""

    def __init__(self, reason: str, path: Path | None = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"token file {path}: {reason}" if path else f"token: {reason}")


class InsecureTokenError(NodeAgentError, PermissionError):
    """A token file readable or writable by other users than its owner."""

    def __init__(self, path: Path) -> None:
        self.path = path
        super().__init__(f"{path} is accessible to other users; run: chmod 600 {path}")

    def __str__(self) -> str:  # PermissionError would otherwise format (errno, strerror)
        return str(self.args[0])


class SignatureRefusedError(NodeAgentError, PermissionError):
    """A request signature that is malformed, from a key not allowed, stale, or false."""

    def __init__(self, reason: str, *, malformed: bool = False) -> None:
        self.reason = reason
        self.malformed = malformed
        super().__init__(reason)

    def __str__(self) -> str:
        return self.reason


class NodeConfigError(NodeAgentError, ValueError):
    """Settings or arguments a node cannot run with (a read-only store, a negative limit...)."""
