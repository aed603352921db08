"""Private datasets of a node and their owners' output policies (compute-to-data).

A node started with ``--private NAME=PATH`` stores ``PATH`` as a dataset in its own home only
and lists it in ``HOME/private.json`` (0600) with the policy its owner set
(``--policy NAME=model|aggregate|rows``; default ``model``)::

    {"NAME": {"cid": "bagaa...", "policy": "model"}, ...}

Node-side flows accept ``private:NAME`` wherever a dataset CID goes and resolve it there, on
the node, for one *use*; the policy decides what may leave the node:

============  ============================================================================
policy        what may leave
============  ============================================================================
``model``     trained weights and aggregate metrics: ``train``, ``evaluate``, federated
``aggregate`` only federated updates (which the federated protocol protects): federated
``rows``      anything, predictions and exports too (data private only by location)
============  ============================================================================

A name the node does not hold and a use its policy forbids give the same
:class:`~flows.errors.PrivateDataError`, which names nothing else the node holds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

from artifacts.atomic import write_atomic
from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import as_cid
from artifacts.errors import InvalidCIDError
from flows.errors import FlowError, PrivateDataError

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "PRIVATE_FILE",
    "PRIVATE_PREFIX",
    "USES",
    "Policy",
    "PrivateDataset",
    "Use",
    "allows",
    "approve_code",
    "check_policy",
    "load_private",
    "resolve_private",
    "save_private",
]

PRIVATE_FILE: Final = "private.json"
PRIVATE_PREFIX: Final = "private:"
Policy = Literal["model", "aggregate", "rows"]
Use = Literal["train", "evaluate", "infer", "federated"]
POLICIES: Final[tuple[str, ...]] = get_args(Policy)
USES: Final[tuple[str, ...]] = get_args(Use)
DEFAULT_POLICY: Final[Policy] = "model"
_ALLOWED: Final[dict[str, frozenset[str]]] = {
    "model": frozenset({"train", "evaluate", "federated"}),
    "aggregate": frozenset({"federated"}),
    "rows": frozenset(USES),
}


@dataclass(frozen=True, slots=True)
class PrivateDataset:
    """One private dataset: its CID, its owner's policy, and the code artifacts (CIDs) its
    owner approved to run on it (compute-to-data: user code needs the owner's approval on top
    of the operator's allow-list; the zoo needs none)."""

    cid: str
    policy: Policy = DEFAULT_POLICY
    code: tuple[str, ...] = ()


def allows(policy: str, use: str) -> bool:
    """Whether a dataset under ``policy`` may be used for ``use`` on its node."""
    return use in _ALLOWED.get(policy, frozenset())


def check_policy(policy: str) -> Policy:
    if policy not in POLICIES:
        raise FlowError(f"unknown private data policy {policy!r} (one of {', '.join(POLICIES)})")
    return policy  # type: ignore[return-value]


def load_private(home: str | os.PathLike[str]) -> dict[str, PrivateDataset]:
    """The private datasets of the node whose home is ``home``, by name."""
    path = Path(home) / PRIVATE_FILE
    try:
        doc = loads_strict(path.read_bytes())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise FlowError(f"{path} is not strict JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FlowError(f"{path} is not a JSON object of dataset name -> {{cid, policy}}")
    out = {}
    for name, entry in doc.items():
        if not isinstance(entry, dict) or set(entry) - {"code"} != {"cid", "policy"}:
            raise FlowError(f'{path}: {name!r} is not {{"cid": ..., "policy": ..., "code": ...}}')
        try:
            cid = str(as_cid(entry["cid"]))
            code = tuple(str(as_cid(c)) for c in entry.get("code", []))
        except (InvalidCIDError, TypeError):
            raise FlowError(f"{path}: {name!r} names a CID that is not valid") from None
        out[str(name)] = PrivateDataset(cid, check_policy(entry["policy"]), code)
    return out


def save_private(home: str | os.PathLike[str], datasets: dict[str, PrivateDataset]) -> None:
    """Write ``HOME/private.json`` atomically, mode 0600 from creation."""
    path = Path(home) / PRIVATE_FILE
    doc = {
        name: {"cid": d.cid, "policy": d.policy, "code": sorted(set(d.code))}
        for name, d in datasets.items()
    }
    write_atomic(path, canonical_json(doc), mode=0o600)


def resolve_private(
    home: str | os.PathLike[str], dataset: str, use: Use, code: str | None = None
) -> str:
    """``private:NAME`` → the CID this node holds under that name, if its policy allows
    ``use`` and, for user code (``code``, a code artifact's CID), its owner approved that code;
    any other dataset reference is returned as it is."""
    if not dataset.startswith(PRIVATE_PREFIX):
        return dataset
    name = dataset.removeprefix(PRIVATE_PREFIX)
    found = load_private(home).get(name)
    if found is None or not allows(found.policy, use):
        raise PrivateDataError(f"private dataset {name!r} is not available for {use} on this node")
    if code is not None and code not in found.code:
        raise PrivateDataError(
            f"private dataset {name!r} is not available for {use} with code {code} on this "
            "node (its owner approves code: cidflow node approve NAME CODE_CID)"
        )
    return found.cid


def approve_code(
    home: str | os.PathLike[str], name: str, code: str, *, revoke: bool = False
) -> bool:
    """The data owner approves code artifact ``code`` for private dataset ``name`` (with
    ``revoke``: withdraws it); whether anything changed."""
    datasets = load_private(home)
    if name not in datasets:
        raise PrivateDataError(f"this node holds no private dataset {name!r}")
    try:
        cid = str(as_cid(code))
    except InvalidCIDError:
        raise FlowError(f"{code!r} is not a code artifact's CID") from None
    found = datasets[name]
    approved = set(found.code) - {cid} if revoke else set(found.code) | {cid}
    if approved == set(found.code):
        return False
    datasets[name] = PrivateDataset(found.cid, found.policy, tuple(sorted(approved)))
    save_private(home, datasets)
    return True
