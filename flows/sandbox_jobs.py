"""The node-side call: run one model job (train / evaluate / predict) of a user's code in the
sandbox, and read its outputs back as untrusted data.

::

    from flows.sandbox_jobs import run_model_job

    res = run_model_job(
        {"op": "train", "module": "net", "factory": "build", "input_shape": [8],
         "n_classes": 3, "seed": 0, "epochs": 2, "batch_size": 16, "lr": 0.01},
        {"x": x_train, "y": y_train},
        code_dir=materialised_code_folder,      # allow-listed code artifact, already on disk
        work_dir=node_home / "tmp",             # parent of the private job folder
        hide=[node_home, cluster_home],         # never visible to the user's code
    )
    res.state_dict, res.metrics                 # trained weights (CPU tensors), per-epoch metrics

Everything the worker writes is checked before use: sizes are bounded before reading, files
are opened without following symlinks, JSON is strict, the state dict holds finite values only
(and, when an initial ``state`` was given, exactly its names, shapes and dtypes), predictions
are int64 of shape ``(len(x),)`` with classes in ``[0, n_classes)``. The job folder (mode 0700)
is removed in every case.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from flows.errors import SandboxJobError
from flows.sandbox import (
    DEFAULT_LIMITS,
    JOB_MOUNT,
    SandboxLimits,
    SandboxResult,
    SandboxSettings,
    run_sandboxed,
    sandbox_backend,
)
from flows.sandbox_worker import JOB_OPS

if TYPE_CHECKING:
    import torch

__all__ = ["ModelJobResult", "run_model_job"]

MAX_RESULT_BYTES: Final = 1 << 20
MAX_ERROR_BYTES: Final = 64 << 10
_JOB_KEYS: Final = frozenset(
    {
        "op",
        "module",
        "factory",
        "model_kwargs",
        "input_shape",
        "n_classes",
        "seed",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "eval_batch_size",
    }
)
_ARRAY_NAMES: Final = frozenset({"x", "y", "x_val", "y_val"})


@dataclass(frozen=True, slots=True)
class ModelJobResult:
    """What a sandboxed model job gave back, checked.

    ``metrics``: train, a list of per-epoch dicts (see :class:`~flows.training.TrainResult`);
    evaluate, :func:`~flows.training.evaluate_model`'s dict; predict, ``{"n": rows}``.
    ``state_dict``: the trained weights (train only). ``predictions``: int64 class ids
    (predict only). ``run``: how the sandboxed process ended (timings, output tails).
    """

    op: str
    metrics: Any
    state_dict: dict[str, torch.Tensor] | None
    predictions: np.ndarray | None
    run: SandboxResult


def run_model_job(
    job: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
    *,
    code_dir: str | os.PathLike[str],
    work_dir: str | os.PathLike[str],
    state: Mapping[str, torch.Tensor] | None = None,
    hide: Iterable[str | os.PathLike[str]] = (),
    limits: SandboxLimits = DEFAULT_LIMITS,
    max_state_bytes: int = 1 << 30,
    settings: SandboxSettings | None = None,
) -> ModelJobResult:
    """Run ``job`` on ``arrays`` with the user's code in ``code_dir``, sandboxed.

    ``job`` keys: ``op`` (``train``/``evaluate``/``predict``), ``module`` and ``factory`` (in
    ``code_dir``; called as ``factory(input_shape=..., n_classes=..., **model_kwargs)``),
    ``input_shape``, ``n_classes``, ``seed`` (initial weights and shuffling), and for train
    ``epochs``, ``batch_size``, ``lr``, ``weight_decay``; ``eval_batch_size`` (default 256)
    for evaluate and predict. ``arrays``: ``x`` (and ``y`` for
    train/evaluate; ``x_val``/``y_val`` optional for train), plain numeric numpy arrays.
    ``state``: initial weights. ``work_dir``: an existing folder (the node home's ``tmp/``)
    where the private job folder is made; it and every ``hide`` path are covered inside.

    Raises :class:`~flows.errors.SandboxUnavailableError` before writing anything when no
    backend works, ``ValueError`` for a bad job, and :class:`~flows.errors.SandboxJobError`
    (with a one-line ``reason``) when the run fails, is killed, or gives outputs that fail the
    checks.
    """
    spec = _check_job(job, arrays)
    sandbox_backend(settings)  # refuse before touching the disk
    code = Path(code_dir)
    if not code.is_dir():
        raise NotADirectoryError(f"code folder {code} is not a directory")
    parent = Path(work_dir)
    parent.mkdir(parents=True, exist_ok=True)
    job_dir = Path(tempfile.mkdtemp(prefix="sandbox-job-", dir=parent))  # mode 0700
    try:
        _write_inputs(job_dir, code, spec, arrays, state)
        run = run_sandboxed(
            [sys.executable, "-m", "flows.sandbox_worker", JOB_MOUNT],
            job_dir=job_dir,
            hide=[*hide, parent.resolve()],
            limits=limits,
            settings=settings,
        )
        op = spec["op"]
        if not run.ok:
            reason = _failure_reason(job_dir, run)
            raise SandboxJobError(f"sandboxed {op} failed: {reason}", reason=reason)
        return _read_outputs(job_dir, spec, arrays, state, run, max_state_bytes)
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


# -- inputs ------------------------------------------------------------------------------------


def _check_job(job: Mapping[str, Any], arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    unknown = set(job) - _JOB_KEYS
    if unknown:
        raise ValueError(f"unknown job keys {sorted(unknown)}; allowed: {sorted(_JOB_KEYS)}")
    if job.get("op") not in JOB_OPS:
        raise ValueError(f"job op must be one of {JOB_OPS}, got {job.get('op')!r}")
    for key in ("module", "factory", "input_shape", "n_classes"):
        if key not in job:
            raise ValueError(f"job needs {key!r}")
    n_classes = job["n_classes"]
    if isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1:
        raise ValueError(f"n_classes must be a positive integer, got {n_classes!r}")
    bad = set(arrays) - _ARRAY_NAMES
    if bad:
        raise ValueError(f"unknown arrays {sorted(bad)}; allowed: {sorted(_ARRAY_NAMES)}")
    need = ("x",) if job["op"] == "predict" else ("x", "y")
    for name in need:
        if name not in arrays:
            raise ValueError(f"{job['op']} needs array {name!r}")
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray) or a.dtype.kind not in "biuf":
            raise ValueError(f"array {name!r} must be a numeric numpy array")
    spec = dict(job)
    try:
        json.dumps(spec, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"job must be plain JSON values: {exc}") from exc
    return spec


def _write_inputs(
    job_dir: Path,
    code: Path,
    spec: dict[str, Any],
    arrays: Mapping[str, np.ndarray],
    state: Mapping[str, torch.Tensor] | None,
) -> None:
    for path in code.rglob("*"):
        if path.is_symlink():
            raise ValueError(f"code folder holds a symlink ({path.relative_to(code)}): refused")
    shutil.copytree(code, job_dir / "code", ignore=shutil.ignore_patterns("__pycache__"))
    (job_dir / "in").mkdir()
    (job_dir / "out").mkdir()
    inputs = {}
    for name, array in arrays.items():
        np.save(job_dir / "in" / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
        inputs[name] = f"in/{name}.npy"
    state_rel = None
    if state is not None:
        from safetensors.torch import save_file

        save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()},
            str(job_dir / "in" / "state.safetensors"),
        )
        state_rel = "in/state.safetensors"
    doc = {**spec, "code": "code", "inputs": inputs, "state": state_rel}
    (job_dir / "job.json").write_text(json.dumps(doc, allow_nan=False, sort_keys=True))


# -- outputs (untrusted: written by the user's process) ----------------------------------------


def _read_out(job_dir: Path, name: str, limit: int) -> bytes | None:
    """``out/name``'s bytes, or ``None`` when absent; refuses links, non-files and anything
    over ``limit`` bytes (checked before reading)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        out_fd = os.open(job_dir / "out", flags | os.O_DIRECTORY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _bad_output(f"out/ is not a plain folder ({exc.strerror})") from exc
    try:
        try:
            fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=out_fd)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _bad_output(f"out/{name} cannot be opened as a file ({exc.strerror})") from exc
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise _bad_output(f"out/{name} is not a regular file")
            if st.st_size > limit:
                raise _bad_output(f"out/{name} is {st.st_size} bytes, over the bound {limit}")
            data = f.read(limit + 1)
        if len(data) > limit:
            raise _bad_output(f"out/{name} grew past the bound {limit}")
        return data
    finally:
        os.close(out_fd)


def _bad_output(message: str) -> SandboxJobError:
    return SandboxJobError(f"sandboxed job gave a bad output: {message}", reason=message)


def _failure_reason(job_dir: Path, run: SandboxResult) -> str:
    if run.killed_by is not None:
        return run.killed_by
    try:
        raw = _read_out(job_dir, "error.json", MAX_ERROR_BYTES)
        err = json.loads(raw) if raw else None
    except (SandboxJobError, ValueError):
        err = None
    if isinstance(err, dict) and isinstance(err.get("type"), str):
        return f"worker {err['type']}: {str(err.get('message', ''))[:300]}"
    lines = run.stderr.strip().splitlines()
    return f"exit {run.returncode}" + (f": {lines[-1][:300]}" if lines else "")


def _read_outputs(
    job_dir: Path,
    spec: dict[str, Any],
    arrays: Mapping[str, np.ndarray],
    state: Mapping[str, torch.Tensor] | None,
    run: SandboxResult,
    max_state_bytes: int,
) -> ModelJobResult:
    op = spec["op"]
    raw = _read_out(job_dir, "result.json", MAX_RESULT_BYTES)
    if raw is None:
        raise _bad_output("no out/result.json")
    try:
        result = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise _bad_output(f"out/result.json is not strict JSON: {exc}") from exc
    if not isinstance(result, dict) or result.get("op") != op or "metrics" not in result:
        raise _bad_output("out/result.json is not this job's result")
    state_dict = _read_state(job_dir, state, max_state_bytes) if op == "train" else None
    predictions = None
    if op == "predict":
        predictions = _read_predictions(job_dir, len(arrays["x"]), spec["n_classes"])
    return ModelJobResult(op, result["metrics"], state_dict, predictions, run)


def _read_state(
    job_dir: Path, initial: Mapping[str, torch.Tensor] | None, limit: int
) -> dict[str, torch.Tensor]:
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    raw = _read_out(job_dir, "model.safetensors", limit)
    if raw is None:
        raise _bad_output("train gave no out/model.safetensors")
    try:
        tensors = load(raw)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise _bad_output(f"out/model.safetensors does not parse: {exc}") from exc
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise _bad_output(f"weight {name!r} holds NaN or infinite values")
    if initial is not None:
        want = {k: (tuple(v.shape), v.dtype) for k, v in initial.items()}
        got = {k: (tuple(v.shape), v.dtype) for k, v in tensors.items()}
        if want != got:
            diff = sorted(set(want) ^ set(got)) or sorted(k for k in want if want[k] != got[k])
            raise _bad_output(f"trained weights differ from the initial ones in {diff[:5]}")
    return tensors


def _read_predictions(job_dir: Path, n: int, n_classes: int) -> np.ndarray:
    raw = _read_out(job_dir, "predictions.npy", 8 * n + 4096)
    if raw is None:
        raise _bad_output("predict gave no out/predictions.npy")
    try:
        preds = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _bad_output(f"out/predictions.npy does not parse: {exc}") from exc
    if not isinstance(preds, np.ndarray) or preds.dtype != np.int64 or preds.shape != (n,):
        got = f"{getattr(preds, 'dtype', '?')} {getattr(preds, 'shape', '?')}"
        raise _bad_output(f"predictions must be int64 of shape ({n},), got {got}")
    if n and (int(preds.min()) < 0 or int(preds.max()) >= n_classes):
        raise _bad_output(f"predictions outside [0, {n_classes})")
    return preds


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
