"""``cidflow node start``: the one process an operator runs on a machine that lends disk and
compute.

It (1) serves the node's blob store over HTTP (:mod:`node_agent.blobs_app`): its own token
authorises everything, the signatures of its peers' keys (``peers``: the other nodes of its
cluster, the coordinator) only PUTs of blobs, (2) holds private datasets, stored in its own home
only (folders 0700, their blob files 0400) and never served or replicated, (3) announces itself
to the registry with a signed ``node`` entry and re-announces every ``heartbeat`` seconds, and
(4) with a Prefect API, serves the node-side flows as deployments ``FLOW/NODE`` in child
processes (:mod:`node_agent.serve_flows`), whose flow runs use the cluster's store through a
local cache (:mod:`artifacts.cluster`). A child that dies is restarted
(:mod:`node_agent.supervise`).

Stopping it (SIGTERM or SIGINT) stops the children too.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from artifacts.blobstore.http import MAX_BLOB
from artifacts.store import ArtifactStore
from node_agent.auth import load_or_create_token, read_secret
from node_agent.errors import NodeConfigError
from node_agent.hardware import probe_hardware
from node_agent.supervise import Supervisor
from registry.identity import Identity

__all__ = ["NodeAgent", "NodeOptions", "private_blob_cids"]

_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
NODE_KEY = "node"  # the same key signs this node's receipts (flows.tasks.NODE_KEY)
log = logging.getLogger("cidflow.node")


@dataclass(frozen=True)
class NodeOptions:
    name: str
    home: Path
    host: str = "127.0.0.1"
    port: int = 8470
    capacity: int | None = None
    private: tuple[tuple[str, Path], ...] = ()
    #: Output policy per private dataset name (default ``model``, see :mod:`flows.private`).
    policies: tuple[tuple[str, str], ...] = ()
    registry: str | None = None
    prefect_api: str | None = None
    #: A 0600 file holding the Prefect API's ``user:password`` (never on a command line).
    prefect_auth_file: Path | None = None
    #: Coordinator public keys allowed to start runs here (none: the node runs nothing).
    allowed_coordinators: tuple[str, ...] = ()
    heartbeat: float = 60.0
    max_blob: int = MAX_BLOB
    allowed_hosts: tuple[str, ...] = ()
    peers: tuple[str, ...] = ()  # public keys whose signed PUTs are accepted
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def private_blob_cids(store: ArtifactStore, cids: Iterable[str]) -> set[str]:
    """Every blob the artifacts ``cids`` consist of: root manifest, table nodes and chunks."""
    out: set[str] = set()
    for cid in cids:
        art = store.open_artifact(cid)
        out.add(str(art.cid))
        out.update(str(c) for c in art.tree_nodes())
        out.update(str(c) for c in art.blob_cids())
    return out


def _read_secret(path: Path) -> str:
    """The content of a credentials file that only its owner may read (one-line errors)."""
    try:
        text = read_secret(path)
    except OSError as exc:  # InsecureTokenError too: it is a PermissionError
        raise NodeConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not text:
        raise NodeConfigError(f"{path} is empty")
    return text


def _content_free(data: bytes) -> bool:
    """Whether ``data`` is a zarr group's metadata without attributes: the same bytes in every
    hierarchy with such a group, so holding it tells nothing about any dataset."""
    if len(data) > 256:
        return False
    try:
        doc = json.loads(data)
    except ValueError:
        return False
    return (
        isinstance(doc, dict)
        and doc.get("node_type") == "group"
        and not doc.get("attributes")
        and set(doc) <= {"attributes", "zarr_format", "node_type"}
    )


def hidden_blob_cids(store: ArtifactStore, private_cids: Iterable[str]) -> set[str]:
    """The private blobs a node hides: all but the content-free ones (see :func:`_content_free`),
    which any public artifact may share and which peers must be able to read from this node."""
    return {c for c in private_cids if not _content_free(store.blobs.get(c))}


def _protect(store: ArtifactStore, cids: Iterable[str]) -> None:
    """Make the blob files of private datasets readable by their owner only (0400)."""
    blobs: Any = store.blobs
    for cid in cids:
        os.chmod(blobs.path_of(cid), 0o400)


class NodeAgent:
    """One node: prepared by the constructor (home, token, key, private data), run by
    :meth:`serve`."""

    def __init__(self, options: NodeOptions) -> None:
        if not _NAME.fullmatch(options.name):
            raise NodeConfigError(
                f"node name {options.name!r}: use 1-64 lowercase letters, digits and '-'"
            )
        self.options = options
        self.home = options.home.expanduser().absolute()
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)  # its token, keys and private data are its operator's only
        self.token = load_or_create_token(self.home)
        self.identity = Identity.load_or_create(self.home, NODE_KEY)
        from flows.run_requests import save_allowed_coordinators

        save_allowed_coordinators(self.home, options.allowed_coordinators)
        # The blobs this node serves and stores for the cluster: always its local folder.
        self.store = ArtifactStore(self.home)
        os.chmod(self.home / "blobs", 0o700)
        self.private = self._load_private(options.private)
        # Blobs of private datasets are hidden, whoever sends the same bytes later (a PUT never
        # unhides one); only content-free ones (an empty group's metadata) are served.
        private = private_blob_cids(self.store, self.private.values())
        _protect(self.store, private)
        self.private_cids = hidden_blob_cids(self.store, private)
        self.flows: Supervisor | None = None  # the serving children, once started
        self._stop = threading.Event()

    def _load_private(self, items: tuple[tuple[str, Path], ...]) -> dict[str, str]:
        """Store the ``--private`` datasets (pinned, in this home only) with their policies;
        return name → CID of every private dataset the node holds."""
        from flows.datasets import put_dataset
        from flows.errors import FlowError
        from flows.private import (
            DEFAULT_POLICY,
            PrivateDataset,
            check_policy,
            load_private,
            save_private,
        )

        datasets = load_private(self.home)
        policies = dict(self.options.policies)
        for name, path in items:
            if not name or "/" in name or name.startswith("."):
                raise NodeConfigError(f"--private {name}=...: a name without '/' is needed")
            if not Path(path).exists():
                raise NodeConfigError(f"--private {name}={path}: no such file or folder")
            cid = put_dataset(self.store, str(path))
            self.store.pin(cid)
            datasets[name] = PrivateDataset(str(cid), DEFAULT_POLICY)
        for name, policy in policies.items():
            if name not in datasets:
                raise NodeConfigError(f"--policy {name}={policy}: no private dataset {name!r}")
            try:
                datasets[name] = PrivateDataset(datasets[name].cid, check_policy(policy))
            except FlowError as exc:
                raise NodeConfigError(f"--policy {name}={policy}: {exc}") from None
        if items or policies:
            save_private(self.home, datasets)
        return {name: d.cid for name, d in datasets.items()}

    # -- parts -----------------------------------------------------------------------------------
    def app(self) -> Any:
        from node_agent.blobs_app import create_app

        return create_app(
            self.store.blobs,  # type: ignore[arg-type]  # a LocalBlobStore by construction
            token=self.token,
            node_id=self.identity.id,
            name=self.options.name,
            capacity=self.options.capacity,
            max_blob=self.options.max_blob,
            allowed_hosts=self.options.allowed_hosts,
            private=frozenset(self.private_cids),
            peers=(*self.options.peers, self.identity.public_key),  # its own flows' outputs
        )

    def announce(self) -> None:
        """Sign and append this node's ``node`` entry (endpoint, capacity, hardware, used)."""
        if not self.options.registry:
            return
        used = sum(self.store.blobs.stat(c).size for c in self.store.blobs.iter_cids())
        hardware = probe_hardware(import_torch=True).as_json()
        from registry.local import open_target

        registry: Any = open_target(self.options.registry, self.home)
        registry.announce_node(
            self.identity,
            endpoint=self.options.url,
            capacity=self.options.capacity,
            hardware=hardware,
            name=self.options.name,
            used=used,
        )

    def _heartbeats(self) -> None:
        while not self._stop.wait(self.options.heartbeat):
            try:
                self.announce()
            except Exception as exc:  # a registry hiccup must not stop the node
                log.warning("heartbeat failed: %s", exc)

    def start_flows(self) -> None:
        """Serve the node-side flows as Prefect deployments ``FLOW/NAME`` (child processes)."""
        if not self.options.prefect_api:
            return
        env = dict(os.environ)
        env.update(self.options.extra_env)
        if self.options.prefect_auth_file is not None:
            env["PREFECT_API_AUTH_STRING"] = _read_secret(self.options.prefect_auth_file)
        env |= {
            "PREFECT_API_URL": self.options.prefect_api,
            "CIDFLOW_HOME": str(self.home),
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_RUNNER_POLL_FREQUENCY": env.get("PREFECT_RUNNER_POLL_FREQUENCY", "1"),
            "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        }
        cmd = [sys.executable, "-m", "node_agent.serve_flows", "--name", self.options.name]
        # Same process group as this node: stopping the group (cluster down) stops them all.
        # One child serves flows with a process per run, one runs the warm (federated) flows.
        children = {"flows child": cmd, "warm flows child": [*cmd, "--warm"]}
        self.flows = Supervisor(children, env=env, log_path=self.home / "flows.log")
        self.flows.start()

    def stop_flows(self) -> None:
        flows, self.flows = self.flows, None
        if flows is not None:
            flows.stop()

    # -- run -------------------------------------------------------------------------------------
    def serve(self) -> None:
        """Run until SIGTERM/SIGINT: blob server in this thread, heartbeats and flows beside."""
        import uvicorn

        self.announce()
        beat = threading.Thread(target=self._heartbeats, name="cidflow-heartbeat", daemon=True)
        beat.start()
        self.start_flows()
        config = uvicorn.Config(
            self.app(),
            host=self.options.host,
            port=self.options.port,
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=5,
        )
        try:
            uvicorn.Server(config).run()
        finally:
            self._stop.set()
            self.stop_flows()
