"""Secure aggregation: the coordinator learns only the *sum* of the clients' weighted updates.

Pairwise additive masks from X25519 key agreement, after Bonawitz et al. 2017 ("Practical
Secure Aggregation for Privacy-Preserving Machine Learning"), *without* its secret-sharing
dropout recovery: if a client drops out, the round is retried without it, under a new context.

How one round goes (all functions are pure; transport and retries belong to the caller):

1. Every client ``k`` derives a long-term X25519 key from its own identity secret,
   :func:`client_private_key` (HKDF-SHA256 of the secret and the client's label; nothing new is
   stored), and publishes :func:`public_key_hex`.
2. The coordinator picks the participants and a fresh ``context`` (:func:`round_context`: the
   round, the attempt and the global model's CID) and sends every participant the others'
   public keys.
3. Every client calls :func:`mask_update`: it weights its update by its example count, encodes
   it in fixed point (:func:`encode`), and adds one mask stream per peer. For a pair ``a < b``
   (Python string order of the labels) both sides derive the same 32-byte seed,
   :func:`pair_seed`; ``a`` *adds* the stream of that seed and ``b`` *subtracts* it, so in the
   sum over all participants every mask cancels, modulo 2**64.
4. The coordinator calls :func:`unmask_sum` (or :func:`secure_mean`) on the masked updates of
   *exactly* the participants of step 2. A missing client is an error naming it, never a
   partial unmasking (its masks would not cancel): the caller retries with the survivors and a
   new context, and every client masks again.

Formats:

- **Pair seed**: ``X25519(me, peer)`` shared secret, then HKDF-SHA256 (no salt, 32 bytes) with
  ``info = b"cidflow secagg v1" ‖ lp(context) ‖ lp(label_a) ‖ lp(label_b)`` where
  ``label_a < label_b`` and ``lp(x)`` is ``x`` (labels in UTF-8) prefixed with its length as a
  4-byte big-endian integer, so no two (context, pair) inputs give the same ``info``. Both
  labels are in it, so the seed is symmetric and differs between pairs; the context makes
  masks fresh every round and every retry. An all-zero (low-order point) exchange is refused.
- **Mask stream**: ChaCha20 (RFC 7539 block function as in ``cryptography``) keyed by the
  seed, with an all-zero 16-byte nonce/counter, encrypting zeros; the keystream is read as
  little-endian uint64 words. The key is used for one stream only, so the zero nonce is safe.
- **Fixed point**: a value ``v`` becomes ``rint(v · 2**scale_bits)`` as a two's-complement
  int64, viewed as uint64; sums are taken modulo 2**64 (numpy uint64 wraps). Encoding refuses
  non-finite values and any ``|rint(v · 2**scale_bits)| · n_clients ≥ 2**62``, so the true sum
  of all participants stays within ``±2**62`` and decodes exactly. Each client's rounding
  error is at most ``2**-(scale_bits+1)``, so the decoded sum is within
  ``n_clients · 2**-(scale_bits+1)`` of the float64 sum of the weighted updates (plus float64
  rounding of the result, relative ``2**-53``).
- **Layout of one masked update**: one mask stream per pair covers the concatenation of word
  0, the example count :data:`NUM_EXAMPLES` (an unscaled integer), and then every array,
  flattened in C order, in sorted-name order. The returned dict holds the count under
  :data:`NUM_EXAMPLES` (a 0-d uint64 array) and every array under its name with its original
  shape, all uint64. Weights may not use the reserved name.

Checks the coordinator gets for free: a decoded sum outside ``±2**62`` cannot come from
well-formed updates, so :func:`unmask_sum` refuses it. An update masked under another context
(a straggler from an earlier attempt, a replay) or for another participant set leaves its masks
uncancelled, and each decoded word is then uniformly random, so the sum is refused with
probability ``1 − 2**-(words)``; this is a sanity check, not an integrity proof.

Threat model and limits: the coordinator is honest-but-curious, as in Bonawitz et al. The
keys are long-term (static-static Diffie-Hellman), so there is no forward secrecy: whoever
steals a client's identity secret can recompute its masks of any past round it saw. A
coordinator that *lies* about a dropout and later receives the "dropped" client's update
learns that update as the difference of two sums: clients should bound the retries they join
and the size of the set they mask for. With two participants, each learns the other's update
from the sum. A client can put any values it likes into the sum (no input validation happens
on masked data): robust aggregation rules (median, Krum) cannot be combined with this, only
sums and weighted means.
"""

from __future__ import annotations

import json
import numbers
import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from flows.errors import AggregationError
from flows.federated.aggregate import Array, Weights

__all__ = [
    "DEFAULT_SCALE_BITS",
    "NUM_EXAMPLES",
    "SecAggError",
    "client_private_key",
    "decode",
    "encode",
    "mask_stream",
    "mask_update",
    "pair_seed",
    "public_key_hex",
    "round_context",
    "secure_mean",
    "simulate_round",
    "unmask_sum",
]

NUM_EXAMPLES: Final = "__num_examples__"
"""Reserved name of the masked example count in a masked update."""
DEFAULT_SCALE_BITS: Final = 24
"""Fractional bits of the fixed-point encoding: a resolution of 2**-24 ≈ 6e-8."""

_DOMAIN: Final = b"cidflow secagg v1"
_KEY_INFO: Final = _DOMAIN + b" x25519 client key"
_BOUND: Final = 2**62
_MAX_SCALE_BITS: Final = 52
_MAX_WORDS: Final = 2**35  # 256 GiB of keystream: far below ChaCha20's 2**32 blocks
_MIN_SECRET: Final = 16

U64 = npt.NDArray[np.uint64]


class SecAggError(AggregationError):
    """A secure-aggregation round that cannot go on: bad keys or labels, values that cannot be
    encoded, or masked updates that do not match the participants (a missing, an extra or a
    malformed one, or masks that did not cancel)."""


# --------------------------------------------------------------------------- checks


def _label(value: Any, what: str = "client label") -> bytes:
    if not isinstance(value, str) or not value:
        raise SecAggError(f"{what} must be a non-empty string, got {value!r}")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise SecAggError(f"{what} {value!r} is not valid UTF-8 text") from exc


def _context(context: Any) -> bytes:
    if not isinstance(context, bytes) or not context:
        raise SecAggError(
            "context must be non-empty bytes that never repeat (see round_context), "
            f"got {context!r}"
        )
    return context


def _scale_bits(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SecAggError(f"scale_bits must be an integer, got {value!r}")
    bits = int(value)
    if not 0 <= bits <= _MAX_SCALE_BITS:
        raise SecAggError(f"scale_bits must be in [0, {_MAX_SCALE_BITS}], got {bits}")
    return bits


def _count(value: Any, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise SecAggError(f"{what} must be an integer, got {value!r}")
    if value < minimum:
        raise SecAggError(f"{what} must be at least {minimum}, got {value}")
    return int(value)


def _lp(data: bytes) -> bytes:
    """``data`` prefixed by its length (4 bytes, big-endian)."""
    return struct.pack(">I", len(data)) + data


# --------------------------------------------------------------------------- keys and seeds


def client_private_key(secret: bytes, client: str) -> X25519PrivateKey:
    """The client's long-term X25519 key: HKDF-SHA256 of its identity ``secret`` (≥ 16 bytes,
    e.g. the node's signing key) with the label ``client`` in ``info``. Deterministic, so a
    node recomputes it instead of storing it."""
    if not isinstance(secret, bytes) or len(secret) < _MIN_SECRET:
        raise SecAggError(f"the identity secret must be at least {_MIN_SECRET} bytes")
    info = _KEY_INFO + _lp(_label(client))
    raw = HKDF(algorithm=hashes.SHA256(), length=32, salt=_DOMAIN, info=info).derive(secret)
    return X25519PrivateKey.from_private_bytes(raw)


def public_key_hex(private_key: X25519PrivateKey) -> str:
    """The raw 32-byte public key of ``private_key``, in lower-case hex (64 characters)."""
    return private_key.public_key().public_bytes_raw().hex()


def _public_key(value: Any, peer: str) -> X25519PublicKey:
    try:
        raw = bytes.fromhex(value) if isinstance(value, str) else b""
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise SecAggError(f"public key of {peer!r} is not 32 bytes of hex: {value!r}")
    return X25519PublicKey.from_public_bytes(raw)


def pair_seed(
    private_key: X25519PrivateKey, peer_public_hex: str, context: bytes, *, me: str, peer: str
) -> bytes:
    """The 32-byte seed that ``me`` and ``peer`` share under ``context``.

    ``pair_seed(key_a, pub_b, ctx, me=a, peer=b) == pair_seed(key_b, pub_a, ctx, me=b,
    peer=a)``; the labels are part of the derivation in sorted order (see the module docstring).
    """
    ctx = _context(context)
    mine, theirs = _label(me), _label(peer, "peer label")
    if me == peer:
        raise SecAggError(f"client {me!r} cannot pair with itself")
    public = _public_key(peer_public_hex, peer)
    try:
        shared = private_key.exchange(public)
    except ValueError as exc:  # an all-zero result: a low-order point
        raise SecAggError(f"public key of {peer!r} is a low-order point") from exc
    first, second = (mine, theirs) if me < peer else (theirs, mine)
    info = _DOMAIN + _lp(ctx) + _lp(first) + _lp(second)
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def round_context(round_number: int, attempt: int, global_cid: str) -> bytes:
    """A context for :func:`pair_seed` that is new for every round, retry and global model:
    canonical JSON of the three values (UTF-8, sorted keys, no whitespace)."""
    r = _count(round_number, "round_number", minimum=0)
    a = _count(attempt, "attempt", minimum=0)
    if not isinstance(global_cid, str) or not global_cid:
        raise SecAggError(f"global_cid must be a non-empty string, got {global_cid!r}")
    doc = {"attempt": a, "global": global_cid, "round": r}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode("utf-8")


def mask_stream(seed: bytes, words: int) -> U64:
    """``words`` pseudo-random uint64 from a 32-byte ``seed``: the ChaCha20 keystream (zero
    nonce and counter) read as little-endian words. The same on every machine."""
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise SecAggError("a mask seed is 32 bytes")
    n = _count(words, "words", minimum=0)
    if n > _MAX_WORDS:
        raise SecAggError(f"a mask stream of {n} words is too long (at most {_MAX_WORDS})")
    encryptor = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()
    stream = encryptor.update(bytes(8 * n))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


# --------------------------------------------------------------------------- fixed point


def encode(
    values: npt.ArrayLike, *, scale_bits: int = DEFAULT_SCALE_BITS, n_clients: int = 1
) -> U64:
    """``values`` in fixed point: ``rint(v · 2**scale_bits)`` as two's-complement uint64.

    Refuses non-finite values, and values too large to be summed over ``n_clients`` clients
    without leaving ``±2**62``. Integer inputs are converted through float64 (exact below
    ``2**53``).
    """
    bits = _scale_bits(scale_bits)
    n = _count(n_clients, "n_clients", minimum=1)
    a = np.asarray(values)
    if a.dtype.kind not in "fiu":
        raise SecAggError(f"cannot encode dtype {a.dtype}: only integer and floating values")
    x = a.astype(np.float64)
    if not np.isfinite(x).all():
        raise SecAggError("cannot encode NaN or infinite values")
    with np.errstate(over="ignore"):  # inf is refused just below
        scaled = np.rint(np.ldexp(x, bits))
    peak = float(np.abs(scaled).max()) if scaled.size else 0.0
    if not np.isfinite(peak) or int(peak) * n >= _BOUND:
        limit = _BOUND / n / 2.0**bits
        raise SecAggError(
            f"a value of magnitude {float(np.abs(x).max()):.6g} overflows the fixed-point sum "
            f"of {n} clients with scale_bits={bits} (magnitudes must stay below {limit:.6g})"
        )
    return scaled.astype(np.int64).view(np.uint64)


def decode(
    encoded: npt.ArrayLike, *, scale_bits: int = DEFAULT_SCALE_BITS
) -> npt.NDArray[np.float64]:
    """The float64 values of fixed-point ``encoded`` words (uint64, two's complement)."""
    bits = _scale_bits(scale_bits)
    a = np.asarray(encoded)
    if a.dtype != np.uint64:
        raise SecAggError(f"encoded values are uint64, got {a.dtype}")
    return np.ldexp(a.view(np.int64).astype(np.float64), -bits)


# --------------------------------------------------------------------------- client side


def _check_update(update: Any) -> list[tuple[str, Array]]:
    """The update's arrays as ndarrays in sorted-name order, or an error."""
    if not isinstance(update, Mapping) or not update:
        raise SecAggError("an update is a non-empty mapping of array names to arrays")
    items: list[tuple[str, Array]] = []
    for name in update:
        if not isinstance(name, str):
            raise SecAggError(f"array name {name!r} is not a string")
        if name == NUM_EXAMPLES:
            raise SecAggError(f"the array name {NUM_EXAMPLES!r} is reserved for the count")
    for name in sorted(update):
        a = np.asarray(update[name])
        if a.dtype.kind not in "fiu":
            raise SecAggError(f"array {name!r} has dtype {a.dtype}: only integer and floating")
        if not np.isfinite(a).all():
            raise SecAggError(f"array {name!r} has NaN or infinite values")
        items.append((name, a))
    return items


def mask_update(
    update: Mapping[str, Array],
    num_examples: int,
    *,
    me: str,
    private_key: X25519PrivateKey,
    peers: Mapping[str, str],
    context: bytes,
    scale_bits: int = DEFAULT_SCALE_BITS,
) -> dict[str, U64]:
    """What client ``me`` sends: ``num_examples · update`` and ``num_examples``, masked.

    ``peers`` maps every participant's label to its public key hex; ``me`` may be in it (its key
    must then be ours) or not. The participants are ``peers ∪ {me}``, at least two. The result
    holds uint64 arrays with the update's names and shapes plus :data:`NUM_EXAMPLES` (0-d);
    alone it looks uniformly random, and only the sum over all participants means anything.
    """
    ctx = _context(context)
    bits = _scale_bits(scale_bits)
    _label(me)
    n = _count(num_examples, "num_examples", minimum=0)
    if not isinstance(peers, Mapping):
        raise SecAggError("peers maps participant labels to public key hex")
    mine = public_key_hex(private_key)
    if me in peers and peers[me] != mine:
        raise SecAggError(f"peers lists a public key for {me!r} that is not this client's")
    for label in peers:
        _label(label, "peer label")
    others = sorted(label for label in peers if label != me)
    if not others:
        raise SecAggError("secure aggregation needs at least 2 participants")
    clients = len(others) + 1
    items = _check_update(update)

    words = [encode(np.asarray([n]), scale_bits=0, n_clients=clients)]
    for _, a in items:
        with np.errstate(over="ignore"):  # encode refuses inf
            weighted = a.astype(np.float64).ravel() * float(n)
        words.append(encode(weighted, scale_bits=bits, n_clients=clients))
    total = np.concatenate(words)
    for peer in others:
        stream = mask_stream(pair_seed(private_key, peers[peer], ctx, me=me, peer=peer), total.size)
        if me < peer:
            total += stream
        else:
            total -= stream

    out: dict[str, U64] = {NUM_EXAMPLES: total[0:1].reshape(())}
    offset = 1
    for name, a in items:
        out[name] = total[offset : offset + a.size].reshape(a.shape)
        offset += a.size
    return out


# --------------------------------------------------------------------------- coordinator side


def _flatten(label: str, arrays: Any, spec: Sequence[tuple[str, tuple[int, ...]]]) -> U64:
    if not isinstance(arrays, Mapping):
        raise SecAggError(f"the masked update of {label!r} is not a mapping of arrays")
    names = {name for name, _ in spec}
    if set(arrays) != names:
        missing = sorted(map(str, names - set(arrays)))
        extra = sorted(map(str, set(arrays) - names))
        raise SecAggError(
            f"the masked update of {label!r} has other names than the first "
            f"(missing {missing}, unexpected {extra})"
        )
    parts: list[U64] = []
    for name, shape in spec:
        a = np.asarray(arrays[name])
        if a.dtype != np.uint64 or a.shape != shape:
            raise SecAggError(
                f"the masked update of {label!r}: {name!r} is {a.dtype}{list(a.shape)}, "
                f"expected uint64{list(shape)}"
            )
        parts.append(a.ravel())
    return np.concatenate(parts)


def unmask_sum(
    masked: Mapping[str, Mapping[str, Array]],
    participants: Sequence[str],
    *,
    scale_bits: int = DEFAULT_SCALE_BITS,
) -> tuple[Weights, int]:
    """``(Σₖ nₖ·updateₖ, Σₖ nₖ)`` from the masked updates of exactly ``participants``.

    The sums are float64, in sorted-name order. Raises :class:`SecAggError`, and unmasks
    nothing, when a participant's update is missing (the error names every missing one: retry
    without them, under a new context), when an update comes from a client that is not a
    participant, when names, shapes or dtypes differ, or when the decoded sum is out of range
    (masks that did not cancel: an update masked under another context or participant set).
    """
    bits = _scale_bits(scale_bits)
    if isinstance(participants, str) or not isinstance(participants, Sequence):
        raise SecAggError("participants is a sequence of client labels")
    expected = set(participants)
    if len(expected) != len(participants):
        dupes = sorted({p for p in participants if list(participants).count(p) > 1})
        raise SecAggError(f"participants lists clients more than once: {dupes}")
    if len(expected) < 2:
        raise SecAggError("secure aggregation needs at least 2 participants")
    if not isinstance(masked, Mapping):
        raise SecAggError("masked maps client labels to masked updates")
    missing = sorted(expected - set(masked), key=str)
    extra = sorted(set(masked) - expected, key=str)
    if missing or extra:
        raise SecAggError(
            "the masked updates are not those of the participants: "
            f"missing {missing}, unexpected {extra}; nothing was unmasked"
        )
    labels = sorted(expected, key=str)
    first = masked[labels[0]]
    if not isinstance(first, Mapping) or NUM_EXAMPLES not in first:
        raise SecAggError(f"the masked update of {labels[0]!r} has no {NUM_EXAMPLES!r} entry")
    if not all(isinstance(name, str) for name in first):
        raise SecAggError(f"the masked update of {labels[0]!r} has a non-string array name")
    spec: list[tuple[str, tuple[int, ...]]] = [(NUM_EXAMPLES, ())]
    spec += [(name, np.shape(first[name])) for name in sorted(first) if name != NUM_EXAMPLES]
    if len(spec) < 2:
        raise SecAggError(f"the masked update of {labels[0]!r} has no arrays")
    acc = _flatten(labels[0], first, spec).copy()
    for label in labels[1:]:
        acc += _flatten(label, masked[label], spec)

    signed = acc.view(np.int64)
    if (signed >= _BOUND).any() or (signed <= -_BOUND).any():
        raise SecAggError(
            "the unmasked sum is out of range: the masks did not cancel (an update masked "
            "under another context or for other participants?)"
        )
    total = int(signed[0])
    if total < 0:
        raise SecAggError("the unmasked example count is negative: the masks did not cancel")
    values = decode(acc[1:], scale_bits=bits)
    sums: Weights = {}
    offset = 0
    for name, shape in spec[1:]:
        size = int(np.prod(shape, dtype=np.int64))
        sums[name] = values[offset : offset + size].reshape(shape)
        offset += size
    return sums, total


def secure_mean(
    masked: Mapping[str, Mapping[str, Array]],
    participants: Sequence[str],
    *,
    scale_bits: int = DEFAULT_SCALE_BITS,
) -> tuple[Weights, int]:
    """FedAvg through secure aggregation: ``(Σₖ nₖ·updateₖ / Σₖ nₖ, Σₖ nₖ)``, float64.

    The errors of :func:`unmask_sum`, and :class:`SecAggError` when the total count is 0.
    """
    sums, total = unmask_sum(masked, participants, scale_bits=scale_bits)
    if total <= 0:
        raise SecAggError("the participants report no examples in total; cannot weight them")
    return {name: s / total for name, s in sums.items()}, total


def simulate_round(
    updates: Mapping[str, tuple[Mapping[str, Array], int]],
    secret_of: Callable[[str], bytes],
    context: bytes,
    *,
    scale_bits: int = DEFAULT_SCALE_BITS,
) -> tuple[Weights, int]:
    """One round in one process, every client of ``updates`` taking part: each derives its key
    from ``secret_of(label)`` and masks; the result is :func:`secure_mean`'s. For tests and
    simulations only: a real client never sees another's secret or update."""
    keys = {label: client_private_key(secret_of(label), label) for label in updates}
    publics = {label: public_key_hex(key) for label, key in keys.items()}
    masked = {
        label: mask_update(
            weights,
            n,
            me=label,
            private_key=keys[label],
            peers=publics,
            context=context,
            scale_bits=scale_bits,
        )
        for label, (weights, n) in updates.items()
    }
    return secure_mean(masked, list(updates), scale_bits=scale_bits)
