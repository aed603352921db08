"""Training, evaluation and inference as plain PyTorch functions (no Prefect here).

Inputs are numpy arrays: features ``x`` (converted to float32, shape ``(n, *sample_shape)``)
and integer labels ``y`` (int64, shape ``(n,)``). Training uses Adam and cross-entropy and is
bit-for-bit deterministic on CPU for the same model, data, config and seed: shuffling draws
from a local :class:`torch.Generator`, dropout from a forked global RNG seeded with
``config.seed``, and the loop runs with ``torch.use_deterministic_algorithms(True)`` and a fixed
thread count (:data:`TRAIN_THREADS`); every global setting is restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from flows.errors import ShapeMismatchError, TrainingError

__all__ = [
    "TRAIN_THREADS",
    "TrainConfig",
    "TrainResult",
    "check_shapes",
    "evaluate_model",
    "pick_device",
    "predict_batches",
    "train_model",
]

TRAIN_THREADS: Final = 1
"""Intra-op threads while training: a fixed count keeps CPU reductions bit-for-bit identical
from one machine to the next."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of :func:`train_model` (all plain JSON values, fit for a cache key)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if not _is_int(self.epochs) or self.epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {self.epochs!r}")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}")
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.lr, int | float) or not math.isfinite(self.lr) or self.lr <= 0:
            raise ValueError(f"lr must be a positive finite number, got {self.lr!r}")
        wd = self.weight_decay
        if not isinstance(wd, int | float) or not math.isfinite(wd) or wd < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {wd!r}")


@dataclass(frozen=True)
class TrainResult:
    """The trained weights (CPU tensors) and one metrics dict per epoch.

    Each metrics dict has ``epoch`` (1-based), ``loss`` and ``accuracy`` over the training data
    as seen during that epoch, plus ``val_loss`` and ``val_accuracy`` when validation data was
    given (measured after the epoch).
    """

    state_dict: dict[str, torch.Tensor]
    metrics: list[dict[str, float]]


def pick_device() -> torch.device:
    """CUDA when available, else the CPU (a GPU is never required)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def check_shapes(model: nn.Module, x_sample: np.ndarray, n_classes: int | None = None) -> int:
    """Run one forward pass on ``x_sample`` (a small batch) and return the number of classes.

    Raises :class:`ShapeMismatchError`, saying what was expected and what came, when the forward
    pass fails or its output is not ``(batch, n_classes)`` (any width ``>= 1`` when
    ``n_classes`` is ``None``). Runs in eval mode without gradients: no weight or buffer changes.
    """
    x_sample = np.asarray(x_sample)
    if x_sample.ndim < 1 or x_sample.shape[0] < 1:
        raise ShapeMismatchError(f"need a non-empty batch to check shapes, got {x_sample.shape}")
    batch = x_sample.shape[0]
    sample_shape = tuple(x_sample.shape[1:])
    want = f"(batch, {n_classes})" if n_classes is not None else "(batch, n_classes)"
    device = _model_device(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(_to_tensor(x_sample, device))
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        raise ShapeMismatchError(
            f"the model does not fit the data: samples of shape {sample_shape} (batch "
            f"{tuple(x_sample.shape)}) fail in the forward pass, expected output {want}: {exc}"
        ) from exc
    finally:
        model.train(was_training)
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if (
        not isinstance(out, torch.Tensor)
        or out.ndim != 2
        or out.shape[0] != batch
        or out.shape[1] < 1
        or (n_classes is not None and out.shape[1] != n_classes)
    ):
        expected = f"({batch}, {n_classes})" if n_classes is not None else f"({batch}, classes)"
        raise ShapeMismatchError(
            f"the model does not fit the data: samples of shape {sample_shape} give output "
            f"{got}, expected {expected}"
        )
    return int(out.shape[1])


def train_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainConfig,
    *,
    x_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    progress: Callable[[dict[str, float]], None] | None = None,
    n_classes: int | None = None,
    device: torch.device | str | None = None,
    regularizer: Callable[[nn.Module], torch.Tensor] | None = None,
) -> TrainResult:
    """Train ``model`` in place (on ``device``, default :func:`pick_device`) and return its
    weights and per-epoch metrics; ``progress`` is called with each epoch's metrics dict.
    ``regularizer(model)`` is added to every batch's loss (FedProx's proximal term, say); the
    reported ``loss`` is the cross-entropy alone.

    Shapes are checked with one forward pass before any optimizer step
    (:class:`ShapeMismatchError`, as are labels outside ``[0, n_classes)``); a NaN or infinite
    loss raises :class:`TrainingError` naming the epoch and batch.
    """
    dev = torch.device(device) if device is not None else pick_device()
    xs, ys = _supervised(x, y, "training")
    if (x_val is None) != (y_val is None):
        raise ValueError("give both x_val and y_val, or neither")
    val = _supervised(x_val, y_val, "validation") if x_val is not None else None
    if val is not None and val[0].shape[1:] != xs.shape[1:]:
        raise ShapeMismatchError(
            f"validation samples have shape {val[0].shape[1:]}, training samples {xs.shape[1:]}"
        )
    model.to(dev)
    width = check_shapes(model, xs[: min(len(xs), config.batch_size)], n_classes)
    _check_labels(ys, width, "training")
    if val is not None:
        _check_labels(val[1], width, "validation")

    x_all = torch.from_numpy(xs)
    y_all = torch.from_numpy(ys)
    n = len(xs)
    metrics: list[dict[str, float]] = []
    with _deterministic(dev), torch.random.fork_rng(devices=_rng_devices(dev)):
        torch.manual_seed(config.seed)
        shuffle = torch.Generator().manual_seed(config.seed)
        optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.randperm(n, generator=shuffle)
            loss_sum = 0.0
            correct = 0
            for batch, start in enumerate(range(0, n, config.batch_size), start=1):
                idx = order[start : start + config.batch_size]
                xb = x_all[idx].to(dev)
                yb = y_all[idx].to(dev)
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                value = float(loss.item())
                if regularizer is not None:
                    loss = loss + regularizer(model)
                if not math.isfinite(value):
                    raise TrainingError(
                        f"training diverged: loss is {value} at epoch {epoch}, batch {batch} "
                        f"(lr={config.lr}); check the data for NaN/inf and lower the learning rate"
                    )
                if regularizer is not None and not math.isfinite(float(loss.item())):
                    raise TrainingError(
                        f"training diverged: the regularised loss is not finite at epoch "
                        f"{epoch}, batch {batch}"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                loss_sum += value * len(idx)
                correct += int((logits.detach().argmax(dim=1) == yb).sum().item())
            row: dict[str, float] = {
                "epoch": epoch,
                "loss": loss_sum / n,
                "accuracy": correct / n,
            }
            if val is not None:
                ev = evaluate_model(model, val[0], val[1], batch_size=max(config.batch_size, 256))
                row["val_loss"] = ev["loss"]
                row["val_accuracy"] = ev["accuracy"]
            metrics.append(row)
            if progress is not None:
                progress(dict(row))
    model.eval()
    state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    return TrainResult(state_dict=state, metrics=metrics)


def evaluate_model(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int = 256,
    n_classes: int | None = None,
) -> dict[str, Any]:
    """Accuracy, mean cross-entropy ``loss``, ``confusion`` (``n_classes × n_classes`` lists of
    int, rows the true class, columns the predicted one) and ``n`` (the sample count) of
    ``model`` on ``x``/``y``, in batches of ``batch_size`` on the model's device."""
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    xs, ys = _supervised(x, y, "evaluation")
    width = check_shapes(model, xs[: min(len(xs), batch_size)], n_classes)
    _check_labels(ys, width, "evaluation")
    device = _model_device(model)
    confusion = torch.zeros(width * width, dtype=torch.int64)
    loss_sum = 0.0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(xs), batch_size):
                xb = _to_tensor(xs[start : start + batch_size], device)
                yb = torch.from_numpy(ys[start : start + batch_size]).to(device)
                logits = model(xb)
                loss_sum += float(F.cross_entropy(logits, yb, reduction="sum").item())
                pred = logits.argmax(dim=1)
                confusion += torch.bincount((yb * width + pred).cpu(), minlength=width * width)
    finally:
        model.train(was_training)
    matrix = confusion.reshape(width, width)
    n = len(xs)
    return {
        "accuracy": int(matrix.diagonal().sum().item()) / n,
        "loss": loss_sum / n,
        "confusion": [[int(v) for v in row] for row in matrix.tolist()],
        "n": n,
    }


def predict_batches(model: nn.Module, batches: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
    """Predicted class ids (int64), one array per input batch, computed lazily: only one
    batch is held at a time, so the data may be larger than memory. The first non-empty batch
    is shape-checked (:class:`ShapeMismatchError`)."""
    device = _model_device(model)
    checked = False
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            xb = np.asarray(batch)
            if xb.ndim >= 1 and xb.shape[0] == 0:
                yield np.zeros(0, dtype=np.int64)
                continue
            if not checked:
                check_shapes(model, xb[:1])
                model.eval()
                checked = True
            with torch.no_grad():
                pred = model(_to_tensor(xb, device)).argmax(dim=1)
            yield pred.cpu().numpy().astype(np.int64, copy=False)
    finally:
        model.train(was_training)


# -- helpers -----------------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


def _to_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)


def _supervised(
    x: np.ndarray | None, y: np.ndarray | None, what: str
) -> tuple[np.ndarray, np.ndarray]:
    xs = np.ascontiguousarray(x, dtype=np.float32)
    ya = np.asarray(y)
    if xs.ndim < 2:
        raise ShapeMismatchError(f"{what} x must have shape (n, *sample_shape), got {xs.shape}")
    if ya.ndim == 2 and ya.shape[1] == 1:
        ya = ya[:, 0]
    if ya.ndim != 1 or len(ya) != len(xs):
        raise ShapeMismatchError(
            f"{what} y must have shape ({len(xs)},) to match x {xs.shape}, got {ya.shape}"
        )
    if len(xs) == 0:
        raise ShapeMismatchError(f"{what} data is empty")
    if not np.issubdtype(ya.dtype, np.integer):
        raise ShapeMismatchError(f"{what} y must hold integer class ids, got dtype {ya.dtype}")
    return xs, np.ascontiguousarray(ya, dtype=np.int64)


def _check_labels(y: np.ndarray, n_classes: int, what: str) -> None:
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= n_classes:
        raise ShapeMismatchError(
            f"{what} labels range over [{lo}, {hi}] but the model outputs {n_classes} classes "
            f"(expected labels in [0, {n_classes - 1}])"
        )


def _rng_devices(device: torch.device) -> list[int]:
    if device.type == "cuda":
        return [device.index if device.index is not None else torch.cuda.current_device()]
    return []


@contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    """Deterministic algorithms and :data:`TRAIN_THREADS` threads, restored on exit.

    On CUDA some kernels have no deterministic variant: there a warning replaces the error
    (bit-for-bit reproducibility is promised on CPU only)."""
    prev_enabled = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_threads = torch.get_num_threads()
    prev_benchmark = torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    torch.set_num_threads(TRAIN_THREADS)
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = prev_benchmark
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_enabled, warn_only=prev_warn)
