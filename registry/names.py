"""Asset names, versions and references: normalisation, confusables, semver ranges.

A name is ``namespace/name``; each part is NFKC-normalised and lower-cased, then must match
``[a-z0-9][a-z0-9._-]*`` (at most 64 characters). Two names whose *skeletons* (separators
``._-`` removed) are equal are confusable: the second one is refused. Characters outside the
ASCII set (Cyrillic ``а`` for Latin ``a``, say) are refused outright, so homoglyphs cannot pass.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import semver

from registry.errors import InvalidEntryError

__all__ = ["AssetName", "Ref", "matches", "parse_name", "parse_ref", "parse_version", "skeleton"]

_PART = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_SEPARATORS = re.compile(r"[._-]")


@dataclass(frozen=True, slots=True, order=True)
class AssetName:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


def _part(text: str, what: str, raw: str) -> str:
    norm = unicodedata.normalize("NFKC", text).lower()
    if not _PART.fullmatch(norm) or ".." in norm:
        raise InvalidEntryError(
            f"invalid {what} in {raw!r}: use 1-64 of a-z 0-9 . _ - starting with a letter or "
            "digit, no '..'"
        )
    return norm


def parse_name(text: str) -> AssetName:
    """``NS/NAME`` normalised, or :class:`InvalidEntryError` saying why not."""
    if not isinstance(text, str) or text.count("/") != 1:
        raise InvalidEntryError(f"invalid asset name {text!r}: expected NAMESPACE/NAME")
    ns, name = text.split("/")
    return AssetName(_part(ns, "namespace", text), _part(name, "name", text))


def skeleton(part: str) -> str:
    """What confusable names share: the normalised part without separators."""
    return _SEPARATORS.sub("", part)


def parse_version(text: str) -> semver.Version:
    if not isinstance(text, str) or len(text) > 64:
        raise InvalidEntryError(f"invalid version {text!r}")
    try:
        return semver.Version.parse(text)
    except (ValueError, TypeError):
        raise InvalidEntryError(f"invalid version {text!r}: expected semver like 1.2.3") from None


@dataclass(frozen=True, slots=True)
class Ref:
    """``NS/NAME@SPEC``: an exact version, ``latest`` or a range (``^1.2``, ``>=1,<2``)."""

    asset: AssetName
    spec: str = "latest"

    def __str__(self) -> str:
        return f"{self.asset}@{self.spec}"


def parse_ref(text: str) -> Ref:
    name, _, spec = text.partition("@")
    spec = spec.strip() or "latest"
    if spec != "latest":
        _check_spec(spec)
    return Ref(parse_name(name), spec)


_CLAUSE = re.compile(r"(\^|~|>=|<=|>|<|==|=)?\s*(\d+(?:\.\d+){0,2}(?:-[0-9A-Za-z.-]+)?)")


def _check_spec(spec: str) -> None:
    for clause in spec.split(","):
        if not _CLAUSE.fullmatch(clause.strip()):
            raise InvalidEntryError(f"invalid version spec {spec!r}")


def _pad(text: str) -> tuple[semver.Version, int]:
    """A possibly partial version (``1``, ``1.2``) as a full one, and how many parts were given."""
    core, _, pre = text.partition("-")
    parts = core.split(".")
    given = len(parts)
    parts += ["0"] * (3 - given)
    return semver.Version.parse(".".join(parts) + (f"-{pre}" if pre else "")), given


def matches(version: semver.Version, spec: str) -> bool:
    """Whether ``version`` satisfies ``spec`` (caret and tilde as npm/cargo define them)."""
    for clause in spec.split(","):
        m = _CLAUSE.fullmatch(clause.strip())
        if m is None:
            raise InvalidEntryError(f"invalid version spec {spec!r}")
        op, text = m.group(1) or "=", m.group(2)
        bound, given = _pad(text)
        if op in ("=", "=="):
            # "1.2" means any 1.2.x
            ok = version == bound if given == 3 else _upper(bound, given) > version >= bound
        elif op == "^":
            ok = bound <= version < _caret_upper(bound, given)
        elif op == "~":
            ok = bound <= version < _upper(bound, min(given, 2))
        elif op == ">=":
            ok = version >= bound
        elif op == ">":
            ok = version > bound
        elif op == "<=":
            ok = version <= bound
        else:
            ok = version < bound
        if not ok:
            return False
    return True


def _upper(bound: semver.Version, given: int) -> semver.Version:
    if given <= 1:
        return semver.Version(bound.major + 1, 0, 0)
    if given == 2:
        return semver.Version(bound.major, bound.minor + 1, 0)
    return semver.Version(bound.major, bound.minor, bound.patch + 1)


def _caret_upper(bound: semver.Version, given: int) -> semver.Version:
    if bound.major > 0 or given == 1:
        return semver.Version(bound.major + 1, 0, 0)
    if bound.minor > 0 or given == 2:
        return semver.Version(0, bound.minor + 1, 0)
    return semver.Version(0, 0, bound.patch + 1)
