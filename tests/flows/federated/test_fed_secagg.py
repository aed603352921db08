"""Secure aggregation with pairwise masks: exact sums, masks that hide, dropouts and retries,
and every refusal. Real X25519, HKDF and ChaCha20 throughout; nothing is mocked."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from flows.errors import AggregationError, FlowError
from flows.federated.aggregate import fedavg
from flows.federated.secagg import (
    DEFAULT_SCALE_BITS,
    NUM_EXAMPLES,
    SecAggError,
    client_private_key,
    decode,
    encode,
    mask_stream,
    mask_update,
    pair_seed,
    public_key_hex,
    round_context,
    secure_mean,
    simulate_round,
    unmask_sum,
)

Weights = dict[str, np.ndarray]
Updates = dict[str, tuple[Weights, int]]

CTX = round_context(1, 0, "bafkreiglobalmodel")
SHAPES: dict[str, tuple[int, ...]] = {
    "dense.w": (4, 3),
    "dense.b": (3,),
    "scale": (),
    "emb": (2, 5),
}


def secret_of(label: str) -> bytes:
    return hashlib.sha256(b"test identity secret " + label.encode()).digest()


def labels(n: int) -> list[str]:
    return [f"node-{i}" for i in range(n)]


def publics(names: Sequence[str]) -> dict[str, str]:
    return {c: public_key_hex(client_private_key(secret_of(c), c)) for c in names}


def random_updates(
    rng: np.random.Generator, names: Sequence[str], shapes: Mapping[str, tuple[int, ...]] = SHAPES
) -> Updates:
    return {
        c: (
            {k: rng.normal(0, 1, s).astype(np.float32) for k, s in shapes.items()},
            int(rng.integers(1, 1000)),
        )
        for c in names
    }


def mask_all(
    updates: Updates,
    context: bytes = CTX,
    *,
    participants: Sequence[str] | None = None,
    scale_bits: int = DEFAULT_SCALE_BITS,
) -> dict[str, dict[str, np.ndarray]]:
    """Every client of ``updates`` masks for ``participants`` (default: all of them)."""
    peers = publics(participants if participants is not None else list(updates))
    return {
        c: mask_update(
            w,
            n,
            me=c,
            private_key=client_private_key(secret_of(c), c),
            peers=peers,
            context=context,
            scale_bits=scale_bits,
        )
        for c, (w, n) in updates.items()
    }


def plain_sum(updates: Updates) -> Weights:
    first = next(iter(updates.values()))[0]
    return {
        k: sum((n * np.asarray(w[k], np.float64) for w, n in updates.values()), np.zeros(()))
        for k in first
    }


def assert_close_sums(got: Weights, want: Weights, n_clients: int, scale_bits: int = 24) -> None:
    assert list(got) == sorted(want)
    for k in want:
        assert got[k].dtype == np.float64, k
        assert got[k].shape == np.shape(want[k]), k
        # every client's fixed-point rounding is at most half a unit: 2**-(scale_bits + 1)
        np.testing.assert_allclose(got[k], want[k], rtol=1e-15, atol=n_clients * 2.0**-scale_bits)


# --------------------------------------------------------------------------- exact sums


@pytest.mark.parametrize("n_clients", [2, 3, 5, 7])
def test_unmasked_sum_equals_weighted_sum(n_clients: int) -> None:
    rng = np.random.default_rng(n_clients)
    updates = random_updates(rng, labels(n_clients))
    masked = mask_all(updates)
    sums, total = unmask_sum(masked, labels(n_clients))
    assert total == sum(n for _, n in updates.values())
    assert_close_sums(sums, plain_sum(updates), n_clients)


def test_masked_update_layout() -> None:
    updates = random_updates(np.random.default_rng(0), labels(3))
    masked = mask_all(updates)["node-1"]
    assert set(masked) == {*SHAPES, NUM_EXAMPLES}
    assert masked[NUM_EXAMPLES].shape == ()
    for k, shape in SHAPES.items():
        assert masked[k].dtype == np.uint64
        assert masked[k].shape == shape


def test_secure_mean_matches_fedavg_and_simulate_round() -> None:
    updates = random_updates(np.random.default_rng(7), labels(4))
    want = fedavg(list(updates.values()))
    mean, total = secure_mean(mask_all(updates), labels(4))
    sim, sim_total = simulate_round(updates, secret_of, CTX)
    assert total == sim_total == sum(n for _, n in updates.values())
    for k in want:
        np.testing.assert_allclose(mean[k], want[k], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(sim[k], mean[k])


def test_integer_arrays_and_empty_arrays_are_summed() -> None:
    names = labels(3)
    updates: Updates = {
        c: ({"steps": np.array([i, 2 * i], np.int64), "none": np.zeros((0, 3), np.float32)}, 2)
        for i, c in enumerate(names)
    }
    sums, total = unmask_sum(mask_all(updates), names)
    np.testing.assert_array_equal(sums["steps"], [6.0, 12.0])
    assert sums["none"].shape == (0, 3)
    assert total == 6


def test_participants_may_or_may_not_include_me_in_peers() -> None:
    updates = random_updates(np.random.default_rng(3), labels(3))
    everyone = publics(labels(3))
    masked = {}
    for c, (w, n) in updates.items():
        peers = everyone if c == "node-0" else {p: k for p, k in everyone.items() if p != c}
        key = client_private_key(secret_of(c), c)
        masked[c] = mask_update(w, n, me=c, private_key=key, peers=peers, context=CTX)
    sums, _ = unmask_sum(masked, labels(3))
    assert_close_sums(sums, plain_sum(updates), 3)


def test_zero_examples_contribute_nothing() -> None:
    updates = random_updates(np.random.default_rng(4), labels(3))
    w, _ = updates["node-2"]
    updates["node-2"] = (w, 0)
    sums, total = unmask_sum(mask_all(updates), labels(3))
    assert total == updates["node-0"][1] + updates["node-1"][1]
    assert_close_sums(sums, plain_sum({c: updates[c] for c in ["node-0", "node-1"]}), 3)


@settings(max_examples=30, deadline=None)
@given(
    n_clients=st.integers(2, 4),
    shape=hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=4),
    scale_bits=st.integers(8, 30),
    data=st.data(),
)
def test_sum_is_exact_property(
    n_clients: int, shape: tuple[int, ...], scale_bits: int, data: st.DataObject
) -> None:
    elements = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    updates: Updates = {
        c: (
            {"x": data.draw(hnp.arrays(np.float32, shape, elements=elements))},
            data.draw(st.integers(0, 10_000)),
        )
        for c in labels(n_clients)
    }
    context = data.draw(st.binary(min_size=1, max_size=16))
    sums, total = unmask_sum(
        mask_all(updates, context, scale_bits=scale_bits), labels(n_clients), scale_bits=scale_bits
    )
    assert total == sum(n for _, n in updates.values())
    assert_close_sums(sums, plain_sum(updates), n_clients, scale_bits)


# --------------------------------------------------------------------------- what masks hide


def test_one_masked_update_reveals_nothing_obvious() -> None:
    rng = np.random.default_rng(11)
    names = labels(3)
    updates = random_updates(rng, names, {"w": (100, 100)})
    masked = mask_all(updates)["node-0"]
    w, n = updates["node-0"]
    plain = encode(n * w["w"].astype(np.float64))
    assert np.mean(masked["w"] != plain) > 0.999
    assert int(masked[NUM_EXAMPLES]) != n
    decoded = decode(masked["w"])
    assert decoded.std() > 1e9 * (n * w["w"].astype(np.float64)).std()
    # uniform-looking words: about half have each of the top and bottom bits set
    words = masked["w"].ravel()
    for bit in (0, 31, 63):
        share = np.mean((words >> np.uint64(bit)) & np.uint64(1))
        assert 0.45 < share < 0.55, bit


def test_masks_are_fresh_for_every_context() -> None:
    updates = random_updates(np.random.default_rng(12), labels(2), {"w": (64,)})
    first = mask_all(updates, round_context(1, 0, "bafkreiglobal"))["node-0"]["w"]
    retry = mask_all(updates, round_context(1, 1, "bafkreiglobal"))["node-0"]["w"]
    again = mask_all(updates, round_context(1, 0, "bafkreiglobal"))["node-0"]["w"]
    np.testing.assert_array_equal(first, again)  # deterministic
    assert np.mean(first != retry) > 0.99


# --------------------------------------------------------------------------- keys and seeds


def test_client_keys_are_derived_from_the_identity_secret() -> None:
    a1 = public_key_hex(client_private_key(secret_of("a"), "a"))
    a2 = public_key_hex(client_private_key(secret_of("a"), "a"))
    assert a1 == a2
    assert len(a1) == 64
    assert bytes.fromhex(a1)
    assert a1 != public_key_hex(client_private_key(secret_of("a"), "b"))
    assert a1 != public_key_hex(client_private_key(secret_of("b"), "a"))
    with pytest.raises(SecAggError, match="16 bytes"):
        client_private_key(b"short", "a")
    with pytest.raises(SecAggError, match="label"):
        client_private_key(secret_of("a"), "")


def test_pair_seeds_are_symmetric_and_differ_across_contexts_and_pairs() -> None:
    key = {c: client_private_key(secret_of(c), c) for c in "abc"}
    pub = {c: public_key_hex(k) for c, k in key.items()}
    ab = pair_seed(key["a"], pub["b"], CTX, me="a", peer="b")
    assert len(ab) == 32
    assert ab == pair_seed(key["b"], pub["a"], CTX, me="b", peer="a")
    other = round_context(1, 1, "bafkreiglobalmodel")
    assert ab != pair_seed(key["a"], pub["b"], other, me="a", peer="b")
    assert pair_seed(key["a"], pub["b"], other, me="a", peer="b") == pair_seed(
        key["b"], pub["a"], other, me="b", peer="a"
    )
    assert ab != pair_seed(key["a"], pub["c"], CTX, me="a", peer="c")
    assert ab != pair_seed(key["c"], pub["b"], CTX, me="c", peer="b")


def test_pair_seed_refuses_bad_keys_and_labels() -> None:
    key = client_private_key(secret_of("a"), "a")
    pub_b = public_key_hex(client_private_key(secret_of("b"), "b"))
    with pytest.raises(SecAggError, match="low-order"):
        pair_seed(key, "00" * 32, CTX, me="a", peer="b")
    for bad in ["zz" * 32, "ab" * 31, "", 7]:
        with pytest.raises(SecAggError, match="not 32 bytes"):
            pair_seed(key, bad, CTX, me="a", peer="b")  # type: ignore[arg-type]
    with pytest.raises(SecAggError, match="itself"):
        pair_seed(key, pub_b, CTX, me="a", peer="a")
    with pytest.raises(SecAggError, match="context"):
        pair_seed(key, pub_b, b"", me="a", peer="b")


def test_round_context_changes_with_each_part() -> None:
    base = round_context(3, 0, "bafkreia")
    assert base == round_context(3, 0, "bafkreia")
    others = [round_context(4, 0, "bafkreia"), round_context(3, 1, "bafkreia")]
    others.append(round_context(3, 0, "bafkreib"))
    assert len({base, *others}) == 4
    with pytest.raises(SecAggError, match="attempt"):
        round_context(3, -1, "bafkreia")
    with pytest.raises(SecAggError, match="global_cid"):
        round_context(3, 0, "")


def test_mask_stream_is_the_chacha20_keystream() -> None:
    # RFC 7539 §A.1, test vector #1: all-zero key, nonce and counter
    first_block = bytes.fromhex(
        "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
        "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
    )
    want = np.frombuffer(first_block, dtype="<u8").astype(np.uint64)
    np.testing.assert_array_equal(mask_stream(bytes(32), 8), want)
    np.testing.assert_array_equal(mask_stream(bytes(32), 3), want[:3])
    assert mask_stream(bytes(32), 0).shape == (0,)
    with pytest.raises(SecAggError, match="32 bytes"):
        mask_stream(bytes(16), 4)


# --------------------------------------------------------------------------- dropouts and retries


def test_dropout_is_refused_then_a_retry_without_it_is_exact() -> None:
    rng = np.random.default_rng(21)
    everyone = labels(4)
    updates = random_updates(rng, everyone)
    attempt0 = round_context(5, 0, "bafkreiglobal")
    masked0 = mask_all(updates, attempt0)
    straggler = masked0.pop("node-2")  # node-2 drops out before sending

    with pytest.raises(SecAggError, match="missing \\['node-2'\\]") as err:
        unmask_sum(masked0, everyone)
    assert "nothing was unmasked" in str(err.value)

    survivors = [c for c in everyone if c != "node-2"]
    attempt1 = round_context(5, 1, "bafkreiglobal")
    masked1 = mask_all({c: updates[c] for c in survivors}, attempt1)
    sums, total = unmask_sum(masked1, survivors)
    assert total == sum(updates[c][1] for c in survivors)
    assert_close_sums(sums, plain_sum({c: updates[c] for c in survivors}), 3)

    # the straggler's old update turns up during the retry: not a participant, refused
    with pytest.raises(SecAggError, match="unexpected \\['node-2'\\]"):
        unmask_sum({**masked1, "node-2": straggler}, survivors)


def test_updates_masked_under_another_context_do_not_cancel() -> None:
    rng = np.random.default_rng(22)
    names = labels(3)
    updates = random_updates(rng, names)
    attempt0 = mask_all(updates, round_context(6, 0, "bafkreiglobal"))
    attempt1 = mask_all(updates, round_context(6, 1, "bafkreiglobal"))
    mixed = {**attempt1, "node-1": attempt0["node-1"]}  # a replay of the old attempt

    # the raw modular sum is garbage ...
    acc = sum((m["dense.w"] for m in mixed.values()), np.zeros((4, 3), np.uint64))
    garbage = decode(acc)
    assert np.all(np.abs(garbage - plain_sum(updates)["dense.w"]) > 1e6)
    # ... and unmask_sum refuses it instead of returning it
    with pytest.raises(SecAggError, match="did not cancel"):
        unmask_sum(mixed, names)


def test_a_client_masking_for_other_participants_is_refused() -> None:
    updates = random_updates(np.random.default_rng(23), labels(4))
    survivors = labels(3)
    masked = mask_all({c: updates[c] for c in survivors}, participants=survivors)
    # node-0 never heard that node-3 dropped: it still masks for all four
    masked["node-0"] = mask_all({"node-0": updates["node-0"]}, participants=labels(4))["node-0"]
    with pytest.raises(SecAggError, match="did not cancel"):
        unmask_sum(masked, survivors)


def test_participants_are_checked() -> None:
    masked = mask_all(random_updates(np.random.default_rng(24), labels(2)))
    with pytest.raises(SecAggError, match="more than once"):
        unmask_sum(masked, ["node-0", "node-1", "node-0"])
    with pytest.raises(SecAggError, match="at least 2"):
        unmask_sum({"node-0": masked["node-0"]}, ["node-0"])
    with pytest.raises(SecAggError, match="unexpected"):
        unmask_sum({**masked, "intruder": masked["node-0"]}, labels(2))


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_are_refused(bad: float) -> None:
    updates = random_updates(np.random.default_rng(31), labels(2))
    updates["node-1"][0]["dense.b"][1] = bad
    with pytest.raises(SecAggError, match="NaN or infinite"):
        mask_all(updates)
    with pytest.raises(SecAggError, match="NaN or infinite"):
        encode(np.array([0.0, bad]))


def test_values_that_would_overflow_the_sum_are_refused() -> None:
    # two clients, 24 fractional bits: |n·v| · 2**24 · 2 must stay below 2**62, so |n·v| < 2**37
    ok = {c: ({"w": np.array([2.0**36, -(2.0**36)])}, 1) for c in labels(2)}
    sums, _ = unmask_sum(mask_all(ok), labels(2))
    np.testing.assert_array_equal(sums["w"], [2.0**37, -(2.0**37)])

    too_big = {c: ({"w": np.array([2.0**36])}, 2) for c in labels(2)}  # weighted: 2**37
    with pytest.raises(SecAggError, match="overflows"):
        mask_all(too_big)
    with pytest.raises(SecAggError, match="overflows"):
        encode(np.array([2.0**37]), n_clients=2)
    with pytest.raises(SecAggError, match="overflows"):
        encode(np.array([-(2.0**30)]), n_clients=256)
    huge_count = {c: ({"w": np.zeros(2)}, 2**61) for c in labels(2)}
    with pytest.raises(SecAggError, match="overflows"):
        mask_all(huge_count)


def test_the_reserved_name_is_refused() -> None:
    updates = {c: ({NUM_EXAMPLES: np.zeros(2), "w": np.ones(2)}, 1) for c in labels(2)}
    with pytest.raises(SecAggError, match="reserved"):
        mask_all(updates)


@pytest.mark.parametrize(
    "bad",
    [
        {"w": np.ones(2, bool)},
        {"w": np.ones(2, complex)},
        {},
        {3: np.ones(2)},
    ],
)
def test_bad_updates_are_refused(bad: dict[Any, np.ndarray]) -> None:
    key = client_private_key(secret_of("node-0"), "node-0")
    with pytest.raises(SecAggError):
        mask_update(bad, 1, me="node-0", private_key=key, peers=publics(labels(2)), context=CTX)


def test_mask_update_refuses_bad_rounds() -> None:
    w = {"w": np.ones(3)}
    key = client_private_key(secret_of("node-0"), "node-0")
    peers = publics(labels(3))
    with pytest.raises(SecAggError, match="at least 2"):
        mask_update(w, 1, me="node-0", private_key=key, peers=publics(["node-0"]), context=CTX)
    wrong = {"node-0": peers["node-1"], "node-1": peers["node-1"]}
    with pytest.raises(SecAggError, match="not this client's"):
        mask_update(w, 1, me="node-0", private_key=key, peers=wrong, context=CTX)
    with pytest.raises(SecAggError, match="num_examples"):
        mask_update(w, -1, me="node-0", private_key=key, peers=peers, context=CTX)
    with pytest.raises(SecAggError, match="num_examples"):
        mask_update(w, True, me="node-0", private_key=key, peers=peers, context=CTX)
    with pytest.raises(SecAggError, match="context"):
        mask_update(w, 1, me="node-0", private_key=key, peers=peers, context=b"")
    with pytest.raises(SecAggError, match="scale_bits"):
        mask_update(w, 1, me="node-0", private_key=key, peers=peers, context=CTX, scale_bits=60)


def test_mismatched_masked_updates_are_refused() -> None:
    names = labels(3)
    masked = mask_all(random_updates(np.random.default_rng(41), names))

    def with_changed(change: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
        return {**masked, "node-2": {**masked["node-2"], **change}}

    with pytest.raises(SecAggError, match="missing \\['emb'\\]"):
        unmask_sum(
            {**masked, "node-2": {k: v for k, v in masked["node-2"].items() if k != "emb"}}, names
        )
    with pytest.raises(SecAggError, match="unexpected \\['extra'\\]"):
        unmask_sum(with_changed({"extra": np.zeros(1, np.uint64)}), names)
    with pytest.raises(SecAggError, match="expected uint64\\[2, 5\\]"):
        unmask_sum(with_changed({"emb": masked["node-2"]["emb"].reshape(5, 2)}), names)
    with pytest.raises(SecAggError, match="expected uint64"):
        unmask_sum(with_changed({"emb": masked["node-2"]["emb"].view(np.int64)}), names)
    with pytest.raises(SecAggError, match=NUM_EXAMPLES):
        unmask_sum(
            {**masked, "node-0": {k: v for k, v in masked["node-0"].items() if k != NUM_EXAMPLES}},
            names,
        )


def test_secure_mean_refuses_zero_examples() -> None:
    updates = {c: ({"w": np.ones(2)}, 0) for c in labels(2)}
    sums, total = unmask_sum(mask_all(updates), labels(2))
    assert total == 0
    np.testing.assert_array_equal(sums["w"], [0.0, 0.0])
    with pytest.raises(SecAggError, match="no examples"):
        secure_mean(mask_all(updates), labels(2))


def test_errors_belong_to_the_flows_hierarchy() -> None:
    assert issubclass(SecAggError, AggregationError)
    assert issubclass(SecAggError, FlowError)
    assert issubclass(SecAggError, ValueError)


def test_encode_decode_round_trip() -> None:
    values = np.array([0.0, 1.5, -1.5, 2.0**-24, -(2.0**-25) * 3, 1e6])
    encoded = encode(values)
    assert encoded.dtype == np.uint64
    np.testing.assert_allclose(decode(encoded), values, rtol=0, atol=2.0**-25)
    np.testing.assert_array_equal(
        decode(encode(values[:3], scale_bits=0), scale_bits=0), [0, 2, -2]
    )
    with pytest.raises(SecAggError, match="uint64"):
        decode(np.zeros(2, np.int64))
    with pytest.raises(SecAggError, match="dtype"):
        encode(np.array(["a"]))
