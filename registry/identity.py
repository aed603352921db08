"""Ed25519 identities: a publisher's (or a registry's) signing key, and verification.

Keys live in the home folder as ``keys/<name>.pem`` (PKCS#8, mode 0600) and are never printed or
logged. A public key travels as base32 (lower, unpadded) of its 32 raw bytes; the *publisher
id* is a fingerprint of it: ``pk`` + base32 of the first 20 bytes of its sha256.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import re
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from registry.errors import InvalidEntryError, MissingKeyError, SignatureError

__all__ = ["Identity", "b32", "fingerprint", "unb32", "verify_signature"]

_KEY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


def b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def unb32(text: str, size: int, what: str) -> bytes:
    if not isinstance(text, str) or not re.fullmatch(r"[a-z2-7]+", text):
        raise InvalidEntryError(f"{what} is not lower-case base32")
    try:
        raw = base64.b32decode(text.upper() + "=" * (-len(text) % 8))
    except ValueError:
        raise InvalidEntryError(f"{what} is not valid base32") from None
    if len(raw) != size or b32(raw) != text:
        raise InvalidEntryError(f"{what} must be {size} bytes in canonical base32")
    return raw


def fingerprint(public_key: str) -> str:
    """The publisher id of a base32 public key."""
    raw = unb32(public_key, 32, "public key")
    return "pk" + b32(hashlib.sha256(raw).digest()[:20])


def verify_signature(public_key: str, signature: str, message: bytes) -> None:
    """Raise :class:`SignatureError` unless ``signature`` is ``public_key``'s over ``message``."""
    try:
        key = Ed25519PublicKey.from_public_bytes(unb32(public_key, 32, "public key"))
        key.verify(unb32(signature, 64, "signature"), message)
    except (InvalidSignature, InvalidEntryError, ValueError):
        raise SignatureError("signature does not verify for this key and content") from None


class Identity:
    """A private signing key. ``repr`` shows only the publisher id."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = b32(raw)
        self.id = fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"Identity({self.id})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    def sign(self, message: bytes) -> str:
        return b32(self._key.sign(message))

    # -- storage --------------------------------------------------------------------------------
    @staticmethod
    def path(home: str | os.PathLike[str], name: str = "default") -> Path:
        if not _KEY_NAME.fullmatch(name):
            raise InvalidEntryError(f"invalid key name {name!r}")
        return Path(home) / "keys" / f"{name}.pem"

    @classmethod
    def create(
        cls, home: str | os.PathLike[str], name: str = "default", *, overwrite: bool = False
    ) -> Identity:
        """Generate a key and store it in HOME/keys (0600); refuses to replace one."""
        path = cls.path(home, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        return cls.create_file(path, overwrite=overwrite)

    @classmethod
    def create_file(cls, path: Path, *, overwrite: bool = False) -> Identity:
        identity = cls.generate()
        name = path.name
        pem = identity._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # Written whole to a private temp file, then linked into place: a reader never sees a
        # partial key, and of two processes creating the same key exactly one wins.
        tmp = path.with_name(f".{name}.{secrets.token_hex(6)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
                f.flush()
                os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, path)
            else:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    raise FileExistsError(f"a key already exists at {path}") from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        os.chmod(path, 0o600)
        return identity

    @classmethod
    def load(cls, home: str | os.PathLike[str], name: str = "default") -> Identity:
        path = cls.path(home, name)
        if not path.exists():
            raise MissingKeyError(
                f"no key {name!r} in {Path(home)}: create one with 'cidflow key new'"
            )
        return cls.load_file(path)

    @classmethod
    def load_file(cls, path: Path) -> Identity:
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise MissingKeyError(f"no key at {path}") from None
        if path.stat().st_mode & 0o077:
            raise SignatureError(f"{path} is readable by others; run: chmod 600 {path}")
        key = serialization.load_pem_private_key(data, password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise InvalidEntryError(f"{path} is not an ed25519 key")
        return cls(key)

    @classmethod
    def load_or_create(cls, home: str | os.PathLike[str], name: str) -> Identity:
        try:
            return cls.load(home, name)
        except MissingKeyError:
            return cls.create(home, name)

    @classmethod
    def load_or_create_file(cls, path: Path) -> Identity:
        try:
            return cls.load_file(path)
        except MissingKeyError:
            try:
                return cls.create_file(path)
            except FileExistsError:  # another process created it first
                return cls.load_file(path)
