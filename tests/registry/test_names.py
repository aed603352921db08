"""Asset names, versions and references: normal form, refused names, confusables, semver ranges."""

from __future__ import annotations

import pytest
import semver

from registry.errors import InvalidEntryError, RegistryError
from registry.names import AssetName, matches, parse_name, parse_ref, parse_version, skeleton

V = semver.Version.parse


# -- normalisation --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice/digits", ("alice", "digits")),
        ("Alice/Digits", ("alice", "digits")),
        ("ALICE/MNIST-v2.1_small", ("alice", "mnist-v2.1_small")),
        ("ＡＬＩＣＥ/ｄｉｇｉｔｓ", ("alice", "digits")),  # fullwidth: NFKC makes it ASCII
        ("alice/ﬁle", ("alice", "file")),  # ligature fi
        ("alice/Ⅸ", ("alice", "ix")),  # roman numeral nine
        ("a/" + "b" * 64, ("a", "b" * 64)),
        ("0/9", ("0", "9")),
    ],
)
def test_names_are_nfkc_normalised_and_lower_cased(text: str, expected: tuple[str, str]) -> None:
    name = parse_name(text)
    assert (name.namespace, name.name) == expected
    assert str(name) == "/".join(expected)
    assert parse_name(str(name)) == name  # normal form is a fixed point


@pytest.mark.parametrize(
    "text",
    [
        "",
        "/",
        "alice",
        "alice/",
        "/digits",
        "alice//digits",
        "alice/digits/",
        "alice/sub/digits",
        "../digits",
        "alice/..",
        "alice/../bob",
        "alice/a..b",
        "alice/./digits",
        "./digits",
        "alice/.hidden",
        "alice/-dash",
        "alice/_under",
        "alice\\digits",
        "alice/dig\\its",
        "alice/%2e%2e",
        "alice/..%2fbob",
        "alice/dig its",
        " alice/digits",
        "alice/digits\n",
        "alice/dig\x00its",
        "alice/dig:its",
        "alice/digits@1.0.0",
        "a" * 65 + "/digits",
        "alice/" + "d" * 65,
        # homoglyphs: Cyrillic 'а' (U+0430), 'е', 'і'; Greek omicron; look like ASCII, are not
        "\u0430lice/digits",
        "alice/digit\u0455",
        "alic\u0435/digits",
        "alice/d\u0456gits",
        "alice/digits\u03bf",
        "alice/digits\u200b",  # zero-width space
        "alice/dígits",  # accented: NFKC keeps it non-ASCII
        "alice/数字",
    ],
)
def test_bad_names_are_refused(text: str) -> None:
    with pytest.raises(InvalidEntryError) as info:
        parse_name(text)
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, RegistryError)


@pytest.mark.parametrize("value", [None, 12, b"alice/digits", ["alice", "digits"]])
def test_names_that_are_not_text_are_refused(value: object) -> None:
    with pytest.raises(InvalidEntryError):
        parse_name(value)  # type: ignore[arg-type]


def test_skeleton_drops_separators_so_confusables_collide() -> None:
    assert skeleton("my-data_set.v1") == "mydatasetv1"
    variants = ["my-data", "my_data", "my.data", "mydata", "m-y_d.ata", "MY-DATA"]
    assert {skeleton(parse_name(f"ns/{v}").name) for v in variants} == {"mydata"}
    assert skeleton("mydata") != skeleton("mydata2")


def test_asset_names_order_and_compare_as_values() -> None:
    assert parse_name("B/x") == AssetName("b", "x")
    assert sorted([AssetName("b", "a"), AssetName("a", "z")])[0] == AssetName("a", "z")


# -- versions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["1.0.0", "0.0.1", "10.20.30", "1.2.3-rc.1", "1.2.3+build.5"])
def test_semver_versions_parse(text: str) -> None:
    assert str(parse_version(text)) == text


@pytest.mark.parametrize(
    "text",
    ["", "1", "1.2", "v1.2.3", "01.2.3", "1.02.3", "1.2.3-", "1.2.3.4", "1.2.x", "latest",
     "1.2.3 ", " 1.2.3", "1.2.3-rc..1", "-1.2.3", "1." * 40 + "1"],
)  # fmt: skip
def test_semver_parse_errors(text: str) -> None:
    with pytest.raises(InvalidEntryError):
        parse_version(text)


@pytest.mark.parametrize("value", [None, 1, 1.0, b"1.0.0"])
def test_versions_that_are_not_text_are_refused(value: object) -> None:
    with pytest.raises(InvalidEntryError):
        parse_version(value)  # type: ignore[arg-type]


# -- references and ranges ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "asset", "spec"),
    [
        ("alice/digits", "alice/digits", "latest"),
        ("alice/digits@", "alice/digits", "latest"),
        ("Alice/Digits@latest", "alice/digits", "latest"),
        ("alice/digits@1.2.3", "alice/digits", "1.2.3"),
        ("alice/digits@^1.2", "alice/digits", "^1.2"),
        ("alice/digits@>=1, <2", "alice/digits", ">=1, <2"),
        ("alice/digits@~0.3.1-rc.1", "alice/digits", "~0.3.1-rc.1"),
    ],
)
def test_refs_parse(text: str, asset: str, spec: str) -> None:
    ref = parse_ref(text)
    assert (str(ref.asset), ref.spec) == (asset, spec)


@pytest.mark.parametrize(
    "text",
    ["alice/digits@x", "alice/digits@^x", "alice/digits@>>1", "alice/digits@1..2",
     "alice/digits@1.2.3.4", "alice/digits@latest!", "alice/digits@1;drop", "../x@1.0.0",
     "alice/digits@^1.2,", "alice/digits@*"],
)  # fmt: skip
def test_bad_refs_are_refused(text: str) -> None:
    with pytest.raises(InvalidEntryError):
        parse_ref(text)


@pytest.mark.parametrize(
    ("spec", "yes", "no"),
    [
        ("^1.2", ["1.2.0", "1.2.9", "1.9.0"], ["1.1.9", "2.0.0", "1.2.0-rc.1"]),
        ("^1.2.3", ["1.2.3", "1.5.0"], ["1.2.2", "2.0.0"]),
        ("^1", ["1.0.0", "1.99.99"], ["0.9.9", "2.0.0"]),
        ("^0.3", ["0.3.0", "0.3.7"], ["0.2.9", "0.4.0", "1.0.0"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.0.2", "0.1.0"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0", "1.2.2"]),
        ("~1.2", ["1.2.0", "1.2.5"], ["1.3.0", "1.1.0"]),
        ("~1", ["1.0.0", "1.9.9"], ["2.0.0", "0.9.0"]),
        (">=1.2", ["1.2.0", "3.0.0"], ["1.1.9", "1.2.0-rc.1"]),
        (">=1.2.0, <2", ["1.2.0", "1.9.9"], ["2.0.0", "1.1.0"]),
        ("<2", ["1.9.9", "0.0.1"], ["2.0.0", "2.0.1"]),
        ("<=2.0.0", ["2.0.0"], ["2.0.1"]),
        (">1.0.0", ["1.0.1"], ["1.0.0"]),
        ("1.2", ["1.2.0", "1.2.7"], ["1.3.0", "1.1.9"]),  # partial: any 1.2.x
        ("1", ["1.0.0", "1.7.2"], ["2.0.0"]),
        ("=1.2.3", ["1.2.3"], ["1.2.4", "1.2.3-rc.1"]),
        ("==1.2.3-rc.1", ["1.2.3-rc.1"], ["1.2.3", "1.2.3-rc.2"]),
        (">=1.2.3-rc.1", ["1.2.3-rc.1", "1.2.3-rc.2", "1.2.3"], ["1.2.3-beta", "1.2.2"]),
        ("<1.2.3", ["1.2.3-rc.1", "1.2.2"], ["1.2.3"]),  # pre-releases sort before the release
    ],
)
def test_matches_ranges(spec: str, yes: list[str], no: list[str]) -> None:
    for v in yes:
        assert matches(V(v), spec), (v, spec)
    for v in no:
        assert not matches(V(v), spec), (v, spec)


def test_matches_refuses_a_malformed_spec() -> None:
    with pytest.raises(InvalidEntryError):
        matches(V("1.0.0"), "^^1")
