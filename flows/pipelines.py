"""The cidflow flows: train, evaluate, infer (and dataset publishing through
:mod:`flows.datasets`). Each step is a :func:`~flows.tasks.cid_task`: artifacts in and out by
CID, cached by content, one signed receipt per execution; each flow is a real Prefect flow.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.artifact import Artifact
from artifacts.store import ArtifactStore
from flows.cache import MODEL_CODE_MODULES
from flows.code import MODEL_ATTR
from flows.errors import DatasetError, ModelSpecError
from flows.tasks import cid_task, current_runtime

__all__ = [
    "MODEL_ATTR",
    "evaluate",
    "evaluate_flow",
    "infer",
    "infer_flow",
    "model_code",
    "model_spec",
    "train",
    "train_flow",
]


def _find(names: Any, split: str, stem: str) -> str | None:
    """The array holding ``stem`` of ``split``: ``train/x`` in an arrays artifact, or
    ``train/x.npy`` in a folder that was added as files; the unsplit ``x`` as a fallback."""
    for name in (f"{split}/{stem}", f"{split}/{stem}.npy", stem, f"{stem}.npy"):
        if name in names:
            return name
    return None


def _supervised(art: Artifact, split: str) -> tuple[Any, Any]:
    arrays = art.arrays()
    xname, yname = _find(arrays, split, "x"), _find(arrays, split, "y")
    if xname is not None and yname is not None:
        return art.array(xname), art.array(yname)
    raise DatasetError(
        f"dataset {art.cid} has no {split}/x and {split}/y (nor x and y): "
        f"it holds {sorted(arrays) or 'no arrays'}"
    )


def _n_classes(art: Artifact, y: np.ndarray) -> int:
    schema = art.attrs.get("schema", {})
    classes = schema.get("classes") if isinstance(schema, dict) else None
    if isinstance(classes, int) and classes > 0:
        return classes
    if isinstance(classes, list) and classes:
        return len(classes)
    return int(y.max()) + 1 if y.size else 1


def _model_modules(**kwargs: Any) -> list[str]:
    """The train task's code modules: the zoo and training loop, and a local ``module:factory``
    model's module when the current policy trusts it (an untrusted one is never looked up: the
    task refuses it before anything is imported)."""
    return [*MODEL_CODE_MODULES, *_trusted_modules(kwargs.get("model", "mlp"), kwargs.get("code"))]


def _trusted_modules(model: Any, code: Any) -> list[str]:
    from flows.code import current_trust, make_ref, model_modules

    if not isinstance(model, str):
        return []
    try:
        ref = make_ref(model, code)
    except ModelSpecError:
        return []
    return model_modules(ref) if not ref.is_zoo and current_trust().allows(ref) else []


def _loaded_model_modules(**kwargs: Any) -> list[str]:
    """evaluate's and infer's code modules: as :func:`_model_modules`, for the spec of the
    model artifact they load."""
    try:
        spec = _model_spec(current_runtime().store, kwargs["model"])
    except Exception:  # no such model, not a model: the task says why when it runs
        return list(MODEL_CODE_MODULES)
    return [*MODEL_CODE_MODULES, *_trusted_modules(spec.get("model"), spec.get("code"))]


def model_spec(store: ArtifactStore, model: str) -> dict[str, Any]:
    """The ``cidflow.model`` attribute of model artifact ``model`` (read, never built)."""
    return _model_spec(store, model)


def _model_spec(store: ArtifactStore, model: str) -> dict[str, Any]:
    art = store.open_artifact(model)
    spec = art.attrs.get(MODEL_ATTR)
    if art.kind != "state_dict" or not isinstance(spec, dict):
        raise ModelSpecError(f"{model} is not a cidflow model (kind {art.kind!r})")
    return dict(spec)


def _sandboxed(ref: Any) -> bool:
    """Whether this step must run ``ref``'s code in the sandbox: user code on a node (whose
    policy is :meth:`~flows.code.CodeTrust.for_node`), which never imports it itself."""
    from flows.code import current_trust

    return ref.code is not None and current_trust().node


def _in_sandbox(
    store: ArtifactStore,
    ref: Any,
    op: str,
    spec: dict[str, Any],
    arrays: dict[str, np.ndarray],
    state: Any = None,
    **job: Any,
) -> Any:
    """Run one model job (:func:`flows.sandbox_jobs.run_model_job`) of code artifact
    ``ref.code`` on this node: the code checked and materialised from its CID, the node's home
    hidden from it, its job folder under ``HOME/tmp``."""
    from flows.code import current_trust, materialise, split_spec
    from flows.sandbox_jobs import run_model_job

    current_trust().check(ref)
    module, factory = split_spec(ref.model)
    work = store.home / "tmp"
    work.mkdir(parents=True, exist_ok=True)
    job = {
        "op": op,
        "module": module,
        "factory": factory,
        "model_kwargs": dict(spec.get("model_kwargs") or {}),
        "input_shape": list(spec["input_shape"]),
        "n_classes": int(spec["n_classes"]),
        "seed": int(spec.get("seed", 0)),
        **job,
    }
    return run_model_job(
        job,
        arrays,
        code_dir=materialise(store, ref.code),
        work_dir=work,
        state=state,
        hide=[store.home],
    )


@cid_task(name="train", extra_modules=_model_modules)
def train(
    dataset: str,
    model: str = "mlp",
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    model_kwargs: dict[str, Any] | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset``'s train split; the model artifact holds its weights,
    spec and per-epoch metrics. ``model`` is a zoo name or ``module:factory``, from the code
    artifact ``code`` or the local environment; user code must be trusted by the current
    :class:`~flows.code.CodeTrust` (checked before anything is read or imported)."""
    from prefect.logging import get_run_logger

    from flows.code import build_model, current_trust, make_ref
    from flows.training import TrainConfig, check_shapes, train_model

    store = current_runtime().store
    ref = make_ref(model, code)
    trust = None if ref.is_zoo else current_trust()
    if trust is not None:
        trust.check(ref)  # before anything is read or imported
    log = get_run_logger()
    art = store.open_artifact(dataset)
    x_arr, y_arr = _supervised(art, "train")
    x, y = np.asarray(x_arr[...], dtype=np.float32), np.asarray(y_arr[...], dtype=np.int64)
    arrays = art.arrays()
    x_val = y_val = None
    vx, vy = _find(arrays, "test", "x"), _find(arrays, "test", "y")
    if vx is not None and vy is not None and vx.startswith("test/"):
        x_val = np.asarray(art.array(vx)[...], dtype=np.float32)
        y_val = np.asarray(art.array(vy)[...], dtype=np.int64)
    n_classes = _n_classes(art, y)
    kwargs = dict(model_kwargs or {})
    spec = {
        "model": model,
        "code": ref.code,
        "model_kwargs": kwargs,
        "input_shape": list(x.shape[1:]),
        "n_classes": n_classes,
        "seed": seed,
        "dataset": dataset,
    }
    if _sandboxed(ref):
        inputs: dict[str, Any] = {"x": x, "y": y, "x_val": x_val, "y_val": y_val}
        inputs = {k: v for k, v in inputs.items() if v is not None}
        done = _in_sandbox(
            store, ref, "train", spec, inputs, epochs=epochs, batch_size=batch_size, lr=lr
        )
        state_dict, metrics = done.state_dict, list(done.metrics)
    else:
        net = build_model(
            model,
            input_shape=tuple(x.shape[1:]),
            n_classes=n_classes,
            seed=seed,
            code=ref.code,
            trust=trust,
            store=store,
            **kwargs,
        )
        check_shapes(net, x[:1], n_classes)  # a misfit fails here, before any training
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)

        def progress(m: dict[str, float]) -> None:
            log.info(
                "epoch %d/%d  %s",
                int(m["epoch"]),
                epochs,
                "  ".join(f"{k}={v:.4f}" for k, v in m.items() if k != "epoch"),
            )

        result = train_model(
            net, x, y, config, x_val=x_val, y_val=y_val, progress=progress, n_classes=n_classes
        )
        state_dict, metrics = result.state_dict, result.metrics
    cid = store.put_state_dict(
        state_dict, attrs={MODEL_ATTR: spec, "metrics": metrics}, source="train"
    )
    return {"model": str(cid), "metrics": metrics[-1]}


def _model_ref(store: ArtifactStore, model: str, code: str | None) -> Any:
    """The code reference of model artifact ``model``, which must name ``code``: the task's
    parameter, that puts the code in the key and the receipt."""
    from flows.code import make_ref, model_ref_of

    ref = model_ref_of(store, model)
    if ref.code != (None if code is None else make_ref(ref.model, code).code):
        raise ModelSpecError(
            f"model {model} is built by code {ref.code}, but the task was given code={code!r}: "
            f"pass code={ref.code!r} (the flows fill it in)"
        )
    return ref


def _load_model(store: ArtifactStore, model: str, code: str | None) -> Any:
    """Model artifact ``model`` built and loaded (:func:`flows.code.load_model`: only if the
    current policy trusts its code), which must be ``code`` (:func:`_model_ref`)."""
    from flows.code import load_model

    _model_ref(store, model, code)
    return load_model(store, model)


def model_code(model: str, *, store: ArtifactStore | None = None) -> str | None:
    """The code CID of model artifact ``model`` (``None``: the zoo or a local module), after
    the current :class:`~flows.code.CodeTrust` allowed it: what evaluate and infer take as
    ``code``. Raises :class:`~flows.errors.UntrustedCodeError` otherwise; imports nothing."""
    from flows.code import current_trust, model_ref

    ref = model_ref(_model_spec(store or current_runtime().store, model))
    if not ref.is_zoo:
        current_trust().check(ref)
    return ref.code


@cid_task(name="evaluate", extra_modules=_loaded_model_modules)
def evaluate(
    model: str, dataset: str, batch_size: int = 256, code: str | None = None
) -> dict[str, Any]:
    """Accuracy, loss and confusion matrix on the test split, stored as a metrics artifact.
    ``code``: the model's code CID (:func:`model_code`), so that it is in the key and receipt."""
    from flows.training import evaluate_model

    store = current_runtime().store
    x_arr, y_arr = _supervised(store.open_artifact(dataset), "test")
    x, y = np.asarray(x_arr[...], dtype=np.float32), np.asarray(y_arr[...], dtype=np.int64)
    ref = _model_ref(store, model, code)
    if _sandboxed(ref):
        state = store.open_artifact(model).to_state_dict()
        metrics = _in_sandbox(
            store,
            ref,
            "evaluate",
            _model_spec(store, model),
            {"x": x, "y": y},
            state,
            eval_batch_size=batch_size,
        ).metrics
    else:
        metrics = evaluate_model(_load_model(store, model, code), x, y, batch_size=batch_size)
    confusion = np.asarray(metrics["confusion"], dtype=np.int64)
    cid = store.put_arrays(
        {"confusion": confusion},
        attrs={
            "accuracy": metrics["accuracy"],
            "loss": metrics["loss"],
            "model": model,
            "dataset": dataset,
        },
        source="evaluate",
    )
    scalars = {"accuracy": float(metrics["accuracy"]), "loss": float(metrics["loss"])}
    return {"metrics": scalars, "metrics_artifact": str(cid)}


@cid_task(name="infer", extra_modules=_loaded_model_modules)
def infer(
    model: str,
    dataset: str,
    split: str = "test",
    batch_size: int = 1024,
    code: str | None = None,
) -> dict[str, Any]:
    """Predicted class ids for every row of the dataset's ``x``, computed and written batch by
    batch (the dataset never has to fit in memory). ``code``: as for :func:`evaluate`."""
    from flows.training import predict_batches

    store = current_runtime().store
    art = store.open_artifact(dataset)
    names = art.arrays()
    xname = _find(names, split, "x")
    if xname is None:
        raise DatasetError(f"dataset {dataset} has no {split}/x or x array")
    x = art.array(xname)
    ref = _model_ref(store, model, code)
    if _sandboxed(ref):  # the whole x goes into the sandbox's job folder
        done = _in_sandbox(
            store,
            ref,
            "predict",
            _model_spec(store, model),
            {"x": np.asarray(x[...], dtype=np.float32)},
            store.open_artifact(model).to_state_dict(),
            eval_batch_size=batch_size,
        )
        attrs = {"model": model, "dataset": dataset}
        cid = store.put_arrays({"predictions": done.predictions}, attrs=attrs, source="infer")
        return {"predictions": str(cid), "rows": int(x.shape[0])}
    net = _load_model(store, model, code)
    rows = int(x.shape[0])
    row_bytes = max(1, math.prod(x.shape[1:]) * 4)
    block = _read_block_rows(batch_size, int(x.chunks[0]) if x.ndim else 1, row_bytes)

    def read(first: int) -> np.ndarray:
        return np.asarray(x[first : first + block], dtype=np.float32)

    def batches() -> Any:
        # Read whole chunks, many batches at a time (a batch smaller than a chunk read on its
        # own would fetch, hash and decode that chunk again for every batch in it), and read
        # the next block while the model works on this one: at most two blocks in memory.
        with ThreadPoolExecutor(1, thread_name_prefix="infer-read") as pool:
            ahead = pool.submit(read, 0)
            for first in range(0, rows, block):
                data = ahead.result()
                if first + block < rows:
                    ahead = pool.submit(read, first + block)
                for start in range(0, len(data), batch_size):
                    yield data[start : start + batch_size]

    with _prediction_buffer(store, rows) as predictions:
        pos = 0
        for batch in predict_batches(net, batches()):
            predictions[pos : pos + len(batch)] = batch
            pos += len(batch)
        attrs = {"model": model, "dataset": dataset}
        cid = store.put_arrays({"predictions": predictions}, attrs=attrs, source="infer")
    return {"predictions": str(cid), "rows": rows}


#: ``infer`` reads its input in blocks of about this many bytes (whole chunks, whole batches).
_READ_BLOCK_BYTES = 32 << 20


def _read_block_rows(batch_size: int, chunk_rows: int, row_bytes: int) -> int:
    """Rows per read: a multiple of ``batch_size`` (the batches stay what they were) and, when
    affordable, of the chunk's rows (no chunk is decoded twice), about ``_READ_BLOCK_BYTES``."""
    step = math.lcm(batch_size, max(1, chunk_rows))
    if step * row_bytes > _READ_BLOCK_BYTES:
        step = batch_size
    return step * max(1, _READ_BLOCK_BYTES // (step * row_bytes))


#: Predictions larger than this go to a memory-mapped file in the home's ``tmp/``, not RAM.
_IN_MEMORY_PREDICTIONS = 64 << 20


@contextlib.contextmanager
def _prediction_buffer(store: ArtifactStore, rows: int) -> Iterator[np.ndarray]:
    if rows * 8 <= _IN_MEMORY_PREDICTIONS:
        yield np.empty(rows, dtype=np.int64)
        return
    tmp = store.home / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=tmp, prefix="infer-") as folder:
        buffer = np.lib.format.open_memmap(
            Path(folder) / "predictions.npy", mode="w+", dtype=np.int64, shape=(rows,)
        )
        try:
            yield buffer
        finally:
            del buffer


def _flow(name: str, step: Any, loads_model: bool = False) -> Any:
    from prefect import flow

    def run(**kwargs: Any) -> dict[str, Any]:
        if loads_model and kwargs.get("code") is None:  # the model's code, once it is trusted
            kwargs["code"] = model_code(kwargs["model"])
        state = step(return_state=True, **kwargs)
        result: dict[str, Any] = dict(state.result())
        result["cached"] = state.name == "Cached"
        return result

    run.__name__ = name
    return flow(name=name, log_prints=False)(run)


train_flow = _flow("cidflow-train", train)
evaluate_flow = _flow("cidflow-evaluate", evaluate, loads_model=True)
infer_flow = _flow("cidflow-infer", infer, loads_model=True)
