"""``RegistryClient``: the registry service (:mod:`registry.service`) behind the same interface
as the local :class:`~registry.registry.Registry`.

Nothing the service says is taken on trust (DESIGN invariant 1): records are re-parsed and
re-hashed and must chain; entry signatures are checked; the head's signature is checked; each
version answer must match the publisher's signed entry that comes with it; an append answer
must hash to the entry that was sent. ``verify`` fetches the whole log and folds it locally with
the same rules as ``Registry.verify``. Error answers are raised as the exception the local
registry would have raised, so commands print the same one-line errors.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx
import semver

from artifacts.canonical import canonical_json, loads_strict
from registry.entries import Record, Signed
from registry.errors import (
    AuthError,
    InvalidEntryError,
    LogIntegrityError,
    MirrorError,
    MissingKeyError,
    NamespaceError,
    NotFoundError,
    ReadOnlyRegistryError,
    RegistryError,
    ServiceError,
    SignatureError,
    VersionConflictError,
)
from registry.identity import Identity, fingerprint
from registry.names import AssetName, Ref, matches, parse_name, parse_ref
from registry.nodes import NodeInfo, node_entry, sort_key
from registry.registry import AppendResult, Head, VersionInfo, check_head, fold_log

__all__ = ["AuthError", "RegistryClient", "ServiceError"]

LOG_PAGE: Final = 5000  # the service's cap on one /v1/log answer
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SEQ_PREFIX = re.compile(r"seq (\d+): (.*)", re.DOTALL)


_ERRORS: Final[dict[str, type[RegistryError]]] = {
    cls.__name__: cls
    for cls in (
        InvalidEntryError,
        SignatureError,
        NamespaceError,
        VersionConflictError,
        NotFoundError,
        MissingKeyError,
        ReadOnlyRegistryError,
        RegistryError,
    )
}


# -- the fold shared with Registry.verify ---------------------------------------------------------
# -- parsing answers ----------------------------------------------------------------------------
def _int(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ServiceError(f"the service sent a bad {what}: {value!r}")
    return value


def _head(obj: object) -> Head:
    if not isinstance(obj, dict) or set(obj) != {"seq", "hash", "sig", "registry_key"}:
        raise ServiceError("the service sent a malformed head")
    h = obj["hash"]
    if (h is not None and not (isinstance(h, str) and _HEX64.fullmatch(h))) or not isinstance(
        obj["sig"], str
    ):
        raise ServiceError("the service sent a malformed head")
    if not isinstance(obj["registry_key"], str):
        raise ServiceError("the service sent a malformed head")
    head = Head(_int(obj["seq"], "head seq"), h, obj["sig"], obj["registry_key"])
    try:
        head.verify()
    except RegistryError:
        raise LogIntegrityError("the service's head signature does not verify") from None
    return head


def _info(obj: object) -> VersionInfo:
    """A version answer, checked against the publisher's signed entry that comes with it."""
    if not isinstance(obj, dict) or "entry" not in obj:
        raise ServiceError("the service sent a version without its signed entry")
    try:
        entry = Signed.from_json(obj["entry"])
        entry.verify()
    except RegistryError as exc:
        raise LogIntegrityError(
            f"the signed entry for {obj.get('name')}@{obj.get('version')} ({obj.get('cid')}) "
            f"does not verify: {exc}"
        ) from None
    b = entry.body
    if b["type"] != "publish":
        raise LogIntegrityError(f"the service sent a {b['type']} entry for a version")
    yanked = obj.get("yanked")
    if not isinstance(yanked, bool):
        raise ServiceError("the service sent a version without a yanked flag")
    info = VersionInfo(
        b["asset"], b["version"], b["cid"], b["kind"], b["license"], dict(b["price"]),
        b["description"], list(b["tags"]), b["size"], b.get("receipt"), fingerprint(b["key"]),
        b["timestamp"], _int(obj.get("seq"), "seq"), yanked,
    )  # fmt: skip
    if {**info.as_json(), "entry": entry.as_json()} != obj:
        raise LogIntegrityError(
            f"the service's answer for {info.name}@{info.version} does not match the entry its "
            f"publisher signed (which names {info.cid})",
            info.seq,
        )
    return info


def _node(obj: object) -> NodeInfo:
    """A node answer, checked against the node's signed entry that comes with it: the signature,
    and that the node id is the fingerprint of the key that signed it."""
    if not isinstance(obj, dict) or "entry" not in obj:
        raise ServiceError("the service sent a node without its signed entry")
    try:
        entry = Signed.from_json(obj["entry"])
        entry.verify()
    except RegistryError as exc:
        raise LogIntegrityError(
            f"the signed entry for node {obj.get('node_id')} does not verify: {exc}"
        ) from None
    b = entry.body
    if b["type"] != "node":
        raise LogIntegrityError(f"the service sent a {b['type']} entry for a node")
    signer = fingerprint(b["key"])
    if b["node_id"] != signer:
        raise LogIntegrityError(f"the service sent node {b['node_id']} announced by {signer}")
    seq = _int(obj.get("seq"), "seq")
    info = NodeInfo.from_body(b, seq)
    if seq < 1 or {**info.as_json(), "entry": entry.as_json()} != obj:
        raise LogIntegrityError(
            f"the service's answer for node {info.node_id} does not match the entry it signed", seq
        )
    return info


def _record(obj: object) -> Record:
    try:
        record = Record.from_json(obj)
    except RegistryError as exc:
        seq = obj.get("seq") if isinstance(obj, dict) else None
        raise LogIntegrityError(
            f"the service sent a malformed record: {exc}", seq if isinstance(seq, int) else None
        ) from None
    return record


class RegistryClient:
    """The registry service at ``url`` (``http(s)://host:port``), with :class:`Registry`'s
    query and append methods. ``token`` is sent with appends only."""

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InvalidEntryError(f"a registry service URL starts with http(s)://: {url!r}")
        self.url = url.rstrip("/")
        self._token = token
        self._http = httpx.Client(
            base_url=self.url,
            timeout=timeout,
            transport=transport,
            follow_redirects=False,
            headers={"Accept": "application/json"},
        )
        self._seen: Head | None = None  # the newest head seen: a later one must not roll back

    def __repr__(self) -> str:
        return f"RegistryClient({self.url!r})"  # never the token

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------------
    def _call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
    ) -> Any:
        headers: dict[str, str] = {}
        if body is not None:
            headers["Content-Type"] = "application/json"
            if self._token:
                headers["Authorization"] = f"Bearer {self._token}"
        query = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            resp = self._http.request(method, path, params=query, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise ServiceError(f"registry service {self.url} unreachable: {exc}") from None
        if resp.status_code >= 400:
            raise self._error(resp)
        try:
            return loads_strict(resp.content)
        except ValueError:
            raise ServiceError(f"{self.url}{path} did not answer JSON") from None

    def _error(self, resp: httpx.Response) -> RegistryError:
        try:
            obj = loads_strict(resp.content)
            kind, detail = obj["error"], obj["detail"]
            if not isinstance(kind, str) or not isinstance(detail, str):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return ServiceError(f"registry service answered HTTP {resp.status_code}")
        if kind in ("LogIntegrityError", "MirrorError"):
            m = _SEQ_PREFIX.fullmatch(detail)
            integrity = MirrorError if kind == "MirrorError" else LogIntegrityError
            return integrity(m.group(2), int(m.group(1))) if m else integrity(detail)
        if resp.status_code == 413:
            return InvalidEntryError(detail)
        if kind == "AuthError" or (resp.status_code in (401, 403) and kind not in _ERRORS):
            return AuthError(f"registry service {self.url}: {detail}")
        known = _ERRORS.get(kind)
        if known is None:
            return ServiceError(f"registry service answered HTTP {resp.status_code}: {detail}")
        return known(detail)

    # -- head and append -------------------------------------------------------------------------
    def head(self) -> Head:
        """The service's signed head (signature checked; never older than one seen before)."""
        head = _head(self._call("GET", "/v1/head"))
        seen = self._seen
        if seen is not None:
            if head.seq < seen.seq:
                raise MirrorError(f"the service's head went back from seq {seen.seq}", head.seq)
            if head.seq == seen.seq and head.hash != seen.hash:
                raise MirrorError("the service's head forked from the one seen before", head.seq)
        self._seen = head
        return head

    def append(self, entry: Signed | dict[str, Any]) -> AppendResult:
        """Send one signed entry; an identical replay returns the original seq."""
        signed = entry if isinstance(entry, Signed) else Signed.from_json(entry)
        obj = self._call("POST", "/v1/entries", body=canonical_json(signed.as_json()))
        if not isinstance(obj, dict):
            raise ServiceError("the service sent a malformed append answer")
        seq, h, existing = _int(obj.get("seq"), "seq"), obj.get("hash"), obj.get("existing")
        prev = obj.get("prev")
        if not (isinstance(h, str) and _HEX64.fullmatch(h)) or not isinstance(existing, bool):
            raise ServiceError("the service sent a malformed append answer")
        if not existing:
            if prev is not None and not (isinstance(prev, str) and _HEX64.fullmatch(prev)):
                raise ServiceError("the service sent a malformed append answer")
            if seq < 1 or Record(seq, prev, signed).hash != h:
                raise LogIntegrityError("the service did not record the entry it was sent", seq)
        return AppendResult(seq, h, existing)

    # -- queries --------------------------------------------------------------------------------
    def resolve(
        self, ref: str | Ref, *, at: int | None = None, prerelease: bool = False
    ) -> VersionInfo:
        """``NS/NAME@1.2.0``, ``@latest`` or a range, as :meth:`Registry.resolve`."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        params = {"ref": str(parsed), "at": at, "pre": "true" if prerelease else None}
        info = _info(self._call("GET", "/v1/resolve", params=params))
        version = semver.Version.parse(info.version)
        exact = parsed.spec != "latest" and not any(c in parsed.spec for c in "^~<>=,")
        if (
            info.name != str(parsed.asset)
            or (at is not None and info.seq > at)
            or (exact and info.version != parsed.spec)
            or (
                not exact
                and (
                    info.yanked
                    or (version.prerelease and not prerelease)
                    or (parsed.spec != "latest" and not matches(version, parsed.spec))
                )
            )
        ):
            raise LogIntegrityError(
                f"the service answered {info.name}@{info.version} ({info.cid}) for {parsed}",
                info.seq,
            )
        return info

    def versions(self, name: str | AssetName, *, at: int | None = None) -> list[VersionInfo]:
        """Every version of ``NS/NAME``, highest first (yanked ones flagged)."""
        asset = parse_name(name) if isinstance(name, str) else name
        path = f"/v1/assets/{quote(asset.namespace, safe='')}/{quote(asset.name, safe='')}"
        obj = self._call("GET", path, params={"at": at})
        if not isinstance(obj, dict) or not isinstance(obj.get("versions"), list):
            raise ServiceError("the service sent a malformed versions answer")
        found = [_info(v) for v in obj["versions"]]
        if not found:
            raise ServiceError(f"the service answered no versions of {asset} (not a 404)")
        if any(v.name != str(asset) or (at is not None and v.seq > at) for v in found):
            raise LogIntegrityError(f"the service answered versions of another asset than {asset}")
        return found

    def search(
        self,
        text: str = "",
        *,
        kind: str | None = None,
        license: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[VersionInfo]:
        """As :meth:`Registry.search`: latest version of each matching asset, sorted by name."""
        params = {"q": text, "kind": kind, "license": license, "limit": limit, "offset": offset}
        obj = self._call("GET", "/v1/search", params=params)
        if not isinstance(obj, dict) or not isinstance(obj.get("results"), list):
            raise ServiceError("the service sent a malformed search answer")
        return [_info(v) for v in obj["results"]]

    # -- nodes ----------------------------------------------------------------------------------
    def announce_node(
        self,
        identity: Identity,
        *,
        endpoint: str,
        capacity: int | None,
        hardware: dict[str, Any],
        name: str | None = None,
        used: int | None = None,
    ) -> NodeInfo:
        """As :meth:`Registry.announce_node`: sign a ``node`` entry and append it (the append
        answer is checked as :meth:`append` does)."""
        entry = node_entry(
            identity, endpoint=endpoint, capacity=capacity, hardware=hardware, name=name,
            used=used,
        )  # fmt: skip
        return NodeInfo.from_body(entry.body, self.append(entry).seq)

    def nodes(self) -> list[NodeInfo]:
        """As :meth:`Registry.nodes`; each node's signed entry is checked (signature, and that
        its node id is the signer's fingerprint). The service can still withhold a node or its
        newest heartbeat (a node then looks stale), never forge one."""
        obj = self._call("GET", "/v1/nodes")
        if not isinstance(obj, dict) or not isinstance(obj.get("nodes"), list):
            raise ServiceError("the service sent a malformed nodes answer")
        found = [_node(n) for n in obj["nodes"]]
        if len({n.node_id for n in found}) != len(found):
            raise LogIntegrityError("the service listed a node twice")
        return sorted(found, key=sort_key)

    def _records(
        self, since: int, limit: int | None = None, until: int | None = None
    ) -> Iterator[Record]:
        """Records after ``since`` (at most ``limit``, up to seq ``until``), re-parsed, chained
        and with their signatures checked."""
        expected, prev, count = since + 1, None, 0
        while (limit is None or count < limit) and (until is None or expected <= until):
            want = LOG_PAGE if limit is None else min(LOG_PAGE, limit - count)
            if until is not None:
                want = min(want, until - expected + 1)
            obj = self._call("GET", "/v1/log", params={"since": expected - 1, "limit": want})
            if not isinstance(obj, dict) or not isinstance(obj.get("records"), list):
                raise ServiceError("the service sent a malformed log answer")
            page = [_record(r) for r in obj["records"]]
            if len(page) > want:
                raise ServiceError("the service sent more records than asked for")
            for record in page:
                if record.seq != expected:
                    raise LogIntegrityError(
                        f"expected seq {expected}: entries missing or reordered", record.seq
                    )
                if (expected == 1 or prev is not None) and record.prev != prev:
                    raise LogIntegrityError(
                        "prev does not match the previous record's hash", record.seq
                    )
                try:
                    record.entry.verify()
                except RegistryError:
                    raise LogIntegrityError("entry signature does not verify", record.seq) from None
                prev = record.hash
                expected += 1
                count += 1
                yield record
            if not page or (len(page) < want and obj.get("more") is False):
                return  # (a page shorter than asked for may be the service's own cap)

    def log(self, since: int = 0, limit: int | None = None) -> list[Record]:
        """Records with seq > ``since``, in order (paged through the service)."""
        return list(self._records(since, limit))

    # -- integrity ------------------------------------------------------------------------------
    def _snapshot(self) -> tuple[Head, list[Record]]:
        head = self.head()
        records = list(self._records(0, until=head.seq))
        return head, records

    def verify(self, *, trusted_key: str | None = None) -> Head:
        """Fetch the whole log and the head and check them locally exactly as
        :meth:`Registry.verify` does (signatures, chain, rules, head signature)."""
        head, records = self._snapshot()
        _, seq, last = fold_log((r, r.hash) for r in records)
        check_head(head, seq, last, trusted_key=trusted_key)
        return head

    def export(self, path: str) -> int:
        """Write the signed head and the log up to it in :meth:`Registry.export`'s format
        (atomically); return the record count."""
        head, records = self._snapshot()
        last = records[-1].hash if records else None
        if len(records) != head.seq or last != head.hash:
            raise LogIntegrityError(f"the service's log does not end at its head seq {head.seq}")
        target = Path(path)
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        try:
            with open(tmp, "x", encoding="utf-8") as f:
                f.write(canonical_json({"head": head.as_json()}).decode() + "\n")
                for record in records:
                    f.write(canonical_json(record.as_json()).decode() + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return len(records)
