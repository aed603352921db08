"""Signed run receipts: round trip, tampering, corruption, and gc keeping them."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from artifacts.canonical import canonical_json
from artifacts.cid import compute_cid
from artifacts.errors import CorruptBlobError
from artifacts.store import ArtifactStore
from flows.errors import ReceiptError
from flows.receipts import RECEIPT_FORMAT, load_receipt, write_receipt
from registry.identity import Identity

IN = str(compute_cid(b"input data"))
OUT = str(compute_cid(b"{}", codec="json"))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "home")


def _write(store: ArtifactStore, node: Identity) -> str:
    t = time.time()
    receipt = write_receipt(
        store, node, task="train", code="ab" * 32, parameters={"epochs": 3, "lr": 0.1},
        inputs=[IN, IN], outputs=[OUT], started=t, ended=t + 1.5,
    )  # fmt: skip
    return str(receipt.cid)


def test_receipt_round_trip(store: ArtifactStore) -> None:
    node = Identity.generate()
    cid = _write(store, node)
    receipt = load_receipt(store, cid)
    assert receipt.task == "train"
    assert receipt.inputs == [IN]  # deduplicated and sorted
    assert receipt.outputs == [OUT]
    assert receipt.node == node.id
    assert receipt.body["format"] == RECEIPT_FORMAT
    assert receipt.body["parameters"] == {"epochs": 3, "lr": 0.1}
    assert receipt.body["environment"]["python"]
    assert receipt.body["ended"] > receipt.body["started"]


def test_a_tampered_receipt_fails_verification(store: ArtifactStore) -> None:
    cid = _write(store, Identity.generate())
    obj = json.loads(store.get_record(cid))
    obj["body"]["outputs"] = [str(compute_cid(b"someone else's model", codec="json"))]
    forged = store.put_record(canonical_json(obj))  # a valid blob, a broken signature
    with pytest.raises(ReceiptError, match="does not verify"):
        load_receipt(store, forged)
    obj = json.loads(store.get_record(cid))
    other = Identity.generate()
    obj["body"]["key"] = other.public_key  # re-signed by another key, node id left as it was
    obj["sig"] = other.sign(canonical_json(obj["body"]))
    with pytest.raises(ReceiptError, match="node id"):
        load_receipt(store, store.put_record(canonical_json(obj)))
    assert load_receipt(store, cid).task == "train"  # the original still verifies


def test_a_corrupted_receipt_blob_is_named(store: ArtifactStore) -> None:
    cid = _write(store, Identity.generate())
    path = store.blobs.path_of(cid)  # type: ignore[attr-defined]
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptBlobError, match=cid):
        load_receipt(store, cid)


def test_receipts_survive_gc_and_non_receipts_are_refused(store: ArtifactStore) -> None:
    cid = _write(store, Identity.generate())
    store.gc(grace=0)
    assert load_receipt(store, cid).task == "train"
    with pytest.raises(ValueError, match="JSON"):
        store.put_record(b"not json")
    plain = store.put_record(canonical_json({"hello": "world"}))
    with pytest.raises(ReceiptError, match="not a receipt"):
        load_receipt(store, plain)
