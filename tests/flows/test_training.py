"""The model zoo and the plain-PyTorch training / evaluation / inference functions, on real
scikit-learn digits."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from flows.code import CodeTrust
from flows.code import build_model as build_trusted
from flows.errors import ModelSpecError, ShapeMismatchError, TrainingError
from flows.training import (
    TrainConfig,
    TrainResult,
    check_shapes,
    evaluate_model,
    pick_device,
    predict_batches,
    train_model,
)
from flows.zoo import ZOO, build_model, model_modules

Digits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> Digits:
    data = load_digits()
    x = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def _mlp(seed: int = 0) -> nn.Module:
    return build_model("mlp", input_shape=(64,), n_classes=10, hidden=(64,), seed=seed)


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_zoo_names_and_cache_modules() -> None:
    assert ZOO == ("logreg", "mlp", "cnn")
    assert model_modules("mlp") == []
    assert model_modules("my_models.nets:make") == ["my_models.nets"]
    with pytest.raises(ModelSpecError, match="logreg, mlp, cnn"):
        model_modules("resnet")


def test_mlp_learns_digits_with_progress_and_validation(digits: Digits) -> None:
    x, y, xt, yt = digits
    seen: list[dict[str, float]] = []
    result = train_model(
        _mlp(),
        x,
        y,
        TrainConfig(epochs=5, lr=1e-2),
        x_val=xt,
        y_val=yt,
        progress=seen.append,
        device=CPU,
    )
    assert isinstance(result, TrainResult)
    assert [m["epoch"] for m in result.metrics] == [1, 2, 3, 4, 5]
    assert seen == result.metrics
    assert set(result.metrics[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert result.metrics[-1]["loss"] < result.metrics[0]["loss"]
    assert all(t.device == CPU for t in result.state_dict.values())
    model = _mlp()
    model.load_state_dict(result.state_dict)
    report = evaluate_model(model, xt, yt)
    assert report["accuracy"] >= 0.9
    assert report["accuracy"] == pytest.approx(result.metrics[-1]["val_accuracy"])


def test_training_is_bit_for_bit_deterministic_per_seed(digits: Digits) -> None:
    x, y, _, _ = digits
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    global_rng = torch.get_rng_state()

    def run(seed: int) -> TrainResult:
        config = TrainConfig(epochs=2, batch_size=32, lr=1e-2, seed=seed)
        model = build_model(
            "mlp", input_shape=(64,), n_classes=10, hidden=(32,), dropout=0.1, seed=seed
        )
        return train_model(model, x, y, config, device=CPU)

    a, b, c = run(0), run(0), run(1)
    assert _same(a.state_dict, b.state_dict)
    assert a.metrics == b.metrics
    assert not _same(a.state_dict, c.state_dict)
    # Global settings and the global RNG are restored.
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), global_rng)


def test_build_is_seeded() -> None:
    assert _same(_state(_mlp(3)), _state(_mlp(3)))
    assert not _same(_state(_mlp(3)), _state(_mlp(4)))


@pytest.mark.parametrize(
    ("spec", "kwargs"),
    [
        ("logreg", {}),
        ("cnn", {}),
        ("cnn", {"image_shape": (1, 8, 8), "channels": [4, 8]}),
    ],
)
def test_logreg_and_cnn_train_one_epoch(
    digits: Digits, spec: str, kwargs: dict[str, object]
) -> None:
    x, y, xt, yt = digits
    model = build_model(spec, input_shape=(64,), n_classes=10, **kwargs)
    result = train_model(model, x, y, TrainConfig(epochs=1, lr=1e-2), device=CPU)
    assert len(result.metrics) == 1
    assert evaluate_model(model, xt, yt)["accuracy"] > 0.3


def test_cnn_takes_image_shaped_input(digits: Digits) -> None:
    x, y, _, _ = digits
    images = x[:200].reshape(-1, 8, 8)
    model = build_model("cnn", input_shape=(8, 8), n_classes=10)
    assert check_shapes(model, images[:2], 10) == 10
    train_model(model, images, y[:200], TrainConfig(epochs=1), device=CPU)
    with pytest.raises(ModelSpecError, match="image_shape"):
        build_model("cnn", input_shape=(10,), n_classes=10)


def test_zoo_rejects_bad_arguments() -> None:
    with pytest.raises(ModelSpecError, match=r"unknown model 'resnet'.*logreg, mlp, cnn"):
        build_model("resnet", input_shape=(64,), n_classes=10)
    with pytest.raises(ModelSpecError, match="unexpected keyword"):
        build_model("logreg", input_shape=(64,), n_classes=10, hidden=(3,))
    with pytest.raises(ModelSpecError, match="hidden"):
        build_model("mlp", input_shape=(64,), n_classes=10, hidden=(0,))
    with pytest.raises(ModelSpecError, match="input_shape"):
        build_model("mlp", input_shape=(), n_classes=10)


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = "cidflow_test_user_models"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import math
            from torch import nn

            def make(*, input_shape, n_classes, width=16):
                return nn.Sequential(
                    nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Tanh(),
                    nn.Linear(width, n_classes),
                )

            def broken(*, input_shape, n_classes):
                raise RuntimeError("no GPU here")

            def not_a_model(*, input_shape, n_classes):
                return 42
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def test_user_model_factory(digits: Digits, user_module: str) -> None:
    x, y, xt, yt = digits
    spec = f"{user_module}:make"
    # A user model is built only by flows.code, under a policy that names it explicitly.
    trust = CodeTrust.of([spec])
    model = build_trusted(spec, input_shape=(64,), n_classes=10, width=32, trust=trust)
    assert model[1].out_features == 32
    assert model_modules(spec) == [user_module]
    train_model(model, x, y, TrainConfig(epochs=3, lr=1e-2), device=CPU)
    assert evaluate_model(model, xt, yt)["accuracy"] > 0.8


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        ("broken", "raised RuntimeError: no GPU here"),
        ("not_a_model", "returned int"),
        ("missing", "no attribute 'missing'"),
    ],
)
def test_user_factory_failures_name_the_factory(
    user_module: str, factory: str, message: str
) -> None:
    spec = f"{user_module}:{factory}"
    with pytest.raises(ModelSpecError, match=message) as info:
        build_trusted(spec, input_shape=(64,), n_classes=10, trust=CodeTrust.of([spec]))
    assert spec in str(info.value)


def test_missing_module_names_the_factory() -> None:
    spec = "no_such_cidflow_module:make_net"
    with pytest.raises(ModelSpecError, match="cannot import") as info:
        build_trusted(spec, input_shape=(64,), n_classes=10, trust=CodeTrust.of([spec]))
    assert "no_such_cidflow_module:make_net" in str(info.value)
    with pytest.raises(ModelSpecError, match="module:factory"):
        build_model("mod:", input_shape=(64,), n_classes=10)


def test_shape_mismatch_is_caught_before_any_step(digits: Digits) -> None:
    x, y, _, _ = digits
    model = build_model("mlp", input_shape=(32,), n_classes=10)
    before = _state(model)
    calls: list[dict[str, float]] = []
    with pytest.raises(ShapeMismatchError, match=r"shape \(64,\)"):
        train_model(model, x, y, TrainConfig(epochs=1), progress=calls.append, device=CPU)
    assert _same(before, _state(model))
    assert calls == []

    wrong_classes = build_model("mlp", input_shape=(64,), n_classes=5)
    with pytest.raises(ShapeMismatchError, match=r"expected \(2, 10\)"):
        check_shapes(wrong_classes, x[:2], 10)
    with pytest.raises(ShapeMismatchError, match="labels range over"):
        train_model(wrong_classes, x, y, TrainConfig(epochs=1), device=CPU)
    with pytest.raises(ShapeMismatchError, match="y must have shape"):
        train_model(_mlp(), x, y[:-1], TrainConfig(epochs=1), device=CPU)


def test_nan_loss_raises_training_error(digits: Digits) -> None:
    x, y, _, _ = digits
    bad = x.copy()
    bad[5, 3] = np.inf
    with pytest.raises(TrainingError, match=r"epoch 1, batch 1"):
        train_model(_mlp(), bad[:64], y[:64], TrainConfig(epochs=1, batch_size=64), device=CPU)
    with pytest.raises(TrainingError, match=r"loss is (nan|inf) at epoch \d+, batch \d+"):
        train_model(_mlp(), x, y, TrainConfig(epochs=3, lr=1e30), device=CPU)


def test_evaluate_confusion_matrix(digits: Digits) -> None:
    x, y, xt, yt = digits
    model = _mlp()
    train_model(model, x, y, TrainConfig(epochs=1, lr=1e-2), device=CPU)
    report = evaluate_model(model, xt, yt, batch_size=50)
    confusion = np.array(report["confusion"])
    assert confusion.shape == (10, 10)
    assert all(isinstance(v, int) for row in report["confusion"] for v in row)
    assert confusion.sum() == len(yt) == report["n"]
    assert np.trace(confusion) / confusion.sum() == report["accuracy"]
    assert (confusion.sum(axis=1) == np.bincount(yt, minlength=10)).all()
    assert report["loss"] > 0
    small = evaluate_model(model, xt, yt, batch_size=7)
    assert small["confusion"] == report["confusion"]
    assert small["loss"] == pytest.approx(report["loss"], rel=1e-5)


def test_predict_batches_streams_the_argmax(digits: Digits) -> None:
    x, y, xt, _ = digits
    model = _mlp()
    train_model(model, x, y, TrainConfig(epochs=1, lr=1e-2), device=CPU)
    pulled: list[int] = []

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, len(xt), 40):
            pulled.append(start)
            yield xt[start : start + 40]

    stream = predict_batches(model, batches())
    assert pulled == []  # lazy
    first = next(stream)
    assert pulled == [0]
    assert first.shape == (40,)
    assert first.dtype == np.int64
    preds = np.concatenate([first, *stream])
    with torch.no_grad():
        expected = model(torch.from_numpy(xt)).argmax(dim=1).numpy()
    np.testing.assert_array_equal(preds, expected)


def test_pick_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device().type == expected
