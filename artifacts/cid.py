"""Content identifiers: CIDv1, base32 lower, ``raw`` / ``json`` codecs, sha2-256 or blake3.

A CID is ``<version=1><codec><multihash>`` where a multihash is ``<hash code><length><digest>``,
each number an unsigned LEB128 varint. Its text form is multibase base32 lower (prefix ``b``),
so ``cid_of(b"hello")`` is ``bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq``, as
``ipfs add --cid-version=1 --raw-leaves`` and every other multiformats implementation give.

Parsing is strict: one canonical text form per CID, anything else is an
:class:`~artifacts.errors.InvalidCIDError` that says what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any, Final, Literal, Protocol

from artifacts.errors import InvalidCIDError

__all__ = [
    "CID",
    "CODEC_JSON",
    "CODEC_RAW",
    "HASH_BLAKE3",
    "HASH_SHA2_256",
    "HashName",
    "Hasher",
    "as_cid",
    "cid_of",
    "cids_in",
    "compute_cid",
    "new_hasher",
]

CODEC_RAW: Final = 0x55
CODEC_JSON: Final = 0x0200
HASH_SHA2_256: Final = 0x12
HASH_BLAKE3: Final = 0x1E
DIGEST_SIZE: Final = 32

HashName = Literal["sha2-256", "blake3"]
CodecName = Literal["raw", "json"]

_CODECS: Final[dict[int, CodecName]] = {CODEC_RAW: "raw", CODEC_JSON: "json"}
_CODEC_CODES: Final[dict[str, int]] = {name: code for code, name in _CODECS.items()}
_HASHES: Final[dict[int, HashName]] = {HASH_SHA2_256: "sha2-256", HASH_BLAKE3: "blake3"}
_HASH_CODES: Final[dict[str, int]] = {name: code for code, name in _HASHES.items()}
_BASE32_BODY = re.compile(r"[a-z2-7]+")
_MAX_TEXT = 128  # a sha2-256/blake3 CIDv1 is 59 characters; anything much longer is garbage


class Hasher(Protocol):
    def update(self, data: bytes | memoryview, /) -> object: ...

    def digest(self) -> bytes: ...


def new_hasher(name: HashName = "sha2-256") -> Hasher:
    """A fresh incremental hasher for ``name`` (``blake3`` needs the optional package)."""
    if name == "sha2-256":
        return hashlib.sha256()
    if name == "blake3":
        try:
            import blake3
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            raise InvalidCIDError(
                name, "blake3 needs the 'blake3' package: pip install cidflow[blake3]"
            ) from exc
        hasher: Hasher = blake3.blake3()
        return hasher
    raise InvalidCIDError(name, f"unknown hash function; use one of {sorted(_HASH_CODES)}")


@dataclass(frozen=True, slots=True)
class CID:
    """A parsed CIDv1. Construct with :meth:`parse`, :func:`compute_cid` or :func:`cid_of`."""

    codec: int
    hash_code: int
    digest: bytes

    def __post_init__(self) -> None:
        if self.codec not in _CODECS:
            raise InvalidCIDError(self.codec, f"unsupported codec 0x{self.codec:x}")
        if self.hash_code not in _HASHES:
            raise InvalidCIDError(self.hash_code, f"unsupported hash function 0x{self.hash_code:x}")
        if len(self.digest) != DIGEST_SIZE:
            raise InvalidCIDError(self.digest, f"digest must be {DIGEST_SIZE} bytes")

    @property
    def codec_name(self) -> CodecName:
        return _CODECS[self.codec]

    @property
    def hash_name(self) -> HashName:
        return _HASHES[self.hash_code]

    @property
    def multihash(self) -> bytes:
        return _varint(self.hash_code) + _varint(len(self.digest)) + self.digest

    def to_bytes(self) -> bytes:
        """The binary CID: ``0x01 <codec> <multihash>``."""
        return b"\x01" + _varint(self.codec) + self.multihash

    def __str__(self) -> str:
        return "b" + base64.b32encode(self.to_bytes()).decode("ascii").rstrip("=").lower()

    def __repr__(self) -> str:
        return f"CID('{self}')"

    def hasher(self) -> Hasher:
        return new_hasher(self.hash_name)

    def matches(self, data: bytes | memoryview) -> bool:
        """Whether ``data`` hashes to this CID's digest."""
        h = self.hasher()
        h.update(data)
        return h.digest() == self.digest

    @classmethod
    def parse(cls, value: str | CID) -> CID:
        """Parse the text form strictly; a :class:`CID` passes through unchanged."""
        if isinstance(value, CID):
            return value
        if not isinstance(value, str):
            raise InvalidCIDError(value, f"expected a string, got {type(value).__name__}")
        if not value:
            raise InvalidCIDError(value, "empty string")
        if len(value) > _MAX_TEXT:
            raise InvalidCIDError(value, f"longer than {_MAX_TEXT} characters")
        if value.startswith("Qm") and len(value) == 46:
            raise InvalidCIDError(value, "CIDv0 is not supported; use the CIDv1 base32 form")
        prefix, body = value[0], value[1:]
        if prefix != "b":
            if prefix == "B":
                raise InvalidCIDError(value, "upper-case base32 is not accepted; use lower case")
            raise InvalidCIDError(value, f"unsupported multibase prefix {prefix!r}; expected 'b'")
        if not _BASE32_BODY.fullmatch(body):
            bad = next((c for c in body if c not in "abcdefghijklmnopqrstuvwxyz234567"), "")
            reason = f"character {bad!r} is not base32 lower" if bad else "empty body"
            raise InvalidCIDError(value, reason)
        pad = "=" * (-len(body) % 8)
        try:
            raw = base64.b32decode(body.upper() + pad)
        except ValueError as exc:
            raise InvalidCIDError(value, "not valid base32") from exc
        cid = cls.from_bytes(raw, text=value)
        if str(cid) != value:
            raise InvalidCIDError(value, "not the canonical base32 encoding")
        return cid

    @classmethod
    def from_bytes(cls, raw: bytes, *, text: str | None = None) -> CID:
        """Parse a binary CID strictly (no trailing bytes, minimal varints)."""
        shown: object = text if text is not None else raw
        pos = 0
        version, pos = _read_varint(raw, pos, shown, "version")
        if version != 1:
            raise InvalidCIDError(shown, f"CID version {version} is not supported; expected 1")
        codec, pos = _read_varint(raw, pos, shown, "codec")
        if codec not in _CODECS:
            raise InvalidCIDError(shown, f"unsupported codec 0x{codec:x}; expected raw or json")
        code, pos = _read_varint(raw, pos, shown, "hash function")
        if code not in _HASHES:
            raise InvalidCIDError(shown, f"unsupported hash function 0x{code:x}")
        length, pos = _read_varint(raw, pos, shown, "digest length")
        digest = raw[pos:]
        if length != DIGEST_SIZE:
            raise InvalidCIDError(shown, f"digest length {length}; expected {DIGEST_SIZE}")
        if len(digest) != length:
            what = "truncated" if len(digest) < length else "trailing bytes after"
            raise InvalidCIDError(shown, f"{what} digest ({len(digest)} of {length} bytes)")
        return cls(codec, code, bytes(digest))


def as_cid(value: str | CID) -> CID:
    """Normalise a CID given as text or object."""
    return CID.parse(value)


def compute_cid(
    data: bytes | memoryview, *, codec: CodecName = "raw", hash: HashName = "sha2-256"
) -> CID:
    """The CID of ``data`` under ``codec`` and ``hash``."""
    if codec not in _CODEC_CODES:
        raise InvalidCIDError(codec, f"unknown codec; use one of {sorted(_CODEC_CODES)}")
    h = new_hasher(hash)
    h.update(data)
    return CID(_CODEC_CODES[codec], _HASH_CODES[hash], h.digest())


def cid_of(data: bytes) -> str:
    """The raw-codec sha2-256 CIDv1 of ``data``, in base32 text form."""
    return str(compute_cid(data))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(raw: bytes, pos: int, shown: object, what: str) -> tuple[int, int]:
    value = 0
    shift = 0
    start = pos
    while True:
        if pos >= len(raw):
            raise InvalidCIDError(shown, f"truncated varint for {what}")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if pos - start >= 9:
            raise InvalidCIDError(shown, f"varint for {what} is too long")
    if pos - start > 1 and raw[pos - 1] == 0:
        raise InvalidCIDError(shown, f"non-minimal varint for {what}")
    return value, pos


def cids_in(value: Any) -> list[str]:
    """Every CID string inside a JSON value (dict values and list items, at any depth)."""
    if isinstance(value, str):
        try:
            return [str(as_cid(value))]
        except InvalidCIDError:
            return []
    if isinstance(value, dict):
        return [c for v in value.values() for c in cids_in(v)]
    if isinstance(value, list | tuple):
        return [c for v in value for c in cids_in(v)]
    return []
