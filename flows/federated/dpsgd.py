"""Example-level differential privacy on each client: DP-SGD (Abadi et al. 2016).

Client-level DP (:mod:`flows.federated.privacy`, noise on the coordinator's sum) protects a
whole client but needs hundreds of clients a round to learn anything. DP-SGD protects each
*example* of a client's private data instead, on the client, before anything leaves it: every
step samples each example with probability ``q = batch_size / n`` (Poisson sampling), clips
each example's gradient to L2 norm ``clip``, adds ``N(0, (σ·clip)²)`` to their sum and divides
by the expected batch size ``q·n``. The client picks ``σ`` itself so that all its steps over
the whole run (``rounds × epochs × round(n / batch_size)``) spend at most the target ε at δ,
by the sampled-Gaussian RDP accountant; the coordinator and every strategy only see
post-processed weights, so the guarantee holds whatever the server does with them (robust
strategies and secure aggregation included).

Per-example gradients come from ``torch.func`` (``vmap`` over ``grad``), so the model must
have no cross-example layers (batch normalisation); the zoo's ``logreg`` and ``mlp`` qualify.
The optimiser is Adam on the noisy gradient (post-processing). FedProx's proximal term
depends on no data and is added after the noise. The training loss is not reported: it is
computed on private examples without noise.

Batch sampling is seeded (a recorded parameter); the noise is not: it comes from a generator
seeded from the OS CSPRNG for each round (:func:`noise_generator`), a seed never recorded, so
nobody who reads the receipts can regenerate and subtract it.
"""

from __future__ import annotations

import functools
import math
import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np

from flows.errors import TrainingError
from flows.federated.client import ClientResult, ModelSpec, Weights, load_weights, state_to_weights

__all__ = ["DPPlan", "dp_sgd_train", "noise_generator", "noisy_gradient", "plan"]


def noise_generator() -> Any:
    """A ``torch.Generator`` seeded with 63 fresh bits from the OS CSPRNG, kept nowhere."""
    import torch

    return torch.Generator().manual_seed(secrets.randbits(63))


@dataclass(frozen=True)
class DPPlan:
    """What one client's DP-SGD run spends: ``steps`` in all, each at ``sample_rate``."""

    sample_rate: float
    steps_per_round: int
    steps: int
    noise_multiplier: float
    epsilon: float
    delta: float
    clip: float


@functools.lru_cache(maxsize=256)  # the same answer every round: the search takes ~0.1 s
def plan(
    n: int,
    *,
    batch_size: int,
    epochs: int,
    rounds: int,
    epsilon: float,
    delta: float,
    clip: float,
) -> DPPlan:
    """The noise for ``n`` private examples to spend at most ``epsilon`` over ``rounds``."""
    from flows.federated.privacy import epsilon as spent
    from flows.federated.privacy import noise_for_epsilon

    for value, what in (
        (n, "examples"),
        (batch_size, "batch_size"),
        (epochs, "epochs"),
        (rounds, "rounds"),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise TrainingError(f"DP-SGD needs a positive integer for {what}, got {value!r}")
    if not (isinstance(clip, int | float) and math.isfinite(clip) and clip > 0):
        raise TrainingError(f"DP-SGD's clip must be a positive number, got {clip!r}")
    q = min(1.0, batch_size / n)
    per_round = epochs * max(1, round(n / batch_size))
    steps = rounds * per_round
    sigma = noise_for_epsilon(epsilon, steps, delta, sample_rate=q)
    return DPPlan(
        q, per_round, steps, sigma, spent(sigma, steps, delta, sample_rate=q), delta, float(clip)
    )


def noisy_gradient(
    net: Any, xb: Any, yb: Any, clip: float, std: float, scale: float, gen: Any
) -> dict[str, Any]:
    """``scale · (Σ_i clip_C(∇ℓ(x_i, y_i)) + N(0, std²))`` for the batch ``xb``/``yb`` (which
    may be empty), by parameter name; per-example gradients by ``vmap`` over ``grad``; the
    noise from ``gen`` (in training, :func:`noise_generator`)."""
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call, grad, vmap

    buffers = {k: b.detach() for k, b in net.named_buffers()}
    params = {k: p.detach() for k, p in net.named_parameters()}

    def example_loss(weights: dict[str, Any], xi: Any, yi: Any) -> Any:
        out = functional_call(net, (weights, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(out, yi.unsqueeze(0))

    summed = {k: torch.zeros_like(p) for k, p in params.items()}
    if len(yb):
        per_example = vmap(grad(example_loss), in_dims=(None, 0, 0), randomness="different")
        grads = per_example(params, xb, yb)
        norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
        factor = torch.clamp(clip / (norms + 1e-12), max=1.0)
        for k, g in grads.items():
            summed[k] = (g * factor.view(-1, *([1] * (g.dim() - 1)))).sum(0)
    return {
        k: (total + torch.normal(0.0, std, size=tuple(total.shape), generator=gen)) * scale
        for k, total in summed.items()
    }


def dp_sgd_train(
    spec: ModelSpec,
    global_weights: Weights,
    x: np.ndarray[Any, Any],
    y: np.ndarray[Any, Any],
    dp: DPPlan,
    *,
    lr: float = 5e-3,
    seed: int = 0,
    proximal_mu: float = 0.0,
) -> ClientResult:
    """One round of DP-SGD from ``global_weights``: ``dp.steps_per_round`` noisy steps. The
    batches follow ``seed``; the noise is fresh from the OS CSPRNG (not reproducible)."""
    import torch

    from flows.training import _deterministic

    net = spec.build()
    load_weights(net, global_weights)
    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()):
        raise TrainingError("DP-SGD needs per-example gradients: remove batch normalisation")
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ys = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
    n = len(ys)
    if n == 0:
        raise TrainingError("DP-SGD has no examples to train on")
    anchor = {k: p.detach().clone() for k, p in net.named_parameters()}
    std = dp.noise_multiplier * dp.clip
    scale = 1.0 / (dp.sample_rate * n)
    with _deterministic(torch.device("cpu")), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)  # sampling: seeded, reproducible
        noise = noise_generator()  # the noise: OS CSPRNG, never recorded
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        net.train()
        taken = 0
        for _ in range(dp.steps_per_round):
            chosen = torch.nonzero(torch.rand(n, generator=gen) < dp.sample_rate).squeeze(1)
            taken += len(chosen)
            step = noisy_gradient(net, xs[chosen], ys[chosen], dp.clip, std, scale, noise)
            for k, p in net.named_parameters():
                if proximal_mu:
                    step[k] = step[k] + proximal_mu * (p.detach() - anchor[k])
                p.grad = step[k].to(p.dtype)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
    weights = state_to_weights(net.state_dict())
    if not all(np.isfinite(w).all() for w in weights.values() if w.dtype.kind == "f"):
        raise TrainingError(f"DP-SGD diverged (lr={lr}): lower the learning rate")
    metrics = {
        "noise_multiplier": dp.noise_multiplier,
        "epsilon": dp.epsilon,
        "sample_rate": dp.sample_rate,
        "steps": float(dp.steps),
        "sampled": float(taken),
    }
    return ClientResult(weights=weights, num_examples=n, metrics=metrics)
