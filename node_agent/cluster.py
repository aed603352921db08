"""``cidflow cluster up/status/down``: a local cluster on 127.0.0.1 for development and demos.

``up`` starts, as background processes of their own (new sessions, so they outlive the command):
a Prefect server (SQLite, under ``HOME/prefect``) and N node agents (``cidflow node start``)
with homes ``HOME/nodes/node-K``. Each node has its own credentials, made before it starts: its
token ``token`` (0600, for everything on that node only) and its key ``keys/node.pem``; the
cluster home has a coordinator key ``HOME/keys/coordinator.pem``. A node accepts PUTs signed by
the other nodes' keys and the coordinator's (``--allow-peer``): replication, never deletes. The
home's ``cluster.json`` names each node's token file (the home's operator runs every node: gc
and listings) and the coordinator key (its PUTs); a node's own ``cluster.json`` names only its
own key. No secret is put on a command line (the registry target travels in
``CIDFLOW_NODE_REGISTRY``). The registry is ``HOME/registry.db``, where nodes announce
themselves. It then writes ``HOME/cluster.json``, after which ``cidflow --home HOME ...`` stores
blobs on the cluster (replicated, see :mod:`artifacts.cluster`), runs flows on its nodes and
reads its registry. ``down`` stops exactly the processes ``up`` recorded (each checked by its
command line, so a reused pid is never signalled) and moves ``cluster.json`` aside.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from artifacts.atomic import write_atomic
from artifacts.cluster import CLUSTER_FILE
from flows.run_requests import COORDINATOR_KEY  # the home's key: signs requests and PUTs
from node_agent.agent import NODE_KEY
from node_agent.auth import TOKEN_FILE, load_or_create_token
from node_agent.errors import NodeConfigError
from node_agent.serve_flows import NODE_FLOW_NAMES
from registry.identity import Identity, fingerprint

__all__ = [
    "cluster_down",
    "cluster_status",
    "cluster_up",
    "load_cluster",
    "prefect_auth",
    "use_cluster_prefect",
]

STOPPED_FILE = "cluster.stopped.json"
PREFECT_AUTH_FILE = "prefect-auth"


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _write_private(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``; mode 0600 from creation (secrets live here)."""
    write_atomic(path, (text + "\n").encode(), mode=0o600)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    _write_private(path, json.dumps(doc, indent=2, sort_keys=True))


def load_cluster(home: Path) -> dict[str, Any] | None:
    path = home / CLUSTER_FILE
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise NodeConfigError(f"{path} is not valid JSON: {exc}") from None
    return doc


def _alive(proc: dict[str, Any]) -> bool:
    """Whether the recorded process still runs and is the one we started (its command line
    holds the marker we gave it)."""
    try:
        cmdline = Path(f"/proc/{int(proc['pid'])}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError, KeyError):
        return False
    return str(proc.get("marker", "")).encode() in cmdline


def _wait_http(
    url: str, deadline: float, proc: subprocess.Popen[bytes], what: str, auth: str | None = None
) -> None:
    import httpx

    basic = httpx.BasicAuth(*auth.split(":", 1)) if auth else None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NodeConfigError(f"{what} exited with {proc.returncode} during start-up")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0, auth=basic).status_code == 200:
                return
        time.sleep(0.2)
    raise NodeConfigError(f"{what} did not answer at {url} in time")


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def prefect_auth(doc: dict[str, Any]) -> str | None:
    """The cluster's Prefect API credentials (``user:password``) from the 0600 file its
    ``cluster.json`` names; ``None`` for a cluster without one."""
    path = doc.get("prefect_auth_file")
    if not path:
        return None
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise NodeConfigError(f"cannot read the cluster's Prefect credentials: {exc}") from None
    if ":" not in text:
        raise NodeConfigError(f"{path} does not hold USER:PASSWORD")
    return text


def use_cluster_prefect(doc: dict[str, Any]) -> None:
    """Point this process's Prefect client at the cluster's API, with its credentials (in the
    environment: Prefect reads them from there; never on a command line)."""
    os.environ["PREFECT_API_URL"] = str(doc["prefect_api"])
    auth = prefect_auth(doc)
    if auth is not None:
        os.environ["PREFECT_API_AUTH_STRING"] = auth


def cluster_up(
    home: Path,
    nodes: int,
    *,
    replication: int = 2,
    capacity: int | None = None,
    private: dict[str, list[str]] | None = None,
    policies: dict[str, list[str]] | None = None,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """Start a Prefect server and ``nodes`` node agents; return what ``--json`` prints.

    ``private`` maps a node name to its ``NAME=PATH`` private datasets, ``policies`` to their
    ``NAME=POLICY`` output policies. The Prefect API requires credentials made for this cluster
    (``HOME/prefect-auth``, 0600, copied into each node's home); each node gets its own key
    (its id is recorded in ``cluster.json``) and allows only this home's coordinator key to
    start runs on it."""
    if not 1 <= nodes <= 32:
        raise NodeConfigError("--nodes must be between 1 and 32")
    if replication < 1 or replication > nodes:
        raise NodeConfigError(f"replication {replication} needs 1..{nodes} nodes")
    home = home.expanduser().absolute()
    existing = load_cluster(home)
    if existing and any(_alive(p) for p in existing.get("processes", [])):
        raise NodeConfigError(f"a cluster is already up in {home}: run 'cidflow cluster down'")
    home.mkdir(parents=True, exist_ok=True)
    auth = f"cidflow:{secrets.token_urlsafe(32)}"
    auth_file = home / PREFECT_AUTH_FILE
    _write_private(auth_file, auth)
    coordinator = Identity.load_or_create(home, COORDINATOR_KEY)
    marker = f"cidflow-cluster-{secrets.token_hex(6)}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CIDFLOW_"))}
    env |= {"PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PYTHONUNBUFFERED": "1"}
    bin_dir = Path(sys.executable).parent
    started: list[tuple[subprocess.Popen[bytes], dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    try:
        port = _free_port()
        api = f"http://127.0.0.1:{port}/api"
        prefect_env = env | {
            "PREFECT_HOME": str(home / "prefect"),
            "CIDFLOW_MARKER": marker,
            "PREFECT_SERVER_API_AUTH_STRING": auth,
        }
        prefect_bin = shutil.which("prefect", path=str(bin_dir)) or "prefect"
        cmd = [prefect_bin, "server", "start", "--host", "127.0.0.1", "--port", str(port)]
        proc = _spawn(cmd, prefect_env, home / "logs" / "prefect.log")
        started.append((proc, {"role": "prefect", "pid": proc.pid, "marker": "server start"}))
        names = [f"node-{k + 1}" for k in range(nodes)]
        node_ports = {name: _free_port() for name in names}
        node_homes = {name: home / "nodes" / name for name in names}
        keys: dict[str, str] = {}
        for name, node_home in node_homes.items():  # each node's own credentials, first
            node_home.mkdir(mode=0o700, parents=True, exist_ok=True)
            load_or_create_token(node_home)
            keys[name] = Identity.load_or_create(node_home, NODE_KEY).public_key
            _write_private(node_home / PREFECT_AUTH_FILE, auth)
        urls = {n: f"http://127.0.0.1:{node_ports[n]}" for n in names}
        storage = {
            "replication": replication,
            "key_file": str(Identity.path(home, COORDINATOR_KEY)),
            "nodes": [
                {"name": n, "url": urls[n], "token_file": str(node_homes[n] / TOKEN_FILE)}
                for n in names
            ],
        }
        _wait_http(f"{api}/health", deadline, proc, "the Prefect server", auth)
        registry = str(home / "registry.db")
        node_env = env | {"CIDFLOW_NODE_REGISTRY": registry}  # not on the command line
        for name in names:
            node_home = node_homes[name]
            node_storage = {
                "replication": replication,
                "cache": True,
                "key_file": str(Identity.path(node_home, NODE_KEY)),
                "nodes": [{"name": n, "url": urls[n]} for n in names],
            }
            _write_json(node_home / CLUSTER_FILE, {"storage": node_storage})
            cmd = [
                sys.executable,
                "-m",
                "cidflow",
                "node",
                "start",
                "--name",
                name,
                "--home",
                str(node_home),
                "--host",
                "127.0.0.1",
                "--port",
                str(node_ports[name]),
                "--prefect-api",
                api,
                "--marker",
                marker,
                "--prefect-auth-file",
                str(node_home / PREFECT_AUTH_FILE),
                "--allow-coordinator",
                coordinator.public_key,
            ]
            peers = [coordinator.public_key, *(keys[n] for n in names if n != name)]
            for key in peers:
                cmd += ["--allow-peer", key]
            if capacity is not None:
                cmd += ["--capacity", str(capacity)]
            for item in (private or {}).get(name, []):
                cmd += ["--private", item]
            for item in (policies or {}).get(name, []):
                cmd += ["--policy", item]
            proc = _spawn(cmd, node_env, home / "logs" / f"{name}.log")
            started.append(
                (
                    proc,
                    {
                        "role": "node",
                        "name": name,
                        "pid": proc.pid,
                        "url": f"http://127.0.0.1:{node_ports[name]}",
                        "home": str(node_home),
                        "marker": marker,
                    },
                )
            )
        for proc, info in started[1:]:
            _wait_http(f"{info['url']}/v1/health", deadline, proc, f"node {info['name']}")
        for proc, info in started[1:]:  # a run started before its deployment exists would fail
            for flow in NODE_FLOW_NAMES:
                _wait_http(
                    f"{api}/deployments/name/{flow}/{info['name']}",
                    deadline,
                    proc,
                    f"node {info['name']}'s {flow} deployment",
                    auth,
                )
    except BaseException:
        for proc, _ in reversed(started):
            _stop_group(proc.pid)
        raise
    doc = {
        "storage": storage,
        "prefect_api": api,
        "prefect_auth_file": str(auth_file),
        "node_ids": {n: fingerprint(k) for n, k in keys.items()},
        "coordinator": coordinator.public_key,
        "registry": registry,
        "processes": [info for _, info in started],
        "started": time.time(),
    }
    with contextlib.suppress(FileNotFoundError):
        (home / STOPPED_FILE).unlink()
    _write_json(home / CLUSTER_FILE, doc)
    return _summary(home, doc)


def _summary(home: Path, doc: dict[str, Any]) -> dict[str, Any]:
    nodes = [
        {"name": p["name"], "url": p["url"], "pid": p["pid"], "home": p["home"]}
        for p in doc.get("processes", [])
        if p.get("role") == "node"
    ]
    prefect = next((p for p in doc.get("processes", []) if p.get("role") == "prefect"), None)
    return {
        "home": str(home),
        "prefect_api": doc.get("prefect_api"),
        "prefect_pid": prefect["pid"] if prefect else None,
        "registry": doc.get("registry"),
        "replication": doc.get("storage", {}).get("replication"),
        "nodes": nodes,
    }


def cluster_status(home: Path) -> dict[str, Any]:
    import httpx

    home = home.expanduser().absolute()
    doc = load_cluster(home)
    if doc is None:
        raise NodeConfigError(f"no cluster in {home} (run 'cidflow cluster up')")
    out = _summary(home, doc)
    for node in out["nodes"]:
        proc = next(p for p in doc["processes"] if p.get("name") == node["name"])
        node["running"] = _alive(proc)
        try:
            info = httpx.get(f"{node['url']}/v1/info", timeout=2.0).json()
            node["status"], node["node_id"] = "live", info.get("node_id")
            node["used"] = info.get("used")
        except (httpx.HTTPError, ValueError):
            node["status"] = "down"
    prefect: dict[str, Any] = next((p for p in doc["processes"] if p.get("role") == "prefect"), {})
    out["prefect_running"] = _alive(prefect)
    return out


def _stop_group(pid: int, timeout: float = 15.0) -> bool:
    """SIGTERM the process group of ``pid``, SIGKILL it after ``timeout``; whether it ran."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    return True


def cluster_down(home: Path) -> dict[str, Any]:
    home = home.expanduser().absolute()
    doc = load_cluster(home)
    if doc is None:
        raise NodeConfigError(f"no cluster in {home} (nothing to stop)")
    stopped = []
    for proc in reversed(doc.get("processes", [])):
        if _alive(proc) and _stop_group(int(proc["pid"])):
            stopped.append({k: proc.get(k) for k in ("role", "name", "pid")})
    os.replace(home / CLUSTER_FILE, home / STOPPED_FILE)
    return {"home": str(home), "stopped": stopped}
