"""Publishing and pulling: the bridge between the artifact store and the registry."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from artifacts.cid import as_cid
from artifacts.errors import InvalidCIDError
from artifacts.store import ArtifactStore
from registry.entries import Signed, make_body
from registry.errors import InvalidEntryError, RegistryError
from registry.identity import Identity
from registry.names import parse_name, parse_version
from registry.registry import AppendResult, VersionInfo

__all__ = ["RegistryLike", "parse_price", "publish", "pull"]


class RegistryLike(Protocol):
    """What publish and pull need: the local :class:`Registry` and the HTTP client both fit."""

    def append(self, entry: Signed | dict[str, Any]) -> AppendResult: ...

    def resolve(
        self, ref: str, *, at: int | None = None, prerelease: bool = False
    ) -> VersionInfo: ...


_PRICE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z][A-Za-z0-9]{2,9})?\s*")


def parse_price(text: str | None) -> dict[str, str]:
    """``"12.50 EUR"`` → ``{"amount": "12.50", "currency": "EUR"}``; default free (``0 USD``)."""
    if text is None:
        return {"amount": "0", "currency": "USD"}
    m = _PRICE.fullmatch(text)
    if not m:
        raise InvalidEntryError(f"invalid price {text!r}: expected like '12.50 USD'")
    return {"amount": m.group(1), "currency": (m.group(2) or "USD").upper()}


def publish(
    store: ArtifactStore,
    registry: RegistryLike,
    identity: Identity,
    source: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    license: str = "NOASSERTION",
    price: dict[str, str] | None = None,
    description: str = "",
    tags: list[str] | tuple[str, ...] = (),
    receipt: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[AppendResult, dict[str, Any]]:
    """Add ``source`` (a path, or the CID of a stored artifact), check that every blob of the
    artifact is present and intact, then sign and append a ``publish`` entry."""
    asset = parse_name(name)  # bad names fail before any work
    parsed_version = str(parse_version(version))
    text = os.fspath(source)
    if Path(text).exists():
        cid = store.put_path(text, progress=progress)
    else:
        try:
            cid = as_cid(text)
        except InvalidCIDError:
            raise FileNotFoundError(f"{text} is neither an existing path nor a CID") from None
    report = store.verify([cid])
    if not report.ok:
        why = report.problems[0][1]
        raise RegistryError(f"refusing to publish {cid}: {why}")
    art = store.open_artifact(cid)
    body = make_body(
        "publish", identity, asset=str(asset), version=parsed_version, cid=str(cid),
        kind=art.kind, license=license, price=price or parse_price(None),
        description=description, tags=sorted({t.lower() for t in tags}), size=art.size,
        receipt=receipt,
    )  # fmt: skip
    result = registry.append(Signed.sign(body, identity))
    return result, body


def pull(
    store: ArtifactStore,
    registry: RegistryLike,
    ref: str,
    out: str | os.PathLike[str],
    *,
    at: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int], None] | None = None,
) -> VersionInfo:
    """Resolve ``ref``, verify the artifact's blobs, export it into ``out``."""
    info = registry.resolve(ref, at=at)
    report = store.verify([info.cid])
    if not report.ok:
        why = report.problems[0][1]
        raise RegistryError(f"{info.name}@{info.version} ({info.cid}) is not intact here: {why}")
    store.export(info.cid, out, overwrite=overwrite, progress=progress)
    return info
