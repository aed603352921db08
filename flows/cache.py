"""Content-addressed caching for Prefect tasks.

A task's cache key is the sha256 of the canonical JSON of (task name, the hash of its code,
its canonical inputs). Inputs are plain JSON values and CIDs: an artifact enters a task by its
CID, so one changed byte of input data is a new CID and a miss, while nothing is ever pickled
or hashed from in-memory tensors (an array, a tensor or a path as input is refused with the
reason). The code hash covers the task function's source and, for local user models given as
``module:factory`` (trusted: :mod:`flows.code`), the whole source of those modules; a model
built from a code artifact has the artifact's CID among the task's parameters instead.

:func:`lookup_cached` is the fast path of a rerun: it computes the same key without importing
Prefect (nor the task's module: the function's source and defaults are read from its file the
way :func:`inspect.getsource` reads them) and reads the JSON result record Prefect persisted
under that key, so that a cached rerun needs neither Prefect's API server nor torch. Prefect
itself is imported only when :class:`CIDCachePolicy` is first used.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib
import importlib.util
import inspect
import json
import linecache
import math
import os
import re
import tokenize
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any, Final

from artifacts.canonical import canonical_json
from artifacts.cid import CID
from flows.errors import UncacheableInputError

if TYPE_CHECKING:
    from prefect.cache_policies import CachePolicy

__all__ = [
    "CACHE_FORMAT",
    "CIDCachePolicy",
    "cache_key",
    "canonical_inputs",
    "code_hash",
    "drop_if_stale",
    "lookup_cached",
    "prefect_results_dir",
]

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
    target = inspect.unwrap(fn)
    code = getattr(target, "__code__", None)
    try:
        st = os.stat(code.co_filename) if code is not None else None
    except (OSError, ValueError):
        st = None
    if st is None:
        return _code_hash(_source(target), extra_modules)
    return _code_hash(_source_while(target, st.st_mtime_ns, st.st_size), extra_modules)


def _source(target: Any) -> bytes:
    try:
        return inspect.getsource(target).encode()
    except (OSError, TypeError):
        return f"{target.__module__}.{target.__qualname__}".encode()


@functools.lru_cache(maxsize=256)
def _source_while(target: Any, mtime_ns: int, size: int) -> bytes:
    """:func:`_source` of ``target`` while its file has this mtime and size (a task's key is
    computed twice per call: re-reading and re-tokenising the file cost ~1 ms each time)."""
    return _source(target)


#: Modules whose code decides what every model step computes (the zoo, the training loop):
#: part of the key of train, evaluate and infer, so editing them is a miss.
MODEL_CODE_MODULES: tuple[str, ...] = ("flows.training", "flows.zoo")


def _code_hash(source: bytes, extra_modules: Iterable[str]) -> str:
    h = hashlib.sha256()
    h.update(source)
    for name in sorted(set(extra_modules)):
        h.update(b"\0" + name.encode() + b"\0" + _module_source(name))
    return h.hexdigest()


def _module_source(name: str) -> bytes:
    """The source of module ``name`` as :func:`inspect.getsource` gives it, read from its file
    without importing it (so computing a key never loads torch); imported as a fallback."""
    spec = importlib.util.find_spec(name)
    origin = spec.origin if spec is not None else None
    if origin and origin.endswith(".py") and os.path.isfile(origin):
        with tokenize.open(origin) as f:
            return f.read().encode()
    return inspect.getsource(importlib.import_module(name)).encode()


def cache_key(task: str, code: str, inputs: Mapping[str, Any]) -> str:
    body = {"format": CACHE_FORMAT, "task": task, "code": code}
    body["inputs"] = canonical_inputs(dict(inputs), where=task)
    return hashlib.sha256(canonical_json(body)).hexdigest()


# -- the Prefect cache policy (Prefect is imported on first use) -------------------------------


def _policy_class() -> type[Any]:
    from prefect.cache_policies import CachePolicy

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
            key = cache_key(task.name, code_hash(task.fn, self.modules(inputs)), inputs)
            drop_if_stale(key)
            return key

    CIDCachePolicy.__module__ = __name__
    CIDCachePolicy.__qualname__ = "CIDCachePolicy"
    return CIDCachePolicy


if TYPE_CHECKING:

    @dataclass
    class CIDCachePolicy(CachePolicy):
        """What type checkers see; the class itself is made by :func:`_policy_class` when
        ``flows.cache.CIDCachePolicy`` is first looked up, so that importing this module does
        not import Prefect."""

        extra_modules: tuple[str, ...] = ()
        modules_for: Callable[..., list[str]] | None = None

        def modules(self, inputs: Mapping[str, Any]) -> list[str]: ...

        def compute_key(
            self,
            task_ctx: Any,
            inputs: dict[str, Any],
            flow_parameters: dict[str, Any],
            **kwargs: Any,
        ) -> str | None: ...

else:

    def __getattr__(name: str) -> Any:
        if name == "CIDCachePolicy":
            cls = globals()[name] = _policy_class()
            return cls
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the fast path of a cached rerun -----------------------------------------------------------

#: Environment variables through which Prefect could store results elsewhere, or ignore them.
_PREFECT_OVERRIDES = (
    "PREFECT_RESULTS_",
    "PREFECT_TASKS_",
    "PREFECT_DEFAULT_RESULT_STORAGE_BLOCK",
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
    "PREFECT_TEST_MODE",
)
_NO_FAST_PATH = "CIDFLOW_NO_FAST_PATH"


def prefect_results_dir(
    env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None
) -> Path | None:
    """Where Prefect will persist task results: ``PREFECT_LOCAL_STORAGE_PATH``, or ``None``
    when that is not certain from the environment alone (no such variable; a Prefect setting
    of result storage or task caching in the environment, a profile, ``prefect.toml``,
    ``pyproject.toml`` or ``.env``) or when ``CIDFLOW_NO_FAST_PATH`` is set."""
    env = os.environ if env is None else env
    try:
        folder = Path(cwd) if cwd is not None else Path.cwd()
    except OSError:  # the working directory is gone
        return None
    path = env.get("PREFECT_LOCAL_STORAGE_PATH")
    if not path or env.get(_NO_FAST_PATH, "") not in ("", "0"):
        return None
    if any(k.startswith(_PREFECT_OVERRIDES) for k in env):
        return None
    prefect_home = env.get("PREFECT_HOME")
    if not prefect_home or (Path(prefect_home) / "profiles.toml").exists():
        return None
    if (folder / "prefect.toml").exists():
        return None
    for name, marker in ((".env", "PREFECT_"), ("pyproject.toml", "tool.prefect")):
        try:
            if marker in (folder / name).read_text(errors="replace"):
                return None
        except OSError:
            continue
    return Path(path)


@dataclass(frozen=True)
class _TaskSource:
    name: str  # the cid_task's name: ``name=`` of its decorator, else the function's name
    source: bytes  # what inspect.getsource returns for the function
    params: tuple[str, ...]
    defaults: dict[str, Any]


_DEF_OR_DECORATOR = re.compile(r"^(\s*def\s)|(\s*async\s+def\s)|(.*(?<!\w)lambda(:|\s))|^(\s*@)")


def _task_source(ref: str) -> _TaskSource | None:
    """The source, task name and literal defaults of the top-level ``module:function``, read
    from the module's file without importing it (its parent packages are imported)."""
    module, _, func = ref.partition(":")
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    linecache.checkcache(spec.origin)
    lines = linecache.getlines(spec.origin)
    try:
        tree = ast.parse("".join(lines))
    except SyntaxError:
        return None
    node = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == func), None)
    if node is None or node.args.vararg or node.args.kwarg or node.args.posonlyargs:
        return None
    # inspect.findsource: from the code's first line (its first decorator) back to a def/@ line
    lnum = (node.decorator_list[0].lineno if node.decorator_list else node.lineno) - 1
    while lnum > 0 and not _DEF_OR_DECORATOR.match(lines[lnum]):
        lnum -= 1
    source = "".join(inspect.getblock(lines[lnum:]))
    name = func
    for deco in node.decorator_list:
        if isinstance(deco, ast.Call):
            for kw in deco.keywords:
                if kw.arg == "name" and isinstance(kw.value, ast.Constant):
                    name = str(kw.value.value)
    args = [*node.args.args, *node.args.kwonlyargs]
    defaults: dict[str, Any] = {}
    pairs = [
        *zip(node.args.args[::-1], node.args.defaults[::-1], strict=False),
        *zip(node.args.kwonlyargs, node.args.kw_defaults, strict=True),
    ]
    for arg, default in pairs:
        if default is None:
            continue
        try:
            defaults[arg.arg] = ast.literal_eval(default)
        except ValueError:
            return None  # not a literal: only importing the module would tell its value
    return _TaskSource(name, source.encode(), tuple(a.arg for a in args), defaults)


def _stored_result(path: Path) -> dict[str, Any] | None:
    """The task's return value from Prefect's JSON result record at ``path`` (never pickle)."""
    try:
        record = json.loads(path.read_bytes())
        metadata = record["metadata"]
        if metadata["serializer"]["type"] != "json" or metadata.get("expiration") is not None:
            return None
        value = json.loads(record["result"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(value, dict) or _has_encoded_object(value):
        return None
    return value


def _has_encoded_object(value: Any) -> bool:
    """Whether Prefect's JSON decoder would turn part of ``value`` into an object."""
    if isinstance(value, dict):
        return "__class__" in value or any(_has_encoded_object(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_encoded_object(v) for v in value)
    return False


def _outputs_present(home: Path, result: Mapping[str, Any]) -> bool:
    """Every artifact named in ``result`` (complete: every blob) and its receipt are stored."""
    from artifacts.store import ArtifactStore

    try:
        store = ArtifactStore(home, read_only=True)
    except (OSError, ValueError):
        return False
    return _present_in(store, result)


def _present_in(store: Any, result: Mapping[str, Any]) -> bool:
    """Every artifact ``result`` names, at any depth (complete: every blob), and its receipt
    are in ``store``."""
    from artifacts.cid import cids_in
    from artifacts.errors import ArtifactError, InvalidCIDError

    receipt = result.get("receipt")
    if not isinstance(receipt, str):
        return False
    try:
        if not store.blobs.has(receipt):
            return False
        for key, value in result.items():
            if key == "receipt":
                continue
            for cid in cids_in(value):
                art = store.open_artifact(cid)
                if not all(store.blobs.has(c) for c in art.blob_cids()):
                    return False
    except (ArtifactError, InvalidCIDError, OSError, ValueError):
        return False
    return True


def drop_if_stale(key: str) -> None:
    """Delete Prefect's result record for ``key`` when it names an artifact (or receipt) that
    the current runtime's store lacks, so that Prefect recomputes instead of serving it: one
    results folder shared by two homes (a ``PREFECT_LOCAL_STORAGE_PATH`` set for all, say)
    must never hand one home the other's outputs. Nothing happens when the results folder is
    not certain from the environment (:func:`prefect_results_dir`), there is no record, or the
    record is not a :func:`~flows.tasks.cid_task` result (with its ``receipt``)."""
    results = prefect_results_dir()
    if results is None:
        return
    path = results / key
    result = _stored_result(path) if path.is_file() else None
    if result is None or "receipt" not in result:  # not a cid_task's result: nothing to check
        return
    from flows.tasks import current_runtime

    if not _present_in(current_runtime().store, result):
        path.unlink(missing_ok=True)


def lookup_cached(
    task: str,
    params: Mapping[str, Any],
    *,
    home: str | os.PathLike[str],
    results: str | os.PathLike[str],
    extra_modules: Iterable[str] = (),
    drop_stale: bool = False,
) -> dict[str, Any] | None:
    """The stored result of ``task`` (a top-level :func:`~flows.tasks.cid_task` given as
    ``module:function``) called with ``params``, as Prefect would serve it from its cache.

    The key is :func:`cache_key` of the task's name, :func:`code_hash` of its source plus
    ``extra_modules`` (what its policy's ``extra_modules`` gives for ``params``), and
    ``params`` with the function's defaults filled in, as Prefect binds them; the record is
    ``results/<key>`` (see :func:`prefect_results_dir`). ``None`` on a miss, and also when the
    record names an artifact or receipt that is no longer complete in the store at ``home``;
    with ``drop_stale`` such a record is deleted, so that Prefect recomputes instead of serving
    it. Never runs the task and never imports Prefect."""
    found = _task_source(task)
    if found is None or not set(params) <= set(found.params):
        return None
    inputs = {
        name: params[name] if name in params else found.defaults.get(name, _MISSING)
        for name in found.params
    }
    if any(v is _MISSING for v in inputs.values()):
        return None
    try:
        code = _code_hash(found.source, extra_modules)
    except Exception:  # e.g. a user model that does not import: the task run will say why
        return None
    try:
        key = cache_key(found.name, code, inputs)
    except (UncacheableInputError, ValueError, TypeError):
        return None
    path = Path(results) / key
    result = _stored_result(path)
    if result is None:
        return None
    if not _outputs_present(Path(home), result):
        if drop_stale:
            path.unlink(missing_ok=True)
        return None
    return result


_MISSING: Final = object()
