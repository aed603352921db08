"""The registry's rules, written once: the local registry, the service and ``registry verify``
all judge entries with :func:`judge`, over any :class:`StateView` (SQL tables or memory).

:func:`judge` never mutates: it returns the :class:`Effect` list an accepted entry causes, or
raises. Rules: valid signature; a namespace belongs to the first key that acts in it, plus the
keys it grants; a published version never re-points (same CID again is a no-op); names that
differ from an existing one only by case or separators are refused; a nonce is used once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from registry.entries import Signed
from registry.errors import InvalidEntryError, NamespaceError, NotFoundError, VersionConflictError
from registry.identity import fingerprint
from registry.names import parse_name, skeleton

__all__ = ["Effect", "MemoryState", "StateView", "Verdict", "judge"]


@dataclass(frozen=True, slots=True)
class Effect:
    """One change to the state: ``op`` and its arguments."""

    op: str  # claim | asset | version | yank | grant | transfer | node | nonce
    args: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What an entry does: its effects, or ``existing`` (the seq that already did it)."""

    effects: list[Effect] = field(default_factory=list)
    existing: int | None = None


class StateView(Protocol):
    def owner(self, namespace: str) -> str | None: ...

    def grantees(self, namespace: str) -> set[str]: ...

    def namespace_by_skeleton(self, skel: str) -> str | None: ...

    def asset_by_skeleton(self, namespace: str, skel: str) -> str | None: ...

    def version(self, asset: str, version: str) -> tuple[str, int, bool] | None:
        """(cid, seq, yanked) of a published version."""
        ...

    def nonce(self, key: str, nonce: str) -> tuple[int, str] | None:
        """(seq, entry digest) of the entry that used this nonce."""
        ...


def _may_write(view: StateView, key: str, namespace: str) -> list[Effect]:
    owner = view.owner(namespace)
    if owner is None:
        taken = view.namespace_by_skeleton(skeleton(namespace))
        if taken is not None and taken != namespace:
            raise InvalidEntryError(
                f"namespace {namespace!r} is confusable with existing {taken!r}"
            )
        return [Effect("claim", {"namespace": namespace, "skeleton": skeleton(namespace),
                                 "owner": key})]  # fmt: skip
    if key != owner and key not in view.grantees(namespace):
        raise NamespaceError(
            f"namespace {namespace!r} belongs to {fingerprint(owner)}; "
            f"{fingerprint(key)} has no grant for it"
        )
    return []


def judge(view: StateView, entry: Signed, seq: int) -> Verdict:
    """The verdict on ``entry`` if appended at ``seq`` (raises when it breaks a rule)."""
    entry.verify()
    body = entry.body
    key = body["key"]
    used = view.nonce(key, body["nonce"])
    if used is not None:
        if used[1] == entry.digest:
            return Verdict(existing=used[0])  # an identical replay: idempotent
        raise InvalidEntryError(f"nonce already used by seq {used[0]} (replayed or forged entry)")
    kind = body["type"]
    effects: list[Effect] = []
    if kind == "publish":
        asset = parse_name(body["asset"])
        effects += _may_write(view, key, asset.namespace)
        taken = view.asset_by_skeleton(asset.namespace, skeleton(asset.name))
        if taken is not None and taken != str(asset):
            raise InvalidEntryError(f"asset {str(asset)!r} is confusable with existing {taken!r}")
        existing = view.version(str(asset), body["version"])
        if existing is not None:
            if existing[0] != body["cid"]:
                raise VersionConflictError(
                    f"{asset}@{body['version']} already points to {existing[0]} (seq "
                    f"{existing[1]}), not {body['cid']}: a published version never changes; "
                    "publish a new version"
                )
            return Verdict(existing=existing[1])
        if taken is None:
            effects.append(Effect("asset", {"asset": str(asset), "namespace": asset.namespace,
                                            "skeleton": skeleton(asset.name)}))  # fmt: skip
        effects.append(Effect("version", {"body": body, "seq": seq}))
    elif kind == "yank":
        asset = parse_name(body["asset"])
        effects += _may_write(view, key, asset.namespace)
        existing = view.version(str(asset), body["version"])
        if existing is None:
            raise NotFoundError(f"{asset}@{body['version']} is not published")
        if existing[2]:
            return Verdict(existing=existing[1])
        effects.append(Effect("yank", {"asset": str(asset), "version": body["version"],
                                       "seq": seq, "reason": body["reason"]}))  # fmt: skip
    elif kind in ("grant", "transfer"):
        namespace = body["namespace"]
        claim = _may_write(view, key, namespace)
        owner = view.owner(namespace)
        if owner is not None and owner != key:
            raise NamespaceError(f"only the owner of {namespace!r} may {kind} it")
        effects += claim
        if kind == "grant":
            effects.append(Effect("grant", {"namespace": namespace, "key": body["grantee"]}))
        else:
            effects.append(Effect("transfer", {"namespace": namespace, "owner": body["to"]}))
    elif kind == "node":
        if body["node_id"] != fingerprint(key):
            raise InvalidEntryError("node_id must be the fingerprint of the signing key")
        effects.append(Effect("node", {"node_id": body["node_id"], "body": body, "seq": seq}))
    effects.append(Effect("nonce", {"key": key, "nonce": body["nonce"], "seq": seq,
                                    "digest": entry.digest}))  # fmt: skip
    return Verdict(effects)


class MemoryState:
    """The fold of a log in memory (``registry verify``, mirrors, tests)."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}
        self.grants: dict[str, set[str]] = {}
        self.ns_skeletons: dict[str, str] = {}
        self.asset_skeletons: dict[tuple[str, str], str] = {}
        self.versions: dict[tuple[str, str], dict[str, Any]] = {}
        self.nonces: dict[tuple[str, str], tuple[int, str]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}

    def owner(self, namespace: str) -> str | None:
        return self.owners.get(namespace)

    def grantees(self, namespace: str) -> set[str]:
        return self.grants.get(namespace, set())

    def namespace_by_skeleton(self, skel: str) -> str | None:
        return self.ns_skeletons.get(skel)

    def asset_by_skeleton(self, namespace: str, skel: str) -> str | None:
        return self.asset_skeletons.get((namespace, skel))

    def version(self, asset: str, version: str) -> tuple[str, int, bool] | None:
        rec = self.versions.get((asset, version))
        return (rec["cid"], rec["seq"], rec["yanked"]) if rec else None

    def nonce(self, key: str, nonce: str) -> tuple[int, str] | None:
        return self.nonces.get((key, nonce))

    def apply(self, effects: list[Effect]) -> None:
        for e in effects:
            a = e.args
            if e.op == "claim":
                self.owners[a["namespace"]] = a["owner"]
                self.ns_skeletons[a["skeleton"]] = a["namespace"]
            elif e.op == "asset":
                self.asset_skeletons[(a["namespace"], a["skeleton"])] = a["asset"]
            elif e.op == "version":
                b = a["body"]
                self.versions[(b["asset"], b["version"])] = {
                    "cid": b["cid"], "seq": a["seq"], "yanked": False, "body": b
                }  # fmt: skip
            elif e.op == "yank":
                self.versions[(a["asset"], a["version"])]["yanked"] = True
            elif e.op == "grant":
                self.grants.setdefault(a["namespace"], set()).add(a["key"])
            elif e.op == "transfer":
                self.owners[a["namespace"]] = a["owner"]
                self.grants.pop(a["namespace"], None)
            elif e.op == "node":
                self.nodes[a["node_id"]] = {"seq": a["seq"], "body": a["body"]}
            elif e.op == "nonce":
                self.nonces[(a["key"], a["nonce"])] = (a["seq"], a["digest"])
