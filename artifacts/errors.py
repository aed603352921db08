"""Errors raised by the artifacts layer.

Every error derives from :class:`ArtifactError` and also from the builtin that matches its
meaning, so callers may catch either::

    ArtifactError
    ├── InvalidCIDError          (ValueError)    malformed CID text or bytes
    ├── BlobNotFoundError        (FileNotFoundError, KeyError)   no blob under that CID
    │   └── ArtifactNotFoundError                no artifact (root manifest) under that CID
    ├── CorruptBlobError         (OSError)       stored bytes do not hash to their CID
    ├── ManifestError            (ValueError)    a manifest that cannot be trusted or parsed
    │   └── UnsafePathError                      a key or path escaping its root
    ├── ReadOnlyError            (PermissionError)   write to a read-only store
    ├── ReplicationError         (OSError)       replicas could not make r copies, or serve a blob
    ├── StoreBusyError           (TimeoutError)  a lock could not be taken in time
    ├── UnsupportedInputError    (ValueError)    data cidflow cannot store as asked
    ├── ClusterConfigError       (ValueError)    a home's cluster.json that cannot be used
    └── PeerError                (OSError)       a peer node refused a request, or lied
        ├── AccessDeniedError    (PermissionError)   the peer refused the token
        └── PeerUnavailableError (ConnectionError)   no connection, or it broke
            └── PeerTimeoutError (TimeoutError)  the peer did not answer in time
"""

from __future__ import annotations

from collections.abc import Mapping


class ArtifactError(Exception):
    """Root of every error raised by :mod:`artifacts`."""


class InvalidCIDError(ArtifactError, ValueError):
    """A CID (text or bytes) that is not a well-formed CIDv1 cidflow understands."""

    def __init__(self, value: object, reason: str) -> None:
        self.value = value
        self.reason = reason
        shown = repr(value) if not isinstance(value, str) else f"'{_clip(value)}'"
        super().__init__(f"invalid CID {shown}: {reason}")


class BlobNotFoundError(ArtifactError, FileNotFoundError, KeyError):
    """No blob is stored under ``cid``."""

    def __init__(self, cid: object, where: str = "") -> None:
        self.cid = str(cid)
        suffix = f" in {where}" if where else ""
        super().__init__(f"blob {self.cid} not found{suffix}")

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0])


class ArtifactNotFoundError(BlobNotFoundError):
    """No artifact is stored under ``cid``."""

    def __init__(self, cid: object, where: str = "") -> None:
        super().__init__(cid, where)
        suffix = f" in {where}" if where else ""
        self.args = (f"artifact {self.cid} not found{suffix}",)


class CorruptBlobError(ArtifactError, OSError):
    """Bytes stored or received under ``cid`` do not hash to it."""

    def __init__(self, cid: object, detail: str = "content does not match its hash") -> None:
        self.cid = str(cid)
        self.detail = detail
        super().__init__(f"corrupt blob {self.cid}: {detail}")

    def __str__(self) -> str:
        return f"corrupt blob {self.cid}: {self.detail}"


class ManifestError(ArtifactError, ValueError):
    """A manifest (root or table node) that is malformed or refers to unsafe keys."""

    def __init__(self, cid: object, reason: str) -> None:
        self.cid = str(cid) if cid is not None else None
        self.reason = reason
        where = f"manifest {self.cid}" if self.cid else "manifest"
        super().__init__(f"{where}: {reason}")


class UnsafePathError(ManifestError):
    """A key or relative path that would escape its root (``..``, absolute, NUL, backslash)."""

    def __init__(self, path: str, reason: str, cid: object = None) -> None:
        self.path = path
        super().__init__(cid, f"unsafe path {_clip(path)!r}: {reason}")


class ReadOnlyError(ArtifactError, PermissionError):
    """A write was attempted on a store opened read-only."""


class ReplicationError(ArtifactError, OSError):
    """The replicas of a replicated store could not together do what was asked.

    A write that made fewer than ``required`` durable copies (``stored`` says how many), or a
    read, listing or delete that no replica could answer. ``failures`` maps each node id that
    failed to what it said.
    """

    def __init__(
        self,
        cid: object,
        detail: str,
        *,
        failures: Mapping[str, str] | None = None,
        stored: int | None = None,
        required: int | None = None,
    ) -> None:
        self.cid = str(cid) if cid is not None else None
        self.detail = detail
        self.failures: dict[str, str] = dict(failures or {})
        self.stored = stored
        self.required = required
        super().__init__(self._message())

    def _message(self) -> str:
        where = f"blob {self.cid}: " if self.cid else ""
        said = "; ".join(f"{node}: {reason}" for node, reason in self.failures.items())
        return f"{where}{self.detail}" + (f" ({said})" if said else "")

    def __str__(self) -> str:  # OSError would otherwise format its args as (errno, strerror)
        return self._message()


class StoreBusyError(ArtifactError, TimeoutError):
    """A store lock could not be taken within the allowed time."""


class UnsupportedInputError(ArtifactError, ValueError):
    """Input that cidflow cannot store as asked (unsupported dtype, non-finite attribute...)."""


class ClusterConfigError(ArtifactError, ValueError):
    """A home's ``cluster.json`` that cannot be used (malformed, no nodes, unreadable token)."""


class PeerError(ArtifactError, OSError):
    """A peer node at ``url`` refused a request (``status``, its HTTP status, when it answered)
    or answered something the blob protocol does not allow."""

    def __init__(self, url: str, detail: str, status: int | None = None) -> None:
        self.url = url
        self.detail = detail
        self.status = status
        super().__init__(f"peer {url}: {detail}")

    def __str__(self) -> str:
        return f"peer {self.url}: {self.detail}"


class AccessDeniedError(PeerError, PermissionError):
    """The peer refused the bearer token: none was sent (401) or it is wrong (403)."""


class PeerUnavailableError(PeerError, ConnectionError):
    """The peer cannot be reached (refused, unknown host) or the connection broke mid-answer."""


class PeerTimeoutError(PeerUnavailableError, TimeoutError):
    """The peer did not connect or answer within the configured timeout."""


def _clip(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
