"""Example-level DP on the clients (DP-SGD): the sampled-Gaussian RDP accountant against a
numerical integration of its definition, the per-example clipping and noise against plain
autograd, the training step (deterministic, private metrics only, learns at ε = 8), and
``cidflow federated --dp-level example`` with a robust strategy and with secure aggregation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import cli, ok, one_error
from sklearn.datasets import load_digits

from flows.code import CodeTrust, trusting
from flows.errors import AggregationError, TrainingError
from flows.federated.client import ModelSpec, evaluate_weights
from flows.federated.dpsgd import dp_sgd_train, noisy_gradient, plan
from flows.federated.privacy import epsilon, noise_for_epsilon, rdp


def _integrated_rdp(q: float, sigma: float, alpha: int) -> float:
    """RDP of one sampled-Gaussian step at ``alpha`` from its definition, by quadrature:
    ``log E_{z~N(0,σ²)}[((1 − q) + q·exp((2z − 1) / (2σ²)))^α] / (α − 1)``."""
    z = np.linspace(-60 * sigma, 60 * sigma, 2_000_001)
    log_ratio = np.log1p(q * np.expm1((2 * z - 1) / (2 * sigma * sigma)))
    log_density = -(z * z) / (2 * sigma * sigma) - math.log(sigma * math.sqrt(2 * math.pi))
    log_terms = alpha * log_ratio + log_density
    top = float(log_terms.max())
    integral = float(np.trapezoid(np.exp(log_terms - top), z))
    return (top + math.log(integral)) / (alpha - 1)


@pytest.mark.parametrize(("q", "sigma"), [(0.1, 1.5), (0.01, 0.8), (0.5, 3.0)])
def test_sampled_gaussian_rdp_matches_its_definition(q: float, sigma: float) -> None:
    curve = dict(rdp(sigma, 1, q, orders=(2, 3, 8, 20)))
    for alpha in (2, 3, 8, 20):
        assert curve[alpha] == pytest.approx(_integrated_rdp(q, sigma, alpha), rel=1e-6)


def test_sampling_amplifies_privacy_and_full_sampling_is_the_plain_gaussian() -> None:
    sigma, steps, delta = 1.2, 500, 1e-5
    for alpha, value in rdp(sigma, steps, 1.0, orders=(2, 5, 32)):
        assert value == pytest.approx(steps * alpha / (2 * sigma * sigma))
    nearly = dict(rdp(sigma, steps, 1 - 1e-12, orders=(2, 5, 32)))
    for alpha in (2, 5, 32):
        assert nearly[alpha] == pytest.approx(steps * alpha / (2 * sigma * sigma), rel=1e-6)
    full = epsilon(sigma, steps, delta)
    sampled = [epsilon(sigma, steps, delta, sample_rate=q) for q in (0.5, 0.1, 0.01)]
    assert full > sampled[0] > sampled[1] > sampled[2] > 0
    sigma_q = noise_for_epsilon(8.0, steps, delta, sample_rate=0.05)
    assert epsilon(sigma_q, steps, delta, sample_rate=0.05) <= 8.0
    assert epsilon(sigma_q * 0.99, steps, delta, sample_rate=0.05) > 8.0
    assert sigma_q < noise_for_epsilon(8.0, steps, delta)
    for bad in (0.0, 1.5, math.nan, -0.1):
        with pytest.raises(AggregationError, match="sample_rate"):
            epsilon(sigma, steps, delta, sample_rate=bad)


def test_a_client_plans_its_noise_from_its_own_data_size() -> None:
    small = plan(100, batch_size=32, epochs=2, rounds=20, epsilon=8.0, delta=1e-5, clip=1.0)
    large = plan(1000, batch_size=32, epochs=2, rounds=20, epsilon=8.0, delta=1e-5, clip=1.0)
    assert small.sample_rate == pytest.approx(0.32)
    assert large.sample_rate == pytest.approx(0.032)
    assert small.steps_per_round == 2 * 3
    assert small.steps == 20 * 6
    assert large.steps == 20 * 2 * 31
    for p in (small, large):
        assert 7.9 < p.epsilon <= 8.0
        assert p.epsilon == pytest.approx(
            epsilon(p.noise_multiplier, p.steps, 1e-5, sample_rate=p.sample_rate)
        )
    assert large.noise_multiplier < small.noise_multiplier  # more data, less noise
    tiny = plan(10, batch_size=32, epochs=1, rounds=5, epsilon=8.0, delta=1e-5, clip=1.0)
    assert tiny.sample_rate == 1.0
    assert tiny.steps == 5
    for kwargs in ({"batch_size": 0}, {"rounds": 0}, {"clip": 0.0}, {"clip": math.inf}):
        args = {
            "batch_size": 32,
            "epochs": 1,
            "rounds": 5,
            "epsilon": 8.0,
            "delta": 1e-5,
            "clip": 1.0,
        } | kwargs
        with pytest.raises(TrainingError):
            plan(100, **args)  # type: ignore[arg-type]


def _net() -> torch.nn.Module:
    return ModelSpec("mlp", (64,), 10, 0, {"hidden": [16]}).build()


def _digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_digits()
    return (d.data / 16.0).astype(np.float32), d.target.astype(np.int64)


def test_noisy_gradient_is_the_sum_of_clipped_example_gradients_plus_noise() -> None:
    net = _net()
    x, y = _digits()
    xb, yb = torch.from_numpy(x[:12]), torch.from_numpy(y[:12])
    for clip in (0.05, 1e6):  # every example clipped; none clipped
        expected = {k: torch.zeros_like(p) for k, p in net.named_parameters()}
        for i in range(len(yb)):  # one ordinary backward pass per example
            net.zero_grad()
            torch.nn.functional.cross_entropy(net(xb[i : i + 1]), yb[i : i + 1]).backward()
            grads = {k: p.grad.clone() for k, p in net.named_parameters()}
            norm = math.sqrt(sum(float((g * g).sum()) for g in grads.values()))
            for k in expected:
                expected[k] += grads[k] * min(1.0, clip / norm)
        got = noisy_gradient(net, xb, yb, clip, 0.0, 0.25, torch.Generator().manual_seed(0))
        for k, value in expected.items():
            torch.testing.assert_close(got[k], value * 0.25, rtol=1e-4, atol=1e-6)
        if clip < 1:
            total = math.sqrt(sum(float((g * g).sum()) for g in got.values()))
            assert total <= 12 * clip * 0.25 + 1e-6
    empty = noisy_gradient(net, xb[:0], yb[:0], 1.0, 3.0, 0.5, torch.Generator().manual_seed(1))
    values = torch.cat([v.flatten() for v in empty.values()])
    assert float(values.mean()) == pytest.approx(0.0, abs=0.05)
    assert float(values.std()) == pytest.approx(1.5, rel=0.05)  # std 3 scaled by 0.5


def test_dp_sgd_samples_by_seed_draws_unrecorded_noise_and_learns_at_epsilon_8() -> None:
    x, y = _digits()
    train, test = slice(0, 1400), slice(1400, None)
    spec = ModelSpec("mlp", (64,), 10, 0)
    budget = plan(1400, batch_size=32, epochs=2, rounds=3, epsilon=8.0, delta=1e-5, clip=1.0)
    weights = spec.initial_weights()
    first = dp_sgd_train(spec, weights, x[train], y[train], budget, lr=0.02, seed=5)
    again = dp_sgd_train(spec, weights, x[train], y[train], budget, lr=0.02, seed=5)
    other = dp_sgd_train(spec, weights, x[train], y[train], budget, lr=0.02, seed=6)
    # The batches follow the seed; the noise comes from the OS CSPRNG, so the same seed does not
    # give the same weights (a recorded seed would let a reader regenerate the noise).
    assert first.metrics["sampled"] == again.metrics["sampled"]
    assert first.metrics["sampled"] != other.metrics["sampled"]
    assert any(not np.array_equal(first.weights[k], again.weights[k]) for k in weights)
    assert first.num_examples == 1400
    assert set(first.metrics) == {
        "noise_multiplier",
        "epsilon",
        "sample_rate",
        "steps",
        "sampled",
    }  # no loss on private examples
    # about q·n examples a step (Poisson sampling)
    assert first.metrics["sampled"] / budget.steps_per_round == pytest.approx(32, rel=0.2)
    current = weights
    for rnd in range(3):
        current = dp_sgd_train(spec, current, x[train], y[train], budget, lr=0.02, seed=rnd).weights
    before = evaluate_weights(spec, weights, x[test], y[test])["accuracy"]
    after = evaluate_weights(spec, current, x[test], y[test])["accuracy"]
    assert before < 0.3
    assert after > 0.8


def test_dp_sgd_refuses_batch_normalisation_and_empty_data(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bn_model.py").write_text(
        "import torch\n"
        "def build(input_shape, n_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 8),\n"
        "                               torch.nn.BatchNorm1d(8), torch.nn.Linear(8, n_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    x, y = _digits()
    budget = plan(100, batch_size=32, epochs=1, rounds=1, epsilon=8.0, delta=1e-5, clip=1.0)
    spec = ModelSpec("bn_model:build", (64,), 10, 0)
    with (
        trusting(CodeTrust.of(["bn_model:build"])),
        pytest.raises(TrainingError, match="batch normalisation"),
    ):  # a local module is built only when the caller names it
        dp_sgd_train(spec, spec.initial_weights(), x[:100], y[:100], budget)
    mlp = ModelSpec("mlp", (64,), 10, 0)
    with pytest.raises(TrainingError, match="no examples"):
        dp_sgd_train(mlp, mlp.initial_weights(), x[:0], y[:0], budget)


RUN = [
    "federated",
    "--dataset",
    "demo/digits",
    "--clients",
    "3",
    "--partition",
    "dirichlet:0.5",
    "--rounds",
    "2",
    "--model",
    "mlp",
    "--seed",
    "0",
    "--dp-epsilon",
    "8",
    "--dp-level",
    "example",
    "--lr",
    "0.02",
    "--json",
]


@pytest.mark.slow
@pytest.mark.xdist_group("prefect")
def test_federated_with_dp_sgd_on_the_clients(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ok(cli(home, "key", "new", "--json"))
    ok(
        cli(
            home,
            "publish",
            "sklearn:digits",
            "--name",
            "demo/digits",
            "--version",
            "1.0.0",
            "--json",
        )
    )
    out = ok(cli(home, *RUN, "--strategy", "fedmedian"))  # a robust strategy: DP is on the clients
    privacy = out["privacy"]
    assert privacy["level"] == "example"
    assert 7.9 < privacy["epsilon"] <= 8.0
    assert len(privacy["clients"]) == 3
    sizes = {c: s["sample_rate"] for c, s in privacy["clients"].items()}
    noise = {c: s["noise_multiplier"] for c, s in privacy["clients"].items()}
    smallest, largest = max(sizes, key=sizes.get), min(sizes, key=sizes.get)  # type: ignore[arg-type]
    assert noise[smallest] > noise[largest]  # each client sized its noise to its own data
    assert len(out["history"]) == 2
    assert out["accuracy"] > 0.3
    secure = ok(cli(home, *RUN, "--strategy", "fedavg", "--secure", "--rounds", "1"))
    assert secure["secure"]
    assert secure["privacy"]["level"] == "example"
    one_error(cli(home, *RUN, "--dp-level", "row"), "'row' is not one of 'client', 'example'")
    client_level = [a if a != "example" else "client" for a in RUN]
    one_error(cli(home, *client_level, "--strategy", "krum"), "--dp-level example works")
