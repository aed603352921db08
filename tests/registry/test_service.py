"""The registry service over real HTTP (uvicorn on 127.0.0.1) and its client.

The client must answer exactly what the local registry answers; every route that writes
refuses a missing or wrong token; bad hosts, oversize bodies and attack entries are refused
with the right status and leave the head unchanged; and a lying service is caught by the
client's own checks.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from servers import LiveServer

from artifacts.canonical import canonical_json
from artifacts.cid import compute_cid
from registry import client as client_module
from registry import service as service_module
from registry.client import RegistryClient
from registry.entries import Signed, make_body
from registry.errors import (
    AuthError,
    InvalidEntryError,
    LogIntegrityError,
    NamespaceError,
    NotFoundError,
    ReadOnlyRegistryError,
    ServiceError,
    SignatureError,
    VersionConflictError,
)
from registry.identity import Identity
from registry.registry import Head, Registry, read_export
from registry.service import create_app

TOKEN = "test-token-" + "x" * 24
CIDFLOW = shutil.which("cidflow", path=str(Path(sys.executable).parent)) or str(
    Path(sys.executable).parent / "cidflow"
)


def cid_of(text: str) -> str:
    return str(compute_cid(canonical_json({"t": text}), codec="json"))


def publish_entry(who: Identity, asset: str, version: str, cid: str, **extra: Any) -> Signed:
    fields: dict[str, Any] = {
        "asset": asset, "version": version, "cid": cid, "kind": "dataset",
        "license": "CC-BY-4.0", "price": {"amount": "0", "currency": "USD"},
        "description": f"{asset} {version}", "tags": ["digits"], "size": 10, "receipt": None,
    }  # fmt: skip
    fields.update(extra)
    return Signed.sign(make_body("publish", who, **fields), who)


@pytest.fixture
def reg(tmp_path: Path) -> Iterator[Registry]:
    registry = Registry(f"sqlite:///{tmp_path / 'service.db'}", Identity.generate())
    yield registry
    registry.close()


@pytest.fixture
def live(reg: Registry) -> Iterator[LiveServer]:
    server = LiveServer(create_app(reg, token=TOKEN))
    yield server
    server.stop()


@pytest.fixture
def client(live: LiveServer) -> Iterator[RegistryClient]:
    with RegistryClient(live.url, token=TOKEN) as c:
        yield c


@pytest.fixture
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30) as h:
        yield h


@pytest.fixture
def populated(client: RegistryClient, alice: Identity, bob: Identity) -> RegistryClient:
    """alice/digits 1.0.0, 1.1.0, 2.0.0-rc.1 (1.1.0 yanked), alice/mnist-small, bob/resnet."""
    for version in ("1.0.0", "1.1.0", "2.0.0-rc.1"):
        client.append(publish_entry(alice, "alice/digits", version, cid_of(version)))
    client.append(publish_entry(alice, "alice/mnist-small", "0.1.0", cid_of("m"), tags=["vision"]))
    client.append(
        publish_entry(
            bob, "bob/resnet", "3.0.0", cid_of("r"), kind="model", license="MIT",
            description="a 50% residual_net", tags=["vision", "model"],
        )
    )  # fmt: skip
    yank = make_body("yank", alice, asset="alice/digits", version="1.1.0", reason="bad labels")
    client.append(Signed.sign(yank, alice))
    return client


def post_entry(http: httpx.Client, obj: Any, token: str | None = TOKEN) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    content = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return http.post("/v1/entries", content=content, headers=headers)


# -- the client answers what the local registry answers -------------------------------------------


def test_queries_over_http_equal_local(populated: RegistryClient, reg: Registry) -> None:
    c = populated
    assert c.head() == reg.head()
    refs = ["alice/digits", "alice/digits@1.0.0", "alice/digits@1.1.0", "alice/digits@^1",
            "alice/digits@latest", "Alice/Digits@1.0.0", "bob/resnet@>=3,<4"]  # fmt: skip
    for ref in refs:
        assert c.resolve(ref) == reg.resolve(ref), ref
    assert c.resolve("alice/digits", prerelease=True).version == "2.0.0-rc.1"
    assert c.resolve("alice/digits", prerelease=True) == reg.resolve(
        "alice/digits", prerelease=True
    )
    for at in (1, 2, 3, 5):
        assert c.resolve("alice/digits", at=at) == reg.resolve("alice/digits", at=at)
        assert c.versions("alice/digits", at=at) == reg.versions("alice/digits", at=at)
    assert c.versions("alice/digits") == reg.versions("alice/digits")
    assert [v.yanked for v in c.versions("alice/digits")] == [False, True, False]
    searches: list[dict[str, Any]] = [
        {}, {"text": "digits"}, {"text": "VISION"}, {"text": "50%"}, {"text": "_"},
        {"kind": "model"}, {"license": "MIT"}, {"limit": 1}, {"limit": 1, "offset": 1},
        {"text": "'; DROP TABLE entries; --"}, {"offset": 99},
    ]  # fmt: skip
    for kw in searches:
        assert c.search(**kw) == reg.search(**kw), kw
    assert [v.name for v in c.search()] == ["alice/digits", "alice/mnist-small", "bob/resnet"]
    for since, limit in ((0, None), (2, None), (0, 2), (3, 2), (6, None), (99, None)):
        assert c.log(since, limit) == reg.log(since, limit), (since, limit)


def test_info_route_and_log_paging(
    populated: RegistryClient, reg: Registry, http: httpx.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    got = http.get("/v1/assets/alice/digits/1.0.0").json()
    assert got["cid"] == reg.resolve("alice/digits@1.0.0").cid
    assert got["entry"] == reg.log(0, 1)[0].entry.as_json()
    assert http.get("/v1/assets/alice/digits/9.9.9").status_code == 404
    assert http.get("/v1/assets/alice/digits/^1").status_code == 400
    monkeypatch.setattr(service_module, "LOG_PAGE", 2)  # the service caps a page
    assert len(http.get("/v1/log", params={"limit": 100}).json()["records"]) == 2
    assert populated.log() == reg.log()  # the client pages through the cap
    monkeypatch.setattr(client_module, "LOG_PAGE", 2)
    assert populated.log(1, 3) == reg.log(1, 3)
    assert populated.verify() == reg.head()
    assert http.get("/v1/health").json() == {"ok": True, "seq": reg.head().seq}


def test_errors_map_to_the_local_exceptions(populated: RegistryClient, http: httpx.Client) -> None:
    with pytest.raises(NotFoundError, match="nobody/nothing is not published"):
        populated.resolve("nobody/nothing")
    with pytest.raises(NotFoundError):
        populated.versions("alice/nothing")
    with pytest.raises(NotFoundError, match="matches"):
        populated.resolve("alice/digits@^7")
    with pytest.raises(InvalidEntryError):
        populated.search(limit=5000)
    with pytest.raises(InvalidEntryError):
        populated.search("x" * 300)
    resp = http.get("/v1/search", params={"limit": "many"})
    assert resp.status_code == 422
    assert resp.json()["error"] == "InvalidEntryError"
    resp = http.get("/v1/resolve", params={"ref": "alice/../etc@1.0.0"})
    assert resp.status_code == 400
    assert resp.json()["error"] == "InvalidEntryError"
    with RegistryClient("http://127.0.0.1:1", timeout=2) as dead, pytest.raises(ServiceError):
        dead.head()


# -- the CLI against the service ------------------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIDFLOW_")}
    env.update(extra)
    return env


def cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [CIDFLOW, "--home", str(home), *args],
        capture_output=True, text=True, env=_env(**env), timeout=120,
    )  # fmt: skip


def test_cli_publish_and_info_over_http(live: LiveServer, reg: Registry, tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    data.mkdir()
    (data / "a.txt").write_text("hello\n")
    (data / "b.bin").write_bytes(os.urandom(5000))
    assert cli(home, "key", "new").returncode == 0
    publish = ["publish", str(data), "--name", "alice/digits", "--version", "1.0.0",
               "--license", "CC-BY-4.0", "--registry", live.url, "--json"]  # fmt: skip

    before = reg.head()
    refused = cli(home, *publish)  # no token
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    assert refused.stderr.strip().startswith("error:")
    assert "token" in refused.stderr
    assert reg.head() == before
    wrong = cli(home, *publish, CIDFLOW_REGISTRY_TOKEN="not-the-token-0123456789")
    assert wrong.returncode == 1
    assert reg.head() == before

    done = cli(home, *publish, CIDFLOW_REGISTRY_TOKEN=TOKEN)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert {"name", "version", "cid", "seq"} <= set(out)
    assert (out["name"], out["version"], out["seq"]) == ("alice/digits", "1.0.0", 1)
    assert reg.resolve("alice/digits@1.0.0").cid == out["cid"]

    shown = cli(home, "info", "alice/digits@1.0.0", "--registry", live.url, "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info == reg.resolve("alice/digits@1.0.0").as_json()
    assert {"name", "version", "cid", "kind", "license", "publisher"} <= set(info)
    assert info["license"] == "CC-BY-4.0"

    verified = cli(home, "registry", "verify", "--registry", live.url)
    assert verified.returncode == 0, verified.stderr
    pulled = cli(home, "pull", "alice/digits@1.0.0", str(tmp_path / "out"), "--registry", live.url)
    assert pulled.returncode == 0, pulled.stderr
    assert (tmp_path / "out" / "a.txt").read_text() == "hello\n"
    clash = [*publish[:4], "--version", "1.0.0", *publish[6:]]
    (data / "a.txt").write_text("changed\n")
    conflict = cli(home, *clash, CIDFLOW_REGISTRY_TOKEN=TOKEN)
    assert conflict.returncode == 1
    assert "never changes" in conflict.stderr
    assert "Traceback" not in conflict.stderr
    assert reg.head().seq == 1


# -- writes need the token; the state does not move -----------------------------------------------


def test_every_write_route_needs_the_token(
    live: LiveServer, reg: Registry, http: httpx.Client, alice: Identity
) -> None:
    spec = http.get("/openapi.json").json()
    writes = [
        (method.upper(), path)
        for path, ops in spec["paths"].items()
        for method in ops
        if method.lower() not in ("get", "head", "options")
    ]
    assert ("POST", "/v1/entries") in writes
    entry = publish_entry(alice, "alice/digits", "1.0.0", cid_of("1")).as_json()
    before = reg.head()
    for method, path in writes:
        content = json.dumps(entry).encode()
        for auth, status in (
            (None, 401), ("Basic " + TOKEN, 401), ("Bearer", 401), ("Bearer wrong", 403),
            ("Bearer " + TOKEN[:-1], 403), ("Bearer " + TOKEN + "x", 403),
        ):  # fmt: skip
            headers = {"Content-Type": "application/json"}
            if auth is not None:
                headers["Authorization"] = auth
            resp = http.request(method, path, content=content, headers=headers)
            assert resp.status_code == status, (method, path, auth, resp.text)
            assert resp.json()["error"] == "AuthError"
            assert reg.head() == before
    with RegistryClient(live.url) as anonymous, pytest.raises(AuthError):
        anonymous.append(entry)
    with (
        RegistryClient(live.url, token="wrong-token-wrong-token") as wrong,
        pytest.raises(PermissionError),
    ):
        wrong.append(entry)
    assert reg.head() == before
    assert post_entry(http, entry).status_code == 201  # the right token: accepted
    assert reg.head().seq == before.seq + 1


def test_create_app_needs_a_token(reg: Registry) -> None:
    for bad in ("", "   ", "short"):
        with pytest.raises(ValueError, match="token"):
            create_app(reg, token=bad)


def test_read_only_registry_refuses_appends(reg: Registry, alice: Identity) -> None:
    reader = Registry(reg.url)  # opened without the registry's key
    server = LiveServer(create_app(reader, token=TOKEN))
    try:
        with RegistryClient(server.url, token=TOKEN) as c, pytest.raises(ReadOnlyRegistryError):
            c.append(publish_entry(alice, "alice/digits", "1.0.0", cid_of("1")))
        assert reg.head().seq == 0
    finally:
        server.stop()
        reader.close()


def test_bad_host_header_is_refused(
    live: LiveServer, reg: Registry, http: httpx.Client, alice: Identity
) -> None:
    entry = publish_entry(alice, "alice/digits", "1.0.0", cid_of("1")).as_json()
    before = reg.head()
    for host in ("evil.example", f"evil.example:{live.port}", "127.0.0.1.evil.example",
                 "localhost:notaport", "[::1", ""):  # fmt: skip
        assert http.get("/v1/head", headers={"Host": host}).status_code == 400, host
        resp = http.post(
            "/v1/entries", content=json.dumps(entry).encode(),
            headers={"Host": host, "Authorization": f"Bearer {TOKEN}"},
        )  # fmt: skip
        assert resp.status_code == 400, host
    assert reg.head() == before
    for host in (f"localhost:{live.port}", f"[::1]:{live.port}", "127.0.0.1", "LOCALHOST"):
        assert http.get("/v1/head", headers={"Host": host}).status_code == 200, host


def test_configured_host_is_allowed(reg: Registry) -> None:
    server = LiveServer(create_app(reg, token=TOKEN, host="registry.example"))
    try:
        with httpx.Client(base_url=server.url) as h:
            assert h.get("/v1/head", headers={"Host": "registry.example"}).status_code == 200
            assert h.get("/v1/head", headers={"Host": "other.example"}).status_code == 400
    finally:
        server.stop()


def test_oversize_body_is_refused(reg: Registry, http: httpx.Client, alice: Identity) -> None:
    before = reg.head()
    big = publish_entry(alice, "alice/digits", "1.0.0", cid_of("1")).as_json()
    padded = json.dumps(big).encode() + b" " * (200 << 10)
    resp = post_entry(http, padded)
    assert resp.status_code == 413
    assert resp.json()["error"] == "PayloadTooLarge"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while read
        for _ in range(20):
            yield b" " * (16 << 10)

    resp = http.post(
        "/v1/entries", content=chunks(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )  # fmt: skip
    assert resp.status_code == 413
    assert reg.head() == before


# -- attack entries over HTTP ------------------------------------------------------------------


def _unsigned(a: Identity, b: Identity) -> Any:
    return {"body": make_body("grant", a, namespace="alice", grantee=b.public_key)}


def _forged(a: Identity, b: Identity) -> Any:  # alice's key, bob's signature
    body = make_body("grant", a, namespace="alice", grantee=b.public_key)
    return {"body": body, "sig": b.sign(canonical_json(body))}


def _other_bytes(a: Identity, b: Identity) -> Any:  # signed, then the CID swapped
    entry = publish_entry(a, "alice/digits", "9.0.0", cid_of("9")).as_json()
    entry["body"]["cid"] = cid_of("evil")
    return entry


def _someone_elses_namespace(a: Identity, b: Identity) -> Any:
    return publish_entry(b, "alice/evil", "1.0.0", cid_of("evil")).as_json()


def _version_overwrite(a: Identity, b: Identity) -> Any:
    return publish_entry(a, "alice/digits", "1.0.0", cid_of("other")).as_json()


def _case_variant(a: Identity, b: Identity) -> Any:
    return publish_entry(b, "bob/Digits", "1.0.0", cid_of("x")).as_json()


def _confusable_namespace(a: Identity, b: Identity) -> Any:
    return publish_entry(b, "al-ice/digits", "1.0.0", cid_of("x")).as_json()


def _oversized_description(a: Identity, b: Identity) -> Any:
    entry = publish_entry(a, "alice/digits", "7.0.0", cid_of("7")).as_json()
    entry["body"]["description"] = "x" * 5000
    return entry


@pytest.mark.parametrize(
    ("attack", "status", "error"),
    [
        (_unsigned, 400, SignatureError),
        (_forged, 400, SignatureError),
        (_other_bytes, 400, SignatureError),
        (_someone_elses_namespace, 403, NamespaceError),
        (_version_overwrite, 409, VersionConflictError),
        (_confusable_namespace, 400, InvalidEntryError),
        (_oversized_description, 400, InvalidEntryError),
        (lambda a, b: b"{not json", 400, InvalidEntryError),
        (lambda a, b: b'{"body": {}, "body": {}, "sig": ""}', 400, InvalidEntryError),
        (lambda a, b: [1, 2], 400, SignatureError),
    ],
)
def test_attack_entries_are_refused(
    client: RegistryClient,
    reg: Registry,
    http: httpx.Client,
    alice: Identity,
    bob: Identity,
    attack: Callable[[Identity, Identity], Any],
    status: int,
    error: type[Exception],
) -> None:
    client.append(publish_entry(alice, "alice/digits", "1.0.0", cid_of("1")))
    before = reg.head()
    evil = attack(alice, bob)
    resp = post_entry(http, evil)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] == error.__name__
    assert reg.head() == before
    if not isinstance(evil, bytes | list):  # the client raises what the local registry raises
        with pytest.raises(error):
            client.append(evil)
        with pytest.raises(error):
            reg.append(evil)
    assert reg.head() == before
    assert client.verify() == before


def test_replay_is_idempotent_and_nonce_reuse_refused(
    client: RegistryClient, reg: Registry, http: httpx.Client, alice: Identity
) -> None:
    entry = publish_entry(alice, "alice/digits", "1.0.0", cid_of("1"))
    first = client.append(entry)
    assert not first.existing
    before = reg.head()
    again = client.append(entry)
    assert again.existing
    assert (again.seq, again.hash) == (first.seq, first.hash)
    assert post_entry(http, entry.as_json()).status_code == 200
    same_nonce = dict(entry.body, version="1.0.1", cid=cid_of("2"))
    resp = post_entry(http, Signed.sign(same_nonce, alice).as_json())
    assert resp.status_code == 400
    assert "nonce" in resp.json()["detail"]
    assert reg.head() == before


# -- verify and export --------------------------------------------------------------------------


def test_client_verify_and_export(populated: RegistryClient, reg: Registry, tmp_path: Path) -> None:
    assert populated.verify() == reg.verify() == reg.head()
    assert populated.verify(trusted_key=reg.head().registry_key) == reg.head()
    with pytest.raises(LogIntegrityError, match="unexpected registry key"):
        populated.verify(trusted_key=Identity.generate().public_key)
    ours, theirs = tmp_path / "client.jsonl", tmp_path / "local.jsonl"
    assert populated.export(str(ours)) == reg.export(str(theirs)) == 6
    assert ours.read_bytes() == theirs.read_bytes()
    head, records = read_export(str(ours))
    assert head == reg.head()
    assert records == reg.log()
    mirror = Registry(f"sqlite:///{tmp_path / 'mirror.db'}")
    try:
        assert mirror.sync(populated.log(), populated.head()) == 6
        assert mirror.verify() == reg.head()
    finally:
        mirror.close()


# -- a lying service is caught by the client ---------------------------------------------------


Change = Callable[[Any, httpx.Client], None]


def _tamper(upstream: httpx.Client, path: str, change: Change) -> httpx.MockTransport:
    """A transport that forwards to the live service and edits the JSON answers on ``path``."""

    def handle(request: httpx.Request) -> httpx.Response:
        resp = upstream.request(
            request.method, request.url.raw_path.decode(), content=request.content,
            headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
        )  # fmt: skip
        if request.url.path != path or resp.status_code >= 400:
            return httpx.Response(resp.status_code, content=resp.content)
        obj = resp.json()
        change(obj, upstream)
        return httpx.Response(resp.status_code, json=obj)

    return httpx.MockTransport(handle)


def _set(key: str, value: Any) -> Change:
    return lambda obj, _: obj.__setitem__(key, value)


def _other_answer(other: str) -> Change:
    """Replace the whole answer with a genuine, validly signed one for another version."""

    def change(obj: Any, upstream: httpx.Client) -> None:
        obj.clear()
        obj.update(upstream.get("/v1/resolve", params={"ref": other}).json())

    return change


def _swap_record(obj: Any, _: httpx.Client) -> None:
    obj["records"][1], obj["records"][2] = obj["records"][2], obj["records"][1]


def _edit_record(obj: Any, _: httpx.Client) -> None:
    obj["records"][0]["entry"]["body"]["description"] = "edited"


def _drop_record(obj: Any, _: httpx.Client) -> None:
    del obj["records"][1]


@pytest.mark.parametrize(
    ("path", "change", "call"),
    [
        ("/v1/resolve", _set("cid", cid_of("evil")), lambda c: c.resolve("alice/digits@1.0.0")),
        ("/v1/resolve", _set("publisher", "pkevil"), lambda c: c.resolve("alice/digits")),
        ("/v1/resolve", _set("extra", 1), lambda c: c.resolve("alice/digits")),
        ("/v1/resolve", _set("yanked", True), lambda c: c.resolve("alice/digits")),
        (
            "/v1/resolve",
            _other_answer("alice/digits@1.1.0"),
            lambda c: c.resolve("alice/digits@1.0.0"),
        ),
        ("/v1/resolve", _other_answer("alice/digits@1.1.0"), lambda c: c.resolve("alice/digits")),
        ("/v1/resolve", _other_answer("bob/resnet"), lambda c: c.resolve("alice/digits@^1")),
        (
            "/v1/resolve",
            _other_answer("alice/digits@2.0.0-rc.1"),
            lambda c: c.resolve("alice/digits"),
        ),
        (
            "/v1/resolve",
            _other_answer("alice/digits@1.0.0"),
            lambda c: c.resolve("bob/resnet@3.0.0"),
        ),
        ("/v1/assets/alice/digits", _set("versions", []), lambda c: c.versions("alice/digits")),
        ("/v1/head", _set("seq", 99), lambda c: c.head()),
        ("/v1/head", _set("hash", "0" * 64), lambda c: c.verify()),
        ("/v1/log", _swap_record, lambda c: c.log()),
        ("/v1/log", _edit_record, lambda c: c.log()),
        ("/v1/log", _drop_record, lambda c: c.verify()),
        ("/v1/entries", _set("hash", "0" * 64), "append"),
    ],
)
def test_lying_service_is_caught(
    populated: RegistryClient,
    live: LiveServer,
    http: httpx.Client,
    alice: Identity,
    path: str,
    change: Change,
    call: Any,
) -> None:
    liar = RegistryClient(live.url, token=TOKEN, transport=_tamper(http, path, change))
    if call == "append":
        entry = publish_entry(alice, "alice/new", "1.0.0", cid_of("n"))
        call = lambda c: c.append(entry)  # noqa: E731
    with liar, pytest.raises((LogIntegrityError, ServiceError)) as caught:
        call(liar)
    assert isinstance(caught.value, LogIntegrityError | ServiceError), caught.value


def test_client_refuses_a_rolled_back_head(populated: RegistryClient, reg: Registry) -> None:
    seen = populated.head()
    populated._seen = Head(seen.seq + 1, "0" * 64, seen.sig, seen.registry_key)
    with pytest.raises(LogIntegrityError, match="went back"):
        populated.head()


# -- cidflow registry serve ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SERVE = "from cidflow import cli_serve; from cidflow.cli import main; main()"


def test_serve_command(tmp_path: Path, alice: Identity) -> None:
    home, port = tmp_path / "home", _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, "--home", str(home), "registry", "serve", "--port",
         str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not come up"
            time.sleep(0.1)
        token_file = home / "registry.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        with RegistryClient(url, token=token) as c:
            result = c.append(publish_entry(alice, "alice/digits", "1.0.0", cid_of("1")))
            assert result.seq == 1
            assert c.verify().seq == 1
        with RegistryClient(url) as c, pytest.raises(AuthError):
            c.append(publish_entry(alice, "alice/digits", "1.0.1", cid_of("2")))
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert token not in out + err
    assert str(token_file) in err
    with Registry(f"sqlite:///{home / 'registry.db'}") as local:
        assert local.resolve("alice/digits").version == "1.0.0"
        assert local.verify().seq == 1


def test_serve_refuses_an_open_token_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("a-token-that-is-long-enough\n")
    os.chmod(token_file, 0o644)
    done = subprocess.run(
        [sys.executable, "-c", SERVE, "--home", str(tmp_path / "home"), "registry", "serve",
         "--port", str(_free_port()), "--token-file", str(token_file)],
        capture_output=True, text=True, env=_env(), timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "chmod 600" in done.stderr
    assert "Traceback" not in done.stderr
    assert "a-token-that-is-long-enough" not in done.stdout + done.stderr
