"""Errors raised by the registry layer.

::

    RegistryError
    ├── InvalidEntryError   (ValueError)       malformed entry, name, version or field
    ├── SignatureError      (PermissionError)  missing, forged or mismatched signature
    ├── NamespaceError      (PermissionError)  key not allowed to publish in a namespace
    ├── VersionConflictError (FileExistsError) a published version would re-point
    ├── NotFoundError       (LookupError)      no such asset, version or entry
    ├── LogIntegrityError   (ValueError)       the log does not verify; names the seq
    │   └── MirrorError                        a fork or a rollback offered to a mirror
    ├── ReadOnlyRegistryError (PermissionError) append without the registry's key
    ├── AuthError           (PermissionError)  the service refused the token
    ├── ServiceError        (ConnectionError)  service unreachable or its answer malformed
    └── MissingKeyError     (FileNotFoundError)  no signing key in the home folder
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error raised by :mod:`registry`."""


class InvalidEntryError(RegistryError, ValueError):
    """An entry, name, version or field that breaks the format or its limits."""


class SignatureError(RegistryError, PermissionError):
    """A signature that is missing, forged, or made over other bytes."""


class NamespaceError(RegistryError, PermissionError):
    """A key publishing into a namespace that belongs to another key."""


class VersionConflictError(RegistryError, FileExistsError):
    """A published version asked to point at another CID."""


class NotFoundError(RegistryError, LookupError):
    """No asset, version or entry matches."""


class LogIntegrityError(RegistryError, ValueError):
    """The log does not verify; ``seq`` is the first entry at fault (``None``: the head)."""

    def __init__(self, message: str, seq: int | None = None) -> None:
        self.seq = seq
        super().__init__(message if seq is None else f"seq {seq}: {message}")


class MirrorError(LogIntegrityError):
    """A mirror was offered a log that forks from, or rolls back, its own."""


class ReadOnlyRegistryError(RegistryError, PermissionError):
    """An append to a registry opened without its key (someone else's database)."""


class MissingKeyError(RegistryError, FileNotFoundError):
    """No signing key in the home folder (create one with ``cidflow key new``)."""


class AuthError(RegistryError, PermissionError):
    """The service refused the bearer token (missing or wrong)."""


class ServiceError(RegistryError, ConnectionError):
    """The service cannot be reached, or answered something that is not the registry API."""
