"""Content-addressed caching for Prefect tasks.

A task's cache key is the sha256 of the canonical JSON of (task name, the hash of its code,
its canonical inputs). Inputs are plain JSON values and CIDs: an artifact enters a task by its
CID, so one changed byte of input data is a new CID and a miss, while nothing is ever pickled
or hashed from in-memory tensors (an array, a tensor or a path as input is refused with the
reason). The code hash covers the task function's source and, for user models given as
``module:factory``, the whole source of those modules.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Final

from prefect.cache_policies import CachePolicy

from artifacts.canonical import canonical_json
from artifacts.cid import CID
from flows.errors import UncacheableInputError

__all__ = ["CACHE_FORMAT", "CIDCachePolicy", "cache_key", "canonical_inputs", "code_hash"]

CACHE_FORMAT: Final = "cidflow/cache@1"


def canonical_inputs(value: Any, *, where: str = "input") -> Any:
    """``value`` as canonical JSON data, or :class:`UncacheableInputError` saying why not."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UncacheableInputError(f"{where} is {value}: not a finite number")
        return value
    if isinstance(value, CID):
        return {"cid": str(value)}
    if isinstance(value, list | tuple):
        return [canonical_inputs(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise UncacheableInputError(f"{where} has a non-string key {k!r}")
            out[k] = canonical_inputs(v, where=f"{where}.{k}")
        return out
    if isinstance(value, PurePath):
        raise UncacheableInputError(
            f"{where} is a path ({value}): its content can change; add it and pass the CID"
        )
    raise UncacheableInputError(
        f"{where} is a {type(value).__module__}.{type(value).__name__}: cidflow tasks take "
        "artifacts by CID and JSON parameters, never in-memory objects"
    )


def code_hash(fn: Callable[..., Any], extra_modules: Iterable[str] = ()) -> str:
    """sha256 of the function's source plus the full source of ``extra_modules``."""
    h = hashlib.sha256()
    target = inspect.unwrap(fn)
    try:
        h.update(inspect.getsource(target).encode())
    except (OSError, TypeError):
        h.update(f"{target.__module__}.{target.__qualname__}".encode())
    for name in sorted(set(extra_modules)):
        module = importlib.import_module(name)
        h.update(b"\0" + name.encode() + b"\0" + inspect.getsource(module).encode())
    return h.hexdigest()


def cache_key(task: str, code: str, inputs: Mapping[str, Any]) -> str:
    body = {"format": CACHE_FORMAT, "task": task, "code": code}
    body["inputs"] = canonical_inputs(dict(inputs), where=task)
    return hashlib.sha256(canonical_json(body)).hexdigest()


@dataclass
class CIDCachePolicy(CachePolicy):
    """Prefect cache policy: the key is :func:`cache_key` of the task run's inputs."""

    extra_modules: tuple[str, ...] = ()
    modules_for: Callable[..., list[str]] | None = None  # e.g. the module of a user model

    def modules(self, inputs: Mapping[str, Any]) -> list[str]:
        found = list(self.extra_modules)
        if self.modules_for is not None:
            found += self.modules_for(**inputs)
        return found

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        task = task_ctx.task
        return cache_key(task.name, code_hash(task.fn, self.modules(inputs)), inputs)
