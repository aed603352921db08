"""A Hypothesis state machine over CASStore: random sets, deletes, commits and reopenings
against a plain dict. Every committed CID must keep reading exactly what it held (immutability),
whatever later sessions did, and equal content must give an equal CID."""

from __future__ import annotations

import json

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync

from artifacts.blobstore import MemoryBlobStore
from artifacts.cid import CID
from artifacts.zarr_store import CASStore

ARRAY_META = json.dumps({"node_type": "array", "zarr_format": 3}).encode()
GROUP_META = json.dumps({"node_type": "group", "zarr_format": 3}).encode()
KEYS = st.sampled_from(
    ["zarr.json", "x/zarr.json", "g/zarr.json", "g/y/zarr.json", "x/c/0", "x/c/1", "g/y/c/0/0",
     "g/y/c/0/1", "loose", "g/loose/k"]
)  # fmt: skip
VALUES = st.binary(max_size=64)


def _read_all(store: CASStore) -> dict[str, bytes]:
    keys = sync(_collect(store))
    out = {}
    for key in keys:
        buf = sync(store.get(key, default_buffer_prototype()))
        assert buf is not None, key
        out[key] = buf.to_bytes()
    return out


async def _collect(store: CASStore) -> list[str]:
    return [k async for k in store.list()]


class CASMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.blobs = MemoryBlobStore()
        self.store = CASStore(self.blobs)
        self.model: dict[str, bytes] = {}
        self.history: list[tuple[CID, dict[str, bytes]]] = []

    def _set(self, key: str, value: bytes) -> None:
        sync(self.store.set(key, cpu.Buffer.from_bytes(value)))
        self.model[key] = value

    @rule(key=KEYS, value=VALUES)
    def set_value(self, key: str, value: bytes) -> None:
        if key.endswith("zarr.json") and key.startswith(("x/", "g/y/")):
            value = ARRAY_META  # these paths are arrays: their chunks get their own tables
        elif key.endswith("zarr.json"):
            value = GROUP_META
        self._set(key, value)

    @rule(count=st.integers(min_value=513, max_value=700), seed=st.integers(0, 3))
    def bulk_chunks(self, count: int, seed: int) -> None:
        """Enough chunks for array x to need a Merkle tree instead of an inline table."""
        self._set("x/zarr.json", ARRAY_META)
        for i in range(count):
            self._set(f"x/c/{i}", f"{seed}:{i % 97}".encode())

    @rule(key=KEYS)
    def delete(self, key: str) -> None:
        sync(self.store.delete(key))
        self.model.pop(key, None)

    @rule(prefix=st.sampled_from(["x", "g", "g/y"]))
    def delete_dir(self, prefix: str) -> None:
        sync(self.store.delete_dir(prefix))
        for key in [k for k in self.model if k.startswith(prefix + "/")]:
            del self.model[key]

    @rule()
    def commit(self) -> None:
        cid = self.store.commit("zarr", {})
        for old_cid, old_model in self.history:
            if old_model == self.model:
                assert old_cid == cid  # same content, same CID
        self.history.append((cid, dict(self.model)))

    @precondition(lambda self: bool(self.history))
    @rule(data=st.data())
    def reopen_old_version(self, data: st.DataObject) -> None:
        cid, snapshot = data.draw(st.sampled_from(self.history))
        assert _read_all(CASStore(self.blobs, cid, read_only=True)) == snapshot
        # continue writing on top of that version (copy-on-write)
        self.store = CASStore(self.blobs, cid)
        self.model = dict(snapshot)

    @invariant()
    def store_matches_model(self) -> None:
        assert _read_all(self.store) == self.model


CASMachine.TestCase.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)
TestCASStoreStateful = CASMachine.TestCase
