"""The federated client's work for one round: start from the global weights, train on local
data, return the new weights and the number of examples. The same code runs in simulation
(local partitions) and on node agents (private datasets): only where ``x``/``y`` come from
differs.

FedProx (Li et al. 2020) adds ``mu / 2 * ||w - w_global||^2`` to every batch's loss; ``mu = 0``
is plain local training (FedAvg's client). Weights travel as ``{name: numpy array}`` in the
model's ``state_dict`` order and dtypes, never as pickles; training is seeded and deterministic
on CPU (:mod:`flows.training`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flows.errors import ModelSpecError, TrainingError

if TYPE_CHECKING:
    from flows.code import CodeTrust

__all__ = ["ClientResult", "ModelSpec", "evaluate_weights", "local_train"]

Weights = dict[str, np.ndarray[Any, Any]]


@dataclass(frozen=True)
class ModelSpec:
    """How to build the federated model (the same on every client and the server)."""

    model: str
    input_shape: tuple[int, ...]
    n_classes: int
    seed: int = 0
    model_kwargs: dict[str, Any] | None = None
    code: str | None = None  # the CID of the code artifact holding ``model`` (module:factory)

    def build(self, trust: CodeTrust | None = None) -> Any:
        """The model, if ``trust`` (a :class:`~flows.code.CodeTrust`; default: the current
        one) allows its code: a spec read from an artifact never imports code by itself."""
        from flows.code import build_model

        return build_model(
            self.model,
            input_shape=self.input_shape,
            n_classes=self.n_classes,
            seed=self.seed,
            code=self.code,
            trust=trust,
            **(self.model_kwargs or {}),
        )

    def initial_weights(self) -> Weights:
        """The seeded starting point of round 1."""
        return state_to_weights(self.build().state_dict())


@dataclass(frozen=True)
class ClientResult:
    weights: Weights
    num_examples: int
    metrics: dict[str, float]


def state_to_weights(state: Any) -> Weights:
    from artifacts.torch_io import tensor_to_numpy

    return {name: tensor_to_numpy(name, t)[0] for name, t in state.items()}


def load_weights(net: Any, weights: Weights) -> None:
    """Put ``weights`` into ``net``: the names, shapes and dtypes must be the model's."""
    import torch

    state = net.state_dict()
    if set(state) != set(weights):
        missing, extra = sorted(set(state) - set(weights)), sorted(set(weights) - set(state))
        raise ModelSpecError(f"weights do not fit the model (missing {missing}, extra {extra})")
    loaded = {}
    for name, tensor in state.items():
        array = np.asarray(weights[name])
        if tuple(array.shape) != tuple(tensor.shape):
            raise ModelSpecError(
                f"weights {name!r}: shape {array.shape}, the model has {tuple(tensor.shape)}"
            )
        loaded[name] = torch.from_numpy(np.array(array, copy=True)).to(tensor.dtype)
    net.load_state_dict(loaded)


def local_train(
    spec: ModelSpec,
    global_weights: Weights,
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    *,
    epochs: int = 1,
    lr: float = 1e-3,
    batch_size: int = 32,
    seed: int = 0,
    proximal_mu: float = 0.0,
) -> ClientResult:
    """One client's round: ``epochs`` of training from ``global_weights`` on ``x``/``y``."""
    import torch

    from flows.training import TrainConfig, train_model

    if not (isinstance(proximal_mu, int | float) and math.isfinite(proximal_mu)) or (
        proximal_mu < 0
    ):
        raise TrainingError(f"proximal_mu must be a finite number >= 0, got {proximal_mu!r}")
    net = spec.build()
    load_weights(net, global_weights)
    anchor = [p.detach().clone() for p in net.parameters()]

    def proximal(model: Any) -> torch.Tensor:
        total = torch.zeros(())
        for p, p0 in zip(model.parameters(), anchor, strict=True):
            total = total + ((p - p0) ** 2).sum()
        return (proximal_mu / 2.0) * total

    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    result = train_model(
        net,
        np.asarray(x, dtype=np.float32),
        np.asarray(y, dtype=np.int64),
        config,
        n_classes=spec.n_classes,
        device="cpu",
        regularizer=proximal if proximal_mu > 0 else None,
    )
    return ClientResult(
        weights=state_to_weights(result.state_dict),
        num_examples=len(y),
        metrics={k: float(v) for k, v in result.metrics[-1].items()},
    )


def evaluate_weights(
    spec: ModelSpec, weights: Weights, x: np.ndarray[Any, Any], y: np.ndarray[Any, Any]
) -> dict[str, float]:
    """Accuracy and loss of ``weights`` on the client's ``x``/``y`` (federated evaluation);
    ``examples`` is how many it saw (0: nothing to evaluate on)."""
    from flows.training import evaluate_model

    if len(y) == 0:
        return {"accuracy": 0.0, "loss": 0.0, "examples": 0}
    net = spec.build()
    load_weights(net, weights)
    m = evaluate_model(
        net,
        np.asarray(x, dtype=np.float32),
        np.asarray(y, dtype=np.int64),
        n_classes=spec.n_classes,
    )
    return {"accuracy": float(m["accuracy"]), "loss": float(m["loss"]), "examples": int(m["n"])}
