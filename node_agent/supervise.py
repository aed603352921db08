"""Keep a node's child processes running: one that dies is started again.

A node agent serves its flows from child processes (:mod:`node_agent.serve_flows`). If one of
them dies (killed for memory, say), the node would quietly stop answering flow runs until an
operator restarted it. :class:`Supervisor` watches them from a thread and restarts a child that
exited, after a pause that doubles with each quick death (``min_backoff`` up to
``max_backoff``) and falls back to ``min_backoff`` once a child has stayed up ``stable``
seconds: a child that cannot start does not spin, one that dies once a day comes back at once.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Supervisor"]

log = logging.getLogger("cidflow.node")


@dataclass
class _Child:
    label: str
    command: list[str]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    backoff: float = 0.0
    due: float | None = None  # when a dead child is started again
    restarts: int = 0


class Supervisor:
    """Start ``commands`` (label → command line) as children (same process group, output
    appended to ``log_path``) and restart any that exits, until :meth:`stop`."""

    def __init__(
        self,
        commands: Mapping[str, Sequence[str]],
        *,
        env: dict[str, str],
        log_path: Path,
        check: float = 0.5,
        min_backoff: float = 1.0,
        max_backoff: float = 60.0,
        stable: float = 60.0,
    ) -> None:
        if not 0 < min_backoff <= max_backoff:
            raise ValueError("need 0 < min_backoff <= max_backoff")
        self._children = [_Child(label, list(c)) for label, c in commands.items()]
        self._env, self._log_path = env, log_path
        self._check, self._min, self._max, self._stable = check, min_backoff, max_backoff, stable
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def pids(self) -> dict[str, int | None]:
        """Each child's current process id (None while it waits to be restarted)."""
        with self._lock:
            return {c.label: c.process.pid if c.process and c.process.poll() is None else None
                    for c in self._children}  # fmt: skip

    @property
    def restarts(self) -> dict[str, int]:
        """How many times each child was started again."""
        with self._lock:
            return {c.label: c.restarts for c in self._children}

    def start(self) -> None:
        with self._lock:
            for child in self._children:
                self._spawn(child)
        self._thread = threading.Thread(target=self._watch, name="cidflow-supervisor", daemon=True)
        self._thread.start()

    def _spawn(self, child: _Child) -> None:
        with open(self._log_path, "ab") as logfile:
            child.process = subprocess.Popen(
                child.command, env=self._env, stdout=logfile, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        child.started, child.due = time.monotonic(), None

    def _watch(self) -> None:
        while not self._stopped.wait(self._check):
            with self._lock:
                if self._stopped.is_set():
                    return
                now = time.monotonic()
                for child in self._children:
                    self._tend(child, now)

    def _tend(self, child: _Child, now: float) -> None:
        assert child.process is not None
        code = child.process.poll()
        if code is None:
            return
        if child.due is None:  # just found dead
            if child.backoff and now - child.started < self._stable:
                child.backoff = min(2 * child.backoff, self._max)  # died again, soon
            else:
                child.backoff = self._min
            child.due = now + child.backoff
            log.warning("%s exited with code %s; restarting in %.1f s", child.label, code,
                        child.backoff)  # fmt: skip
        elif now >= child.due:
            child.restarts += 1
            self._spawn(child)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop watching, then terminate every child (killed if it outlives ``timeout``)."""
        with self._lock:
            self._stopped.set()
        if self._thread is not None:
            self._thread.join()
        procs = [c.process for c in self._children if c.process is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=timeout)
