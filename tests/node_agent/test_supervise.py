"""The node agent's supervisor: real child processes, killed for real, started again."""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from node_agent.supervise import Supervisor

SLEEPER = [sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(60)"]
CRASHER = [sys.executable, "-c", "import sys; print('crash', flush=True); sys.exit(3)"]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the condition")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A reaped child is gone; a zombie still answers kill(0): read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_child_is_started_again_and_the_other_is_left_alone(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup = Supervisor({"a": SLEEPER, "b": SLEEPER}, env=dict(os.environ),
                     log_path=tmp_path / "flows.log", check=0.05, min_backoff=0.1)  # fmt: skip
    sup.start()
    try:
        first = sup.pids
        assert first["a"]
        assert first["b"]
        wait_for(lambda: (tmp_path / "flows.log").read_text().count("up") == 2)  # both started
        with caplog.at_level(logging.WARNING, logger="cidflow.node"):
            os.kill(first["a"], signal.SIGKILL)
            wait_for(lambda: sup.restarts["a"] == 1 and sup.pids["a"] is not None)
        now = sup.pids
        assert now["a"] != first["a"]
        assert alive(now["a"] or 0)
        assert now["b"] == first["b"]
        assert sup.restarts["b"] == 0
        assert any(f"a exited with code {-signal.SIGKILL}; restarting" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        # Both runs of "a" and the one of "b" write to the same log.
        wait_for(lambda: (tmp_path / "flows.log").read_text().count("up") == 3)
    finally:
        sup.stop()
    assert not alive(now["a"] or 0)
    assert not alive(now["b"] or 0)


def test_a_child_that_keeps_dying_is_restarted_with_growing_pauses(tmp_path: Path) -> None:
    sup = Supervisor({"crash": CRASHER}, env=dict(os.environ), log_path=tmp_path / "log",
                     check=0.02, min_backoff=0.2, max_backoff=0.8, stable=60.0)  # fmt: skip
    sup.start()
    try:
        wait_for(lambda: sup.restarts["crash"] >= 3)
        began = time.monotonic()
        wait_for(lambda: sup.restarts["crash"] >= 5)
        # Pauses 0.2, 0.4, 0.8, 0.8, ...: restarts 4 and 5 come after two pauses of 0.8 s
        # (a tight loop would have restarted it hundreds of times by now).
        assert time.monotonic() - began >= 1.5
    finally:
        sup.stop()
    assert sup.restarts["crash"] <= 6


def test_stop_terminates_children_and_ends_restarts(tmp_path: Path) -> None:
    sup = Supervisor({"a": SLEEPER}, env=dict(os.environ), log_path=tmp_path / "log",
                     check=0.02, min_backoff=0.05)  # fmt: skip
    sup.start()
    pid = sup.pids["a"]
    assert pid is not None
    sup.stop()
    assert not alive(pid)
    time.sleep(0.3)  # the watcher is gone: nothing comes back
    assert sup.pids == {"a": None}
    assert sup.restarts == {"a": 0}


def test_bad_backoff_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_backoff"):
        Supervisor({"a": SLEEPER}, env={}, log_path=tmp_path / "log", min_backoff=2,
                   max_backoff=1)  # fmt: skip
