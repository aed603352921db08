"""Which code may build a model, and code artifacts: user model code pinned by a CID.

A model names the code that builds it with a *model reference*: ``model`` is a zoo name
(``logreg``, ``mlp``, ``cnn``: cidflow's own code, always allowed) or ``module:factory``;
``code`` is ``None`` or the CID of a **code artifact** holding that module. Code runs only by
its runner's explicit trust, never by data's say-so (DESIGN invariant 8), so a model is built
only when the caller's :class:`CodeTrust` allows its reference:

- a code artifact when its CID is in ``cids`` (``--trust-code CID`` on the command line, or
  the home's allow-list ``HOME/trusted-code.json`` kept by ``cidflow code trust``);
- a ``module:factory`` of the local Python environment (no code CID) when it is in ``local``:
  the local user named it (``--model`` of ``train``, ``--trust-code module:factory``, or an
  explicit argument in Python). A node's policy (:meth:`CodeTrust.node`) has no local specs
  at all.

Anything else raises :class:`~flows.errors.UntrustedCodeError` *before anything is imported*.
This module decides which code is allowed; it is no sandbox: trusted code runs with the
caller's rights.

A code artifact is a ``files`` artifact of a folder holding only ``.py`` files (in sub-packages
too; ``__pycache__`` folders are left out), marked by the attribute ``cidflow.code``
(``{"format": "cidflow/code@1", "files": [sorted relative paths]}``). Its CID pins every byte.
To build from it, the folder is exported, verified, to ``HOME/code/<cid>/`` (a unique temporary
folder renamed into place) and ``module`` is imported as a sub-module of a synthetic package
named after that folder: two code artifacts with the same module name never meet in
``sys.modules``, and relative imports inside the user's package work (absolute imports of the
user's own top-level modules do not: the folder is never put on ``sys.path``). The folder is
the import root: ``mymod.py`` is module ``mymod``, ``pkg/__init__.py`` package ``pkg``; a
top-level ``__init__.py`` is never run. Trusting a code CID trusts every module in it.

Receipts and caching: train, evaluate, infer and fed-init take ``code`` (the code CID) as a
parameter, so it is in their cache keys and receipts; a local module's source joins the code
hash (:func:`model_modules`), and only once the policy trusts it: an untrusted module is never
even looked up.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import secrets
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from artifacts.atomic import write_atomic
from artifacts.cid import as_cid
from artifacts.errors import ArtifactError, InvalidCIDError
from flows.errors import CodeArtifactError, ModelSpecError, UntrustedCodeError

if TYPE_CHECKING:
    from torch import nn

    from artifacts.store import ArtifactStore

__all__ = [
    "CODE_ATTR",
    "CODE_FORMAT",
    "MODEL_ATTR",
    "TRUST_FILE",
    "CodeTrust",
    "ModelRef",
    "build_model",
    "code_files",
    "current_trust",
    "is_code",
    "load_factory",
    "load_model",
    "materialise",
    "model_ref",
    "model_ref_of",
    "put_code",
    "read_trusted",
    "resolve_factory",
    "trust_code",
    "trusting",
    "untrust_code",
]

MODEL_ATTR: Final = "cidflow.model"  # a model artifact's spec (flows.pipelines.MODEL_ATTR)
CODE_ATTR: Final = "cidflow.code"
CODE_FORMAT: Final = "cidflow/code@1"
TRUST_FILE: Final = "trusted-code.json"
TRUST_FORMAT: Final = "cidflow/trusted-code@1"
ZOO: Final[tuple[str, ...]] = ("logreg", "mlp", "cnn")  # flows.zoo.ZOO, without importing torch
#: Bounds on a code artifact (it is source code, not data).
MAX_CODE_FILES: Final = 2000
MAX_CODE_BYTES: Final = 32 << 20

_SKIPPED_DIRS: Final = ("__pycache__",)


# -- model references and the trust policy ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModelRef:
    """The code a model names: a zoo name, or ``module:factory`` with an optional code CID."""

    model: str
    code: str | None = None

    @property
    def is_zoo(self) -> bool:
        return self.code is None and ":" not in self.model

    @property
    def is_local(self) -> bool:
        """A ``module:factory`` from the local Python environment (no code artifact)."""
        return self.code is None and ":" in self.model


def model_ref(spec: Any) -> ModelRef:
    """The :class:`ModelRef` of a model spec (the ``cidflow.model`` attribute of a model
    artifact: ``{"model": ..., "code": CID or null, ...}``), checked for form only."""
    if not isinstance(spec, Mapping):
        raise ModelSpecError(f"a model spec must be a JSON object, got {type(spec).__name__}")
    model, code = spec.get("model"), spec.get("code")
    if not isinstance(model, str) or not model:
        raise ModelSpecError(f"a model spec's 'model' must be a name, got {model!r}")
    return make_ref(model, code)


def model_ref_of(store: ArtifactStore, model: str) -> ModelRef:
    """The :class:`ModelRef` of model artifact ``model`` (its attributes read, nothing built)."""
    art = store.open_artifact(model)
    spec = art.attrs.get(MODEL_ATTR)
    if art.kind != "state_dict" or not isinstance(spec, Mapping):
        raise ModelSpecError(f"{model} is not a cidflow model (kind {art.kind!r})")
    return model_ref(spec)


def make_ref(model: str, code: Any = None) -> ModelRef:
    """``model`` with ``code`` (a code artifact's CID, or ``None``), checked for form only:
    a zoo name or ``module:factory``; with a code CID, ``module:factory`` inside it."""
    if code is not None:
        if not isinstance(code, str):
            raise ModelSpecError(f"a model's code must be a CID, got {code!r}")
        try:
            code = str(as_cid(code))
        except InvalidCIDError as exc:
            raise ModelSpecError(f"a model's code {code!r} is not a CID: {exc}") from None
    if ":" in model:
        split_spec(model)
    elif code is not None:
        raise ModelSpecError(f"model {model!r} with code {code}: name its 'module:factory'")
    elif model not in ZOO:
        raise ModelSpecError(
            f"unknown model {model!r}: use one of {', '.join(ZOO)} or a user model as "
            "'module:factory'"
        )
    return ModelRef(model, code)


def split_spec(spec: str) -> tuple[str, str]:
    """``(module, factory)`` of ``module:factory``; both dotted Python names."""
    module, _, attr = spec.partition(":")
    if not module or not attr or ":" in attr:
        raise ModelSpecError(f"bad user model {spec!r}: expected 'module:factory'")
    for name in (module, attr):
        if not all(part.isidentifier() for part in name.split(".")):
            raise ModelSpecError(f"bad user model {spec!r}: {name!r} is not a dotted Python name")
    return module, attr


@dataclass(frozen=True, slots=True)
class CodeTrust:
    """The code a caller allows to build models (see the module docstring).

    ``cids``: code artifacts' CIDs; ``local``: ``module:factory`` specs of the local Python
    environment; ``node``: a node's policy, which never builds local code (``local`` must be
    empty). The zoo is always allowed."""

    cids: frozenset[str] = field(default_factory=frozenset)
    local: frozenset[str] = field(default_factory=frozenset)
    node: bool = False

    def __post_init__(self) -> None:
        cids = frozenset(_cid_text(c) for c in self.cids)
        object.__setattr__(self, "cids", cids)
        for spec in self.local:
            split_spec(spec)
        if self.node and self.local:
            raise ValueError("a node's code trust has no local module:factory specs")

    @classmethod
    def for_node(cls, cids: Iterable[str] = ()) -> CodeTrust:
        """A node's policy: only the zoo and the code artifacts ``cids`` (the operator's
        allow-list); never a local ``module:factory``, whatever a run request says."""
        return cls(cids=frozenset(cids), node=True)

    @classmethod
    def of(cls, items: Iterable[str] = ()) -> CodeTrust:
        """A policy trusting ``items``: code CIDs and ``module:factory`` specs (the values of
        ``--trust-code``)."""
        return cls().trusting(*items)

    @classmethod
    def for_home(cls, home: str | os.PathLike[str], items: Iterable[str] = ()) -> CodeTrust:
        """The home's allow-list (``HOME/trusted-code.json``) plus ``items``."""
        return cls(cids=read_trusted(home)).trusting(*items)

    def trusting(self, *items: str) -> CodeTrust:
        """This policy, also trusting ``items`` (code CIDs or ``module:factory`` specs)."""
        cids, local = set(self.cids), set(self.local)
        for item in items:
            if ":" in item:
                split_spec(item)
                local.add(item)
            else:
                cids.add(_cid_text(item))
        return CodeTrust(frozenset(cids), frozenset(local), self.node)

    def allows(self, ref: ModelRef) -> bool:
        if ref.is_zoo:
            return True
        if ref.code is not None:
            return ref.code in self.cids
        return not self.node and ref.model in self.local

    def check_code(self, cid: str) -> None:
        """Raise :class:`UntrustedCodeError` unless code artifact ``cid`` is trusted (on a
        node: on its operator's allow-list)."""
        if _cid_text(cid) in self.cids:
            return
        if self.node:
            raise UntrustedCodeError(
                f"model code {cid} is not allowed on this node: its operator allows code with "
                f"'cidflow node allow {cid}'",
                cid,
            )
        raise UntrustedCodeError(
            f"model code {cid} is not trusted: if you trust it, run with --trust-code {cid} or "
            f"add it to this home with 'cidflow code trust {cid}'",
            cid,
        )

    def check(self, ref: ModelRef) -> None:
        """Raise :class:`UntrustedCodeError` unless this policy allows ``ref`` (nothing is
        imported either way)."""
        if self.allows(ref):
            return
        if ref.code is not None and self.node:
            self.check_code(ref.code)
        if ref.code is not None:
            raise UntrustedCodeError(
                f"model code {ref.code} ({ref.model}) is not trusted: if you trust it, run with "
                f"--trust-code {ref.code} or add it to this home with 'cidflow code trust "
                f"{ref.code}'",
                ref.code,
            )
        if self.node:
            raise UntrustedCodeError(
                f"model factory {ref.model!r} names local code, which a node never builds: "
                "store the code as a code artifact (cidflow code add) whose CID the node's "
                "operator trusts (--trust-code CID)",
                ref.model,
            )
        raise UntrustedCodeError(
            f"model factory {ref.model!r} is local code that this run did not name: only the "
            f"zoo ({', '.join(ZOO)}) and code you trust are built; if you trust it, run with "
            f"--trust-code {ref.model}",
            ref.model,
        )


def _cid_text(value: str) -> str:
    try:
        return str(as_cid(value))
    except InvalidCIDError:
        raise ModelSpecError(
            f"{value!r} is neither a code artifact's CID nor a module:factory"
        ) from None


_TRUST: ContextVar[CodeTrust | None] = ContextVar("cidflow_code_trust", default=None)


@contextlib.contextmanager
def trusting(policy: CodeTrust) -> Iterator[CodeTrust]:
    """Build models in this context under ``policy`` (flows and tasks called inside it too)."""
    token = _TRUST.set(policy)
    try:
        yield policy
    finally:
        _TRUST.reset(token)


def current_trust() -> CodeTrust:
    """The policy set by :func:`trusting`, else the current runtime home's allow-list alone
    (no local specs: what a node, or a caller that named no code, gets)."""
    found = _TRUST.get()
    if found is not None:
        return found
    from flows.tasks import current_runtime

    return CodeTrust(cids=read_trusted(current_runtime().store.home))


# -- building --------------------------------------------------------------------------------


def resolve_factory(
    ref: ModelRef,
    *,
    trust: CodeTrust | None = None,
    store: ArtifactStore | None = None,
) -> Callable[..., Any] | None:
    """The factory of ``ref`` (``None`` for a zoo model), after ``trust`` (default:
    :func:`current_trust`) allowed it; a code artifact is read from ``store`` (default: the
    current runtime's) and materialised under its home."""
    if ref.is_zoo:  # cidflow's own code: no policy needed
        return None
    policy = trust if trust is not None else current_trust()
    policy.check(ref)
    if policy.node:  # a node never imports user code into its own processes
        raise UntrustedCodeError(
            f"model code {ref.code} runs on a node only in the sandbox, which this step does "
            "not use (train, evaluate and infer do)",
            str(ref.code),
        )
    module, attr = split_spec(ref.model)
    if ref.code is None:
        return _import_local(ref.model, module, attr)
    if store is None:
        from flows.tasks import current_runtime

        store = current_runtime().store
    return load_factory(materialise(store, ref.code), module, attr)


def build_model(
    model: str,
    *,
    input_shape: tuple[int, ...],
    n_classes: int,
    seed: int = 0,
    code: str | None = None,
    trust: CodeTrust | None = None,
    store: ArtifactStore | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The model ``model`` (with ``code``, a code artifact's CID) for samples of
    ``input_shape`` and ``n_classes`` classes, built only if ``trust`` (default:
    :func:`current_trust`) allows it; see :func:`flows.zoo.build_model` for the rest."""
    from flows.zoo import build_model as build

    factory = resolve_factory(make_ref(model, code), trust=trust, store=store)
    return build(
        model, input_shape=input_shape, n_classes=n_classes, seed=seed, factory=factory, **kwargs
    )


def load_model(store: ArtifactStore, model: str, *, trust: CodeTrust | None = None) -> nn.Module:
    """Model artifact ``model`` built from its spec and loaded with its weights (eval mode),
    only if ``trust`` (default: :func:`current_trust`) allows the code the spec names; that
    is checked before anything is imported. A node passes ``CodeTrust.for_node(cids)``."""
    art = store.open_artifact(model)
    spec = art.attrs.get(MODEL_ATTR)
    if art.kind != "state_dict" or not isinstance(spec, Mapping):
        raise ModelSpecError(f"{model} is not a cidflow model (kind {art.kind!r})")
    ref = model_ref(spec)
    if not ref.is_zoo:
        trust = trust if trust is not None else current_trust()
        trust.check(ref)
    try:
        shape = tuple(int(n) for n in spec["input_shape"])
        n_classes, seed = int(spec["n_classes"]), int(spec.get("seed", 0))
        kwargs = dict(spec.get("model_kwargs") or {})
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSpecError(f"model {model} has a malformed spec: {exc}") from None
    net = build_model(
        ref.model,
        input_shape=shape,
        n_classes=n_classes,
        seed=seed,
        code=ref.code,
        trust=trust,
        store=store,
        **kwargs,
    )
    net.load_state_dict(art.to_state_dict())
    net.eval()
    return net


def model_modules(ref: ModelRef) -> list[str]:
    """Modules whose source joins a cache key for ``ref``: a local ``module:factory``'s module
    (a code artifact is pinned by its CID, the zoo by :data:`~flows.cache.MODEL_CODE_MODULES`)."""
    return [split_spec(ref.model)[0]] if ref.is_local else []


def _import_local(spec: str, module: str, attr: str) -> Callable[..., Any]:
    try:
        obj: Any = importlib.import_module(module)
    except Exception as exc:  # an ImportError, or anything the module raises at import
        raise ModelSpecError(
            f"model factory {spec!r}: cannot import module {module!r}: {type(exc).__name__}: {exc}"
        ) from exc
    return _attribute(spec, obj, module, attr)


def _attribute(spec: str, obj: Any, module: str, attr: str) -> Callable[..., Any]:
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ModelSpecError(
                f"model factory {spec!r}: module {module!r} has no attribute {attr!r}"
            ) from exc
    if not callable(obj):
        raise ModelSpecError(f"model factory {spec!r} is not callable")
    return obj  # type: ignore[no-any-return]


_IMPORT_LOCK = threading.Lock()


def load_factory(code_dir: str | os.PathLike[str], module: str, factory: str) -> Callable[..., Any]:
    """Import ``module`` from the materialised code folder ``code_dir`` and return its
    ``factory`` (a dotted attribute path). The folder is the root of a synthetic package named
    after its absolute path (``_cidflow_code_<hash>``), never put on ``sys.path``; no
    bytecode is written into it. For a sandbox worker: the caller has decided to trust it."""
    spec = f"{module}:{factory}"
    split_spec(spec)
    root = Path(code_dir).absolute()
    if not root.is_dir():
        raise CodeArtifactError(f"no code folder at {root}")
    package = "_cidflow_code_" + hashlib.sha256(str(root).encode()).hexdigest()[:24]
    with _IMPORT_LOCK:
        if package not in sys.modules:
            found = importlib.machinery.ModuleSpec(package, None, is_package=True)
            found.submodule_search_locations = [str(root)]
            sys.modules[package] = importlib.util.module_from_spec(found)
        before = sys.dont_write_bytecode
        sys.dont_write_bytecode = True
        try:
            obj: Any = importlib.import_module(f"{package}.{module}")
        except Exception as exc:
            raise ModelSpecError(
                f"model factory {spec!r}: cannot import module {module!r} from {root}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        finally:
            sys.dont_write_bytecode = before
    return _attribute(spec, obj, module, factory)


# -- code artifacts ----------------------------------------------------------------------------


def _code_paths(folder: Path) -> list[str]:
    """The ``.py`` files under ``folder`` (relative, sorted); anything else is refused."""
    if folder.is_symlink() or not folder.is_dir():
        raise CodeArtifactError(
            f"{folder} is not a folder (code is added as a folder of .py files)"
        )
    paths: list[str] = []
    total = 0
    for here, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in [*dirs, *names]:
            path = Path(here) / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink():
                raise CodeArtifactError(
                    f"{rel} in {folder} is a symbolic link: code is plain files"
                )
            if name in dirs:
                continue
            if not (path.is_file() and _code_path_ok(rel)):
                raise CodeArtifactError(
                    f"{rel} in {folder} is not a Python source file: a code folder holds only "
                    ".py files and sub-packages"
                )
            total += path.stat().st_size
            paths.append(rel)
    if not paths:
        raise CodeArtifactError(f"{folder} holds no .py file")
    if len(paths) > MAX_CODE_FILES or total > MAX_CODE_BYTES:
        raise CodeArtifactError(
            f"{folder} is too large for code ({len(paths)} files, {total} bytes; at most "
            f"{MAX_CODE_FILES} files, {MAX_CODE_BYTES} bytes)"
        )
    return sorted(paths)


def _code_path_ok(rel: str) -> bool:
    parts = rel.split("/")
    return (
        rel.endswith(".py")
        and all(p and not p.startswith(".") and "\\" not in p for p in parts)
        and all(p.isidentifier() for p in parts[:-1])
    )


def put_code(store: ArtifactStore, folder: str | os.PathLike[str], *, pin: bool = True) -> str:
    """Store ``folder`` (``.py`` files and sub-packages only; no links) as a code artifact;
    return its CID. The same bytes give the same CID."""
    root = Path(folder)
    paths = _code_paths(root)
    attrs = {CODE_ATTR: {"format": CODE_FORMAT, "files": paths}}

    def skipped(rel: str) -> bool:
        return any(p in _SKIPPED_DIRS for p in rel.split("/"))

    cid = str(store.put_path(root, attrs=attrs, pin=pin, exclude=skipped))
    code_files(store, cid)  # what was stored is what was listed (no file changed meanwhile)
    return cid


def is_code(attrs: Mapping[str, Any]) -> bool:
    """Whether artifact attributes mark a code artifact (its files are checked on use)."""
    meta = attrs.get(CODE_ATTR)
    return isinstance(meta, Mapping) and meta.get("format") == CODE_FORMAT


def code_files(store: ArtifactStore, cid: str) -> list[str]:
    """The files of code artifact ``cid``, checked: a ``files`` artifact marked as code, whose
    files are exactly the ``.py`` files it lists, none escaping its folder."""
    try:
        art = store.open_artifact(cid)
        if art.kind != "files" or not is_code(art.attrs):
            raise CodeArtifactError(
                f"{cid} is not a code artifact (a {art.kind!r} artifact without "
                f"{CODE_ATTR!r}): add code with 'cidflow code add DIR'"
            )
        entries = art.files()
    except ArtifactError as exc:
        if isinstance(exc, CodeArtifactError):
            raise
        raise CodeArtifactError(f"code artifact {cid}: {exc}") from None
    listed = art.attrs[CODE_ATTR].get("files")
    paths = [e.path for e in entries]
    if listed != paths or not all(_code_path_ok(p) for p in paths):
        raise CodeArtifactError(
            f"code artifact {cid} is malformed: its files are not the .py files it lists"
        )
    if len(paths) > MAX_CODE_FILES or sum(e.size for e in entries) > MAX_CODE_BYTES:
        raise CodeArtifactError(f"code artifact {cid} is too large")
    return paths


def materialise(store: ArtifactStore, cid: str) -> Path:
    """``HOME/code/<cid>/``: code artifact ``cid`` as a folder, every blob re-hashed on the
    way. Exported to a unique temporary folder, checked, then renamed into place; a folder
    already there is kept only if it holds exactly these bytes (else it is replaced)."""
    cid = _cid_text(cid)
    paths = code_files(store, cid)
    base = store.home / "code"
    base.mkdir(parents=True, exist_ok=True)
    final = base / cid
    tmp = base / f".{cid}.{secrets.token_hex(6)}.tmp"
    try:
        try:
            store.open_artifact(cid).export(tmp)
        except (ArtifactError, OSError) as exc:
            raise CodeArtifactError(f"code artifact {cid} cannot be exported: {exc}") from None
        if _listing(tmp) != paths:
            raise CodeArtifactError(f"code artifact {cid} exported other files than it lists")
        if final.is_dir() and _same_tree(tmp, final, paths):
            return final
        if final.exists() or final.is_symlink():  # a stale or modified copy: set it aside
            stale = base / f".{cid}.{secrets.token_hex(6)}.stale"
            with contextlib.suppress(FileNotFoundError):
                os.rename(final, stale)
            shutil.rmtree(stale, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process put the same bytes in place meanwhile
            if not (final.is_dir() and _same_tree(tmp, final, paths)):
                raise CodeArtifactError(f"cannot put code artifact {cid} at {final}") from None
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _listing(root: Path) -> list[str]:
    out = []
    for here, dirs, names in os.walk(root, followlinks=False):
        for name in [*dirs, *names]:
            path = Path(here) / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                return ["<not a plain file or folder>"]
        out += [(Path(here) / n).relative_to(root).as_posix() for n in names]
    return sorted(out)


def _same_tree(a: Path, b: Path, paths: list[str]) -> bool:
    if _listing(b) != paths:
        return False
    return all((a / p).read_bytes() == (b / p).read_bytes() for p in paths)


# -- the home's allow-list ---------------------------------------------------------------------


def read_trusted(home: str | os.PathLike[str]) -> frozenset[str]:
    """The code CIDs on the home's allow-list (``HOME/trusted-code.json``; none if absent).
    A file that is a link, writable by others, or malformed is an error, not an empty list."""
    path = Path(home) / TRUST_FILE
    try:
        st = path.lstat()
    except FileNotFoundError:
        return frozenset()
    if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o022:
        raise UntrustedCodeError(
            f"{path} must be a regular file writable only by its owner (mode 0600)", str(path)
        )
    try:
        doc = json.loads(path.read_bytes())
        cids = doc["cids"] if doc.get("format") == TRUST_FORMAT else None
        if not isinstance(cids, list):
            raise ValueError("no list of cids")
        return frozenset(_cid_text(c) for c in cids)
    except (ValueError, TypeError, AttributeError, KeyError, ModelSpecError) as exc:
        raise UntrustedCodeError(f"{path} is malformed: {exc}", str(path)) from None


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    (home / "locks").mkdir(parents=True, exist_ok=True)
    with open(home / "locks" / "trusted-code.lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_trusted(home: Path, cids: Iterable[str]) -> None:
    body = json.dumps({"format": TRUST_FORMAT, "cids": sorted(set(cids))}, indent=1) + "\n"
    write_atomic(home / TRUST_FILE, body.encode(), mode=0o600)


def trust_code(home: str | os.PathLike[str], cid: str) -> bool:
    """Put code CID ``cid`` on the home's allow-list; ``False`` if it already was."""
    root, cid = Path(home), _cid_text(cid)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        cids = read_trusted(root)
        if cid in cids:
            return False
        _write_trusted(root, cids | {cid})
        return True


def untrust_code(home: str | os.PathLike[str], cid: str) -> bool:
    """Take ``cid`` off the home's allow-list; ``False`` if it was not on it."""
    root, cid = Path(home), _cid_text(cid)
    if not (root / TRUST_FILE).exists():
        return False
    with _locked(root):
        cids = read_trusted(root)
        if cid not in cids:
            return False
        _write_trusted(root, cids - {cid})
        return True
