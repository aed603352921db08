"""The trusted worker that runs a user's model inside the sandbox: ``python -m
flows.sandbox_worker JOB_DIR``.

It reads ``JOB_DIR/job.json`` (strict JSON, written by :func:`flows.sandbox_jobs.run_model_job`)::

    {"op": "train" | "evaluate" | "predict",
     "code": "code", "module": "net", "factory": "build",      # the user's model factory
     "model_kwargs": {}, "input_shape": [8], "n_classes": 3, "seed": 0,
     "epochs": 2, "batch_size": 16, "lr": 0.01, "weight_decay": 0.0,   # train only
     "eval_batch_size": 256,                                 # evaluate, predict
     "inputs": {"x": "in/x.npy", "y": "in/y.npy"},          # .npy, loaded with allow_pickle=False
     "state": "in/state.safetensors" | null}                # initial weights (optional)

builds the model with :func:`flows.zoo.build_model` (initial weights seeded by ``seed``), loads
``state`` when given, and runs cidflow's own :func:`~flows.training.train_model`,
:func:`~flows.training.evaluate_model` or :func:`~flows.training.predict_batches` on the CPU.
It writes ``out/result.json`` (``{"op": ..., "metrics": ...}``), ``out/model.safetensors``
(train) and ``out/predictions.npy`` (predict, int64 class ids); on failure ``out/error.json``
(``{"type": ..., "message": ...}``) and exit status 1. Nothing is pickled, in or out.

The user's folder is imported as a synthetic package (:func:`flows.code.load_factory`), so
that its modules may import each other relatively.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Final

import numpy as np

__all__ = ["JOB_OPS", "main", "read_job", "run_job"]

JOB_OPS: Final = ("train", "evaluate", "predict")
MAX_JOB_BYTES: Final = 1 << 20
_NEEDS: Final = {"train": ("x", "y"), "evaluate": ("x", "y"), "predict": ("x",)}
_OPTIONAL: Final = {"train": ("x_val", "y_val"), "evaluate": (), "predict": ()}


def read_job(path: Path) -> dict[str, Any]:
    """``job.json``, checked: strict JSON (no NaN, no duplicate keys), an object with a known
    ``op``, relative input paths that stay inside the job folder."""
    raw = path.read_bytes()
    if len(raw) > MAX_JOB_BYTES:
        raise ValueError(f"job.json is {len(raw)} bytes, over {MAX_JOB_BYTES}")
    job = json.loads(raw, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
    if not isinstance(job, dict):
        raise ValueError("job.json must hold an object")
    if job.get("op") not in JOB_OPS:
        raise ValueError(f"job op must be one of {JOB_OPS}, got {job.get('op')!r}")
    inputs = job.get("inputs")
    if not isinstance(inputs, dict):
        raise ValueError("job inputs must be an object of name -> relative .npy path")
    missing = [n for n in _NEEDS[job["op"]] if n not in inputs]
    if missing:
        raise ValueError(f"{job['op']} needs inputs {missing}")
    for rel in [*inputs.values(), job.get("state"), job.get("code")]:
        if rel is not None:
            _relative(rel)
    return job


def run_job(job_dir: Path) -> dict[str, Any]:
    """Run the job in ``job_dir`` and write its outputs to ``job_dir/out``; returns the result."""
    import torch
    from safetensors.torch import load_file, save_file

    from flows.code import load_factory
    from flows.training import TrainConfig, evaluate_model, predict_batches, train_model
    from flows.zoo import build_model

    job = read_job(job_dir / "job.json")
    op = job["op"]
    out = job_dir / "out"
    out.mkdir(exist_ok=True)
    arrays = {name: _load_npy(job_dir / _relative(rel)) for name, rel in job["inputs"].items()}
    module = _module_name(job["module"])
    factory = load_factory(job_dir / _relative(job.get("code", "code")), module, job["factory"])
    model = build_model(
        f"{module}:{job['factory']}",
        factory=factory,
        input_shape=tuple(job["input_shape"]),
        n_classes=job["n_classes"],
        seed=job.get("seed", 0),
        **job.get("model_kwargs", {}),
    )
    if job.get("state") is not None:
        model.load_state_dict(load_file(str(job_dir / _relative(job["state"]))), strict=True)
    cpu = torch.device("cpu")
    model.to(cpu)
    result: dict[str, Any] = {"op": op}
    if op == "train":
        config = TrainConfig(
            epochs=job.get("epochs", 10),
            batch_size=job.get("batch_size", 64),
            lr=job.get("lr", 1e-3),
            seed=job.get("seed", 0),
            weight_decay=job.get("weight_decay", 0.0),
        )
        trained = train_model(
            model,
            arrays["x"],
            arrays["y"],
            config,
            x_val=arrays.get("x_val"),
            y_val=arrays.get("y_val"),
            n_classes=job["n_classes"],
            device=cpu,
        )
        save_file(
            {k: v.contiguous() for k, v in trained.state_dict.items()},
            str(out / "model.safetensors"),
        )
        result["metrics"] = trained.metrics
    elif op == "evaluate":
        result["metrics"] = evaluate_model(
            model,
            arrays["x"],
            arrays["y"],
            batch_size=job.get("eval_batch_size", 256),
            n_classes=job["n_classes"],
        )
    else:
        batch = job.get("eval_batch_size", 256)
        x = arrays["x"]
        parts = list(predict_batches(model, _batches(x, batch)))
        preds = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        np.save(out / "predictions.npy", preds.astype(np.int64, copy=False), allow_pickle=False)
        result["metrics"] = {"n": len(x)}
    (out / "result.json").write_text(json.dumps(result, allow_nan=False, sort_keys=True))
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m flows.sandbox_worker JOB_DIR", file=sys.stderr)
        return 2
    job_dir = Path(args[0])
    try:
        run_job(job_dir)
    except Exception as exc:  # MemoryError and OSError(EFBIG) included: report, exit 1
        _report(job_dir, exc)
        return 1
    return 0


# -- helpers -----------------------------------------------------------------------------------


def _report(job_dir: Path, exc: BaseException) -> None:
    lines = str(exc).strip().splitlines()
    error = {"type": type(exc).__name__, "message": (lines[0] if lines else "")[:500]}
    print(f"sandbox worker: {error['type']}: {error['message']}", file=sys.stderr)
    try:
        (job_dir / "out").mkdir(exist_ok=True)
        (job_dir / "out" / "error.json").write_text(json.dumps(error))
    except OSError:
        pass  # the stderr line above still says why


def _load_npy(path: Path) -> np.ndarray:
    array = np.load(path, allow_pickle=False)
    if not isinstance(array, np.ndarray):  # pragma: no cover (an .npz would be a NpzFile)
        raise ValueError(f"{path.name} is not a .npy array")
    return array


def _batches(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(x), size):
        yield x[start : start + size]


def _relative(rel: object) -> PurePosixPath:
    if not isinstance(rel, str) or not rel:
        raise ValueError(f"job path must be a non-empty string, got {rel!r}")
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts:
        raise ValueError(f"job path {rel!r} must stay inside the job folder")
    return path


def _module_name(module: object) -> str:
    if not isinstance(module, str) or not all(p.isidentifier() for p in module.split(".")):
        raise ValueError(f"module must be a dotted Python name, got {module!r}")
    return module


def _no_constant(name: str) -> Any:
    raise ValueError(f"job.json holds {name}, which is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError("job.json repeats a key")
    return dict(pairs)


if __name__ == "__main__":
    sys.exit(main())
