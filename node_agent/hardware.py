"""What a node has to offer: CPUs, memory and GPUs, for ``/v1/info``.

GPUs are counted with torch, and never at import time: :func:`probe_hardware` uses torch when it
is already imported, or imports it when asked to and it is installed. Without torch (or when it
fails) the GPU list is ``None`` ("unknown"), never an error.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from dataclasses import dataclass
from typing import Any

__all__ = ["Gpu", "Hardware", "probe_hardware"]


@dataclass(frozen=True, slots=True)
class Gpu:
    name: str
    memory_bytes: int


@dataclass(frozen=True, slots=True)
class Hardware:
    """CPU count, physical memory in bytes (``None``: unknown), GPUs (``None``: unknown)."""

    cpu_count: int
    memory_bytes: int | None
    gpus: tuple[Gpu, ...] | None

    def as_json(self) -> dict[str, Any]:
        gpus = None if self.gpus is None else [
            {"name": g.name, "memory_bytes": g.memory_bytes} for g in self.gpus
        ]  # fmt: skip
        return {"cpu_count": self.cpu_count, "memory_bytes": self.memory_bytes, "gpus": gpus}


def probe_hardware(*, import_torch: bool = True) -> Hardware:
    """This machine's hardware. ``import_torch``: import torch to count GPUs if it is installed
    but not yet imported (slow the first time: call it off the event loop)."""
    return Hardware(os.cpu_count() or 1, _memory_bytes(), _gpus(import_torch))


def _memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system that reports it
        return None


def _gpus(import_torch: bool) -> tuple[Gpu, ...] | None:
    torch: Any = sys.modules.get("torch")
    try:
        if torch is None:
            if not import_torch or importlib.util.find_spec("torch") is None:
                return None
            torch = importlib.import_module("torch")
        count = int(torch.cuda.device_count())
        props = [torch.cuda.get_device_properties(i) for i in range(count)]
        return tuple(Gpu(str(p.name), int(p.total_memory)) for p in props)
    except Exception:  # a broken torch or driver: the GPUs are unknown, the node still runs
        return None
