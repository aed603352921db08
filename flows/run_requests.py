"""Signed run requests: who may start work on a node.

Reaching a cluster's Prefect API (which needs its credentials) is not enough to make a node run
anything. Every node-side flow takes a ``request`` parameter: the canonical JSON
``{"body": BODY, "sig": SIG}`` where BODY names the flow, the node (its id, the fingerprint of
its key), every other parameter of the run, the input CIDs and code CID among them, a random
nonce, and when the request was issued and expires, signed by a coordinator's ed25519 key.
Before anything runs, the node checks (:func:`verify_request`):

- the signature, and that the signing key is on its operator's allow-list
  (``cidflow node start --allow-coordinator KEY``; ``cluster up`` allows its own coordinator);
- that the request is for this flow on this node, with exactly the parameters the run got
  (a run whose parameters were changed after signing is refused);
- that it has not expired, was not issued in the future, and lives no longer than
  :data:`MAX_TTL`;
- that its nonce was never seen (:class:`NonceStore`, a small SQLite file in the node's home
  shared by every process of the node), so a request is used once: a replay is refused.

A refused request is a :class:`RunRequestError` raised before the flow reads any input.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from artifacts.atomic import write_atomic
from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import cids_in
from flows.errors import RunRequestError
from registry.errors import RegistryError
from registry.identity import Identity, fingerprint, verify_signature

__all__ = [
    "ALLOWED_FILE",
    "CLOCK_SKEW",
    "COORDINATOR_KEY",
    "DEFAULT_TTL",
    "MAX_TTL",
    "REQUEST_FORMAT",
    "NonceStore",
    "allowed_coordinators",
    "save_allowed_coordinators",
    "sign_request",
    "signed_parameters",
    "verify_request",
]

REQUEST_FORMAT: Final = "cidflow/run-request@1"
#: The coordinator's key in its home (``HOME/keys/coordinator.pem``): signs run requests.
COORDINATOR_KEY: Final = "coordinator"
#: How long a request is valid by default, and at most (a node refuses a longer one).
DEFAULT_TTL: Final = 600.0
MAX_TTL: Final = 86400.0
#: Clocks of coordinator and node may differ by this much.
CLOCK_SKEW: Final = 60.0
#: The node's allow-list of coordinator public keys (written by ``cidflow node start``).
ALLOWED_FILE: Final = "allowed-coordinators.json"
NONCE_FILE: Final = "run-requests.db"
_FIELDS: Final = frozenset(
    {"format", "flow", "node", "parameters", "inputs", "nonce", "issued", "expires", "key"}
)
#: Parameters that are not part of what a request signs (the request itself).
UNSIGNED: Final = frozenset({"request"})


def signed_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters a request signs: all of them but the request itself, as canonical JSON
    data (a run's parameters come back from Prefect as JSON, so compare like with like)."""
    plain = {k: v for k, v in parameters.items() if k not in UNSIGNED}
    return dict(loads_strict(canonical_json(plain)))


def sign_request(
    identity: Identity,
    *,
    flow: str,
    node_id: str,
    parameters: Mapping[str, Any],
    ttl: float = DEFAULT_TTL,
    now: float | None = None,
) -> dict[str, Any]:
    """A run request for ``flow`` on node ``node_id`` with ``parameters``, signed by
    ``identity`` (the coordinator), valid for ``ttl`` seconds."""
    issued = time.time() if now is None else now
    params = signed_parameters(parameters)
    body = {
        "format": REQUEST_FORMAT,
        "flow": flow,
        "node": node_id,
        "parameters": params,
        "inputs": sorted(set(cids_in(params))),
        "nonce": secrets.token_hex(16),
        "issued": round(issued, 3),
        "expires": round(issued + ttl, 3),
        "key": identity.public_key,
    }
    return {"body": body, "sig": identity.sign(canonical_json(body))}


def verify_request(
    request: Any,
    *,
    flow: str,
    node_id: str,
    parameters: Mapping[str, Any],
    allowed: Collection[str],
    nonces: NonceStore,
    defaults: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """The request's body if ``request`` lets this node run ``flow`` with ``parameters``
    (the run's, its flow's ``defaults`` filled in: a parameter the request does not name must
    have its default value); else :class:`RunRequestError` saying why. Uses up the request's
    nonce."""
    if request is None:
        raise RunRequestError(f"refused {flow}: no signed run request")
    if not isinstance(request, dict) or set(request) != {"body", "sig"}:
        raise RunRequestError(f"refused {flow}: the run request is malformed")
    body, sig = request["body"], request["sig"]
    if not isinstance(body, dict) or set(body) != _FIELDS or body["format"] != REQUEST_FORMAT:
        raise RunRequestError(f"refused {flow}: not a {REQUEST_FORMAT} request")
    key = body["key"]
    try:
        verify_signature(key, sig, canonical_json(body))
        signer = fingerprint(key)
    except (RegistryError, TypeError, ValueError):
        raise RunRequestError(f"refused {flow}: the request's signature does not verify") from None
    if key not in allowed:
        raise RunRequestError(
            f"refused {flow}: coordinator {signer} is not allowed on this node "
            "(cidflow node start --allow-coordinator KEY)"
        )
    if body["flow"] != flow or body["node"] != node_id:
        raise RunRequestError(f"refused {flow}: the run request is for another flow or node")
    expected = signed_parameters({**(defaults or {}), **body["parameters"]})
    if not isinstance(body["parameters"], dict) or expected != signed_parameters(parameters):
        raise RunRequestError(f"refused {flow}: the run's parameters differ from the signed ones")
    issued, expires = body["issued"], body["expires"]
    if not all(isinstance(t, int | float) and not isinstance(t, bool) for t in (issued, expires)):
        raise RunRequestError(f"refused {flow}: the run request's times are not numbers")
    t = time.time() if now is None else now
    if issued > t + CLOCK_SKEW or expires - issued > MAX_TTL or expires < issued:
        raise RunRequestError(f"refused {flow}: the run request's validity period is not sane")
    if t > expires:
        raise RunRequestError(f"refused {flow}: the run request expired")
    if not isinstance(body["nonce"], str) or not 16 <= len(body["nonce"]) <= 128:
        raise RunRequestError(f"refused {flow}: the run request's nonce is malformed")
    if not nonces.use(f"{signer}:{body['nonce']}", float(expires), now=t):
        raise RunRequestError(f"refused {flow}: the run request was already used (a replay)")
    return body


@dataclass
class NonceStore:
    """Nonces of requests already used on a node, until they expire: ``HOME/run-requests.db``
    (SQLite, so every serving process of the node shares it; the insert is the check, so two
    processes given the same request cannot both accept it)."""

    path: Path

    @classmethod
    def for_home(cls, home: str | os.PathLike[str]) -> NonceStore:
        return cls(Path(home) / NONCE_FILE)

    @contextlib.contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        fresh = not self.path.exists()
        db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            if fresh:
                os.chmod(self.path, 0o600)
                db.execute("PRAGMA journal_mode=WAL")  # one fsync a request, readers unblocked
            db.execute("CREATE TABLE IF NOT EXISTS used (nonce TEXT PRIMARY KEY, expires REAL)")
            yield db
        finally:
            db.close()

    def use(self, nonce: str, expires: float, *, now: float | None = None) -> bool:
        """Record ``nonce``; False if it was recorded before (and has not expired since)."""
        t = time.time() if now is None else now
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("DELETE FROM used WHERE expires < ?", (t - CLOCK_SKEW,))
                db.execute("INSERT INTO used (nonce, expires) VALUES (?, ?)", (nonce, expires))
            except sqlite3.IntegrityError:
                db.execute("ROLLBACK")
                return False
            db.execute("COMMIT")
        return True


def allowed_coordinators(home: str | os.PathLike[str]) -> frozenset[str]:
    """The coordinator public keys this node's operator allowed (none: the node runs nothing)."""
    path = Path(home) / ALLOWED_FILE
    try:
        doc = loads_strict(path.read_bytes())
    except FileNotFoundError:
        return frozenset()
    except ValueError as exc:
        raise RunRequestError(f"{path} is not strict JSON: {exc}") from None
    keys = doc.get("coordinators") if isinstance(doc, dict) else None
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise RunRequestError(f'{path} must be {{"coordinators": [public keys]}}')
    return frozenset(keys)


def save_allowed_coordinators(home: str | os.PathLike[str], keys: Iterable[str]) -> None:
    """Write the node's allow-list (each key checked; mode 0600, atomic)."""
    found = sorted(set(keys))
    for key in found:
        try:
            fingerprint(key)
        except RegistryError:
            raise RunRequestError(f"--allow-coordinator {key!r} is not a public key") from None
    write_atomic(Path(home) / ALLOWED_FILE, canonical_json({"coordinators": found}), mode=0o600)
