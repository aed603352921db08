"""The registry against SQLite and PostgreSQL: queries, history, mirrors, and every attack the
issue lists. Each attack asserts the error class AND that the trusted state did not change."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import compute_cid
from registry.entries import MAX_DESCRIPTION, MAX_TAGS, Record, Signed, head_message, make_body
from registry.errors import (
    InvalidEntryError,
    LogIntegrityError,
    MirrorError,
    NamespaceError,
    NotFoundError,
    SignatureError,
    VersionConflictError,
)
from registry.identity import Identity
from registry.registry import Registry, read_export
from registry.sql import metadata

# -- helpers ---------------------------------------------------------------------------------------


def artifact_cid(label: str) -> str:
    """A well-formed artifact CID (json codec) for ``label``."""
    return str(compute_cid(canonical_json({"label": label}), codec="json"))


def publish_body(identity: Identity, asset: str, version: str, **fields: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "cid": artifact_cid(f"{asset}@{version}"),
        "kind": "dataset",
        "license": "CC-BY-4.0",
        "price": {"amount": "0", "currency": "USD"},
        "description": "",
        "tags": [],
        "size": 1,
    }
    values.update(fields)
    return make_body("publish", identity, asset=asset, version=version, **values)


def publish(reg: Registry, who: Identity, asset: str, version: str, **fields: Any) -> int:
    result = reg.append(Signed.sign(publish_body(who, asset, version, **fields), who))
    assert not result.existing
    return result.seq


def entry(kind: str, who: Identity, **fields: Any) -> Signed:
    return Signed.sign(make_body(kind, who, **fields), who)


def raw_signed(body: dict[str, Any], who: Identity) -> dict[str, Any]:
    """A correctly signed entry whose body skipped the client-side checks (as a wire dict)."""
    return {"body": body, "sig": who.sign(canonical_json(body))}


def state(reg: Registry) -> dict[str, Any]:
    """Everything the registry trusts: the signed head, the log, and every derived table."""
    out: dict[str, Any] = {"head": reg.head().as_json()}
    out["log"] = [(r.seq, r.hash) for r in reg.log()]
    with reg.engine.connect() as conn:
        for table in metadata.sorted_tables:
            rows = conn.execute(sa.select(table)).all()
            out[table.name] = sorted(tuple(map(repr, r)) for r in rows)
    return out


@pytest.fixture
def unchanged(reg: Registry) -> Iterator[Callable[[], None]]:
    """Call it after setting up; at teardown the registry's state must be what it was then."""
    saved: list[dict[str, Any]] = []

    def mark() -> None:
        saved.append(state(reg))

    yield mark
    assert saved, "the test never marked its trusted state"
    assert state(reg) == saved[-1]


def execute(reg: Registry, sql: str, **params: Any) -> None:
    """Change the database behind the registry's back."""
    with reg.engine.begin() as conn:
        conn.execute(sa.text(sql), params)


def stored_record(reg: Registry, seq: int) -> dict[str, Any]:
    with reg.engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT record FROM entries WHERE seq = :s"), {"s": seq})
        return loads_strict(raw.scalar_one().encode())  # type: ignore[no-any-return]


@pytest.fixture
def three(reg: Registry, alice: Identity) -> Registry:
    """alice/digits 1.0.0 (seq 1), 1.1.0 (seq 2), alice/faces 0.1.0 (seq 3)."""
    publish(reg, alice, "alice/digits", "1.0.0", description="handwritten digits")
    publish(reg, alice, "alice/digits", "1.1.0", description="handwritten digits, more")
    publish(reg, alice, "alice/faces", "0.1.0")
    return reg


# -- publish and resolve ----------------------------------------------------------------------


def test_publish_then_resolve_exact(reg: Registry, alice: Identity) -> None:
    body = publish_body(alice, "alice/digits", "1.0.0", license="MIT", tags=["vision"])
    result = reg.append(Signed.sign(body, alice))
    assert (result.seq, result.existing) == (1, False)
    info = reg.resolve("alice/digits@1.0.0")
    assert (info.name, info.version, info.cid) == ("alice/digits", "1.0.0", body["cid"])
    assert (info.kind, info.license, info.tags, info.seq) == ("dataset", "MIT", ["vision"], 1)
    assert info.publisher == alice.id
    assert not info.yanked
    assert reg.resolve("Alice/Digits@1.0.0") == info  # references are normalised too
    head = reg.head()
    assert (head.seq, head.hash) == (1, result.hash)
    head.verify()
    assert reg.verify().seq == 1


def test_unknown_names_and_versions_are_not_found(three: Registry) -> None:
    for ref in ["alice/digits@9.9.9", "alice/nothing", "nobody/digits@1.0.0", "alice/digits@^3"]:
        with pytest.raises(NotFoundError):
            three.resolve(ref)


def test_latest_is_the_highest_non_yanked_release(reg: Registry, alice: Identity) -> None:
    for v in ["1.2.0", "1.10.0", "1.9.0", "2.0.0-rc.1", "0.9.0"]:
        publish(reg, alice, "alice/digits", v)
    assert reg.resolve("alice/digits").version == "1.10.0"
    assert reg.resolve("alice/digits@latest").version == "1.10.0"
    assert reg.resolve("alice/digits@latest", prerelease=True).version == "2.0.0-rc.1"
    assert reg.resolve("alice/digits@2.0.0-rc.1").version == "2.0.0-rc.1"  # exact always
    assert reg.resolve("alice/digits@^1.2").version == "1.10.0"
    assert reg.resolve("alice/digits@~1.9").version == "1.9.0"
    assert reg.resolve("alice/digits@<1").version == "0.9.0"
    assert reg.resolve("alice/digits@>=1.2, <1.10").version == "1.9.0"
    assert reg.resolve("alice/digits@>=2.0.0-rc.0", prerelease=True).version == "2.0.0-rc.1"
    with pytest.raises(NotFoundError):
        reg.resolve("alice/digits@>=2.0.0-rc.0")  # pre-releases only on request
    with pytest.raises(NotFoundError):
        reg.resolve("alice/digits@^3")


def test_a_partial_version_resolves_like_its_range(reg: Registry, alice: Identity) -> None:
    """``names.matches`` reads ``1.2`` as any 1.2.x; resolve must agree."""
    for v in ["1.2.0", "1.2.7", "1.3.0"]:
        publish(reg, alice, "alice/digits", v)
    assert reg.resolve("alice/digits@1.2").version == "1.2.7"
    assert reg.resolve("alice/digits@1").version == "1.3.0"
    with pytest.raises(NotFoundError):
        reg.resolve("alice/digits@1.4")


def test_only_prereleases_need_the_flag(reg: Registry, alice: Identity) -> None:
    publish(reg, alice, "alice/beta", "0.1.0-alpha.1")
    with pytest.raises(NotFoundError):
        reg.resolve("alice/beta")
    assert reg.resolve("alice/beta", prerelease=True).version == "0.1.0-alpha.1"


def test_versions_are_listed_highest_first(reg: Registry, alice: Identity) -> None:
    for v in ["1.2.0", "1.10.0", "1.9.0", "1.10.0-rc.1", "0.1.0", "1.10.0-beta"]:
        publish(reg, alice, "alice/digits", v)
    order = [i.version for i in reg.versions("alice/digits")]
    assert order == ["1.10.0", "1.10.0-rc.1", "1.10.0-beta", "1.9.0", "1.2.0", "0.1.0"]
    with pytest.raises(NotFoundError):
        reg.versions("alice/none")


def test_at_seq_answers_as_of_that_registry_version(reg: Registry, alice: Identity) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")  # seq 1
    publish(reg, alice, "alice/digits", "1.1.0")  # seq 2
    reg.append(entry("yank", alice, asset="alice/digits", version="1.1.0", reason="bad"))  # 3
    publish(reg, alice, "alice/digits", "2.0.0")  # seq 4
    assert reg.resolve("alice/digits", at=1).version == "1.0.0"
    assert reg.resolve("alice/digits", at=2).version == "1.1.0"  # the yank came later
    assert not reg.resolve("alice/digits@1.1.0", at=2).yanked
    assert reg.resolve("alice/digits", at=3).version == "1.0.0"
    assert reg.resolve("alice/digits@1.1.0", at=3).yanked
    assert reg.resolve("alice/digits", at=4).version == "2.0.0"
    assert reg.resolve("alice/digits").version == "2.0.0"
    assert [v.version for v in reg.versions("alice/digits", at=2)] == ["1.1.0", "1.0.0"]
    assert [v.yanked for v in reg.versions("alice/digits", at=2)] == [False, False]
    with pytest.raises(NotFoundError):
        reg.resolve("alice/digits@2.0.0", at=3)
    with pytest.raises(NotFoundError):
        reg.versions("alice/digits", at=0)


def test_log_since_and_limit(three: Registry) -> None:
    records = three.log()
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[0].prev is None
    assert [r.prev for r in records[1:]] == [r.hash for r in records[:-1]]
    assert [r.seq for r in three.log(1)] == [2, 3]
    assert [r.seq for r in three.log(1, limit=1)] == [2]
    assert three.log(3) == []
    assert [(r, h) for r, h in three.iter_log(batch=2)] == [(r, r.hash) for r in records]


# -- search ---------------------------------------------------------------------------------


@pytest.fixture
def catalogue(reg: Registry, alice: Identity, bob: Identity) -> Registry:
    publish(reg, alice, "alice/digits", "1.0.0", description="Handwritten digits",
            tags=["vision", "mnist"], license="CC-BY-4.0")  # fmt: skip
    publish(reg, alice, "alice/digits", "1.1.0", description="Handwritten digits v2",
            tags=["vision", "mnist"], license="CC-BY-4.0")  # fmt: skip
    publish(reg, alice, "alice/digits", "2.0.0-rc.1", description="next")
    publish(reg, alice, "alice/resnet", "1.0.0", kind="model", license="MIT",
            description="image classifier", tags=["vision"])  # fmt: skip
    publish(reg, bob, "bob/speech", "0.3.0", kind="model", license="Apache-2.0",
            description="speech to text")  # fmt: skip
    publish(reg, bob, "bob/weird", "1.0.0", license="MIT",
            description="100% pure; it's a back\\slash, under_score and ;-- comment")  # fmt: skip
    publish(reg, bob, "bob/gone", "1.0.0", description="digits, withdrawn")
    reg.append(entry("yank", bob, asset="bob/gone", version="1.0.0", reason="oops"))
    return reg


def names(found: list[Any]) -> list[str]:
    return [f"{i.name}@{i.version}" for i in found]


def test_search_text_over_name_description_and_tags(catalogue: Registry) -> None:
    assert names(catalogue.search("digits")) == ["alice/digits@1.1.0"]  # latest, not rc, not yanked
    assert names(catalogue.search("DIGITS")) == ["alice/digits@1.1.0"]
    assert names(catalogue.search("classifier")) == ["alice/resnet@1.0.0"]  # description
    assert names(catalogue.search("mnist")) == ["alice/digits@1.1.0"]  # tag
    assert names(catalogue.search("vision")) == ["alice/digits@1.1.0", "alice/resnet@1.0.0"]
    assert names(catalogue.search("bob/")) == ["bob/speech@0.3.0", "bob/weird@1.0.0"]
    assert catalogue.search("no such thing") == []
    assert len(catalogue.search("")) == 4


def test_search_filters_order_and_pages(catalogue: Registry) -> None:
    assert names(catalogue.search(kind="model")) == ["alice/resnet@1.0.0", "bob/speech@0.3.0"]
    assert names(catalogue.search(license="MIT")) == ["alice/resnet@1.0.0", "bob/weird@1.0.0"]
    assert names(catalogue.search(kind="model", license="MIT")) == ["alice/resnet@1.0.0"]
    assert catalogue.search(kind="nothing") == []
    everything = names(catalogue.search())
    assert everything == sorted(everything)
    assert everything == names(catalogue.search())  # stable
    pages = [names(catalogue.search(limit=1, offset=i)) for i in range(5)]
    assert pages == [[n] for n in everything] + [[]]
    assert names(catalogue.search(limit=2, offset=1)) == everything[1:3]
    for bad in [{"limit": 0}, {"limit": 1001}, {"offset": -1}]:
        with pytest.raises(InvalidEntryError):
            catalogue.search(**bad)
    with pytest.raises(InvalidEntryError):
        catalogue.search("x" * 257)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("%", ["bob/weird@1.0.0"]),
        ("100%", ["bob/weird@1.0.0"]),
        ("_", ["bob/weird@1.0.0"]),
        ("r_s", ["bob/weird@1.0.0"]),
        ("'", ["bob/weird@1.0.0"]),
        ("it's", ["bob/weird@1.0.0"]),
        (";--", ["bob/weird@1.0.0"]),
        ("\\", ["bob/weird@1.0.0"]),
        ("k\\s", ["bob/weird@1.0.0"]),
        ("%%", []),
        ("d_g", []),
        ("_%", []),
        ("\\%", []),
        ("'; DROP TABLE versions; --", []),
        ("' OR '1'='1", []),
        ('"', []),
        ("[", []),
        ("]", []),
        ('", "', []),
        ("*", []),
    ],
)
def test_search_treats_sql_metacharacters_literally(
    catalogue: Registry, text: str, expected: list[str], unchanged: Callable[[], None]
) -> None:
    unchanged()
    assert names(catalogue.search(text)) == expected
    assert catalogue.resolve("alice/digits").version == "1.1.0"  # and nothing was dropped


@pytest.mark.parametrize("text", ["\x00", "a\x00b", "\x00%"])
def test_search_with_a_nul_byte_matches_nothing_or_is_refused_the_same_on_every_backend(
    catalogue: Registry, text: str, unchanged: Callable[[], None]
) -> None:
    unchanged()
    with contextlib.suppress(InvalidEntryError):
        assert catalogue.search(text) == []
    assert catalogue.resolve("alice/digits").version == "1.1.0"  # and nothing was dropped


# -- replay and idempotence -------------------------------------------------------------------


def test_identical_replay_is_idempotent(
    reg: Registry, alice: Identity, unchanged: Callable[[], None]
) -> None:
    signed = Signed.sign(publish_body(alice, "alice/digits", "1.0.0"), alice)
    first = reg.append(signed)
    publish(reg, alice, "alice/digits", "1.1.0")
    unchanged()
    again = reg.append(signed.as_json())
    assert (again.seq, again.hash, again.existing) == (first.seq, first.hash, True)


def test_same_version_same_cid_with_a_new_nonce_is_a_no_op(
    reg: Registry, alice: Identity, unchanged: Callable[[], None]
) -> None:
    seq = publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    again = reg.append(Signed.sign(publish_body(alice, "alice/digits", "1.0.0"), alice))
    assert (again.seq, again.existing) == (seq, True)


def test_a_new_entry_reusing_a_nonce_is_refused(
    reg: Registry, alice: Identity, unchanged: Callable[[], None]
) -> None:
    first = publish_body(alice, "alice/digits", "1.0.0")
    reg.append(Signed.sign(first, alice))
    unchanged()
    second = publish_body(alice, "alice/digits", "1.1.0")
    second["nonce"] = first["nonce"]
    with pytest.raises(InvalidEntryError, match="nonce"):
        reg.append(Signed.sign(second, alice))
    yank = make_body("yank", alice, asset="alice/digits", version="1.0.0", reason="")
    yank["nonce"] = first["nonce"]
    with pytest.raises(InvalidEntryError, match="nonce"):
        reg.append(Signed.sign(yank, alice))
    with pytest.raises(NotFoundError):
        reg.resolve("alice/digits@1.1.0")


# -- signatures -------------------------------------------------------------------------------


def test_unsigned_entries_are_refused(
    reg: Registry, alice: Identity, unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    body = publish_body(alice, "alice/digits", "1.1.0")
    sigs: list[Any] = [None, "", "a" * 103, "not base32!", 12]
    for wire in [body, {"body": body}, *({"body": body, "sig": sig} for sig in sigs)]:
        with pytest.raises(SignatureError):
            reg.append(wire)


def test_signature_by_another_key_than_the_body_names_is_refused(
    reg: Registry, alice: Identity, bob: Identity, unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    body = publish_body(alice, "alice/digits", "1.1.0")  # says alice, signed by bob
    with pytest.raises(SignatureError):
        reg.append({"body": body, "sig": bob.sign(canonical_json(body))})
    with pytest.raises(SignatureError):
        reg.append(Signed(body, bob.sign(canonical_json(body))))
    with pytest.raises(SignatureError):
        Signed.sign(body, bob)


def test_signature_over_different_bytes_is_refused(
    reg: Registry, alice: Identity, unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    signed = Signed.sign(publish_body(alice, "alice/digits", "1.1.0"), alice)
    for change in [{"version": "9.9.9"}, {"cid": artifact_cid("evil")},
                   {"description": "changed"}, {"price": {"amount": "0", "currency": "EUR"}},
                   {"timestamp": "2000-01-01T00:00:00Z"}]:  # fmt: skip
        forged = {**signed.body, **change}
        with pytest.raises(SignatureError):
            reg.append({"body": forged, "sig": signed.sig})
        with pytest.raises(SignatureError):
            reg.append(Signed(forged, signed.sig))


# -- namespaces, grants, transfers ------------------------------------------------------------


def test_a_valid_key_cannot_write_into_another_namespace(
    reg: Registry, alice: Identity, bob: Identity, unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    attempts = [
        Signed.sign(publish_body(bob, "alice/other", "1.0.0"), bob),
        Signed.sign(publish_body(bob, "alice/digits", "1.0.1"), bob),
        entry("yank", bob, asset="alice/digits", version="1.0.0", reason="mine now"),
        entry("grant", bob, namespace="alice", grantee=bob.public_key),
        entry("transfer", bob, namespace="alice", to=bob.public_key),
    ]
    for attempt in attempts:
        with pytest.raises(NamespaceError):
            reg.append(attempt)
    assert not reg.resolve("alice/digits@1.0.0").yanked


def test_grant_lets_another_key_publish_and_transfer_moves_ownership(
    reg: Registry, alice: Identity, bob: Identity
) -> None:
    carol = Identity.generate()
    publish(reg, alice, "alice/digits", "1.0.0")
    reg.append(entry("grant", alice, namespace="alice", grantee=bob.public_key))
    publish(reg, bob, "alice/digits", "1.1.0")
    assert reg.resolve("alice/digits").publisher == bob.id
    # a grantee may not grant or transfer
    before = state(reg)
    for attempt in [entry("grant", bob, namespace="alice", grantee=carol.public_key),
                    entry("transfer", bob, namespace="alice", to=bob.public_key)]:  # fmt: skip
        with pytest.raises(NamespaceError):
            reg.append(attempt)
    assert state(reg) == before

    reg.append(entry("transfer", alice, namespace="alice", to=carol.public_key))
    publish(reg, carol, "alice/digits", "2.0.0")
    before = state(reg)
    for who in (alice, bob):  # the old owner and the old grantee are refused afterwards
        with pytest.raises(NamespaceError):
            reg.append(Signed.sign(publish_body(who, "alice/digits", "3.0.0"), who))
        with pytest.raises(NamespaceError):
            reg.append(entry("yank", who, asset="alice/digits", version="2.0.0", reason=""))
    assert state(reg) == before
    assert reg.verify().seq == 5


def test_version_overwrite_with_another_cid_is_a_conflict(
    reg: Registry, alice: Identity, unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    reg.append(entry("yank", alice, asset="alice/digits", version="1.0.0", reason="bad"))
    unchanged()
    cid = reg.resolve("alice/digits@1.0.0").cid
    other = Signed.sign(
        publish_body(alice, "alice/digits", "1.0.0", cid=artifact_cid("other")), alice
    )
    with pytest.raises(VersionConflictError) as info:
        reg.append(other)
    assert isinstance(info.value, FileExistsError)
    assert reg.resolve("alice/digits@1.0.0").cid == cid


def test_yank_skips_latest_but_exact_still_resolves(reg: Registry, alice: Identity) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    publish(reg, alice, "alice/digits", "1.1.0")
    yank = entry("yank", alice, asset="alice/digits", version="1.1.0", reason="broken")
    seq = reg.append(yank).seq
    assert reg.resolve("alice/digits").version == "1.0.0"
    assert reg.resolve("alice/digits@^1").version == "1.0.0"
    exact = reg.resolve("alice/digits@1.1.0")
    assert exact.yanked
    assert exact.cid == artifact_cid("alice/digits@1.1.0")
    assert [v.yanked for v in reg.versions("alice/digits")] == [True, False]
    # yanking again is idempotent; yanking what does not exist is refused
    again = reg.append(entry("yank", alice, asset="alice/digits", version="1.1.0", reason="x"))
    assert again.existing
    assert reg.head().seq == seq
    before = state(reg)
    with pytest.raises(NotFoundError):
        reg.append(entry("yank", alice, asset="alice/digits", version="7.0.0", reason=""))
    assert state(reg) == before
    assert reg.verify().seq == seq


# -- bounded fields ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"description": "x" * (MAX_DESCRIPTION + 1)},
        {"description": 12},
        {"tags": [f"t{i}" for i in range(MAX_TAGS + 1)]},
        {"tags": ["Upper"]},
        {"tags": ["a" * 33]},
        {"tags": ["with space"]},
        {"tags": "vision"},
        {"license": "MIT; DROP TABLE versions"},
        {"license": "not a licence!"},
        {"license": ""},
        {"license": "x" * 600},
        {"price": {"amount": "-1", "currency": "USD"}},
        {"price": {"amount": "1e5", "currency": "USD"}},
        {"price": {"amount": "NaN", "currency": "USD"}},
        {"price": {"amount": 5, "currency": "USD"}},
        {"price": {"amount": "5", "currency": "usd"}},
        {"price": {"amount": "5", "currency": "US"}},
        {"price": {"amount": "5"}},
        {"price": {"amount": "5", "currency": "USD", "to": "me"}},
        {"price": "5 USD"},
        {"description": "nul\x00byte"},
        {"size": -1},
        {"size": True},
        {"kind": "Bad Kind"},
        {"cid": "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"},  # raw, not json
        {"cid": "../../etc/passwd"},
        {"receipt": "not-a-cid"},
        {"asset": "Alice/Digits"},  # not in normal form
        {"asset": "alice/../bob"},
        {"version": "1.0"},
        {"extra": "field"},
        {"timestamp": "yesterday"},
    ],
)
def test_out_of_bounds_fields_are_refused_even_when_signed(
    reg: Registry, alice: Identity, change: dict[str, Any], unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    body = {**publish_body(alice, "alice/digits", "1.1.0"), **change}
    with pytest.raises(InvalidEntryError):
        reg.append(raw_signed(body, alice))  # as the service receives it
    with pytest.raises(InvalidEntryError):
        Signed.sign(body, alice)  # and the client refuses to sign it


@pytest.mark.parametrize(
    "change", [{"description": "x" * (MAX_DESCRIPTION + 1)}, {"tags": ["t"] * (MAX_TAGS + 1)}]
)
def test_append_checks_bounds_of_a_signed_object_too(
    reg: Registry, alice: Identity, change: dict[str, Any], unchanged: Callable[[], None]
) -> None:
    """A ``Signed`` built directly (not through ``Signed.sign``) gets the same checks: else
    the registry would store entries its own ``verify`` rejects."""
    publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    body = {**publish_body(alice, "alice/digits", "1.1.0"), **change}
    with pytest.raises(InvalidEntryError):
        reg.append(Signed(body, alice.sign(canonical_json(body))))


def test_an_entry_at_the_limits_is_accepted(reg: Registry, alice: Identity) -> None:
    tags = [f"tag{i}" for i in range(MAX_TAGS)]
    publish(reg, alice, "alice/digits", "1.0.0", description="d" * MAX_DESCRIPTION, tags=tags,
            price={"amount": "12.50", "currency": "EUR"}, license="MIT OR Apache-2.0")  # fmt: skip
    info = reg.resolve("alice/digits@1.0.0")
    assert len(info.description) == MAX_DESCRIPTION
    assert info.tags == tags
    assert info.price == {"amount": "12.50", "currency": "EUR"}
    assert reg.verify().seq == 1


# -- confusable names -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["my_data", "my.data", "mydata", "m-y-data", "my--data"])
def test_asset_names_confusable_by_separators_are_refused(
    reg: Registry, alice: Identity, variant: str, unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/my-data", "1.0.0")
    unchanged()
    with pytest.raises(InvalidEntryError, match="confusable"):
        reg.append(Signed.sign(publish_body(alice, f"alice/{variant}", "1.0.0"), alice))
    with pytest.raises(InvalidEntryError):  # a body must carry the normal form
        reg.append(raw_signed(publish_body(alice, "alice/my-data", "1.0.1") | {
            "asset": "alice/My-Data"}, alice))  # fmt: skip


@pytest.mark.parametrize("variant", ["ali_ce", "al.ice", "a-lice", "alice-"])
def test_namespaces_confusable_by_separators_are_refused(
    reg: Registry, alice: Identity, bob: Identity, variant: str, unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    with pytest.raises(InvalidEntryError, match="confusable"):
        reg.append(Signed.sign(publish_body(bob, f"{variant}/digits", "1.0.0"), bob))
    with pytest.raises(InvalidEntryError, match="confusable"):
        reg.append(entry("grant", bob, namespace=variant, grantee=bob.public_key))


@pytest.mark.parametrize("asset", ["\u0430lice/digits", "alice/d\u0456gits", "ALICE/digits"])
def test_homoglyph_and_case_variants_never_reach_the_log(
    reg: Registry, alice: Identity, bob: Identity, asset: str, unchanged: Callable[[], None]
) -> None:
    publish(reg, alice, "alice/digits", "1.0.0")
    unchanged()
    with pytest.raises(InvalidEntryError):
        Signed.sign(publish_body(bob, asset, "2.0.0"), bob)
    body = publish_body(bob, "bob/x", "2.0.0") | {"asset": asset}
    with pytest.raises(InvalidEntryError):
        reg.append(raw_signed(body, bob))


# -- tampering with the database ----------------------------------------------------------------


def test_verify_passes_on_an_intact_log(three: Registry) -> None:
    head = three.verify()
    assert head == three.head()
    assert head.seq == 3
    assert three.verify(trusted_key=three.identity.public_key).seq == 3  # type: ignore[union-attr]


@pytest.mark.parametrize("seq", [1, 2, 3])
def test_an_entry_edited_behind_the_registrys_back_is_named(three: Registry, seq: int) -> None:
    record = stored_record(three, seq)
    record["entry"]["body"]["description"] = "edited"
    execute(three, "UPDATE entries SET record = :r WHERE seq = :s",
            r=canonical_json(record).decode(), s=seq)  # fmt: skip
    with pytest.raises(LogIntegrityError) as info:
        three.verify()
    assert info.value.seq == seq
    assert f"seq {seq}" in str(info.value)


def test_an_edit_with_a_matching_stored_hash_is_still_caught(three: Registry) -> None:
    record = stored_record(three, 2)
    record["entry"]["body"]["cid"] = artifact_cid("evil")
    new = Record.from_json(record)
    execute(three, "UPDATE entries SET record = :r, hash = :h WHERE seq = 2",
            r=canonical_json(record).decode(), h=new.hash)  # fmt: skip
    with pytest.raises(LogIntegrityError) as info:
        three.verify()
    assert info.value.seq == 2


def test_a_derived_table_edited_behind_the_registrys_back_is_caught(three: Registry) -> None:
    execute(three, "UPDATE versions SET cid = :c WHERE version = '1.1.0'", c=artifact_cid("evil"))
    with pytest.raises(LogIntegrityError) as info:
        three.verify()
    assert info.value.seq == 2


def test_a_deleted_entry_is_named(three: Registry) -> None:
    execute(three, "DELETE FROM entries WHERE seq = 2")
    with pytest.raises(LogIntegrityError) as info:
        three.verify()
    assert info.value.seq == 3
    assert "seq 2" in str(info.value)


def test_a_deleted_last_entry_disagrees_with_the_head(three: Registry) -> None:
    execute(three, "DELETE FROM entries WHERE seq = 3")
    with pytest.raises(LogIntegrityError, match="head"):
        three.verify()


def test_a_reordered_pair_is_named(three: Registry) -> None:
    execute(three, "UPDATE entries SET seq = 1000 WHERE seq = 2")
    execute(three, "UPDATE entries SET seq = 2 WHERE seq = 3")
    execute(three, "UPDATE entries SET seq = 3 WHERE seq = 1000")
    with pytest.raises(LogIntegrityError) as info:
        three.verify()
    assert info.value.seq == 2


def test_a_reordered_pair_with_renumbered_records_is_named(three: Registry) -> None:
    r2, r3 = stored_record(three, 2), stored_record(three, 3)
    r2["seq"], r3["seq"] = 3, 2
    for rec in (r2, r3):
        new, seq = canonical_json(rec).decode(), rec["seq"]
        sql = "UPDATE entries SET record = :r, hash = :h WHERE seq = :s"
        execute(three, sql, r=new, h=Record.from_json(rec).hash, s=seq)
    with pytest.raises(LogIntegrityError) as info:
        three.verify()
    assert info.value.seq == 2


def _set_head(reg: Registry, head: dict[str, Any]) -> None:
    execute(reg, "UPDATE meta SET v = :v WHERE k = 'head'", v=canonical_json(head).decode())


def test_a_forged_head_fails_verify(three: Registry) -> None:
    head = three.head().as_json()
    changes: list[dict[str, Any]] = [{"seq": 2}, {"hash": "0" * 64}, {"sig": head["sig"][::-1]}]
    for forged in ({**head, **change} for change in changes):
        _set_head(three, forged)
        with pytest.raises(LogIntegrityError):
            three.verify()
    _set_head(three, head)
    assert three.verify().seq == 3


def _rollback_re_signed(three: Registry) -> None:
    """Drop the last entry and sign a matching head with an attacker's key."""
    last = three.log()[-2]
    execute(three, "DELETE FROM entries WHERE seq = 3")
    execute(three, "DELETE FROM versions WHERE asset = 'alice/faces'")
    execute(three, "DELETE FROM assets WHERE asset = 'alice/faces'")
    execute(three, "DELETE FROM nonces WHERE seq = 3")
    mallory = Identity.generate()
    forged = {"seq": 2, "hash": last.hash, "registry_key": mallory.public_key,
              "sig": mallory.sign(head_message(2, last.hash))}  # fmt: skip
    _set_head(three, forged)


def test_a_rollback_re_signed_by_another_key_fails_a_pinned_verify(three: Registry) -> None:
    _rollback_re_signed(three)
    with pytest.raises(LogIntegrityError, match="registry key"):
        three.verify(trusted_key=three.identity.public_key)  # type: ignore[union-attr]


def test_a_rollback_re_signed_by_another_key_fails_verify(three: Registry) -> None:
    """The registry holds its own key (and meta records it): ``verify()`` without an explicit
    pin must still refuse a head signed by another key (``cidflow registry verify`` has no pin)."""
    _rollback_re_signed(three)
    with pytest.raises(LogIntegrityError, match="registry key"):
        three.verify()


def test_a_registry_refuses_a_database_of_another_registry_key(
    three: Registry, registry_url: str
) -> None:
    with pytest.raises(Exception, match="another registry key"):
        Registry(registry_url, Identity.generate())
    reader = Registry(registry_url, None)  # read-only: queries and verify still work
    try:
        assert reader.verify().seq == 3
        with pytest.raises(Exception, match="read-only"):
            publish(reader, Identity.generate(), "carol/x", "1.0.0")
    finally:
        reader.close()
    assert three.verify().seq == 3


# -- mirrors ---------------------------------------------------------------------------------


@pytest.fixture
def mirror(new_registry_url: Callable[[], str]) -> Iterator[Registry]:
    registry = Registry(new_registry_url(), Identity.generate())
    yield registry
    registry.close()


def _export(reg: Registry, path: Path) -> tuple[Any, list[Record]]:
    assert reg.export(str(path)) == reg.head().seq
    return read_export(str(path))


def test_export_then_sync_into_a_mirror(
    three: Registry, mirror: Registry, alice: Identity, tmp_path: Path
) -> None:
    head, records = _export(three, tmp_path / "log.jsonl")
    assert mirror.sync(records, head) == 3
    assert mirror.head() == three.head()
    assert mirror.verify(trusted_key=three.identity.public_key) == three.head()  # type: ignore[union-attr]
    for ref in ["alice/digits", "alice/digits@1.0.0", "alice/faces@^0.1"]:
        assert mirror.resolve(ref) == three.resolve(ref)
    assert mirror.log() == three.log()
    # later entries: a second sync adds only what is new; an unchanged source adds nothing
    publish(three, alice, "alice/digits", "2.0.0")
    three.append(entry("yank", alice, asset="alice/digits", version="1.0.0", reason="old"))
    head, records = _export(three, tmp_path / "log2.jsonl")
    assert mirror.sync(records, head) == 2
    assert mirror.sync(records, head) == 0
    assert mirror.resolve("alice/digits") == three.resolve("alice/digits")
    assert mirror.resolve("alice/digits@1.0.0").yanked
    assert mirror.verify().seq == 5
    # straight from the source's log, as `registry sync DB` does
    publish(three, alice, "alice/faces", "0.2.0")
    assert mirror.sync(three.log(0), three.head()) == 1
    assert state(mirror)["versions"] == state(three)["versions"]


def test_a_mirror_refuses_a_rollback(
    three: Registry, mirror: Registry, alice: Identity, tmp_path: Path
) -> None:
    old_head, old_records = _export(three, tmp_path / "old.jsonl")
    publish(three, alice, "alice/digits", "2.0.0")
    mirror.sync(*reversed(_export(three, tmp_path / "new.jsonl")))
    before = state(mirror)
    with pytest.raises(MirrorError, match="rollback"):
        mirror.sync(old_records, old_head)
    assert state(mirror) == before


def test_a_mirror_refuses_a_fork_signed_by_the_same_key(
    three: Registry, mirror: Registry, alice: Identity, new_registry_url: Callable[[], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    mirror.sync(*reversed(_export(three, tmp_path / "log.jsonl")))
    before = state(mirror)
    # the same registry key, a different history (say, a restored backup that diverged)
    fork = Registry(new_registry_url(), three.identity)
    try:
        publish(fork, alice, "alice/digits", "1.0.0")
        publish(fork, alice, "alice/other", "1.0.0")
        publish(fork, alice, "alice/faces", "0.1.0")
        publish(fork, alice, "alice/faces", "0.2.0")
        with pytest.raises(MirrorError, match="fork"):
            mirror.sync(*reversed(_export(fork, tmp_path / "fork.jsonl")))
    finally:
        fork.close()
    assert state(mirror) == before


def test_a_mirror_refuses_another_registrys_log(
    three: Registry, mirror: Registry, alice: Identity, new_registry_url: Callable[[], str],
    tmp_path: Path,
) -> None:  # fmt: skip
    mirror.sync(*reversed(_export(three, tmp_path / "log.jsonl")))
    before = state(mirror)
    other = Registry(new_registry_url(), Identity.generate())
    try:
        for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]:
            publish(other, alice, "alice/digits", v)
        with pytest.raises(MirrorError):
            mirror.sync(*reversed(_export(other, tmp_path / "other.jsonl")))
        with pytest.raises(MirrorError):
            mirror.sync(other.log(), other.head())
    finally:
        other.close()
    assert state(mirror) == before


def test_a_fresh_mirror_pinned_to_a_key_refuses_another(
    three: Registry, mirror: Registry, tmp_path: Path
) -> None:
    before = state(mirror)
    head, records = _export(three, tmp_path / "log.jsonl")
    with pytest.raises(MirrorError):
        mirror.sync(records, head, trusted_key=Identity.generate().public_key)
    assert state(mirror) == before


def _edit_export(path: Path, line: int, edit: Callable[[dict[str, Any]], None]) -> None:
    lines = path.read_text().splitlines()
    obj = json.loads(lines[line])
    edit(obj)
    lines[line] = canonical_json(obj).decode()
    path.write_text("\n".join(lines) + "\n")


def _describe(obj: dict[str, Any]) -> None:
    obj["entry"]["body"]["description"] = "edited"


def _recid(obj: dict[str, Any]) -> None:
    obj["entry"]["body"]["cid"] = artifact_cid("evil")


def _drop_head_seq(obj: dict[str, Any]) -> None:
    obj["head"]["seq"] -= 1


@pytest.mark.parametrize(
    ("line", "edit", "synced_first"),
    [
        (2, _describe, False),  # a new record, edited
        (3, _recid, False),  # the last record, edited
        (1, _describe, True),  # a record the mirror already holds, edited
        (0, _drop_head_seq, False),  # the signed head, edited
    ],
)
def test_a_mirror_refuses_a_modified_export(
    three: Registry, mirror: Registry, alice: Identity, tmp_path: Path,
    line: int, edit: Callable[[dict[str, Any]], None], synced_first: bool,
) -> None:  # fmt: skip
    if synced_first:
        mirror.sync(*reversed(_export(three, tmp_path / "first.jsonl")))
        publish(three, alice, "alice/digits", "2.0.0")
    path = tmp_path / "log.jsonl"
    three.export(str(path))
    _edit_export(path, line, edit)
    before = state(mirror)
    head, records = read_export(str(path))
    with pytest.raises(MirrorError):
        mirror.sync(records, head)
    assert state(mirror) == before


def test_a_mirror_refuses_records_with_a_gap(
    three: Registry, mirror: Registry, tmp_path: Path
) -> None:
    head, records = _export(three, tmp_path / "log.jsonl")
    before = state(mirror)
    with pytest.raises(MirrorError):
        mirror.sync([records[0], records[2]], head)
    with pytest.raises(MirrorError):
        mirror.sync(records[:2], head)  # does not reach the signed head
    assert state(mirror) == before
