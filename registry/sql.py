"""The registry's SQL storage (SQLAlchemy Core): the log, and the state folded from it.

``entries`` is the log itself; every other table is derived from it by applying the
:class:`~registry.rules.Effect` lists of accepted entries, inside the same transaction, so the
tables answer queries fast and ``registry verify`` can re-derive and compare them.
SQLite (the embedded default: WAL, ``synchronous=FULL``) and PostgreSQL are both supported.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from artifacts.canonical import canonical_json
from registry.identity import fingerprint
from registry.names import parse_version
from registry.rules import Effect

__all__ = ["SQLState", "apply_effects", "create_engine", "metadata"]

metadata = sa.MetaData()

entries = sa.Table(
    "entries",
    metadata,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prev", sa.String(64), nullable=True),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("key", sa.String(64), nullable=False),
    sa.Column("record", sa.Text, nullable=False),  # canonical JSON of {seq, prev, entry}
)
namespaces = sa.Table(
    "namespaces",
    metadata,
    sa.Column("namespace", sa.String(64), primary_key=True),
    sa.Column("skeleton", sa.String(64), nullable=False, unique=True),
    sa.Column("owner", sa.String(64), nullable=False),
)
grants = sa.Table(
    "grants",
    metadata,
    sa.Column("namespace", sa.String(64), primary_key=True),
    sa.Column("key", sa.String(64), primary_key=True),
)
assets = sa.Table(
    "assets",
    metadata,
    sa.Column("asset", sa.String(130), primary_key=True),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("skeleton", sa.String(64), nullable=False),
    sa.UniqueConstraint("namespace", "skeleton"),
)
versions = sa.Table(
    "versions",
    metadata,
    sa.Column("asset", sa.String(130), primary_key=True),
    sa.Column("version", sa.String(64), primary_key=True),
    sa.Column("major", sa.BigInteger, nullable=False),
    sa.Column("minor", sa.BigInteger, nullable=False),
    sa.Column("patch", sa.BigInteger, nullable=False),
    sa.Column("prerelease", sa.String(64), nullable=False),
    sa.Column("cid", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("license", sa.String(512), nullable=False),
    sa.Column("price_amount", sa.String(40), nullable=False),
    sa.Column("price_currency", sa.String(10), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("tags", sa.Text, nullable=False),  # JSON list
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("receipt", sa.String(128), nullable=True),
    sa.Column("publisher", sa.String(64), nullable=False),
    sa.Column("timestamp", sa.String(32), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("yanked_seq", sa.Integer, nullable=True),
    sa.Column("yank_reason", sa.Text, nullable=True),
    sa.Index("versions_seq", "seq"),
)
nonces = sa.Table(
    "nonces",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("nonce", sa.String(32), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("digest", sa.String(64), nullable=False),
)
nodes = sa.Table(
    "nodes",
    metadata,
    sa.Column("node_id", sa.String(128), primary_key=True),
    sa.Column("seq", sa.Integer, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
)
meta = sa.Table(
    "meta",
    metadata,
    sa.Column("k", sa.String(32), primary_key=True),
    sa.Column("v", sa.Text, nullable=False),
)
DERIVED = (namespaces, grants, assets, versions, nonces, nodes)


def create_engine(url: str) -> Engine:
    """An engine for ``url`` with durable settings; creates the tables if missing."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    engine = sa.create_engine(url, future=True, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi: Any, _record: Any) -> None:
            dbapi.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves
            cur = dbapi.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    metadata.create_all(engine)
    return engine


def lock_for_append(conn: Connection) -> None:
    """Serialise appends: SQLite's BEGIN IMMEDIATE already did; PostgreSQL takes a lock."""
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7142001)")


class SQLState:
    """:class:`~registry.rules.StateView` over the derived tables, inside a transaction."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def owner(self, namespace: str) -> str | None:
        q = sa.select(namespaces.c.owner).where(namespaces.c.namespace == namespace)
        return self.conn.execute(q).scalar_one_or_none()

    def grantees(self, namespace: str) -> set[str]:
        q = sa.select(grants.c.key).where(grants.c.namespace == namespace)
        return set(self.conn.execute(q).scalars())

    def namespace_by_skeleton(self, skel: str) -> str | None:
        q = sa.select(namespaces.c.namespace).where(namespaces.c.skeleton == skel)
        return self.conn.execute(q).scalar_one_or_none()

    def asset_by_skeleton(self, namespace: str, skel: str) -> str | None:
        q = sa.select(assets.c.asset).where(
            assets.c.namespace == namespace, assets.c.skeleton == skel
        )
        return self.conn.execute(q).scalar_one_or_none()

    def version(self, asset: str, version: str) -> tuple[str, int, bool] | None:
        q = sa.select(versions.c.cid, versions.c.seq, versions.c.yanked_seq).where(
            versions.c.asset == asset, versions.c.version == version
        )
        row = self.conn.execute(q).first()
        return (row.cid, row.seq, row.yanked_seq is not None) if row else None

    def nonce(self, key: str, nonce: str) -> tuple[int, str] | None:
        q = sa.select(nonces.c.seq, nonces.c.digest).where(
            nonces.c.key == key, nonces.c.nonce == nonce
        )
        row = self.conn.execute(q).first()
        return (row.seq, row.digest) if row else None


def apply_effects(conn: Connection, effects: list[Effect]) -> None:
    for e in effects:
        a = e.args
        if e.op == "claim":
            conn.execute(namespaces.insert(), a)
        elif e.op == "asset":
            conn.execute(assets.insert(), a)
        elif e.op == "version":
            conn.execute(versions.insert(), version_row(a["body"], a["seq"]))
        elif e.op == "yank":
            conn.execute(
                versions.update()
                .where(versions.c.asset == a["asset"], versions.c.version == a["version"])
                .values(yanked_seq=a["seq"], yank_reason=a["reason"])
            )
        elif e.op == "grant":
            conn.execute(grants.insert(), {"namespace": a["namespace"], "key": a["key"]})
        elif e.op == "transfer":
            conn.execute(
                namespaces.update()
                .where(namespaces.c.namespace == a["namespace"])
                .values(owner=a["owner"])
            )
            conn.execute(grants.delete().where(grants.c.namespace == a["namespace"]))
        elif e.op == "node":
            conn.execute(nodes.delete().where(nodes.c.node_id == a["node_id"]))
            body = canonical_json(a["body"]).decode()
            conn.execute(nodes.insert(), {"node_id": a["node_id"], "seq": a["seq"], "body": body})
        elif e.op == "nonce":
            conn.execute(nonces.insert(), a)


def version_row(body: dict[str, Any], seq: int) -> dict[str, Any]:
    v = parse_version(body["version"])
    return {
        "asset": body["asset"],
        "version": body["version"],
        "major": v.major,
        "minor": v.minor,
        "patch": v.patch,
        "prerelease": v.prerelease or "",
        "cid": body["cid"],
        "kind": body["kind"],
        "license": body["license"],
        "price_amount": body["price"]["amount"],
        "price_currency": body["price"]["currency"],
        "description": body["description"],
        "tags": json.dumps(body["tags"]),
        "size": body["size"],
        "receipt": body.get("receipt"),
        "publisher": fingerprint(body["key"]),
        "timestamp": body["timestamp"],
        "seq": seq,
        "yanked_seq": None,
        "yank_reason": None,
    }
