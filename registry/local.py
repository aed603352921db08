"""Opening the registry a command means: the home's SQLite file, another file or database, or
(through :mod:`registry.client`) a registry service."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from registry.errors import RegistryError
from registry.identity import Identity
from registry.registry import Registry

__all__ = ["database_url", "open_registry", "open_target"]

REGISTRY_KEY = "registry"


def database_url(target: str | None, home: str | os.PathLike[str]) -> str:
    """The SQLAlchemy URL for ``target`` (``None``: ``HOME/registry.db``)."""
    if target is None:
        return f"sqlite:///{Path(home).absolute() / 'registry.db'}"
    if "://" in target:
        return target
    return f"sqlite:///{Path(target).absolute()}"


def open_registry(target: str | None, home: str | os.PathLike[str]) -> Registry:
    """A :class:`Registry` on ``target``.

    A SQLite registry's own key lives beside its file (``registry.db`` → ``registry.db.key``,
    mode 0600), so every home that can write the file can append to it; a server database
    uses the home's ``keys/registry.pem``. A database whose heads another key signs opens
    read-only (queries and ``verify`` only)."""
    url = database_url(target, home)
    if url.startswith("sqlite:///"):
        db = Path(url.removeprefix("sqlite:///"))
        db.parent.mkdir(parents=True, exist_ok=True)
        identity = Identity.load_or_create_file(db.with_name(db.name + ".key"))
    else:
        identity = Identity.load_or_create(home, REGISTRY_KEY)
    try:
        return Registry(url, identity)
    except RegistryError:
        return Registry(url, None)


def open_target(target: str | None, home: str | os.PathLike[str]) -> Any:
    """The registry a ``--registry`` value names: a service URL (a :class:`RegistryClient`,
    appending with ``CIDFLOW_REGISTRY_TOKEN``) or a database (:func:`open_registry`)."""
    if target and target.startswith(("http://", "https://")):
        from registry.client import RegistryClient
        from registry.settings import RegistrySettings

        return RegistryClient(target, token=RegistrySettings().registry_token)
    return open_registry(target, home)
