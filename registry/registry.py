"""``Registry``: the versioned, signed marketplace registry over SQL.

Appending judges an entry with :func:`registry.rules.judge` and, in one transaction, stores the
record (seq, hash of the previous record, entry), applies its effects and signs the new head
with the registry's key. Queries read the derived tables; ``at=SEQ`` answers as of that
registry version. :meth:`Registry.verify` re-checks every signature, the chain, the rules (by
folding the log from scratch) and the head signature, and compares the fold with the tables.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import semver
import sqlalchemy as sa

from artifacts.canonical import canonical_json, loads_strict
from registry.entries import Record, Signed, head_message
from registry.errors import (
    InvalidEntryError,
    LogIntegrityError,
    MirrorError,
    NotFoundError,
    ReadOnlyRegistryError,
    RegistryError,
)
from registry.identity import Identity, verify_signature
from registry.names import AssetName, Ref, matches, parse_name, parse_ref
from registry.nodes import NodeInfo, node_entry, sort_key
from registry.rules import MemoryState, judge
from registry.sql import (
    SQLState,
    apply_effects,
    create_engine,
    entries,
    lock_for_append,
    meta,
    nodes,
    versions,
)

__all__ = ["AppendResult", "Head", "NodeInfo", "Registry", "VersionInfo", "redact_url"]

_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^/@:]*:)[^/]*@", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with the password of its user part masked (``postgresql://u:***@host/db``): the
    form to print or log."""
    return _PASSWORD.sub(r"\1***@", url)


PAGE_MAX = 1000


@dataclass(frozen=True, slots=True)
class Head:
    seq: int
    hash: str | None
    sig: str
    registry_key: str

    def as_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "sig": self.sig,
            "registry_key": self.registry_key,
        }

    def verify(self) -> None:
        verify_signature(self.registry_key, self.sig, head_message(self.seq, self.hash))


@dataclass(frozen=True, slots=True)
class AppendResult:
    seq: int
    hash: str
    existing: bool  # an identical entry (or the same version and CID) was already there


@dataclass(frozen=True, slots=True)
class VersionInfo:
    name: str
    version: str
    cid: str
    kind: str
    license: str
    price: dict[str, str]
    description: str
    tags: list[str]
    size: int
    receipt: str | None
    publisher: str
    timestamp: str
    seq: int
    yanked: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "cid": self.cid,
            "kind": self.kind,
            "license": self.license,
            "price": self.price,
            "description": self.description,
            "tags": self.tags,
            "size": self.size,
            "receipt": self.receipt,
            "publisher": self.publisher,
            "timestamp": self.timestamp,
            "seq": self.seq,
            "yanked": self.yanked,
        }


def _info(row: Any, at: int | None = None) -> VersionInfo:
    yanked = row.yanked_seq is not None and (at is None or row.yanked_seq <= at)
    return VersionInfo(
        row.asset,
        row.version,
        row.cid,
        row.kind,
        row.license,
        {"amount": row.price_amount, "currency": row.price_currency},
        row.description,
        json.loads(row.tags),
        row.size,
        row.receipt,
        row.publisher,
        row.timestamp,
        row.seq,
        yanked,
    )


def fold_log(records: Iterable[tuple[Record, str]]) -> tuple[MemoryState, int, str | None]:
    """Fold ``(record, stored hash)`` pairs from seq 1 with the registry's rules.

    Checks seq continuity, the ``prev`` chain, each record's hash against the stored one, every
    signature and every rule; raises :class:`LogIntegrityError` naming the first bad seq.
    Returns the folded state, the last seq and the last record's hash."""
    state = MemoryState()
    prev: str | None = None
    expected = 1
    for record, stored_hash in records:
        seq = record.seq
        if seq != expected:
            raise LogIntegrityError(f"expected seq {expected}: entries missing or reordered", seq)
        if record.prev != prev:
            raise LogIntegrityError("prev does not match the previous record's hash", seq)
        if record.hash != stored_hash:
            raise LogIntegrityError("record does not hash to its stored hash (edited)", seq)
        try:
            verdict = judge(state, record.entry, seq)
        except RegistryError as exc:
            raise LogIntegrityError(f"entry breaks the rules: {exc}", seq) from None
        if verdict.existing is not None:
            raise LogIntegrityError(f"duplicate of seq {verdict.existing}", seq)
        state.apply(verdict.effects)
        prev = record.hash
        expected += 1
    return state, expected - 1, prev


def check_head(head: Head, seq: int, hash: str | None, *, trusted_key: str | None = None) -> None:
    """Check that ``head`` is validly signed (by ``trusted_key`` if given) and names the end
    of the folded log (``seq``, ``hash``)."""
    if trusted_key is not None and head.registry_key != trusted_key:
        raise LogIntegrityError("head is signed by an unexpected registry key")
    try:
        head.verify()
    except RegistryError:
        raise LogIntegrityError("head signature does not verify") from None
    if head.seq != seq or head.hash != hash:
        raise LogIntegrityError(f"head says seq {head.seq} but the log ends at seq {seq}")


class Registry:
    """A registry on a database URL (``sqlite:///path`` or ``postgresql://...``).

    ``identity`` is the registry's own key, which signs each new head; without it the
    registry is read-only (a mirror's reader, say).
    """

    def __init__(self, url: str, identity: Identity | None = None) -> None:
        self.url = url
        self.display_url = redact_url(url)  # what messages show: never the password
        self.engine = create_engine(url)
        self.identity = identity
        with self.engine.begin() as conn:
            stored = conn.execute(sa.select(meta.c.v).where(meta.c.k == "registry_key")).scalar()
            if stored is None and identity is not None:
                conn.execute(meta.insert().values(k="registry_key", v=identity.public_key))
                self._write_head(conn, 0, None)
            elif stored is not None and identity is not None and stored != identity.public_key:
                raise RegistryError(
                    f"{self.display_url} belongs to another registry key; refusing to sign "
                    "its heads"
                )

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- head ---------------------------------------------------------------------------------
    def _write_head(self, conn: sa.Connection, seq: int, hash: str | None) -> Head:
        if self.identity is None:
            raise ReadOnlyRegistryError(
                f"{self.display_url} was opened without its registry key: read-only"
            )
        head = Head(
            seq, hash, self.identity.sign(head_message(seq, hash)), self.identity.public_key
        )
        _put_meta(conn, "head", canonical_json(head.as_json()).decode())
        return head

    def _meta(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(meta.c.v).where(meta.c.k == key)).scalar()
        return str(value) if value is not None else None

    def head(self) -> Head:
        with self.engine.connect() as conn:
            raw = conn.execute(sa.select(meta.c.v).where(meta.c.k == "head")).scalar()
        if raw is None:
            raise RegistryError(f"{self.display_url} is not an initialised registry")
        obj = loads_strict(raw.encode())
        return Head(obj["seq"], obj["hash"], obj["sig"], obj["registry_key"])

    # -- append ---------------------------------------------------------------------------------
    def append(self, entry: Signed | dict[str, Any]) -> AppendResult:
        """Judge and append one signed entry; an identical replay returns the original seq."""
        return self.append_many([entry])[0]

    def append_many(self, batch: Iterable[Signed | dict[str, Any]]) -> list[AppendResult]:
        """Append entries in order, in one transaction (all or none): one judged at a time
        against the state the earlier ones left, then one head signature for the batch."""
        signed = [Signed.from_json(e.as_json() if isinstance(e, Signed) else e) for e in batch]
        results: list[AppendResult] = []
        with self.engine.begin() as conn:
            lock_for_append(conn)
            if conn.execute(sa.select(meta.c.v).where(meta.c.k == "source_key")).scalar():
                raise ReadOnlyRegistryError(
                    f"{self.display_url} is a mirror: it only syncs; publish to its source"
                )
            last = conn.execute(
                sa.select(entries.c.seq, entries.c.hash).order_by(entries.c.seq.desc()).limit(1)
            ).first()
            seq, prev = (last.seq, last.hash) if last else (0, None)
            state = SQLState(conn)
            for entry in signed:
                verdict = judge(state, entry, seq + 1)
                if verdict.existing is not None:
                    h = conn.execute(
                        sa.select(entries.c.hash).where(entries.c.seq == verdict.existing)
                    ).scalar_one()
                    results.append(AppendResult(verdict.existing, h, True))
                    continue
                seq += 1
                record = Record(seq, prev, entry)
                self._insert(conn, record)
                apply_effects(conn, verdict.effects)
                prev = record.hash
                results.append(AppendResult(seq, record.hash, False))
            if any(not r.existing for r in results):
                self._write_head(conn, seq, prev)
        return results

    @staticmethod
    def _insert(conn: sa.Connection, record: Record) -> None:
        body = record.entry.body
        conn.execute(
            entries.insert(),
            {
                "seq": record.seq,
                "hash": record.hash,
                "prev": record.prev,
                "type": body["type"],
                "key": body["key"],
                "record": canonical_json(record.as_json()).decode(),
            },
        )

    # -- queries --------------------------------------------------------------------------------
    def _rows(self, asset: AssetName, at: int | None) -> list[Any]:
        q = sa.select(versions).where(versions.c.asset == str(asset))
        if at is not None:
            q = q.where(versions.c.seq <= at)
        with self.engine.connect() as conn:
            return list(conn.execute(q))

    def versions(self, name: str | AssetName, *, at: int | None = None) -> list[VersionInfo]:
        """Every version of ``NS/NAME``, highest first (yanked ones flagged)."""
        asset = parse_name(name) if isinstance(name, str) else name
        rows = self._rows(asset, at)
        if not rows:
            raise NotFoundError(f"{asset} is not published" + (f" at seq {at}" if at else ""))
        infos = [_info(r, at) for r in rows]
        return sorted(infos, key=lambda i: semver.Version.parse(i.version), reverse=True)

    def resolve(
        self, ref: str | Ref, *, at: int | None = None, prerelease: bool = False
    ) -> VersionInfo:
        """``NS/NAME@1.2.0``, ``@latest`` (highest non-yanked) or a range (``@^1.2``).

        An exact version resolves even when yanked (yanking marks, it does not delete)."""
        parsed = parse_ref(ref) if isinstance(ref, str) else ref
        candidates = self.versions(parsed.asset, at=at)
        if parsed.spec != "latest" and not any(c in parsed.spec for c in "^~<>=,"):
            exact = [i for i in candidates if i.version == parsed.spec]
            if exact:
                return exact[0]
            if len(parsed.spec.partition("-")[0].split(".")) == 3:
                raise NotFoundError(f"{parsed} is not published")
        for info in candidates:
            v = semver.Version.parse(info.version)
            if info.yanked or (v.prerelease and not prerelease):
                continue
            if parsed.spec == "latest" or matches(v, parsed.spec):
                return info
        raise NotFoundError(f"no version of {parsed.asset} matches {parsed.spec!r}")

    def search(
        self,
        text: str = "",
        *,
        kind: str | None = None,
        license: str | None = None,
        limit: int = 20,
        offset: int = 0,
    ) -> list[VersionInfo]:
        """Assets whose name, description or tags contain ``text`` (latest version of each),
        sorted by name; ``limit``/``offset`` paginate."""
        if "\x00" in text:
            raise InvalidEntryError("search text contains a NUL byte")
        if len(text) > 256:
            raise InvalidEntryError("search text longer than 256 characters")
        if not 0 < limit <= PAGE_MAX or offset < 0:
            raise InvalidEntryError(f"limit must be 1..{PAGE_MAX} and offset >= 0")
        q = sa.select(versions).where(versions.c.yanked_seq.is_(None))
        if text:
            pattern = (
                "%"
                + text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                + "%"
            )
            q = q.where(
                sa.or_(
                    sa.func.lower(versions.c.asset).like(pattern, escape="\\"),
                    sa.func.lower(versions.c.description).like(pattern, escape="\\"),
                    sa.func.lower(versions.c.tags).like(pattern, escape="\\")
                    if re.fullmatch(r"[a-z0-9._+-]+", text.lower())
                    else sa.false(),
                )
            )
        if kind:
            q = q.where(versions.c.kind == kind)
        if license:
            q = q.where(versions.c.license == license)
        latest: dict[str, VersionInfo] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(q.order_by(versions.c.asset)):
                info = _info(row)
                v = semver.Version.parse(info.version)
                if v.prerelease:
                    continue
                best = latest.get(info.name)
                if best is None or v > semver.Version.parse(best.version):
                    latest[info.name] = info
        names = sorted(latest)
        return [latest[n] for n in names[offset : offset + limit]]

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
        """Sign with the node's ``identity`` and append a ``node`` entry (an announcement, or a
        heartbeat: see :mod:`registry.nodes`); return what :meth:`nodes` now lists for it."""
        entry = node_entry(
            identity,
            endpoint=endpoint,
            capacity=capacity,
            hardware=hardware,
            name=name,
            used=used,
        )
        return NodeInfo.from_body(entry.body, self.append(entry).seq)

    def nodes(self) -> list[NodeInfo]:
        """The latest announcement of every node (named ones first, by name, then by id)."""
        with self.engine.connect() as conn:
            rows = list(conn.execute(sa.select(nodes.c.seq, nodes.c.body)))
        return sorted(
            (NodeInfo.from_body(loads_strict(r.body.encode()), r.seq) for r in rows), key=sort_key
        )

    def node_records(self) -> list[Record]:
        """The signed records behind :meth:`nodes`, in the same order (what the service sends,
        so that its clients can check each node's signature)."""
        q = sa.select(nodes.c.node_id, entries.c.record).join(entries, entries.c.seq == nodes.c.seq)
        with self.engine.connect() as conn:
            rows = list(conn.execute(q))
        found: list[tuple[NodeInfo, Record]] = []
        for row in rows:
            record = Record.from_json(loads_strict(row.record.encode()))
            body = record.entry.body
            if body["type"] != "node" or body["node_id"] != row.node_id:
                raise LogIntegrityError(f"table 'nodes' disagrees with the log for {row.node_id}")
            found.append((NodeInfo.from_record(record), record))
        return [record for _, record in sorted(found, key=lambda pair: sort_key(pair[0]))]

    def log(self, since: int = 0, limit: int | None = None) -> list[Record]:
        """Records with seq > ``since``, in order."""
        q = sa.select(entries.c.record).where(entries.c.seq > since).order_by(entries.c.seq)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [Record.from_json(loads_strict(r.encode())) for r in conn.execute(q).scalars()]

    def iter_log(self, batch: int = 5000) -> Iterator[tuple[Record, str]]:
        """(record, stored hash) for the whole log, in order, in batches."""
        since = 0
        while True:
            q = (
                sa.select(entries.c.seq, entries.c.hash, entries.c.record)
                .where(entries.c.seq > since)
                .order_by(entries.c.seq)
                .limit(batch)
            )
            with self.engine.connect() as conn:
                rows = list(conn.execute(q))
            if not rows:
                return
            for row in rows:
                try:
                    record = Record.from_json(loads_strict(row.record.encode()))
                except (ValueError, RegistryError) as exc:
                    raise LogIntegrityError(f"unreadable record: {exc}", row.seq) from None
                if record.seq != row.seq:
                    raise LogIntegrityError(f"record says seq {record.seq}", row.seq)
                yield record, row.hash
            since = rows[-1].seq

    # -- integrity ------------------------------------------------------------------------------
    def verify(self, *, trusted_key: str | None = None) -> Head:
        """Check signatures, the chain, the rules, the derived tables and the head signature.

        Raises :class:`LogIntegrityError` naming the first bad seq. ``trusted_key`` pins the
        registry key the head must be signed by (otherwise the stored one is used)."""
        state, seq, last = fold_log(self.iter_log())
        head = self.head()
        if trusted_key is None:
            trusted_key = self._meta("source_key")  # a mirror: the key it pinned on first sync
        if trusted_key is None and self.identity is not None:
            trusted_key = self.identity.public_key  # the key we hold, not what the db says
        if trusted_key is None:
            trusted_key = self._meta("registry_key")
        check_head(head, seq, last, trusted_key=trusted_key)
        self._compare_tables(state)
        return head

    def _compare_tables(self, state: MemoryState) -> None:
        with self.engine.connect() as conn:
            rows = {(r.asset, r.version): r for r in conn.execute(sa.select(versions))}
        folded = state.versions
        for key in sorted(set(rows) | set(folded)):
            row, rec = rows.get(key), folded.get(key)
            if (
                row is None
                or rec is None
                or row.cid != rec["cid"]
                or row.seq != rec["seq"]
                or ((row.yanked_seq is not None) != rec["yanked"])
            ):
                seq = rec["seq"] if rec else (row.seq if row else None)
                raise LogIntegrityError(
                    f"table 'versions' disagrees with the log for {key[0]}@{key[1]}", seq
                )
        with self.engine.connect() as conn:
            node_rows = {r.node_id: r for r in conn.execute(sa.select(nodes))}
        for node_id in sorted(set(node_rows) | set(state.nodes)):
            row, rec = node_rows.get(node_id), state.nodes.get(node_id)
            if (
                row is None
                or rec is None
                or row.seq != rec["seq"]
                or loads_strict(row.body.encode()) != rec["body"]
            ):
                seq = rec["seq"] if rec else (row.seq if row else None)
                raise LogIntegrityError(f"table 'nodes' disagrees with the log for {node_id}", seq)

    # -- mirrors --------------------------------------------------------------------------------
    def export(self, path: str) -> int:
        """Write the whole log and the signed head as JSON lines; return the record count."""
        count = 0
        with open(path, "w", encoding="utf-8") as f:
            head = self.head()
            f.write(canonical_json({"head": head.as_json()}).decode() + "\n")
            for record, _ in self.iter_log():
                if record.seq > head.seq:
                    break  # appended while exporting: the next export carries it
                f.write(canonical_json(record.as_json()).decode() + "\n")
                count += 1
        return count

    def sync(self, records: Iterable[Record], head: Head, *, trusted_key: str | None = None) -> int:
        """Append another registry's records past our head (this registry is its mirror).

        The source's head must be signed by ``trusted_key`` (or by the key this mirror saw
        before); records must continue our log exactly (same hashes up to our head), else
        :class:`MirrorError` (fork or rollback). Returns the number of records added."""
        with self.engine.begin() as conn:
            lock_for_append(conn)
            pinned = conn.execute(sa.select(meta.c.v).where(meta.c.k == "source_key")).scalar()
            key = trusted_key or pinned or head.registry_key
            if pinned is not None and key != pinned:
                raise MirrorError("source is signed by another registry key than before")
            if head.registry_key != key:
                raise MirrorError("source head is not signed by the trusted registry key")
            try:
                head.verify()
            except RegistryError:
                raise MirrorError("source head signature does not verify") from None
            ours = conn.execute(
                sa.select(entries.c.seq, entries.c.hash).order_by(entries.c.seq.desc()).limit(1)
            ).first()
            our_seq, our_hash = (ours.seq, ours.hash) if ours else (0, None)
            if head.seq < our_seq:
                raise MirrorError(
                    f"source head seq {head.seq} is behind ours ({our_seq}): rollback"
                )
            state = SQLState(conn)
            prev, added, last_hash = our_hash, 0, our_hash
            for record in records:
                if record.seq <= our_seq:
                    stored = conn.execute(
                        sa.select(entries.c.hash).where(entries.c.seq == record.seq)
                    ).scalar()
                    if stored != record.hash:
                        raise MirrorError("source log differs from ours: a fork", record.seq)
                    continue
                if record.seq != our_seq + added + 1 or record.prev != prev:
                    raise MirrorError("source records do not continue our log", record.seq)
                try:
                    verdict = judge(state, record.entry, record.seq)
                except RegistryError as exc:
                    raise MirrorError(f"source entry breaks the rules: {exc}", record.seq) from None
                if verdict.existing is not None:
                    raise MirrorError(f"duplicate of seq {verdict.existing}", record.seq)
                self._insert(conn, record)
                apply_effects(conn, verdict.effects)
                prev = last_hash = record.hash
                added += 1
            if our_seq + added != head.seq or last_hash != head.hash:
                raise MirrorError("source records do not end at its signed head")
            _put_meta(conn, "head", canonical_json(head.as_json()).decode())
            _put_meta(conn, "registry_key", key)
            if pinned is None:
                _put_meta(conn, "source_key", key)
            return added


def _put_meta(conn: sa.Connection, key: str, value: str) -> None:
    """Insert or replace one row of the ``meta`` table (inside the caller's transaction)."""
    if conn.execute(meta.update().where(meta.c.k == key).values(v=value)).rowcount == 0:
        conn.execute(meta.insert().values(k=key, v=value))


def read_export(path: str) -> tuple[Head, list[Record]]:
    """The head and records of a file written by :meth:`Registry.export`."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if not lines:
        raise InvalidEntryError(f"{path} is empty")
    try:
        h = loads_strict(lines[0].encode())["head"]
        head = Head(h["seq"], h["hash"], h["sig"], h["registry_key"])
        records = [Record.from_json(loads_strict(line.encode())) for line in lines[1:] if line]
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidEntryError(f"{path} is not a registry export: {exc}") from None
    return head, records
