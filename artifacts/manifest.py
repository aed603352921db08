"""Manifests: the canonical-JSON objects that name every blob of an artifact.

A **root manifest** (its CID is the artifact's CID) holds the artifact kind, user attributes and
one *table* per group of keys::

    {"format": "cidflow/artifact@1", "kind": "arrays", "attrs": {...},
     "tables": {"": T, "x": T, ...}}

Table ``""`` holds every metadata document (``zarr.json``) and any key outside an array; table
``"x"`` holds the chunk keys of array ``x``, relative to it (``c/0/0``). A table is stored
inline while small, ``{"entries": [[key, cid, size], ...]}`` sorted by key, and otherwise as a
Merkle tree of table nodes, ``{"tree": cid, "count": n, "bytes": b}``: leaves
``{"format": "cidflow/table@1", "entries": [...]}`` and inner nodes
``{"format": "cidflow/table@1", "children": [[first_key, cid, count, bytes], ...]}``. So no single
object ever holds millions of entries, and an unchanged page keeps its CID between versions.

Everything read from a manifest is validated before use: keys that are absolute, hold ``..``,
``.``, empty segments, backslashes or NUL are refused, as are malformed CIDs and sizes.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import CID, CODEC_JSON, as_cid
from artifacts.errors import (
    ArtifactNotFoundError,
    BlobNotFoundError,
    InvalidCIDError,
    ManifestError,
    UnsafePathError,
)

__all__ = [
    "ARTIFACT_FORMAT",
    "Ref",
    "RootManifest",
    "Table",
    "build_table",
    "decode_root",
    "encode_root",
    "validate_key",
]

ARTIFACT_FORMAT: Final = "cidflow/artifact@1"
TABLE_FORMAT: Final = "cidflow/table@1"
INLINE_MAX: Final = 512  # entries a table may hold inline in the root manifest
LEAF_MAX: Final = 1024  # entries per leaf node
FANOUT: Final = 512  # children per inner node
MAX_DEPTH: Final = 8
MAX_KEY_LENGTH: Final = 1024
_KIND = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

ReadBlob = Callable[[CID], bytes]
PutJSON = Callable[[bytes], CID]


@dataclass(frozen=True, slots=True)
class Ref:
    """A blob reference: its CID and size in bytes."""

    cid: CID
    size: int


def validate_key(key: str, *, cid: object = None) -> str:
    """Return ``key`` if it is a safe relative ``/``-separated path, else raise."""
    if not isinstance(key, str):
        raise UnsafePathError(repr(key), "not a string", cid)
    if not key:
        raise UnsafePathError(key, "empty", cid)
    if len(key) > MAX_KEY_LENGTH:
        raise UnsafePathError(key, f"longer than {MAX_KEY_LENGTH} characters", cid)
    if "\x00" in key:
        raise UnsafePathError(key, "contains NUL", cid)
    if "\\" in key:
        raise UnsafePathError(key, "contains a backslash", cid)
    if key.startswith("/"):
        raise UnsafePathError(key, "absolute path", cid)
    if re.match(r"[A-Za-z]:", key):
        raise UnsafePathError(key, "drive-letter path", cid)
    for part in key.split("/"):
        if part in ("", ".", ".."):
            raise UnsafePathError(key, f"segment {part!r} is not allowed", cid)
    return key


# -- root manifest -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RootManifest:
    """A parsed, validated root manifest. ``tables`` maps group prefix to its table spec."""

    kind: str
    attrs: dict[str, Any]
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)


def encode_root(kind: str, attrs: dict[str, Any], tables: dict[str, dict[str, Any]]) -> bytes:
    if not _KIND.fullmatch(kind):
        raise ManifestError(None, f"invalid kind {kind!r}: lowercase letters, digits, _.- only")
    if not isinstance(attrs, dict):
        raise ManifestError(None, "attrs must be a JSON object")
    try:
        return canonical_json(
            {"format": ARTIFACT_FORMAT, "kind": kind, "attrs": attrs, "tables": tables}
        )
    except (TypeError, ValueError) as exc:
        raise ManifestError(None, f"attributes are not canonical JSON: {exc}") from exc


def decode_root(cid: CID, data: bytes) -> RootManifest:
    """Parse and validate root manifest bytes (already verified against ``cid``)."""
    if cid.codec != CODEC_JSON:
        raise ManifestError(cid, "not an artifact: a root manifest has the json codec")
    obj = _load_object(cid, data)
    if obj.get("format") != ARTIFACT_FORMAT:
        raise ManifestError(cid, f"unknown format {obj.get('format')!r}")
    extra = set(obj) - {"format", "kind", "attrs", "tables"}
    if extra:
        raise ManifestError(cid, f"unexpected fields {sorted(extra)}")
    kind = obj.get("kind")
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        raise ManifestError(cid, f"invalid kind {kind!r}")
    attrs = obj.get("attrs")
    if not isinstance(attrs, dict):
        raise ManifestError(cid, "attrs must be an object")
    tables = obj.get("tables")
    if not isinstance(tables, dict):
        raise ManifestError(cid, "tables must be an object")
    for group, spec in tables.items():
        if group:
            validate_key(group, cid=cid)
        _check_table_spec(cid, spec)
    return RootManifest(kind, attrs, tables)


def _check_table_spec(cid: CID, spec: object) -> None:
    if not isinstance(spec, dict):
        raise ManifestError(cid, "a table must be an object")
    if set(spec) == {"entries"}:
        _parse_entries(cid, spec["entries"])
    elif set(spec) == {"tree", "count", "bytes"}:
        _parse_cid(cid, spec["tree"])
        _nonneg(cid, spec["count"], "count")
        _nonneg(cid, spec["bytes"], "bytes")
    else:
        raise ManifestError(cid, f"a table has 'entries' or 'tree', got {sorted(spec)}")


def _load_object(cid: CID, data: bytes) -> dict[str, Any]:
    try:
        obj = loads_strict(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(cid, f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise ManifestError(cid, "a manifest must be a JSON object")
    return obj


def _parse_cid(cid: CID, value: object) -> CID:
    if not isinstance(value, str):
        raise ManifestError(cid, f"expected a CID string, got {type(value).__name__}")
    try:
        return as_cid(value)
    except InvalidCIDError as exc:
        raise ManifestError(cid, str(exc)) from None


def _nonneg(cid: CID, value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ManifestError(cid, f"{what} must be a non-negative integer, got {value!r}")
    return value


def _sorted_rows(cid: CID, raw: object, shape: str) -> list[list[Any]]:
    """Rows ``[key, cid, ...]`` of length ``len(shape.split(','))``, strictly sorted by key."""
    width = len(shape.split(","))
    if not isinstance(raw, list):
        raise ManifestError(cid, f"expected a list of [{shape}]")
    previous: str | None = None
    for item in raw:
        if not isinstance(item, list) or len(item) != width or not isinstance(item[0], str):
            raise ManifestError(cid, f"a row is [{shape}]")
        key = validate_key(item[0], cid=cid)
        if previous is not None and key <= previous:
            raise ManifestError(cid, f"rows not strictly sorted at {key!r}")
        previous = key
    return raw


def _parse_entries(cid: CID, raw: object) -> tuple[list[str], list[Ref]]:
    rows = _sorted_rows(cid, raw, "key, cid, size")
    refs = [Ref(_parse_cid(cid, r[1]), _nonneg(cid, r[2], "size")) for r in rows]
    return [r[0] for r in rows], refs


# -- tables ------------------------------------------------------------------------------------


class Table:
    """Read access to one table: inline, or a lazily loaded Merkle tree of nodes."""

    def __init__(self, spec: dict[str, Any], read: ReadBlob, *, owner: CID) -> None:
        self._read = read
        self._owner = owner
        self._nodes: dict[CID, tuple[list[str], list[Any], bool]] = {}
        if "entries" in spec:
            keys, refs = _parse_entries(owner, spec["entries"])
            self._root: CID | None = None
            self._inline = (keys, refs)
            self.count = len(keys)
            self.bytes = sum(r.size for r in refs)
        else:
            self._root = as_cid(spec["tree"])
            self._inline = ([], [])
            self.count = int(spec["count"])
            self.bytes = int(spec["bytes"])

    @property
    def tree_cids(self) -> list[CID]:
        """The CIDs of every tree node (empty for an inline table); loads the whole tree."""
        out: list[CID] = []
        if self._root is not None:
            self._walk(self._root, 0, out)
        return out

    def get(self, key: str) -> Ref | None:
        if self._root is None:
            keys, refs = self._inline
            i = bisect.bisect_left(keys, key)
            return refs[i] if i < len(keys) and keys[i] == key else None
        node = self._root
        for _ in range(MAX_DEPTH + 1):
            keys, values, leaf = self._node(node)
            if leaf:
                i = bisect.bisect_left(keys, key)
                ref: Ref | None = values[i] if i < len(keys) and keys[i] == key else None
                return ref
            i = bisect.bisect_right(keys, key) - 1
            if i < 0:
                return None
            node = values[i]
        raise ManifestError(self._owner, f"table tree deeper than {MAX_DEPTH}")

    def items(self) -> Iterator[tuple[str, Ref]]:
        """Every (key, ref) in key order."""
        if self._root is None:
            yield from zip(*self._inline, strict=True)
        else:
            yield from self._items(self._root, 0)

    def _items(self, node: CID, depth: int) -> Iterator[tuple[str, Ref]]:
        if depth > MAX_DEPTH:
            raise ManifestError(self._owner, f"table tree deeper than {MAX_DEPTH}")
        keys, values, leaf = self._node(node)
        if leaf:
            yield from zip(keys, values, strict=True)
        else:
            for child in values:
                yield from self._items(child, depth + 1)

    def _walk(self, node: CID, depth: int, out: list[CID]) -> None:
        if depth > MAX_DEPTH:
            raise ManifestError(self._owner, f"table tree deeper than {MAX_DEPTH}")
        out.append(node)
        _, values, leaf = self._node(node)
        if not leaf:
            for child in values:
                self._walk(child, depth + 1, out)

    def _node(self, cid: CID) -> tuple[list[str], list[Any], bool]:
        cached = self._nodes.get(cid)
        if cached is not None:
            return cached
        if cid.codec != CODEC_JSON:
            raise ManifestError(self._owner, f"table node {cid} is not json")
        obj = _load_object(cid, self._read(cid))
        if obj.get("format") != TABLE_FORMAT:
            raise ManifestError(cid, f"unknown table format {obj.get('format')!r}")
        parsed: tuple[list[str], list[Any], bool]
        if set(obj) == {"format", "entries"}:
            keys, refs = _parse_entries(cid, obj["entries"])
            parsed = (keys, refs, True)
        elif set(obj) == {"format", "children"}:
            rows = _sorted_rows(cid, obj["children"], "first_key, cid, count, bytes")
            parsed = ([r[0] for r in rows], [_parse_cid(cid, r[1]) for r in rows], False)
        else:
            raise ManifestError(cid, "a table node has 'entries' or 'children'")
        self._nodes[cid] = parsed
        return parsed


def build_table(items: Iterable[tuple[str, Ref]], put_json: PutJSON) -> dict[str, Any]:
    """The table spec for sorted ``items``: inline when small, else a tree of nodes."""
    entries: list[list[Any]] = [[k, str(r.cid), r.size] for k, r in items]
    if len(entries) <= INLINE_MAX:
        return {"entries": entries}
    total = sum(int(e[2]) for e in entries)
    # level: [first_key, cid, count, bytes] per node
    level: list[list[Any]] = []
    for start in range(0, len(entries), LEAF_MAX):
        page = entries[start : start + LEAF_MAX]
        node = put_json(canonical_json({"format": TABLE_FORMAT, "entries": page}))
        level.append([page[0][0], str(node), len(page), sum(e[2] for e in page)])
    while len(level) > 1:
        parents: list[list[Any]] = []
        for start in range(0, len(level), FANOUT):
            group = level[start : start + FANOUT]
            node = put_json(canonical_json({"format": TABLE_FORMAT, "children": group}))
            parents.append(
                [group[0][0], str(node), sum(g[2] for g in group), sum(g[3] for g in group)]
            )
        level = parents
    return {"tree": level[0][1], "count": len(entries), "bytes": total}


def read_root(read: ReadBlob, cid: CID) -> RootManifest:
    """Fetch and decode the root manifest of ``cid`` (``ArtifactNotFoundError`` if absent)."""
    if cid.codec != CODEC_JSON:
        raise ManifestError(cid, "not an artifact: a root manifest has the json codec")
    try:
        data = read(cid)
    except BlobNotFoundError:
        raise ArtifactNotFoundError(cid) from None
    return decode_root(cid, data)
