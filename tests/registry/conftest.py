"""Registry fixtures: the same suite runs against a SQLite file and a throwaway PostgreSQL.

The PostgreSQL cluster is started once per test session (per xdist worker): ``initdb`` into a
temporary folder, listening on 127.0.0.1 on a free port, ``pg_ctl start -w``; each test gets a
fresh database; the cluster is stopped and deleted at the end. PostgreSQL refuses to run as
root, so as root the binaries run as the ``postgres`` user (``runuser``). ``.ci/run`` installs
PostgreSQL from Debian's packages when it is missing.
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from registry.identity import Identity
from registry.registry import Registry

INSTALL_HINT = (
    "PostgreSQL binaries (initdb, pg_ctl) not found: install them as CI does, with "
    "'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql' "
    "(see .ci/run)"
)


def _pg_bindir() -> Path | None:
    for found in sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True):
        return Path(found).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgCluster:
    port: int
    _names: Iterator[int]

    def admin(self) -> Any:
        import psycopg

        return psycopg.connect(
            f"postgresql://postgres@127.0.0.1:{self.port}/postgres", autocommit=True
        )

    def new_database(self) -> str:
        name = f"reg{next(self._names)}"
        with self.admin() as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail(INSTALL_HINT + (" [CI is set: the install step did not run]" if
                                    os.environ.get("CI") else ""), pytrace=False)  # fmt: skip
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if as_root else []
    root = Path(tempfile.mkdtemp(prefix="cidflow-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    if as_root:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"

    def pg(*args: str) -> None:
        subprocess.run(
            [*prefix, *args], check=True, capture_output=True, env=env, cwd=root, timeout=120
        )

    pg(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
       "--encoding=UTF8", "--no-sync")  # fmt: skip
    port = _free_port()
    opts = (
        f"-h 127.0.0.1 -p {port} -k {sockets} -c fsync=off -c synchronous_commit=off "
        "-c full_page_writes=off -c max_connections=200"
    )
    try:
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "log"),
           "-w", "-t", "60", "start")  # fmt: skip
    except subprocess.CalledProcessError as exc:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"PostgreSQL did not start: {exc.stderr!r}\n{log}", pytrace=False)
    try:
        yield PgCluster(port, itertools.count(1))
    finally:
        subprocess.run(
            [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"],
            capture_output=True,
            env=env,
            cwd=root,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty registry database: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


@pytest.fixture
def new_registry_url(
    request: pytest.FixtureRequest, registry_url: str, tmp_path: Path
) -> Callable[[], str]:
    """More fresh databases on the same backend as ``registry_url`` (mirrors, forks)."""
    counter = itertools.count(1)

    def make() -> str:
        if registry_url.startswith("sqlite"):
            return f"sqlite:///{tmp_path / f'extra{next(counter)}.db'}"
        cluster: PgCluster = request.getfixturevalue("pg_cluster")
        return cluster.new_database()

    return make


@pytest.fixture
def reg(registry_url: str) -> Iterator[Registry]:
    registry = Registry(registry_url, Identity.generate())
    yield registry
    registry.close()


@pytest.fixture
def alice() -> Identity:
    return Identity.generate()


@pytest.fixture
def bob() -> Identity:
    return Identity.generate()
