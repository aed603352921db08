"""Registry log entries: the signed bodies publishers make, and the records the registry chains.

A publisher signs the canonical JSON of a *body*::

    {"type": "publish", "key": PUBKEY, "timestamp": "2026-11-25T16:00:00Z", "nonce": "...",
     "asset": "alice/digits", "version": "1.0.0", "cid": "bagaaiera...", ...}

giving ``{"body": BODY, "sig": SIG}``. The registry appends it as the record
``{"seq": N, "prev": HASH_OF_RECORD_N-1, "entry": {...}}``; a record's hash is the sha256 (hex) of
its canonical JSON, and the registry signs its head ``{"seq": N, "hash": ...}``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

from artifacts.canonical import canonical_json
from artifacts.cid import CODEC_JSON, as_cid
from artifacts.errors import InvalidCIDError
from registry.errors import InvalidEntryError, SignatureError
from registry.identity import Identity, b32, unb32, verify_signature
from registry.names import parse_name, parse_version

__all__ = [
    "ENTRY_TYPES",
    "Record",
    "Signed",
    "check_endpoint",
    "head_message",
    "make_body",
    "record_hash",
    "validate_body",
]

ENTRY_TYPES: Final = ("publish", "yank", "grant", "transfer", "node")
MAX_DESCRIPTION: Final = 4096
MAX_TAGS: Final = 32
MAX_ENTRY_BYTES: Final = 64 << 10
MAX_HARDWARE_BYTES: Final = 4 << 10
MAX_ENDPOINT: Final = 512
_TAG = re.compile(r"[a-z0-9][a-z0-9._+-]{0,31}")
_LICENSE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9.+-]{0,63}( (AND|OR|WITH) [A-Za-z0-9][A-Za-z0-9.+-]{0,63}){0,7}"
)
_CURRENCY = re.compile(r"[A-Z][A-Z0-9]{2,9}")
_AMOUNT = re.compile(r"(0|[1-9][0-9]{0,17})(\.[0-9]{1,18})?")
_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
_NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
_HOST = re.compile(r"[A-Za-z0-9._~%:\[\]-]+")
_COMMON = {"type", "key", "timestamp", "nonce"}
_FIELDS: dict[str, set[str]] = {
    "publish": {"asset", "version", "cid", "kind", "license", "price", "description", "tags",
                "size", "receipt"},
    "yank": {"asset", "version", "reason"},
    "grant": {"namespace", "grantee"},
    "transfer": {"namespace", "to"},
    "node": {"node_id", "endpoint", "capacity", "hardware", "name", "used"},
}  # fmt: skip


def now_timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_body(entry_type: str, identity: Identity, /, **fields: Any) -> dict[str, Any]:
    """A fresh body of ``entry_type`` for ``identity`` to sign (timestamp and nonce filled in)."""
    body = {"type": entry_type, "key": identity.public_key, "timestamp": now_timestamp()}
    body["nonce"] = b32(secrets.token_bytes(16))
    body.update(fields)
    validate_body(body)
    return body


def _text(body: dict[str, Any], field: str, limit: int) -> str:
    value = body.get(field)
    if not isinstance(value, str) or len(value) > limit or "\x00" in value:
        raise InvalidEntryError(f"{field} must be a string of at most {limit} characters")
    return value


def _cid(body: dict[str, Any], field: str, *, json_codec: bool = False) -> str:
    value = body.get(field)
    try:
        cid = as_cid(value)  # type: ignore[arg-type]
    except (InvalidCIDError, TypeError):
        raise InvalidEntryError(f"{field} is not a valid CID: {value!r}") from None
    if json_codec and cid.codec != CODEC_JSON:
        raise InvalidEntryError(f"{field} must name an artifact (json codec), got {cid}")
    return str(cid)


def check_endpoint(value: object) -> str:
    """``value`` if it is a node endpoint: an absolute http(s) URL with a host, at most
    :data:`MAX_ENDPOINT` characters, without credentials, query or fragment."""
    shown = repr(value)[:80]
    problem = f"endpoint must be an http(s) URL like http://host:8000, not {shown}"
    if (
        not isinstance(value, str)
        or len(value) > MAX_ENDPOINT
        or not value.startswith(("http://", "https://"))
        or any(c <= " " or c == "\x7f" or c == "\\" for c in value)
    ):
        raise InvalidEntryError(problem)
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:  # a malformed port or IPv6 literal
        raise InvalidEntryError(problem) from None
    if (
        not parts.hostname
        or "@" in parts.netloc
        or not _HOST.fullmatch(parts.netloc)
        or not port_ok
        or parts.query
        or parts.fragment
        or "?" in value
        or "#" in value
    ):
        raise InvalidEntryError(problem)
    return value


def _node(body: dict[str, Any]) -> None:
    _text(body, "node_id", 128)
    check_endpoint(body.get("endpoint"))
    cap = body.get("capacity", -1)  # required; null: no limit
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap < 0):
        raise InvalidEntryError("capacity must be a non-negative integer (bytes) or null")
    hardware = body.get("hardware")
    if not isinstance(hardware, dict):
        raise InvalidEntryError("hardware must be an object")
    if len(canonical_json(hardware)) > MAX_HARDWARE_BYTES:
        raise InvalidEntryError(f"hardware larger than {MAX_HARDWARE_BYTES} bytes")
    if "name" in body and not (
        isinstance(body["name"], str) and _NODE_NAME.fullmatch(body["name"])
    ):
        raise InvalidEntryError(f"invalid node name {body['name']!r}: 1-64 of a-z 0-9 -")
    used = body.get("used")
    if "used" in body and (not isinstance(used, int) or isinstance(used, bool) or used < 0):
        raise InvalidEntryError("used must be a non-negative integer (bytes)")


def validate_body(body: object) -> dict[str, Any]:
    """Check a body's format and limits (not its signature or the registry's rules)."""
    if not isinstance(body, dict):
        raise InvalidEntryError("an entry body must be a JSON object")
    kind = body.get("type")
    if kind not in _FIELDS:
        raise InvalidEntryError(f"unknown entry type {kind!r}; expected one of {ENTRY_TYPES}")
    allowed = _COMMON | _FIELDS[kind]
    extra = set(body) - allowed
    if extra:
        raise InvalidEntryError(f"unexpected fields in {kind} entry: {sorted(extra)}")
    unb32(body.get("key", ""), 32, "key")
    unb32(body.get("nonce", ""), 16, "nonce")
    if not isinstance(body.get("timestamp"), str) or not _TIMESTAMP.fullmatch(body["timestamp"]):
        raise InvalidEntryError("timestamp must be UTC like 2026-11-25T16:00:00Z")
    if len(canonical_json(body)) > MAX_ENTRY_BYTES:
        raise InvalidEntryError(f"entry larger than {MAX_ENTRY_BYTES} bytes")
    if kind in ("publish", "yank"):
        if str(parse_name(_text(body, "asset", 130))) != body["asset"]:
            raise InvalidEntryError(f"asset {body['asset']!r} is not in normal form")
        parse_version(_text(body, "version", 64))
    if kind == "publish":
        _cid(body, "cid", json_codec=True)
        if not _KIND.fullmatch(_text(body, "kind", 64)):
            raise InvalidEntryError(f"invalid kind {body['kind']!r}")
        if not _LICENSE.fullmatch(_text(body, "license", 512)):
            raise InvalidEntryError(f"license {body['license']!r} is not an SPDX expression")
        price = body.get("price")
        if (
            not isinstance(price, dict)
            or set(price) != {"amount", "currency"}
            or not isinstance(price["amount"], str)
            or not _AMOUNT.fullmatch(price["amount"])
            or not isinstance(price["currency"], str)
            or not _CURRENCY.fullmatch(price["currency"])
        ):
            raise InvalidEntryError('price must be {"amount": "12.50", "currency": "USD"}')
        _text(body, "description", MAX_DESCRIPTION)
        tags = body.get("tags")
        if not isinstance(tags, list) or len(tags) > MAX_TAGS:
            raise InvalidEntryError(f"tags must be a list of at most {MAX_TAGS}")
        for tag in tags:
            if not isinstance(tag, str) or not _TAG.fullmatch(tag):
                raise InvalidEntryError(f"invalid tag {tag!r}: 1-32 of a-z 0-9 . _ + -")
        size = body.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidEntryError("size must be a non-negative integer")
        if body.get("receipt") is not None:
            _cid(body, "receipt")
    elif kind == "yank":
        _text(body, "reason", 1024)
    elif kind in ("grant", "transfer"):
        ns = _text(body, "namespace", 64)
        if parse_name(f"{ns}/x").namespace != ns:
            raise InvalidEntryError(f"namespace {ns!r} is not in normal form")
        unb32(body.get("grantee" if kind == "grant" else "to", ""), 32, "target key")
    elif kind == "node":
        _node(body)
    return body


@dataclass(frozen=True, slots=True)
class Signed:
    """A body and its publisher's signature over the body's canonical JSON."""

    body: dict[str, Any]
    sig: str

    @classmethod
    def sign(cls, body: dict[str, Any], identity: Identity) -> Signed:
        validate_body(body)
        if body["key"] != identity.public_key:
            raise SignatureError("the body names another key than the signer's")
        return cls(body, identity.sign(canonical_json(body)))

    @classmethod
    def from_json(cls, obj: object) -> Signed:
        if not isinstance(obj, dict) or set(obj) != {"body", "sig"}:
            raise SignatureError("an entry is {body, sig}; unsigned entries are refused")
        if not isinstance(obj["sig"], str):
            raise SignatureError("sig must be a string")
        return cls(validate_body(obj["body"]), obj["sig"])

    def verify(self) -> None:
        verify_signature(self.body["key"], self.sig, canonical_json(self.body))

    def as_json(self) -> dict[str, Any]:
        return {"body": self.body, "sig": self.sig}

    @property
    def digest(self) -> str:
        return hashlib.sha256(canonical_json(self.as_json())).hexdigest()


@dataclass(frozen=True, slots=True)
class Record:
    """An entry as the log holds it: position, link to the previous record, the entry."""

    seq: int
    prev: str | None
    entry: Signed

    def as_json(self) -> dict[str, Any]:
        return {"seq": self.seq, "prev": self.prev, "entry": self.entry.as_json()}

    @property
    def hash(self) -> str:
        return record_hash(self.as_json())

    @classmethod
    def from_json(cls, obj: object) -> Record:
        if not isinstance(obj, dict) or set(obj) != {"seq", "prev", "entry"}:
            raise InvalidEntryError("a record is {seq, prev, entry}")
        seq, prev = obj["seq"], obj["prev"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise InvalidEntryError(f"bad seq {seq!r}")
        if prev is not None and (
            not isinstance(prev, str) or not re.fullmatch(r"[0-9a-f]{64}", prev)
        ):
            raise InvalidEntryError(f"bad prev {prev!r}")
        return cls(seq, prev, Signed.from_json(obj["entry"]))


def record_hash(record: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_json(record)).hexdigest()


def head_message(seq: int, hash: str | None) -> bytes:
    """The bytes a registry signs for its head."""
    return canonical_json({"type": "head", "seq": seq, "hash": hash})
