"""``cidflow node start`` as a real process: options and CIDFLOW_NODE_* settings, an upload
over the limit (413, nothing kept), and bad input refused with one line before serving."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from artifacts.cid import compute_cid

pytestmark = [pytest.mark.xdist_group("cluster"), pytest.mark.slow]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CIDFLOW_", "PREFECT_"))}
    return env | extra


def test_max_blob_from_the_environment_and_the_flag(tmp_path: Path) -> None:
    port = _port()
    home = tmp_path / "node"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cidflow",
            "node",
            "start",
            "--name",
            "small",
            "--home",
            str(home),
            "--max-blob",
            "1MiB",
        ],
        env=_env(CIDFLOW_NODE_PORT=str(port)),
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        url = f"http://127.0.0.1:{port}"  # the port came from CIDFLOW_NODE_PORT
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                if httpx.get(f"{url}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        info = httpx.get(f"{url}/v1/info", timeout=5).json()
        assert info["max_blob"] == 1 << 20
        token = (home / "token").read_text().strip()
        big = os.urandom((1 << 20) + 1)
        answer = httpx.put(
            f"{url}/v1/blobs/{compute_cid(big)}",
            content=big,
            timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert answer.status_code == 413
        assert not any((home / "blobs").rglob("b*"))
        assert not list((home / "tmp").glob("*.incomplete"))  # the refused upload left nothing
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--name", "Bad_Name"], "node name 'Bad_Name'"),
        (["--name", "ok", "--private", "nonsense"], "is not NAME=PATH"),
        (["--name", "ok", "--private", "x=/no/such/file.npz"], "no such file or folder"),
        (["--name", "ok", "--capacity", "lots"], "is not a size"),
    ],
)
def test_bad_options_fail_with_one_line(tmp_path: Path, args: list[str], fragment: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "cidflow", "node", "start", "--home", str(tmp_path / "n"), *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert fragment in lines[0]


def test_a_registry_password_stays_out_of_ps_and_the_log(tmp_path: Path) -> None:
    """The registry target comes from CIDFLOW_NODE_REGISTRY (or --registry-file), so the
    password is not in /proc/PID/cmdline (what ps shows) nor in what the node writes; on the
    command line it is refused, without echoing it."""
    secret = "S3cret-pw-" + os.urandom(6).hex()
    url = f"postgresql://cidflow:{secret}@127.0.0.1:{_port()}/registry"  # nothing listens
    log = tmp_path / "node.log"
    url_file = tmp_path / "registry.url"
    url_file.write_text(url + "\n")
    for how in ("env", "file"):
        extra = ["--registry-file", str(url_file)] if how == "file" else []
        with open(log, "ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "cidflow",
                    "node",
                    "start",
                    "--name",
                    "n",
                    "--home",
                    str(tmp_path / how),
                    "--port",
                    str(_port()),
                    *extra,
                ],
                env=_env(**({"CIDFLOW_NODE_REGISTRY": url} if how == "env" else {})),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            cmdline = b""
            deadline = time.monotonic() + 10
            while b"start" not in cmdline and time.monotonic() < deadline:
                cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
                time.sleep(0.01)
            assert b"start" in cmdline, cmdline
            assert secret.encode() not in cmdline
            assert proc.wait(timeout=60) != 0  # it did try that registry (nothing listens)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
    text = log.read_text(errors="replace")
    assert "connection" in text.lower()  # it failed on the registry, as expected
    assert secret not in text
    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "cidflow",
            "node",
            "start",
            "--name",
            "n",
            "--home",
            str(tmp_path / "cli"),
            "--registry",
            url,
        ],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode != 0
    assert "CIDFLOW_NODE_REGISTRY" in refused.stderr
    assert secret not in refused.stdout + refused.stderr


def test_redact_url_masks_only_the_password() -> None:
    from registry.registry import redact_url

    assert redact_url("postgresql://u:p@ss@db:5432/r") == "postgresql://u:***@db:5432/r"
    assert (
        redact_url("postgresql+psycopg://u:pw@db/r?x=a@b")
        == "postgresql+psycopg://u:***@db/r?x=a@b"
    )
    for plain in ("sqlite:////a/r.db", "postgresql://u@db/r", "http://127.0.0.1:8750"):
        assert redact_url(plain) == plain
