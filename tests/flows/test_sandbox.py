"""The sandbox for user code, against real processes: each attack is refused or killed with a
clear reason and the caller keeps working; a sandboxed model job gives the same weights,
metrics and predictions as the same job run in process."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from flows.code import load_factory
from flows.errors import SandboxJobError, SandboxUnavailableError
from flows.sandbox import (
    JOB_MOUNT,
    SANDBOX_UID,
    SandboxLimits,
    SandboxResult,
    SandboxSettings,
    run_sandboxed,
    sandbox_backend,
)
from flows.sandbox_jobs import _read_out, run_model_job
from flows.training import TrainConfig, evaluate_model, predict_batches, train_model
from flows.zoo import build_model

# One worker runs them all (make test: --dist loadgroup): the tests count every process of the
# sandbox's uid on the machine, and RLIMIT_NPROC is shared by that uid.
pytestmark = pytest.mark.xdist_group("sandbox")


def _works(kind: str) -> bool:
    try:
        return sandbox_backend(SandboxSettings(backend=kind)) == kind  # type: ignore[arg-type]
    except SandboxUnavailableError:
        return False


#: A backend that does not work here is skipped on a developer's machine, never under CI
#: (``make test`` installs bubblewrap; unshare is util-linux): there its tests run and fail.
BACKENDS = [
    pytest.param(
        k,
        marks=pytest.mark.skipif(
            not os.environ.get("CI") and not _works(k), reason=f"{k} does not work here"
        ),
    )
    for k in ("bwrap", "unshare")
]
FAST = SandboxLimits(wall_seconds=60.0, cpu_seconds=30)


@pytest.fixture(params=BACKENDS)
def settings(request: pytest.FixtureRequest) -> SandboxSettings:
    return SandboxSettings(backend=request.param)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A node home with secrets, as the node keeps them."""
    h = tmp_path / "node-home"
    (h / "keys").mkdir(parents=True)
    (h / "tmp").mkdir()
    (h / "token").write_text("TOKEN-SECRET-42")
    (h / "keys" / "node.pem").write_text("PEM-SECRET-42")
    for p in (h, h / "keys", h / "token", h / "keys" / "node.pem"):
        p.chmod(0o700 if p.is_dir() else 0o600)
    return h


@pytest.fixture
def job_dir(home: Path) -> Path:
    d = home / "tmp" / "job-1"
    d.mkdir(mode=0o700)
    return d


def _py(code: str, job_dir: Path, settings: SandboxSettings, **kw: object) -> SandboxResult:
    return run_sandboxed(
        [sys.executable, "-c", textwrap.dedent(code)],
        job_dir=job_dir,
        hide=[job_dir.parent.parent],
        settings=settings,
        **kw,  # type: ignore[arg-type]
    )


def _caller_still_works() -> None:
    assert subprocess.run(["true"], timeout=30).returncode == 0


def _sandbox_processes(wait: float = 20.0) -> list[int]:
    """Processes of the sandbox user left once the namespace's teardown had ``wait`` s."""
    deadline = time.monotonic() + wait
    while (pids := _uid_processes()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return pids


def _uid_processes() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == SANDBOX_UID:
                    pids.append(int(entry))
            except FileNotFoundError:
                pass
    return pids


# -- isolation ---------------------------------------------------------------------------------


@pytest.fixture
def http_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_no_network(settings: SandboxSettings, job_dir: Path, http_server: int) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{http_server}/", timeout=10) as resp:
        assert resp.status == 200  # the server is there for the caller
    r = _py(
        f"""
        import socket
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", {http_server}))
            print("CONNECTED")
        except OSError as exc:
            print("refused", exc.errno)
        """,
        job_dir,
        settings,
        limits=FAST,
    )
    assert r.ok, r.stderr
    assert "refused" in r.stdout
    assert "CONNECTED" not in r.stdout
    _caller_still_works()


def test_no_secrets_no_writes_outside_the_job(
    settings: SandboxSettings, home: Path, job_dir: Path, tmp_path: Path
) -> None:
    src = Path(__file__).resolve().parents[2]
    targets = [
        home / "token",
        home / "keys" / "node.pem",
        home / "planted",
        src / "flows" / "x.py",
        tmp_path / "outside",
        Path("/etc/planted"),
        Path("/usr/planted"),
    ]
    r = _py(
        f"""
        import os
        for p in {[str(home / "token"), str(home / "keys" / "node.pem")]!r}:
            try:
                print("READ", open(p).read())
            except OSError as exc:
                print("no read", exc.errno)
        print("LIST", os.listdir({str(home)!r}) if os.path.isdir({str(home)!r}) else None)
        for p in {[str(t) for t in targets[2:]]!r}:
            try:
                open(p, "w").write("pwned")
                print("WROTE", p)
            except OSError as exc:
                print("no write", exc.errno)
        open("inside.txt", "w").write("fine")
        caps = open("/proc/self/status").read().split("CapEff:")[1].split()[0]
        print(os.getuid(), os.getgid(), caps)
        """,
        job_dir,
        settings,
        limits=FAST,
    )
    assert r.ok, r.stderr
    assert "SECRET" not in r.stdout
    assert "READ" not in r.stdout
    assert "WROTE" not in r.stdout
    assert "'token'" not in r.stdout
    assert "'keys'" not in r.stdout
    assert f"{SANDBOX_UID} {SANDBOX_UID} 0000000000000000" in r.stdout
    for t in targets[2:]:
        assert not t.exists()
    assert (job_dir / "inside.txt").read_text() == "fine"
    assert (home / "token").read_text() == "TOKEN-SECRET-42"


def test_environment_is_scrubbed(
    settings: SandboxSettings, job_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIDFLOW_NODE_TOKEN", "tok-secret")
    monkeypatch.setenv("PREFECT_API_KEY", "pf-secret")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    r = _py("import os; print(sorted(os.environ.items()))", job_dir, settings, limits=FAST)
    assert r.ok, r.stderr
    assert "secret" not in r.stdout
    assert "CIDFLOW" not in r.stdout
    assert "PREFECT" not in r.stdout
    assert "OMP_NUM_THREADS" in r.stdout
    assert "PYTHONPATH" in r.stdout


# -- limits ------------------------------------------------------------------------------------


def test_process_limit_holds_as_root_too(settings: SandboxSettings, job_dir: Path) -> None:
    r = _py(
        """
        import os, time
        n = 0
        while n < 500:
            try:
                pid = os.fork()
            except OSError as exc:
                print("fork refused after", n, exc.errno)
                break
            if pid == 0:
                time.sleep(60)
                os._exit(0)
            n += 1
        """,
        job_dir,
        settings,
        limits=SandboxLimits(processes=16, wall_seconds=60.0),
    )
    assert r.ok, r.stderr
    refused = [line for line in r.stdout.splitlines() if line.startswith("fork refused")]
    assert refused, r.stdout
    assert int(refused[0].split()[3]) < 16, r.stdout
    assert _sandbox_processes() == []  # the sleeping children died with the namespace
    _caller_still_works()


def test_fork_bomb_is_contained(settings: SandboxSettings, job_dir: Path) -> None:
    r = _py(
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        job_dir,
        settings,
        limits=SandboxLimits(processes=32, wall_seconds=3.0, cpu_seconds=60),
    )
    assert r.killed_by == "timeout"
    assert r.seconds < 30
    assert _sandbox_processes() == []
    _caller_still_works()


def test_memory_limit(settings: SandboxSettings, job_dir: Path) -> None:
    r = _py("b = bytearray(3 << 30)", job_dir, settings, limits=SandboxLimits(memory_bytes=1 << 30))
    assert r.returncode != 0
    assert "MemoryError" in r.stderr
    _caller_still_works()


def test_file_size_limit(settings: SandboxSettings, job_dir: Path) -> None:
    limits = SandboxLimits(file_bytes=1 << 20, wall_seconds=60.0)
    r = _py("open('big', 'wb').write(bytes(2 << 20))", job_dir, settings, limits=limits)
    assert r.returncode != 0
    assert "File too large" in r.stderr
    assert (job_dir / "big").stat().st_size <= 1 << 20
    sh = run_sandboxed(
        ["/bin/sh", "-c", "head -c 2000000 /dev/zero > big2"],
        job_dir=job_dir,
        settings=settings,
        limits=limits,
    )
    assert sh.killed_by == "file size limit"
    assert (job_dir / "big2").stat().st_size <= 1 << 20


def test_cpu_limit(settings: SandboxSettings, job_dir: Path) -> None:
    r = _py("while True: pass", job_dir, settings, limits=SandboxLimits(cpu_seconds=1))
    assert r.killed_by == "cpu limit"
    assert r.seconds < 30
    _caller_still_works()


def test_wall_timeout_kills_everything(settings: SandboxSettings, job_dir: Path) -> None:
    r = _py(
        """
        import subprocess, time
        subprocess.Popen(["sleep", "120"], start_new_session=True)
        print("started", flush=True)
        time.sleep(120)
        """,
        job_dir,
        settings,
        limits=SandboxLimits(wall_seconds=3.0),
    )
    assert r.killed_by == "timeout"
    assert r.reason == "timeout"
    assert "started" in r.stdout
    assert r.seconds < 30
    assert _sandbox_processes() == []
    _caller_still_works()


def test_output_tail_is_bounded(settings: SandboxSettings, job_dir: Path) -> None:
    r = _py(
        "import sys; sys.stdout.write('a' * 1_000_000 + 'END')",
        job_dir,
        settings,
        limits=SandboxLimits(output_tail_bytes=1000),
    )
    assert r.ok
    assert len(r.stdout) == 1000
    assert r.stdout.endswith("END")


# -- no backend --------------------------------------------------------------------------------


def test_no_backend_refuses_and_runs_nothing(
    job_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CIDFLOW_SANDBOX_BACKEND", "none")
    marker = job_dir / "ran"
    with pytest.raises(SandboxUnavailableError) as info:
        run_sandboxed(["/bin/sh", "-c", f"touch {marker}"], job_dir=job_dir)
    assert "\n" not in str(info.value)
    assert "refusing to run user code" in str(info.value)
    assert not marker.exists()
    with pytest.raises(SandboxUnavailableError):
        run_model_job(
            {**_JOB, "op": "predict"},
            {"x": np.zeros((2, 6), np.float32)},
            code_dir=_code(tmp_path),
            work_dir=home / "tmp",
        )
    assert sorted(p.name for p in (home / "tmp").iterdir()) == ["job-1"]  # no job folder made
    missing = SandboxSettings(backend="bwrap", bwrap="/nonexistent/bwrap")
    with pytest.raises(SandboxUnavailableError, match="bwrap: not installed"):
        sandbox_backend(missing)


# -- model jobs --------------------------------------------------------------------------------

_NET = """
from torch import nn

def build(input_shape, n_classes, hidden=16):
    return nn.Sequential(nn.Linear(input_shape[0], hidden), nn.ReLU(),
                         nn.Dropout(0.1), nn.Linear(hidden, n_classes))
"""
_JOB = {
    "module": "tinynet",
    "factory": "build",
    "input_shape": [6],
    "n_classes": 3,
    "model_kwargs": {"hidden": 16},
    "seed": 7,
    "epochs": 3,
    "batch_size": 16,
    "lr": 0.01,
}


def _code(tmp_path: Path, source: str = _NET) -> Path:
    code = tmp_path / "code"
    code.mkdir(exist_ok=True)
    (code / "tinynet.py").write_text(textwrap.dedent(source))
    return code


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0.5).astype(np.int64)
    return x, y


def _reference_model(code: Path, monkeypatch: pytest.MonkeyPatch) -> torch.nn.Module:
    """The same model built in this process, from the same folder (as the worker does)."""
    factory = load_factory(code, "tinynet", "build")
    return build_model(
        "tinynet:build", input_shape=(6,), n_classes=3, seed=7, factory=factory, hidden=16
    )


def test_train_evaluate_predict_match_unsandboxed(
    settings: SandboxSettings, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code = _code(tmp_path)
    x, y = _data()
    kw = {"code_dir": code, "work_dir": home / "tmp", "hide": [home], "settings": settings}
    trained = run_model_job({**_JOB, "op": "train"}, {"x": x, "y": y}, **kw)  # type: ignore[arg-type]

    ref_model = _reference_model(code, monkeypatch)
    ref = train_model(
        ref_model,
        x,
        y,
        TrainConfig(epochs=3, batch_size=16, lr=0.01, seed=7),
        n_classes=3,
        device="cpu",
    )
    assert trained.state_dict is not None
    assert trained.state_dict.keys() == ref.state_dict.keys()
    for name, tensor in ref.state_dict.items():
        assert torch.equal(trained.state_dict[name], tensor), name
    assert trained.metrics == ref.metrics

    evaluated = run_model_job(
        {**_JOB, "op": "evaluate"},
        {"x": x, "y": y},
        state=trained.state_dict,
        **kw,  # type: ignore[arg-type]
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the sandbox (OMP_NUM_THREADS=1): the same float sums
    try:
        assert evaluated.metrics == evaluate_model(ref_model, x, y, n_classes=3)
    finally:
        torch.set_num_threads(threads)

    predicted = run_model_job({**_JOB, "op": "predict"}, {"x": x}, state=trained.state_dict, **kw)  # type: ignore[arg-type]
    assert predicted.predictions is not None
    expected = np.concatenate(list(predict_batches(ref_model, [x])))
    np.testing.assert_array_equal(predicted.predictions, expected)
    assert sorted(p.name for p in (home / "tmp").iterdir()) == []  # every job folder removed


def test_failing_user_code_is_a_clear_job_error(
    settings: SandboxSettings, home: Path, tmp_path: Path
) -> None:
    code = _code(tmp_path, "def build(input_shape, n_classes):\n    raise RuntimeError('boom')\n")
    with pytest.raises(SandboxJobError) as info:
        run_model_job(
            {**_JOB, "op": "predict", "model_kwargs": {}},
            {"x": np.zeros((4, 6), np.float32)},
            code_dir=code,
            work_dir=home / "tmp",
            settings=settings,
        )
    assert "ModelSpecError" in info.value.reason
    assert "boom" in info.value.reason
    assert list((home / "tmp").iterdir()) == []


def test_job_killed_at_a_limit_says_so(
    settings: SandboxSettings, home: Path, tmp_path: Path
) -> None:
    code = _code(tmp_path, "import time\ntime.sleep(120)\ndef build(**kw): pass\n")
    with pytest.raises(SandboxJobError) as info:
        run_model_job(
            {**_JOB, "op": "predict"},
            {"x": np.zeros((4, 6), np.float32)},
            code_dir=code,
            work_dir=home / "tmp",
            settings=settings,
            limits=SandboxLimits(wall_seconds=5.0),
        )
    assert info.value.reason == "timeout"
    assert list((home / "tmp").iterdir()) == []


def test_outputs_are_read_without_following_links(tmp_path: Path, home: Path) -> None:
    job = tmp_path / "job"
    (job / "out").mkdir(parents=True)
    (job / "out" / "result.json").symlink_to(home / "token")
    with pytest.raises(SandboxJobError, match="cannot be opened"):
        _read_out(job, "result.json", 1000)
    (job / "out" / "big.json").write_bytes(b"x" * 2000)
    with pytest.raises(SandboxJobError, match="over the bound"):
        _read_out(job, "big.json", 1000)
    os.rename(job / "out", job / "out2")
    (job / "out").symlink_to(home / "keys")
    with pytest.raises(SandboxJobError, match="not a plain folder"):
        _read_out(job, "node.pem", 1000)
    assert JOB_MOUNT.startswith("/tmp/")
