"""Run untrusted code (a user's model code on a node) in a child process that is walled off.

:func:`run_sandboxed` runs ``argv`` with

- **no network**: a new network namespace (only a loopback device, down);
- **a minimal filesystem** (``bwrap``): read-only binds of what Python needs (``/usr``,
  ``/lib*``, a few ``/etc`` files, the interpreter's prefixes and site-packages, cidflow's own
  package folders), a private ``/tmp`` (tmpfs of :attr:`SandboxLimits.tmp_bytes`), empty tmpfs
  over every path in ``hide`` (the node's home, the cluster's home: applied even where they lie
  inside a bound folder), and the job folder read-write at :data:`JOB_MOUNT` — the only place it
  can write that outlives it;
- **an unprivileged user**: when we are root, the code runs as uid/gid :data:`SANDBOX_UID`
  (``nobody``) with no capabilities, an empty bounding set and ``no_new_privs`` (the kernel never
  enforces ``RLIMIT_NPROC`` for root, so a fork bomb is only contained as another user);
- **resource limits** (:class:`SandboxLimits`): ``RLIMIT_AS``, ``RLIMIT_CPU``,
  ``RLIMIT_FSIZE``, ``RLIMIT_NOFILE``, ``RLIMIT_NPROC`` and a wall-clock timeout that kills the
  whole PID namespace (its init dies, and with it every process inside);
- **a scrubbed environment** (:func:`sandbox_env`: no tokens, keys, ``PREFECT_*`` or
  ``CIDFLOW_*``), a new session, new PID/IPC/UTS namespaces, stdin from ``/dev/null``.

Backends: ``bwrap`` (Debian's ``bubblewrap``) is preferred; ``unshare`` (util-linux) is the
fallback, with a weaker filesystem view (the host's root stays visible read-only by permission
bits, with tmpfs over ``/tmp``, ``/dev/shm``, ``/var/tmp`` and the ``hide`` paths). With
neither working, :func:`sandbox_backend` raises :class:`SandboxUnavailableError` and no user
code runs. The probe runs ``true`` inside once per process and backend (cached). The knob
``CIDFLOW_SANDBOX_BACKEND`` (:class:`SandboxSettings`) forces a backend or ``none``.

Privilege drop, ``no_new_privs`` and the limits are applied inside the sandbox by a few lines of
trusted Python (:data:`_LAUNCHER`, run with ``python -I -S``) that then ``exec``\\ s ``argv``:
no ``preexec_fn`` in the (multi-threaded) caller.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from flows.errors import SandboxUnavailableError

__all__ = [
    "DEFAULT_LIMITS",
    "JOB_MOUNT",
    "SANDBOX_UID",
    "SandboxLimits",
    "SandboxResult",
    "SandboxSettings",
    "run_sandboxed",
    "sandbox_backend",
    "sandbox_env",
]

Backend = Literal["bwrap", "unshare"]

SANDBOX_UID: Final = 65534
"""uid and gid the code runs as when the caller is root (``nobody``/``nogroup`` on Debian)."""

JOB_MOUNT: Final = "/tmp/job"
"""Where the job folder appears inside the sandbox (its real path, which names the node's
home, is never shown); it is also the working directory."""

_SYSTEM_DIRS: Final = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
_ETC_FILES: Final = (
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/alternatives",
)
_CIDFLOW_PACKAGES: Final = ("artifacts", "registry", "flows", "node_agent", "cidflow")
_HIDE_TMPFS_BYTES: Final = 64 << 10
_PROBE_TIMEOUT: Final = 20.0


class SandboxSettings(BaseSettings):
    """Which sandbox backend runs user code (environment prefix ``CIDFLOW_SANDBOX_``)."""

    model_config = SettingsConfigDict(env_prefix="CIDFLOW_SANDBOX_", extra="ignore")

    backend: Literal["auto", "bwrap", "unshare", "none"] = Field(
        default="auto",
        description="'auto' tries bwrap then unshare; 'bwrap' or 'unshare' forces one (refused "
        "when it does not work); 'none' refuses every run of user code.",
    )
    bwrap: str = Field(
        default="bwrap", description="The bwrap executable (a name on PATH or a path)."
    )
    unshare: str = Field(
        default="unshare", description="The unshare executable (a name on PATH or a path)."
    )


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resource limits of one sandboxed run (the process limits apply to each process inside).

    ``memory_bytes`` is address space (``RLIMIT_AS``), not resident memory: importing torch
    (with one thread) maps ~0.6 GiB and a small CPU training run peaks near 0.7 GiB (measured:
    torch 2.13, CPU build); 4 GiB leaves room for larger models and library arenas.
    ``processes`` counts threads too, and counts every process of :data:`SANDBOX_UID` on the
    machine (concurrent sandboxes share it).
    """

    memory_bytes: int = 4 << 30
    cpu_seconds: int = 600
    file_bytes: int = 1 << 30
    open_files: int = 256
    processes: int = 64
    wall_seconds: float = 900.0
    tmp_bytes: int = 256 << 20
    output_tail_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        for name in (
            "memory_bytes",
            "cpu_seconds",
            "file_bytes",
            "open_files",
            "processes",
            "tmp_bytes",
            "output_tail_bytes",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SandboxLimits.{name} must be a positive integer, got {value!r}")
        wall = self.wall_seconds
        if isinstance(wall, bool) or not isinstance(wall, int | float) or not wall > 0:
            raise ValueError(f"SandboxLimits.wall_seconds must be > 0, got {wall!r}")


DEFAULT_LIMITS: Final = SandboxLimits()


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """How a sandboxed run ended.

    ``killed_by`` is ``None`` for a normal exit, else one of ``"timeout"`` (the wall clock; we
    killed it), ``"cpu limit"`` (SIGXCPU), ``"file size limit"`` (SIGXFSZ) or
    ``"signal SIGNAME"``. ``stdout``/``stderr`` are the last :attr:`SandboxLimits.
    output_tail_bytes` of each stream (decoded with replacement).
    """

    returncode: int
    killed_by: str | None
    stdout: str
    stderr: str
    seconds: float
    backend: Backend

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and self.killed_by is None

    @property
    def reason(self) -> str:
        """One line: ``"ok"``, the ``killed_by`` reason, or ``"exit N"``."""
        if self.killed_by is not None:
            return self.killed_by
        return "ok" if self.returncode == 0 else f"exit {self.returncode}"


# -- backend -----------------------------------------------------------------------------------


def sandbox_backend(settings: SandboxSettings | None = None) -> Backend:
    """The backend that will run user code: ``"bwrap"`` or ``"unshare"``.

    Reads :class:`SandboxSettings` (when not given); each candidate is probed once per process.
    Raises :class:`SandboxUnavailableError` (one line, with each backend's reason) when none
    works or the settings say ``none``.
    """
    s = settings if settings is not None else SandboxSettings()
    if s.backend == "none":
        raise SandboxUnavailableError(
            "sandbox unavailable: disabled (CIDFLOW_SANDBOX_BACKEND=none); "
            "refusing to run user code"
        )
    candidates: list[tuple[Backend, str]] = []
    if s.backend in ("auto", "bwrap"):
        candidates.append(("bwrap", s.bwrap))
    if s.backend in ("auto", "unshare"):
        candidates.append(("unshare", s.unshare))
    reasons = []
    for kind, exe in candidates:
        problem = _probe(kind, exe)
        if problem is None:
            return kind
        reasons.append(f"{kind}: {problem}")
    raise SandboxUnavailableError(
        f"sandbox unavailable ({'; '.join(reasons)}); refusing to run user code "
        "(install Debian's bubblewrap)"
    )


@functools.cache
def _probe(kind: Backend, exe: str) -> str | None:
    """``None`` when ``exe`` can run ``true`` in the namespaces we use, else why not."""
    argv = [exe, *_bwrap_namespaces(), "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev"]
    if kind == "unshare":
        argv = [exe, *_unshare_namespaces()]
    try:
        proc = subprocess.run(
            [*argv, "--", "true"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT,
            env={"PATH": "/usr/bin:/bin"},
        )
    except FileNotFoundError:
        return "not installed"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run ({type(exc).__name__})"
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"does not work here: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return None


def _is_root() -> bool:
    return os.geteuid() == 0


def _bwrap_namespaces() -> list[str]:
    args = [
        "--unshare-net",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ]
    if _is_root():
        # No user namespace: the code must become a real unprivileged uid (RLIMIT_NPROC).
        caps = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")  # for the launcher's drop only
        args += ["--cap-drop", "ALL", *(a for c in caps for a in ("--cap-add", c))]
    else:
        args += ["--unshare-user", "--disable-userns"]
    return args


def _unshare_namespaces() -> list[str]:
    args = [
        "--mount",
        "--net",
        "--pid",
        "--ipc",
        "--uts",
        "--fork",
        "--kill-child",
        "--mount-proc",
        "--propagation",
        "private",
    ]
    if not _is_root():
        args.append("--map-root-user")  # mounts need CAP_SYS_ADMIN in a user namespace
    return args


# -- the run -----------------------------------------------------------------------------------


def sandbox_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment of sandboxed code: nothing inherited from the caller.

    ``PYTHONPATH`` names cidflow's source folder (so ``flows.*`` imports), one thread per
    numeric library; ``extra`` adds or overrides (the caller vouches for it).
    """
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": str(_source_root()),
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    env.update(extra or {})
    return env


def run_sandboxed(
    argv: Sequence[str],
    *,
    job_dir: str | os.PathLike[str],
    hide: Iterable[str | os.PathLike[str]] = (),
    limits: SandboxLimits = DEFAULT_LIMITS,
    env: Mapping[str, str] | None = None,
    settings: SandboxSettings | None = None,
) -> SandboxResult:
    """Run ``argv`` sandboxed, in ``job_dir`` (seen inside as :data:`JOB_MOUNT`), and wait.

    ``hide``: folders to cover with an empty tmpfs inside (the node home, the cluster home),
    whatever else is bound. ``env`` is added to :func:`sandbox_env`'s scrubbed environment.
    When we are root, ``job_dir`` and everything in it is handed to :data:`SANDBOX_UID` first.
    Never raises for what the code does (a crash, a limit, the timeout: see
    :attr:`SandboxResult.killed_by`); raises :class:`SandboxUnavailableError` when no backend
    works (nothing runs) and ``NotADirectoryError`` for a bad ``job_dir``.
    """
    if not argv:
        raise ValueError("argv is empty")
    backend = sandbox_backend(settings)
    s = settings if settings is not None else SandboxSettings()
    job = Path(job_dir).resolve()
    if not job.is_dir():
        raise NotADirectoryError(f"job folder {job} is not a directory")
    if _is_root():
        _hand_over(job)
    hidden = _hide_paths(hide)
    inner = [sys.executable, "-I", "-S", "-c", _LAUNCHER, _launcher_config(limits), *argv]
    if backend == "bwrap":
        cmd = [s.bwrap, *_bwrap_namespaces(), *_bwrap_mounts(job, hidden, limits), "--", *inner]
    else:
        keep = [str(host) for host, inside in _python_paths() if host == inside]
        cover = _closed_ancestors(keep)
        covered = [*cover, *map(Path, _COVERED_TMP)]  # what the script mounts over
        keep = [k for k in keep if any(Path(k).is_relative_to(c) for c in covered)]
        script_args = [
            str(limits.tmp_bytes),
            str(job),
            *keep,
            "--",
            *map(str, cover),
            "--",
            *(str(h) for h in hidden),
        ]
        cmd = [
            s.unshare,
            *_unshare_namespaces(),
            "--",
            "/bin/sh",
            "-c",
            _UNSHARE_SCRIPT,
            "sh",
            *script_args,
            "--",
            *inner,
        ]
    return _run(cmd, sandbox_env(env), limits, backend)


def _run(
    cmd: list[str], env: dict[str, str], limits: SandboxLimits, backend: Backend
) -> SandboxResult:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd="/",
        start_new_session=True,  # its own process group: killpg reaches bwrap/unshare
        close_fds=True,
    )
    if proc.stdout is None or proc.stderr is None:  # pragma: no cover (PIPE was given)
        raise RuntimeError("no pipes")
    tails = [
        _Tail(proc.stdout, limits.output_tail_bytes),
        _Tail(proc.stderr, limits.output_tail_bytes),
    ]
    timed_out = False
    try:
        proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        if proc.poll() is None:  # the timeout, or an exception (KeyboardInterrupt) in the wait
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # bwrap dies -> its PID namespace dies
            proc.wait()
        out, err = (t.result() for t in tails)
    rc = proc.returncode
    return SandboxResult(
        returncode=rc,
        killed_by="timeout" if timed_out else _signal_reason(rc),
        stdout=out,
        stderr=err,
        seconds=time.monotonic() - t0,
        backend=backend,
    )


class _Tail:
    """Reads a pipe to its end in a thread, keeping only the last ``limit`` bytes."""

    def __init__(self, stream: IO[bytes], limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self._buf = bytearray()
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        with self._stream:
            while chunk := self._stream.read1(1 << 16):  # type: ignore[attr-defined]
                self._buf += chunk
                if len(self._buf) > 2 * self._limit:
                    del self._buf[: len(self._buf) - self._limit]

    def result(self) -> str:
        self._thread.join(timeout=10)
        return bytes(self._buf[-self._limit :]).decode("utf-8", "replace")


def _signal_reason(rc: int) -> str | None:
    """bwrap exits 128+N when its child dies of signal N; unshare re-raises the signal."""
    if rc < 0:
        num = -rc
    elif 128 < rc < 128 + 65:
        num = rc - 128
    else:
        return None
    if num == signal.SIGXCPU:
        return "cpu limit"
    if num == signal.SIGXFSZ:
        return "file size limit"
    try:
        return f"signal {signal.Signals(num).name}"
    except ValueError:
        return f"signal {num}"


def _hand_over(job: Path) -> None:
    """Make the job folder the sandbox user's (it cannot write anything else)."""
    for folder, dirs, files in os.walk(job):
        os.chown(folder, SANDBOX_UID, SANDBOX_UID)
        for name in (*dirs, *files):
            os.chown(os.path.join(folder, name), SANDBOX_UID, SANDBOX_UID, follow_symlinks=False)


def _hide_paths(hide: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Each hide path as given (absolute) and resolved, in order, without repeats."""
    out: list[Path] = []
    for h in hide:
        for p in (Path(os.path.abspath(h)), Path(h).resolve()):
            if p != Path("/") and p not in out:
                out.append(p)
    return out


def _source_root() -> Path:
    return Path(__file__).resolve().parent.parent


def _python_paths() -> list[tuple[Path, Path]]:
    """(host path, path inside) pairs that the interpreter, its libraries and cidflow need."""
    wanted = {
        sys.base_prefix,
        sys.prefix,
        sys.base_exec_prefix,
        sys.exec_prefix,
        os.path.dirname(sys.executable),
    }
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        with contextlib.suppress(KeyError):
            wanted.add(sysconfig.get_paths()[key])
    wanted.update(p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p))
    src = _source_root()
    wanted.update(str(src / pkg) for pkg in _CIDFLOW_PACKAGES if (src / pkg).is_dir())
    real = sorted({Path(p).resolve() for p in wanted if os.path.exists(p)})
    roots: list[Path] = []
    for r in real:  # sorted: a parent comes before what lies inside it
        if not any(r.is_relative_to(b) for b in roots):
            roots.append(r)
    pairs = [(r, r) for r in roots]
    for p in sorted(Path(os.path.abspath(w)) for w in wanted if os.path.exists(w)):
        # A path reached through a symlink (a venv linked elsewhere) must resolve inside too.
        if p.resolve() != p and not any(p.is_relative_to(b) for _, b in pairs):
            pairs.append((p.resolve(), p))
    return pairs


def _closed_ancestors(paths: Iterable[str]) -> list[Path]:
    """The top-most folder above each path that others cannot enter (``/root``, mode 0700)."""
    out: set[Path] = set()
    for p in paths:
        for a in reversed(Path(p).parents):
            if a != Path("/") and not os.stat(a).st_mode & 0o001:
                out.add(a)
                break
    return sorted(out)


def _bwrap_mounts(job: Path, hidden: list[Path], limits: SandboxLimits) -> list[str]:
    args: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    for f in _ETC_FILES:
        args += ["--ro-bind-try", f, f]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(limits.tmp_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
    pairs = _python_paths()
    # bwrap copies a host folder's mode onto the folders it makes: open the way (/root is 0700).
    for folder in sorted({a for _, inside in pairs for a in inside.parents if a != Path("/")}):
        args += ["--perms", "0755", "--dir", str(folder)]
    for host, inside in pairs:
        args += ["--ro-bind", str(host), str(inside)]
    for h in hidden:
        args += ["--size", str(_HIDE_TMPFS_BYTES), "--perms", "0755", "--tmpfs", str(h)]
    args += ["--bind", str(job), JOB_MOUNT]  # the launcher chdirs there (as the job's owner)
    return args


#: Folders the unshare backend covers with a tmpfs; interpreter folders inside them (a venv in a
#: clone under /tmp, say) are bound back on top.
_COVERED_TMP: Final = ("/tmp", "/dev/shm", "/var/tmp", "/run/lock", "/dev/mqueue")

# Runs as root in the new mount namespace (unshare backend). Arguments: tmp size, job folder,
# the interpreter folders to keep, "--", the closed folders above them to cover (/root), "--",
# the hidden paths, "--", the launcher. The private /tmp is built on /dev/shm first (the job
# folder bound in while its real path is still visible) and moved onto /tmp; the kept folders
# are parked in it while their closed parents and the temporary folders are covered by an
# open tmpfs, then bound back (last, so that a venv under /tmp stays visible).
_UNSHARE_SCRIPT: Final = r"""
set -eu
tmp_bytes=$1; job=$2; shift 2
mount -t tmpfs -o "size=$tmp_bytes,mode=1777,nosuid,nodev" tmpfs /dev/shm
mkdir /dev/shm/job /dev/shm/.keep
mount --bind "$job" /dev/shm/job
n=0; kept=""
while [ "$1" != "--" ]; do
  n=$((n+1)); mkdir "/dev/shm/.keep/$n"; mount --bind "$1" "/dev/shm/.keep/$n"
  kept="$kept $1"; shift
done
shift
while [ "$1" != "--" ]; do mount -t tmpfs -o size=65536,mode=0755 tmpfs "$1"; shift; done
shift
mount --move /dev/shm /tmp
for d in /dev/shm /var/tmp /run/lock /dev/mqueue; do
  if [ -d "$d" ] && [ ! -L "$d" ]; then mount -t tmpfs -o size=65536,mode=0755 tmpfs "$d"; fi
done
n=0
for k in $kept; do
  n=$((n+1)); mkdir -p "$k"; mount --bind "/tmp/.keep/$n" "$k"; umount "/tmp/.keep/$n"
done
rm -rf /tmp/.keep
while [ "$1" != "--" ]; do
  if [ -d "$1" ]; then mount -t tmpfs -o size=65536,mode=0755,nosuid,nodev tmpfs "$1"; fi
  shift
done
shift
set +e
"$@"  # not exec: sh turns a death by signal N into exit 128+N (unshare fails to re-raise it)
exit $?
"""

# Runs inside the sandbox with `python -I -S -c`: drops root (bounding set, groups, gid, uid),
# sets no_new_privs and the limits, then execs the command. Trusted code: keep it this small.
_LAUNCHER: Final = r"""
import ctypes, json, os, resource, signal, sys
cfg = json.loads(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
if os.getuid() == 0:
    for cap in range(64):
        libc.prctl(24, cap, 0, 0, 0)  # PR_CAPBSET_DROP (EINVAL past the last cap)
    if cfg["drop"]:
        os.setgroups([])
        os.setresgid(cfg["uid"], cfg["uid"], cfg["uid"])
        os.setresuid(cfg["uid"], cfg["uid"], cfg["uid"])
        if os.getuid() != cfg["uid"] or os.geteuid() != cfg["uid"]:
            raise SystemExit("sandbox launcher: could not drop root")
if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
    raise SystemExit("sandbox launcher: cannot set no_new_privs")
for name, soft, hard in cfg["rlimits"]:
    resource.setrlimit(getattr(resource, name), (soft, hard))
for sig in (signal.SIGPIPE, signal.SIGXFSZ):  # Python ignores these; exec would inherit that
    signal.signal(sig, signal.SIG_DFL)
os.chdir(cfg["cwd"])
os.execvp(sys.argv[2], sys.argv[2:])
"""


def _launcher_config(limits: SandboxLimits) -> str:
    rlimits = [
        ("RLIMIT_AS", limits.memory_bytes, limits.memory_bytes),
        # SIGXCPU at the soft limit (reported as "cpu limit"), SIGKILL a second later.
        ("RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1),
        ("RLIMIT_FSIZE", limits.file_bytes, limits.file_bytes),
        ("RLIMIT_NOFILE", limits.open_files, limits.open_files),
        ("RLIMIT_NPROC", limits.processes, limits.processes),
        ("RLIMIT_CORE", 0, 0),
    ]
    cfg = {"uid": SANDBOX_UID, "drop": _is_root(), "rlimits": rlimits, "cwd": JOB_MOUNT}
    return json.dumps(cfg)
