"""``cid_task``: a Prefect task that caches by CID, persists JSON results and signs a receipt.

The wrapped function takes JSON parameters and artifact CIDs and returns a JSON object naming
the CIDs it wrote. The task's cache key is :class:`~flows.cache.CIDCachePolicy`'s; its result is
stored as JSON (never a pickle), and each real execution adds ``"receipt"``: the CID of a
receipt signed by this node's key (``HOME/keys/node.pem``). A cache hit returns the stored
result, receipt included, without running.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, ParamSpec, overload

from artifacts.cid import cids_in
from artifacts.store import ArtifactStore
from flows.cache import CIDCachePolicy, canonical_inputs, code_hash
from flows.receipts import write_receipt
from registry.identity import Identity

if TYPE_CHECKING:
    from prefect import Task

__all__ = ["Runtime", "cid_task", "current_runtime", "runtime"]

P = ParamSpec("P")
NODE_KEY = "node"


class Runtime:
    """Where tasks of this process store artifacts and which key signs their receipts."""

    def __init__(self, store: ArtifactStore, identity: Identity) -> None:
        self.store = store
        self.identity = identity

    @classmethod
    def for_home(cls, home: str | None = None) -> Runtime:
        """The runtime of ``home``: its store (on the cluster when ``HOME/cluster.json`` says
        so) and its node key."""
        from artifacts.cluster import open_store

        store: ArtifactStore = open_store(home)
        return cls(store, Identity.load_or_create(store.home, NODE_KEY))


_RUNTIME: ContextVar[Runtime | None] = ContextVar("cidflow_runtime", default=None)


def current_runtime() -> Runtime:
    """The runtime set by :func:`runtime`, else one for ``CIDFLOW_HOME``."""
    found = _RUNTIME.get()
    if found is None:
        found = Runtime.for_home()
        _RUNTIME.set(found)
    return found


@contextmanager
def runtime(rt: Runtime) -> Iterator[Runtime]:
    token = _RUNTIME.set(rt)
    try:
        yield rt
    finally:
        _RUNTIME.reset(token)


@overload
def cid_task(
    fn: Callable[P, dict[str, Any]],
    *,
    name: str | None = None,
    extra_modules: Callable[..., list[str]] | tuple[str, ...] = (),
    **task_options: Any,
) -> Task[P, dict[str, Any]]: ...


@overload
def cid_task(
    fn: None = None,
    *,
    name: str | None = None,
    extra_modules: Callable[..., list[str]] | tuple[str, ...] = (),
    **task_options: Any,
) -> Callable[[Callable[P, dict[str, Any]]], Task[P, dict[str, Any]]]: ...


def cid_task(
    fn: Callable[P, dict[str, Any]] | None = None,
    *,
    name: str | None = None,
    extra_modules: Callable[..., list[str]] | tuple[str, ...] = (),
    **task_options: Any,
) -> Any:
    """Decorate ``fn`` as a cidflow task (see the module docstring).

    ``extra_modules``: module names (or a function of the call's keyword arguments returning
    them, e.g. the module of a ``module:factory`` model) whose source joins the cache key and
    the receipt's code hash."""

    def decorate(func: Callable[P, dict[str, Any]]) -> Any:
        from prefect import task

        task_name = name or func.__name__
        signature = inspect.signature(func)
        policy = (
            CIDCachePolicy(modules_for=extra_modules)
            if callable(extra_modules)
            else CIDCachePolicy(extra_modules=tuple(extra_modules))
        )

        @functools.wraps(func)
        def run(*args: P.args, **kwargs: P.kwargs) -> dict[str, Any]:
            rt = current_runtime()
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            params = canonical_inputs(dict(bound.arguments), where=task_name)
            started = time.time()
            result = func(*args, **kwargs)
            ended = time.time()
            receipt = write_receipt(
                rt.store,
                rt.identity,
                task=task_name,
                code=code_hash(func, policy.modules(bound.arguments)),
                parameters=params,
                inputs=cids_in(params),
                outputs=cids_in(result),
                started=started,
                ended=ended,
            )
            return {**result, "receipt": str(receipt.cid)}

        make: Any = task
        options = {"persist_result": True, "result_serializer": "json", **task_options}
        return make(name=task_name, cache_policy=policy, **options)(run)

    return decorate(fn) if fn is not None else decorate
