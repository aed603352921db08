"""Where `cidflow add` of a file spends its time, in all threads (zarr runs its event loop and
the blob writes in worker threads, which cProfile does not see): a small sampling profiler
(sys._current_frames every 2 ms) around the in-process equivalent, ArtifactStore.put_path.
Diagnostic, no budget. --readd profiles a second add of the same file into the same home
(every blob already stored).

    .venv/bin/python bench/profile_add.py [PATH] [--readd]   # default PATH: bench/out/data/big.npy
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import sys
import threading
import time

from _common import big_npy, fresh_dir


class Sampler:
    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.leaf: collections.Counter[str] = collections.Counter()
        self.ours: collections.Counter[str] = collections.Counter()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = threading.get_ident()
        while not self._stop.wait(self.interval):
            for tid, frame in sys._current_frames().items():
                if tid == me:
                    continue
                code = frame.f_code
                if _idle(code):
                    continue
                self.samples += 1
                self.leaf[f"{code.co_name} ({_short(code.co_filename)}:{frame.f_lineno})"] += 1
                f = frame
                while f is not None and "/artifacts/" not in f.f_code.co_filename:
                    f = f.f_back
                if f is not None:
                    self.ours[
                        f"{f.f_code.co_name} ({_short(f.f_code.co_filename)}:{f.f_lineno})"
                    ] += 1

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


_IDLE_FILES = ("threading.py", "queue.py", "concurrent/futures/thread.py", "selectors.py")


def _idle(code: object) -> bool:
    """A thread parked in the standard library (waiting for work or I/O readiness)."""
    return str(getattr(code, "co_filename", "")).endswith(_IDLE_FILES)


def _short(path: str) -> str:
    for mark in ("site-packages/", "/work/main/", "lib/python3"):
        if mark in path:
            return path.split(mark, 1)[1]
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("path", nargs="?")
    p.add_argument("--readd", action="store_true")
    args = p.parse_args()
    src = args.path or str(big_npy())
    from artifacts import ArtifactStore

    home = fresh_dir("profile-add")
    store = ArtifactStore(home)
    if args.readd:
        store.put_path(src)
    os.sync()
    t0 = time.perf_counter()
    c0 = os.times()
    with Sampler() as s:
        cid = store.put_path(src)
    c1 = os.times()
    wall = time.perf_counter() - t0
    print(
        f"put_path {src}: {wall:.2f}s wall, {c1.user - c0.user:.2f}s user, "
        f"{c1.system - c0.system:.2f}s sys -> {cid}"
    )
    print(f"busy-thread samples: {s.samples}; top leaf frames:")
    for k, v in s.leaf.most_common(12):
        print(f"  {v / s.samples:6.1%}  {k}")
    print("innermost cidflow frame of each sample:")
    for k, v in s.ours.most_common(8):
        print(f"  {v / s.samples:6.1%}  {k}")
    shutil.rmtree(home)


if __name__ == "__main__":
    main()
