"""Signed run requests, private-data policies and receipt ordering, without a cluster (the
cluster tests in tests/node_agent/test_node_trust.py try the same attacks on real processes)."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import snapshot

from artifacts.store import ArtifactStore
from flows.errors import FlowError, PrivateDataError, RunRequestError
from flows.lineage import lineage
from flows.private import (
    PrivateDataset,
    allows,
    approve_code,
    load_private,
    resolve_private,
    save_private,
)
from flows.receipts import write_receipt
from flows.run_requests import (
    NonceStore,
    allowed_coordinators,
    save_allowed_coordinators,
    sign_request,
    verify_request,
)
from registry.identity import Identity

COORD = Identity.generate()
NODE = Identity.generate()
PARAMS: dict[str, Any] = {"dataset": "private:x", "model": "mlp", "epochs": 2, "note": ""}
DEFAULTS = {"model": "mlp", "epochs": 10, "seed": 0, "note": "", "request": None}


def _check(request: Any, nonces: NonceStore, **kw: Any) -> dict[str, Any]:
    ran = {**PARAMS, "seed": 0, "request": request}  # as the flow gets them: defaults filled
    args: dict[str, Any] = {
        "flow": "train",
        "node_id": NODE.id,
        "parameters": ran,
        "allowed": {COORD.public_key},
        "nonces": nonces,
        "defaults": DEFAULTS,
    } | kw
    return verify_request(request, **args)


def test_a_request_is_accepted_once(tmp_path: Path) -> None:
    nonces = NonceStore.for_home(tmp_path)
    request = sign_request(COORD, flow="train", node_id=NODE.id, parameters=PARAMS)
    body = _check(request, nonces)
    assert body["parameters"] == PARAMS
    assert (tmp_path / "run-requests.db").stat().st_mode & 0o777 == 0o600
    with pytest.raises(RunRequestError, match="already used"):
        _check(request, nonces)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: None, "no signed run request"),
        (lambda r: {"body": r["body"]}, "malformed"),
        (
            lambda r: {**r, "sig": ("c" if r["sig"][0] != "c" else "d") + r["sig"][1:]},
            "does not verify",
        ),
        (lambda r: _edit(r, "parameters", {**PARAMS, "epochs": 3}), "does not verify"),
        (lambda r: _edit(r, "format", "cidflow/run-request@0"), "not a cidflow/run-request@1"),
        (lambda r: _edit(r, "key", Identity.generate().public_key), "does not verify"),
    ],
)
def test_tampered_requests_are_refused(tmp_path: Path, change: Any, reason: str) -> None:
    nonces = NonceStore.for_home(tmp_path)
    request = change(sign_request(COORD, flow="train", node_id=NODE.id, parameters=PARAMS))
    with pytest.raises(RunRequestError, match=reason):
        _check(request, nonces)
    assert not (tmp_path / "run-requests.db").exists()  # no nonce was used up


def _edit(request: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    return {"body": {**request["body"], key: value}, "sig": request["sig"]}


def test_requests_for_other_runs_keys_or_times_are_refused(tmp_path: Path) -> None:
    nonces = NonceStore.for_home(tmp_path)

    def sign(**kw: Any) -> dict[str, Any]:
        args = {"flow": "train", "node_id": NODE.id, "parameters": PARAMS} | kw
        return sign_request(kw.pop("identity", COORD), **args)

    cases = [
        (
            sign_request(Identity.generate(), flow="train", node_id=NODE.id, parameters=PARAMS),
            {},
            "is not allowed on this node",
        ),
        (sign(flow="infer"), {}, "for another flow or node"),
        (sign(node_id=COORD.id), {}, "for another flow or node"),
        (sign(), {"parameters": {**PARAMS, "seed": 0, "epochs": 20}}, "differ from the signed"),
        (sign(), {"parameters": {**PARAMS, "seed": 9}}, "differ from the signed ones"),
        (sign(), {"parameters": {**PARAMS}}, "differ from the signed ones"),
        (sign(now=time.time() - 700), {}, "expired"),
        (sign(now=time.time() + 3600), {}, "validity period is not sane"),
        (sign(ttl=10 * 86400), {}, "validity period is not sane"),
    ]
    for request, kw, reason in cases:
        with pytest.raises(RunRequestError, match=reason):
            _check(request, nonces, **kw)


def _use_once(path: str, nonce: str, out: Any) -> None:
    out.put(NonceStore(Path(path)).use(nonce, time.time() + 60))


def test_two_processes_cannot_both_use_one_nonce(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [
        ctx.Process(target=_use_once, args=(str(tmp_path / "n.db"), "n" * 32, out))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert sorted(out.get(timeout=5) for _ in procs) == [False, False, False, True]


def test_the_allow_list_is_checked_and_private(tmp_path: Path) -> None:
    assert allowed_coordinators(tmp_path) == frozenset()  # none: the node runs nothing
    save_allowed_coordinators(tmp_path, [COORD.public_key, COORD.public_key])
    assert allowed_coordinators(tmp_path) == {COORD.public_key}
    assert (tmp_path / "allowed-coordinators.json").stat().st_mode & 0o777 == 0o600
    before = snapshot(tmp_path)
    with pytest.raises(RunRequestError, match="is not a public key"):
        save_allowed_coordinators(tmp_path, ["not-a-key"])
    assert snapshot(tmp_path) == before


def test_private_policies(tmp_path: Path) -> None:
    cid = str(ArtifactStore(tmp_path / "s").put_arrays({"x": __import__("numpy").arange(3)}))
    save_private(
        tmp_path,
        {
            "a": PrivateDataset(cid, "model"),
            "b": PrivateDataset(cid, "rows"),
            "c": PrivateDataset(cid, "aggregate"),
        },
    )
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600
    assert load_private(tmp_path)["c"] == PrivateDataset(cid, "aggregate")
    table = {
        (p, u): allows(p, u)
        for p in ("model", "aggregate", "rows")
        for u in ("train", "evaluate", "infer", "federated")
    }
    assert [k for k, v in table.items() if v] == [
        ("model", "train"),
        ("model", "evaluate"),
        ("model", "federated"),
        ("aggregate", "federated"),
        ("rows", "train"),
        ("rows", "evaluate"),
        ("rows", "infer"),
        ("rows", "federated"),
    ]
    assert resolve_private(tmp_path, "private:b", "infer") == cid
    assert resolve_private(tmp_path, cid, "infer") == cid  # not private: as it is
    errors = []
    for ref, use in [("private:a", "infer"), ("private:c", "train"), ("private:zz", "train")]:
        with pytest.raises(PrivateDataError) as info:
            resolve_private(tmp_path, ref, use)  # type: ignore[arg-type]
        errors.append(str(info.value))
    assert errors == [
        "private dataset 'a' is not available for infer on this node",
        "private dataset 'c' is not available for train on this node",
        "private dataset 'zz' is not available for train on this node",
    ]
    # user code needs the owner's approval, per dataset; revoked, it is refused again
    code = str(ArtifactStore(tmp_path / "s").put_arrays({"c": __import__("numpy").arange(2)}))
    with pytest.raises(PrivateDataError, match=f"not available for train with code {code}"):
        resolve_private(tmp_path, "private:a", "train", code)
    assert approve_code(tmp_path, "a", code)
    assert not approve_code(tmp_path, "a", code)  # already approved: nothing changed
    assert resolve_private(tmp_path, "private:a", "train", code) == cid
    with pytest.raises(PrivateDataError, match="with code"):
        resolve_private(tmp_path, "private:b", "infer", code)  # approved for 'a' only
    assert approve_code(tmp_path, "a", code, revoke=True)
    with pytest.raises(PrivateDataError, match="with code"):
        resolve_private(tmp_path, "private:a", "train", code)
    with pytest.raises(PrivateDataError, match="holds no private dataset 'zz'"):
        approve_code(tmp_path, "zz", code)
    (tmp_path / "private.json").write_text('{"a": "' + cid + '"}')
    with pytest.raises(FlowError, match="is not"):
        load_private(tmp_path)


def test_lineage_orders_by_what_this_home_recorded_not_by_claimed_times(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "home")
    made = str(store.put_arrays({"w": __import__("numpy").ones(4)}))
    # A lying signer's receipt for the same output, claiming to have ended in 2100, stored
    # here (a blob like any other) but never recorded by this home.
    liar = ArtifactStore(tmp_path / "liar")
    forged = write_receipt(
        liar,
        Identity.generate(),
        task="train",
        code="1" * 64,
        parameters={"evil": True},
        inputs=[],
        outputs=[made],
        started=4102444700.0,
        ended=4102444800.0,
    )
    store.put_record(liar.get_record(forged.cid))
    time.sleep(0.05)
    now = time.time()
    honest = write_receipt(
        store,
        NODE,
        task="train",
        code="0" * 64,
        parameters={},
        inputs=[],
        outputs=[made],
        started=now,
        ended=now,
    )
    assert lineage(store, made)["produced_by"]["receipt"] == str(honest.cid)
    # Neither recorded (a journal lost, say): the claimed time counts no later than when the
    # receipt was stored here, so 2100 still does not win.
    os.unlink(store.home / "receipts.journal")
    assert lineage(store, made)["produced_by"]["receipt"] == str(honest.cid)
