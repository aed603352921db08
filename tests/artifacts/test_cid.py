"""CIDs agree with the multiformats reference implementation; parsing is strict; canonical JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from typing import Any

import blake3
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from multiformats import CID as MCID
from multiformats import multihash

from artifacts import cid_of
from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import (
    CID,
    CODEC_JSON,
    CODEC_RAW,
    HASH_BLAKE3,
    HASH_SHA2_256,
    as_cid,
    compute_cid,
    new_hasher,
)
from artifacts.errors import ArtifactError, InvalidCIDError

HELLO = "bafkreibm6jg3ux5qumhcn2b3flc3tyu6dmlb4xa7u5bf44yegnrjhc4yeq"
HELLO_DIGEST = hashlib.sha256(b"hello").digest()
BASE32 = "abcdefghijklmnopqrstuvwxyz234567"

codecs = st.sampled_from(["raw", "json"])
hashes = st.sampled_from(["sha2-256", "blake3"])


def reference(data: bytes, codec: str, hash_name: str) -> MCID:
    """The CID multiformats computes for ``data``."""
    return MCID("base32", 1, codec, multihash.digest(data, hash_name, size=32))


def text_of(raw: bytes) -> str:
    """Binary CID -> multibase base32 lower text, with no validation at all."""
    return "b" + base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def binary(*parts: bytes) -> str:
    return text_of(b"".join(parts))


# -- agreement with multiformats -------------------------------------------------------------
def test_hello_vector() -> None:
    assert cid_of(b"hello") == HELLO
    cid = CID.parse(HELLO)
    assert cid.codec == CODEC_RAW
    assert cid.hash_code == HASH_SHA2_256
    assert cid.digest == HELLO_DIGEST
    assert cid.codec_name == "raw"
    assert cid.hash_name == "sha2-256"
    assert str(reference(b"hello", "raw", "sha2-256")) == HELLO


def test_empty_input_vector() -> None:
    # `ipfs add --cid-version=1 --raw-leaves` of an empty file.
    empty = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    assert cid_of(b"") == empty
    assert str(reference(b"", "raw", "sha2-256")) == empty


@given(data=st.binary(max_size=4096), codec=codecs, hash_name=hashes)
@example(data=b"", codec="raw", hash_name="sha2-256")
@example(data=b"hello", codec="json", hash_name="blake3")
def test_compute_cid_matches_multiformats(data: bytes, codec: Any, hash_name: Any) -> None:
    ours = compute_cid(data, codec=codec, hash=hash_name)
    ref = reference(data, codec, hash_name)
    assert str(ours) == str(ref)
    assert ours.to_bytes() == bytes(ref)
    assert ours.multihash == bytes(ref.digest)
    assert ours.digest == bytes(ref.raw_digest)
    assert ours.codec_name == ref.codec.name == codec
    assert ours.hash_name == ref.hashfun.name == hash_name
    assert CID.parse(str(ref)) == ours
    assert MCID.decode(str(ours)) == ref
    if codec == "raw" and hash_name == "sha2-256":
        assert cid_of(data) == str(ref)


@given(data=st.binary(max_size=4096))
def test_digests_match_independent_hash_libraries(data: bytes) -> None:
    assert compute_cid(data).digest == hashlib.sha256(data).digest()
    assert compute_cid(data, hash="blake3").digest == blake3.blake3(data).digest()
    assert compute_cid(data, codec="json", hash="blake3").hash_code == HASH_BLAKE3
    assert compute_cid(data, codec="json").codec == CODEC_JSON


@given(data=st.binary(max_size=1024), chunks=st.integers(min_value=1, max_value=7))
def test_incremental_hasher_equals_one_shot(data: bytes, chunks: int) -> None:
    for name in ("sha2-256", "blake3"):
        hasher = new_hasher(name)  # type: ignore[arg-type]
        step = max(1, len(data) // chunks)
        for start in range(0, len(data), step):
            hasher.update(memoryview(data)[start : start + step])
        assert hasher.digest() == compute_cid(data, hash=name).digest  # type: ignore[arg-type]


@given(digest=st.binary(min_size=32, max_size=32), codec=codecs, hash_name=hashes)
def test_round_trip_text_and_bytes(digest: bytes, codec: Any, hash_name: Any) -> None:
    ref = MCID("base32", 1, codec, multihash.wrap(digest, hash_name))
    cid = CID.parse(str(ref))
    assert cid.digest == digest
    assert str(cid) == str(ref)
    assert CID.parse(str(cid)) == cid
    assert CID.from_bytes(cid.to_bytes()) == cid
    assert cid.to_bytes() == bytes(ref)
    assert CID(cid.codec, cid.hash_code, cid.digest) == cid
    assert as_cid(cid) is cid
    assert as_cid(str(cid)) == cid
    assert hash(cid) == hash(CID.parse(str(cid)))
    assert repr(cid) == f"CID('{cid}')"


def test_cid_matches() -> None:
    cid = CID.parse(HELLO)
    assert cid.matches(b"hello")
    assert cid.matches(memoryview(b"hello"))
    assert not cid.matches(b"hello!")
    assert compute_cid(b"x", hash="blake3").matches(b"x")


# -- strict parsing ---------------------------------------------------------------------------
_D = HELLO_DIGEST
_A = BASE32.index(HELLO[-1])


def case(name: str, value: object, fragment: str) -> Any:
    """One malformed input and a fragment its error message must contain."""
    return pytest.param(value, fragment, id=name)


MALFORMED = [
    case("empty", "", "empty string"),
    case("none", None, "expected a string, got NoneType"),
    case("int", 123, "expected a string, got int"),
    case("bytes", HELLO.encode(), "expected a string, got bytes"),
    case("upper-case", "B" + HELLO[1:].upper(), "upper-case base32"),
    case("upper-B-prefix", "B" + HELLO[1:], "upper-case base32"),
    case("base58-z-prefix", "z" + HELLO[1:], "unsupported multibase prefix 'z'"),
    case(
        "base58btc-cid",
        "zb2rhe5P4gXftAwvA4eXQ5HJwsER2owDyS9sKaQRRVQPn93bA",
        "unsupported multibase prefix 'z'",
    ),
    case("base16-f-prefix", "f01551220" + _D.hex(), "unsupported multibase prefix 'f'"),
    case("cidv0-Qm", "QmRN6wdp1S2A5EtjW9A3M1vKSBuQQGcgvuhoMUoEz4iiT5", "CIDv0 is not supported"),
    case("prefix-only", "b", "empty body"),
    case("char-1", HELLO[:10] + "1" + HELLO[11:], "character '1' is not base32 lower"),
    case("char-8", HELLO[:10] + "8" + HELLO[11:], "character '8' is not base32 lower"),
    case("char-0", HELLO[:10] + "0" + HELLO[11:], "character '0' is not base32 lower"),
    case("char-upper", HELLO[:10] + "A" + HELLO[11:], "character 'A' is not base32 lower"),
    case("char-non-ascii", HELLO[:10] + "é" + HELLO[11:], "character 'é' is not base32 lower"),
    case("trailing-space", HELLO + " ", "character ' ' is not base32 lower"),
    case("trailing-newline", HELLO + "\n", "is not base32 lower"),
    case("padding", HELLO + "=", "character '=' is not base32 lower"),
    case("padding-5", HELLO + "=====", "character '=' is not base32 lower"),
    case("truncated-1-char", HELLO[:-1], "not valid base32"),
    case("too-short", "bafy", "not valid base32"),
    case("truncated-8-chars", HELLO[:-8], "truncated digest (27 of 32 bytes)"),
    case(
        "truncated-digest",
        binary(b"\x01\x55\x12\x20", _D[:-1]),
        "truncated digest (31 of 32 bytes)",
    ),
    case("truncated-multihash", binary(b"\x01\x55\x12"), "truncated varint for digest length"),
    case("truncated-after-version", binary(b"\x01"), "truncated varint for codec"),
    case("trailing-char", HELLO + "a", "not valid base32"),
    case("trailing-2-chars", HELLO + "aa", "trailing bytes after digest (33 of 32 bytes)"),
    case(
        "trailing-bytes",
        binary(b"\x01\x55\x12\x20", _D, b"\x00\x00\x00"),
        "trailing bytes after digest",
    ),
    case("version-0", binary(b"\x00\x55\x12\x20", _D), "CID version 0 is not supported"),
    case("version-2", binary(b"\x02\x55\x12\x20", _D), "CID version 2 is not supported"),
    case("codec-dag-pb", binary(b"\x01\x70\x12\x20", _D), "unsupported codec 0x70"),
    case("codec-dag-cbor", binary(b"\x01\x71\x12\x20", _D), "unsupported codec 0x71"),
    case("hash-sha2-512", binary(b"\x01\x55\x13\x40", _D, _D), "unsupported hash function 0x13"),
    case("hash-identity", binary(b"\x01\x55\x00\x20", _D), "unsupported hash function 0x0"),
    case("digest-length-20", binary(b"\x01\x55\x12\x14", _D[:20]), "digest length 20; expected 32"),
    case(
        "digest-length-33",
        binary(b"\x01\x55\x12\x21", _D, b"\x00"),
        "digest length 33; expected 32",
    ),
    case("blake3-length-16", binary(b"\x01\x55\x1e\x10", _D[:16]), "digest length 16; expected 32"),
    case(
        "non-minimal-version", binary(b"\x81\x00\x55\x12\x20", _D), "non-minimal varint for version"
    ),
    case("non-minimal-codec", binary(b"\x01\xd5\x00\x12\x20", _D), "non-minimal varint for codec"),
    case(
        "non-minimal-hash",
        binary(b"\x01\x55\x92\x00\x20", _D),
        "non-minimal varint for hash function",
    ),
    case("varint-too-long", binary(b"\x01", b"\xff" * 10, b"\x01"), "varint for codec is too long"),
    case(
        "non-canonical-last-char-3",
        HELLO[:-1] + BASE32[_A | 0b11],
        "not the canonical base32 encoding",
    ),
    case(
        "non-canonical-last-char-1",
        HELLO[:-1] + BASE32[_A | 0b01],
        "not the canonical base32 encoding",
    ),
    case("over-long-129", "b" + "a" * 128, "longer than 128 characters"),
    case("over-long-177", HELLO * 3, "longer than 128 characters"),
]


@pytest.mark.parametrize(("value", "fragment"), MALFORMED)
def test_malformed_cid_is_refused(value: object, fragment: str) -> None:
    with pytest.raises(InvalidCIDError) as excinfo:
        CID.parse(value)  # type: ignore[arg-type]
    err = excinfo.value
    assert isinstance(err, ValueError)
    assert isinstance(err, ArtifactError)
    assert fragment in str(err)
    assert err.value == value
    assert fragment in err.reason
    # The same refusal through the convenience function.
    with pytest.raises(InvalidCIDError, match="invalid CID"):
        as_cid(value)  # type: ignore[arg-type]


def test_error_message_names_the_value_and_clips_it() -> None:
    with pytest.raises(InvalidCIDError) as excinfo:
        CID.parse(HELLO[:-1] + "1")
    assert HELLO[:-1] + "1" in str(excinfo.value)
    with pytest.raises(InvalidCIDError) as excinfo:
        CID.parse("b" + "a" * 1000)
    assert len(str(excinfo.value)) < 200


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (b"", "truncated varint for version"),
        (b"\x01", "truncated varint for codec"),
        (b"\x01\x55\x12\x20" + _D + b"x", "trailing bytes after digest"),
        (b"\x01\x55\x12\x20" + _D[:5], "truncated digest"),
        (b"\x12\x20" + _D, "CID version 18 is not supported"),  # a binary CIDv0
    ],
)
def test_malformed_binary_cid_is_refused(raw: bytes, fragment: str) -> None:
    with pytest.raises(InvalidCIDError, match="invalid CID b") as excinfo:
        CID.from_bytes(raw)
    assert fragment in str(excinfo.value)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0x70, HASH_SHA2_256, _D), "unsupported codec 0x70"),
        ((CODEC_RAW, 0x13, _D), "unsupported hash function 0x13"),
        ((CODEC_RAW, HASH_SHA2_256, _D[:31]), "digest must be 32 bytes"),
    ],
)
def test_cid_constructor_validates(args: tuple[int, int, bytes], fragment: str) -> None:
    with pytest.raises(InvalidCIDError) as excinfo:
        CID(*args)
    assert fragment in str(excinfo.value)


def test_unknown_codec_or_hash_name_is_refused() -> None:
    with pytest.raises(InvalidCIDError, match="unknown codec"):
        compute_cid(b"x", codec="dag-pb")  # type: ignore[arg-type]
    with pytest.raises(InvalidCIDError, match="unknown hash function"):
        compute_cid(b"x", hash="md5")  # type: ignore[arg-type]
    with pytest.raises(InvalidCIDError, match="unknown hash function"):
        new_hasher("sha2-512")  # type: ignore[arg-type]


@given(text=st.text(max_size=80))
@example(text=HELLO)
def test_parse_arbitrary_text_is_strict(text: str) -> None:
    """Any text either is refused with InvalidCIDError or is the canonical form of its CID."""
    try:
        cid = CID.parse(text)
    except InvalidCIDError:
        return
    assert str(cid) == text


@given(body=st.text(alphabet=BASE32, min_size=50, max_size=70))
def test_parse_arbitrary_base32_is_strict(body: str) -> None:
    try:
        cid = CID.parse("b" + body)
    except InvalidCIDError:
        return
    assert str(cid) == "b" + body
    assert MCID.decode("b" + body).digest == cid.multihash


@given(position=st.integers(min_value=1, max_value=len(HELLO) - 1), char=st.sampled_from(BASE32))
def test_single_character_edits_never_parse_to_a_different_text(position: int, char: str) -> None:
    edited = HELLO[:position] + char + HELLO[position + 1 :]
    try:
        cid = CID.parse(edited)
    except InvalidCIDError:
        return
    assert str(cid) == edited
    assert (cid == CID.parse(HELLO)) == (edited == HELLO)


@given(raw=st.binary(max_size=48))
@example(raw=b"\x01\x55\x12\x20" + _D)
def test_from_arbitrary_bytes_is_strict(raw: bytes) -> None:
    try:
        cid = CID.from_bytes(raw)
    except InvalidCIDError:
        return
    assert cid.to_bytes() == raw


# -- canonical JSON ---------------------------------------------------------------------------
def test_canonical_json_bytes() -> None:
    value = {"b": 1, "a": [3, {"z": None, "y": True}], "é": "ü €", "A": 1.5}
    out = canonical_json(value)
    assert out == '{"A":1.5,"a":[3,{"y":true,"z":null}],"b":1,"é":"ü €"}'.encode()
    assert b" " not in out.replace("ü €".encode(), b"")
    assert "é".encode() in out  # non-ASCII kept as UTF-8, not \\u escapes
    assert b"\\u" not in out
    out.decode("utf-8")


def test_canonical_json_is_independent_of_insertion_order() -> None:
    one = {"x": 1, "y": {"b": 2, "a": 1}}
    two = {"y": {"a": 1, "b": 2}, "x": 1}
    assert canonical_json(one) == canonical_json(two)
    assert compute_cid(canonical_json(one), codec="json") == compute_cid(
        canonical_json(two), codec="json"
    )


def test_canonical_json_sorts_by_code_point() -> None:
    assert canonical_json({"b": 0, "B": 0, "ä": 0, "a": 0, "_": 0}) == (
        '{"B":0,"_":0,"a":0,"b":0,"ä":0}'.encode()
    )


@pytest.mark.parametrize(
    "value", [math.nan, math.inf, -math.inf, [1.0, math.nan], {"loss": math.inf}]
)
def test_canonical_json_refuses_non_finite(value: object) -> None:
    with pytest.raises(ValueError, match="not JSON compliant"):
        canonical_json(value)


def test_canonical_json_refuses_unknown_types() -> None:
    with pytest.raises(TypeError):
        canonical_json({"s": {1, 2}})
    with pytest.raises(TypeError):
        canonical_json(b"bytes")


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@given(value=json_values)
def test_canonical_json_round_trips(value: Any) -> None:
    out = canonical_json(value)
    assert loads_strict(out) == value
    assert canonical_json(loads_strict(out)) == out
    # Python's own encoder, asked for the same rules, agrees byte for byte.
    assert json.loads(out) == value


# -- strict loading ---------------------------------------------------------------------------
def test_loads_strict_accepts_plain_json() -> None:
    assert loads_strict(b'{"a":[1,2.5,null,true],"b":{"c":"\xc3\xa9"}}') == {
        "a": [1, 2.5, None, True],
        "b": {"c": "é"},
    }


@pytest.mark.parametrize(
    "data",
    [b'{"a":1,"a":2}', b'{"x":{"k":1,"k":1}}', b'[{"a":1},{"b":1,"b":2}]'],
    ids=["top", "nested", "in-list"],
)
def test_loads_strict_refuses_duplicate_keys(data: bytes) -> None:
    with pytest.raises(ValueError, match="duplicate JSON key"):
        loads_strict(data)


@pytest.mark.parametrize("data", [b"NaN", b"[Infinity]", b'{"a":-Infinity}'])
def test_loads_strict_refuses_nan_and_infinity(data: bytes) -> None:
    with pytest.raises(ValueError, match="non-standard JSON constant"):
        loads_strict(data)


@pytest.mark.parametrize("data", [b"1e400", b'{"a":-1e999}'])
def test_loads_strict_refuses_overflowing_numbers(data: bytes) -> None:
    with pytest.raises(ValueError, match="finite"):
        loads_strict(data)


def test_loads_strict_refuses_bad_utf8() -> None:
    with pytest.raises(ValueError, match="utf-8"):
        loads_strict(b'"\xff"')
