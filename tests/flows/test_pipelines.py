"""The pipeline steps' plain bodies (``task.fn``) on a real store, without Prefect's engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import flows.pipelines as pipelines
from artifacts.store import ArtifactStore
from flows.code import CodeTrust, trusting
from flows.tasks import Runtime, runtime
from flows.zoo import build_model
from registry.identity import Identity


def _model(store: ArtifactStore, features: int, classes: int) -> str:
    net = build_model("mlp", input_shape=(features,), n_classes=classes, seed=3)
    spec = {
        "model": "mlp",
        "model_kwargs": {},
        "input_shape": [features],
        "n_classes": classes,
        "seed": 3,
    }
    return str(store.put_state_dict(net.state_dict(), attrs={pipelines.MODEL_ATTR: spec}))


@pytest.mark.parametrize("spill", [False, True], ids=["in-memory", "memory-mapped"])
def test_infer_streams_predictions_the_same_way_in_memory_or_spilled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spill: bool
) -> None:
    store = ArtifactStore(tmp_path / "home")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 12)).astype(np.float32)
    dataset = str(store.put_arrays({"test/x": x}))
    model = _model(store, 12, 4)
    if spill:  # force the memory-mapped buffer for anything over 1 KiB
        monkeypatch.setattr(pipelines, "_IN_MEMORY_PREDICTIONS", 1 << 10)
    with runtime(Runtime(store, Identity.create(tmp_path / "keys"))):
        out = pipelines.infer.fn(model=model, dataset=dataset, batch_size=333)
    predictions = store.open_artifact(out["predictions"]).to_numpy()["predictions"]
    net = pipelines._load_model(store, model, None)
    import torch

    with torch.no_grad():
        expected = net(torch.from_numpy(x)).argmax(dim=1).numpy()
    assert out["rows"] == 5000
    np.testing.assert_array_equal(predictions, expected)
    assert not any((store.home / "tmp").glob("infer-*")), "the spill folder is removed"


def test_model_code_is_part_of_every_model_steps_key() -> None:
    import inspect

    import flows.training
    import flows.zoo
    from flows.cache import MODEL_CODE_MODULES, _module_source

    for task in (pipelines.train, pipelines.evaluate, pipelines.infer):
        modules = task.cache_policy.modules({"model": "mlp", "dataset": "x"})
        assert set(MODEL_CODE_MODULES) <= set(modules), task.name
    # A local module's source joins the key only when the run trusts it (an untrusted one is
    # never even looked up: the task refuses it before anything is imported).
    untrusted = pipelines.train.cache_policy.modules(
        {"model": "tests_user_model:make", "dataset": "x"}
    )
    assert "tests_user_model" not in untrusted
    with trusting(CodeTrust.of(["tests_user_model:make"])):
        assert "tests_user_model" in pipelines.train.cache_policy.modules(
            {"model": "tests_user_model:make", "dataset": "x"}
        )
    # Read from the file without importing, yet exactly what inspect.getsource gives.
    for module in (flows.training, flows.zoo):
        assert _module_source(module.__name__) == inspect.getsource(module).encode()
