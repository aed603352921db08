"""The pipeline steps' plain bodies (``task.fn``) on a real store, without Prefect's engine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import flows.pipelines as pipelines
from artifacts.store import ArtifactStore
from flows.tasks import Runtime, runtime
from flows.zoo import build_model
from registry.identity import Identity


def _model(store: ArtifactStore, features: int, classes: int) -> str:
    net = build_model("mlp", input_shape=(features,), n_classes=classes, seed=3)
    spec = {"model": "mlp", "model_kwargs": {}, "input_shape": [features],
            "n_classes": classes, "seed": 3}  # fmt: skip
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
    net = pipelines._load_model(store, model)
    import torch

    with torch.no_grad():
        expected = net(torch.from_numpy(x)).argmax(dim=1).numpy()
    assert out["rows"] == 5000
    np.testing.assert_array_equal(predictions, expected)
    assert not any((store.home / "tmp").glob("infer-*")), "the spill folder is removed"
