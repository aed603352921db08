"""The content-addressed zarr store: a zarr v3 ``Store`` over a blob store.

``CASStore(blobs, root)`` reads the artifact whose root manifest has CID ``root``; every value
is a blob fetched by CID and re-hashed before zarr sees it. The same object is also a writable
session: opened on no root (empty) or on a base CID, it records ``set``/``delete`` in an overlay
(copy-on-write: the base's blobs are referenced, never copied) and :meth:`CASStore.commit` writes
the changed blobs' manifest and returns the new artifact CID.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

import numpy as np
from zarr.abc.store import (
    ByteRequest,
    OffsetByteRequest,
    RangeByteRequest,
    Store,
    SuffixByteRequest,
)
from zarr.core.buffer import Buffer, BufferPrototype, default_buffer_prototype

from artifacts.blobstore import BlobStore
from artifacts.cid import CID, as_cid
from artifacts.manifest import (
    Ref,
    RootManifest,
    Table,
    build_table,
    encode_root,
    read_root,
    validate_key,
)

__all__ = ["CASStore"]

_META = "zarr.json"


class CASStore(Store):
    """A zarr v3 store whose keys map to CIDs; see the module docstring."""

    supports_writes = True
    supports_deletes = True
    supports_listing = True

    def __init__(
        self,
        blobs: BlobStore,
        root: str | CID | None = None,
        *,
        read_only: bool = False,
        kind: str | None = None,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(read_only=read_only)
        self.blobs = blobs
        self._root: CID | None = as_cid(root) if root is not None else None
        self._changes: dict[str, Ref | None] = {}
        self._kind = kind
        self._attrs = attrs
        self._manifest: RootManifest | None = None
        self._tables: dict[str, Table] = {}

    # -- identity, pickling --------------------------------------------------------------------
    @property
    def root(self) -> CID | None:
        """The CID this store reads from (the last commit, or the base)."""
        return self._root

    @property
    def dirty(self) -> bool:
        return bool(self._changes)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CASStore)
            and self.blobs == other.blobs
            and self._root == other._root
            and self._changes == other._changes
            and self.read_only == other.read_only
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CASStore({self.blobs!r}, root={str(self._root) if self._root else None!r})"

    def __getstate__(self) -> dict[str, Any]:
        return {
            "blobs": self.blobs,
            "root": self._root,
            "changes": self._changes,
            "read_only": self.read_only,
            "kind": self._kind,
            "attrs": self._attrs,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(  # type: ignore[misc]
            state["blobs"],
            state["root"],
            read_only=state["read_only"],
            kind=state["kind"],
            attrs=state["attrs"],
        )
        self._changes = dict(state["changes"])

    def with_read_only(self, read_only: bool = False) -> CASStore:
        other = CASStore(
            self.blobs, self._root, read_only=read_only, kind=self._kind, attrs=self._attrs
        )
        other._changes = dict(self._changes)
        return other

    # -- the base manifest ---------------------------------------------------------------------
    @property
    def manifest(self) -> RootManifest | None:
        """The base root manifest (loaded and validated on first use), ``None`` when empty."""
        if self._manifest is None and self._root is not None:
            self._manifest = read_root(self.blobs.get, self._root)
        return self._manifest

    def _table(self, group: str) -> Table | None:
        manifest = self.manifest
        if manifest is None or group not in manifest.tables:
            return None
        table = self._tables.get(group)
        if table is None:
            assert self._root is not None
            table = Table(manifest.tables[group], self.blobs.get, owner=self._root)
            self._tables[group] = table
        return table

    def _base_lookup(self, key: str) -> Ref | None:
        manifest = self.manifest
        if manifest is None:
            return None
        group, rel = _split_group(key, manifest.tables)
        table = self._table(group)
        return table.get(rel) if table is not None else None

    def _lookup(self, key: str) -> Ref | None:
        if key in self._changes:
            return self._changes[key]
        return self._base_lookup(key)

    def _base_items(self) -> Iterator[tuple[str, Ref]]:
        manifest = self.manifest
        if manifest is None:
            return
        for group in sorted(manifest.tables):
            table = self._table(group)
            assert table is not None
            prefix = f"{group}/" if group else ""
            for rel, ref in table.items():
                yield prefix + rel, ref

    def items(self) -> Iterator[tuple[str, Ref]]:
        """Every (key, ref) of the current state, base merged with uncommitted changes."""
        for key, ref in self._base_items():
            if key not in self._changes:
                yield key, ref
        for key, change in self._changes.items():
            if change is not None:
                yield key, change

    # -- zarr Store API -------------------------------------------------------------------------
    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if byte_range is not None and not isinstance(
            byte_range, RangeByteRequest | OffsetByteRequest | SuffixByteRequest
        ):
            raise TypeError(f"Unexpected byte_range, got {byte_range}")
        ref = self._lookup(key)
        if ref is None:
            return None
        data = await asyncio.to_thread(self.blobs.get, ref.cid)
        return prototype.buffer.from_bytes(_slice(data, byte_range))

    async def get_partial_values(
        self, prototype: BufferPrototype, key_ranges: Iterable[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        return list(await asyncio.gather(*(self.get(k, prototype, r) for k, r in key_ranges)))

    async def exists(self, key: str) -> bool:
        return self._lookup(key) is not None

    async def getsize(self, key: str) -> int:
        ref = self._lookup(key)
        if ref is None:
            raise FileNotFoundError(key)
        return ref.size

    async def set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        validate_key(key)
        if not isinstance(value, Buffer):
            raise TypeError(f"CASStore.set(): expected a Buffer, got {type(value).__name__}")
        data = value.as_numpy_array()
        view = memoryview(data.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
        cid = await asyncio.to_thread(self.blobs.put, view)
        self._changes[key] = Ref(cid, view.nbytes)

    def get_blob(self, key: str) -> bytes | None:
        """The stored (encoded) value of ``key``, verified against its CID; None if absent."""
        ref = self._lookup(key)
        return None if ref is None else self.blobs.get(ref.cid)

    def set_blob(self, key: str, data: bytes | memoryview) -> Ref:
        """Store ``data`` as the (already encoded) value of ``key``; thread-safe, synchronous."""
        self._check_writable()
        validate_key(key)
        ref = Ref(self.blobs.put(data), len(data) if isinstance(data, bytes) else data.nbytes)
        self._changes[key] = ref
        return ref

    # -- zarr's synchronous protocol (SupportsGetSync / SetSync / DeleteSync) -----------------
    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        ref = self._lookup(key)
        if ref is None:
            return None
        prototype = prototype or default_buffer_prototype()
        return prototype.buffer.from_bytes(_slice(self.blobs.get(ref.cid), byte_range))

    def set_sync(self, key: str, value: Buffer) -> None:
        self.set_blob(key, value.to_bytes())

    def delete_sync(self, key: str) -> None:
        self._check_writable()
        if self._lookup(key) is not None:
            self._changes[key] = None

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        if self._lookup(key) is None:
            await self.set(key, value)

    async def delete(self, key: str) -> None:
        self._check_writable()
        if self._lookup(key) is not None:
            self._changes[key] = None

    async def delete_dir(self, prefix: str) -> None:
        self._check_writable()
        prefix = prefix.rstrip("/")
        for key in [k async for k in self.list_prefix(f"{prefix}/" if prefix else "")]:
            self._changes[key] = None
        if prefix and self._lookup(prefix) is not None:
            self._changes[prefix] = None

    async def clear(self) -> None:
        self._check_writable()
        for key, _ in list(self.items()):
            self._changes[key] = None

    async def list(self) -> AsyncIterator[str]:
        for key, _ in self.items():
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        for key, _ in self.items():
            if key.startswith(prefix):
                yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        prefix = prefix.rstrip("/")
        head = f"{prefix}/" if prefix else ""
        seen: set[str] = set()
        for key in self._dir_candidates(prefix):
            if key.startswith(head):
                child = key[len(head) :].split("/", 1)[0]
                if child and child not in seen:
                    seen.add(child)
                    yield child

    def _dir_candidates(self, prefix: str) -> Iterator[str]:
        """Keys that can contribute to ``list_dir(prefix)``, skipping unrelated chunk tables."""
        manifest = self.manifest
        if manifest is None:
            yield from (k for k, v in self._changes.items() if v is not None)
            return
        head = f"{prefix}/" if prefix else ""
        for group in sorted(manifest.tables):
            inside = not group or prefix == group or prefix.startswith(group + "/")
            if not inside and group.startswith(head):
                # A whole array below the listed folder: its name is enough, not its chunks.
                table = self._table(group)
                if table is not None and table.count:
                    sample = next(table.items())[0]
                    key = f"{group}/{sample}"
                    if key not in self._changes:
                        yield key
                        continue
            if inside or group.startswith(head):
                table = self._table(group)
                assert table is not None
                pre = f"{group}/" if group else ""
                for rel, _ in table.items():
                    key = pre + rel
                    if key not in self._changes:
                        yield key
        yield from (k for k, v in self._changes.items() if v is not None)

    # -- commit --------------------------------------------------------------------------------
    def commit(self, kind: str | None = None, attrs: dict[str, Any] | None = None) -> CID:
        """Write the manifest of the current state; return (and move to) the new root CID.

        Every blob is made durable before the manifest that names it is written.
        """
        self._check_writable()
        base = self.manifest
        kind = kind or self._kind or (base.kind if base else "zarr")
        if attrs is None:
            attrs = self._attrs if self._attrs is not None else (dict(base.attrs) if base else {})
        state = dict(self.items())
        arrays = self._array_paths(state)
        groups: dict[str, list[tuple[str, Ref]]] = {}
        for key in sorted(state):
            group, rel = _split_group(key, arrays)
            groups.setdefault(group, []).append((rel, state[key]))
        self.blobs.flush()  # chunk blobs durable before any manifest names them
        tables = {
            group: build_table(items, lambda b: self.blobs.put(b, codec="json"))
            for group, items in sorted(groups.items())
        }
        body = encode_root(kind, attrs, tables)
        self.blobs.flush()
        root = self.blobs.put(body, codec="json")
        self.blobs.flush()
        self._root = root
        self._changes = {}
        self._manifest = None
        self._tables = {}
        self._kind, self._attrs = kind, attrs
        return root

    def _array_paths(self, state: dict[str, Ref]) -> builtins.set[str]:
        """Paths of zarr arrays in ``state``: their chunk keys are grouped in their own table."""
        arrays: builtins.set[str] = builtins.set()
        for key, ref in state.items():
            if key != _META and not key.endswith("/" + _META):
                continue
            if ref.size > 1 << 20:
                continue
            try:
                meta = json.loads(self.blobs.get(ref.cid))
            except (ValueError, UnicodeDecodeError):
                continue  # not zarr metadata: the key is kept, just not treated as an array
            if isinstance(meta, dict) and meta.get("node_type") == "array":
                arrays.add(key[: -len(_META)].rstrip("/"))
        return arrays


def _split_group(
    key: str, groups: Iterable[str] | dict[str, Any] | builtins.set[str]
) -> tuple[str, str]:
    """The table a key belongs to (its longest array prefix, else ``""``) and its relative key."""
    if key == _META or key.endswith("/" + _META):
        return "", key
    parts = key.split("/")
    for i in range(len(parts) - 1, 0, -1):
        prefix = "/".join(parts[:i])
        if prefix in groups:
            return prefix, "/".join(parts[i:])
    return "", key


def _slice(data: bytes, byte_range: ByteRequest | None) -> bytes:
    if byte_range is None:
        return data
    if isinstance(byte_range, RangeByteRequest):
        return data[byte_range.start : byte_range.end]
    if isinstance(byte_range, OffsetByteRequest):
        return data[byte_range.offset :]
    if isinstance(byte_range, SuffixByteRequest):
        return data[-byte_range.suffix :] if byte_range.suffix else b""
    raise TypeError(f"Unexpected byte_range, got {byte_range}")
