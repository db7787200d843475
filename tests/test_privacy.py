"""DP-SGD in the torch learner: clipped per-sample gradients, calibrated noise, epsilon spent."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from sklearn.datasets import load_digits
from torch import nn

from swarmfl.config.scenario_file import validate_scenario
from swarmfl.errors import ConfigError
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.models import build_model
from swarmfl.learning.plan import MemoryPlan
from swarmfl.learning.privacy import DPConfig
from swarmfl.sim.runner import run_scenario

ORDERS = [1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64))  # opacus's default alphas


def digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    data = load_digits()
    return (data.data[:n] / 16.0).astype(np.float32), data.target[:n]


def learner(
    n: int, batch: int, dp: DPConfig, *, seed: int = 1, lr: float = 0.05, **kwargs: object
) -> TorchLearner:
    x, y = digits(n)
    return TorchLearner(
        build_model("mlp", (64,), 10, hidden=(32,), seed=0),
        x,
        y,
        TrainingConfig(lr=lr, batch_size=batch),
        flops_per_sample=1.0,
        seed=seed,
        dp=dp,
        **kwargs,  # type: ignore[arg-type]
    )


def reference_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=ORDERS)
    epsilon, _ = get_privacy_spent(orders=ORDERS, rdp=rdp, delta=delta)
    return float(epsilon)


@pytest.mark.parametrize(
    ("sigma", "n", "batch", "rounds"),
    [(1.0, 160, 16, 3), (0.7, 200, 8, 2), (2.0, 64, 32, 5), (1.3, 100, 20, 4)],
)
def test_epsilon_matches_the_reference_accountant(
    sigma: float, n: int, batch: int, rounds: int
) -> None:
    drone = learner(n, batch, DPConfig(clip_norm=1.0, noise_multiplier=sigma, delta=1e-5))
    assert drone.epsilon == 0.0
    for _ in range(rounds):
        drone.train_round()
    steps = rounds * math.ceil(n / batch)
    expected = reference_epsilon(sigma, batch / n, steps, 1e-5)
    assert drone.epsilon == pytest.approx(expected, rel=0.01)
    assert drone.privacy is not None and drone.privacy.steps == steps


def _per_sample_gradients(model: nn.Module, x: np.ndarray, y: np.ndarray, trained: list[int]):
    """Each sample's gradient over the trained tensors, one backward at a time (plain autograd)."""
    params = list(model.parameters())
    rows = []
    for xi, yi in zip(x, y, strict=True):
        model.zero_grad()
        for p in params:
            p.grad = None
        loss = nn.functional.cross_entropy(model(torch.from_numpy(xi[None])), torch.tensor([yi]))
        grads = torch.autograd.grad(loss, [params[i] for i in trained])
        rows.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(rows)


def test_every_per_sample_gradient_is_clipped_to_c_over_the_trained_layers_only() -> None:
    n, clip, lr = 16, 0.05, 1.0
    # noise this small is far below float32 rounding of the update: the step is the clip alone
    drone = learner(
        n, n, DPConfig(clip_norm=clip, noise_multiplier=1e-12), lr=lr, trained_layers=(2, 3)
    )
    x, y = digits(n)
    reference = build_model("mlp", (64,), 10, hidden=(32,), seed=0)
    per_sample = _per_sample_gradients(reference, x, y, [2, 3])
    norms = per_sample.norm(dim=1)
    assert (norms > clip).all()  # every sample is clipped: the test sees the clip
    clipped = per_sample * (clip / norms)[:, None]
    before = drone.flat_parameters().copy()
    drone.train_round()
    step = (before - drone.flat_parameters()) / lr
    offsets = drone.layer_offsets
    np.testing.assert_array_equal(step[: offsets[2]], 0.0)  # frozen layers: untouched
    np.testing.assert_allclose(step[offsets[2] :], clipped.mean(dim=0).numpy(), atol=1e-6)
    assert np.linalg.norm(step) <= clip + 1e-6


def test_the_noise_has_the_configured_standard_deviation() -> None:
    # Two drones with the same model and batch draw different noise: the difference of their
    # real steps is (noise_1 - noise_2) / batch, of std sqrt(2) * sigma * C / batch per value.
    n, clip, sigma = 16, 0.5, 1.5
    config = DPConfig(clip_norm=clip, noise_multiplier=sigma)
    first, second = (learner(n, n, config, seed=s, lr=1.0) for s in (1, 2))
    start = first.flat_parameters().copy()
    first.train_round()
    second.train_round()
    difference = first.flat_parameters().astype(np.float64) - second.flat_parameters()
    expected = math.sqrt(2) * sigma * clip / n
    assert difference.size > 2000
    assert difference.std() == pytest.approx(expected, rel=0.05)
    assert abs(difference.mean()) < 4 * expected / math.sqrt(difference.size)
    assert not np.array_equal(first.flat_parameters(), start)


def test_bad_dp_settings_are_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"training\.dp\.noise_multiplier"):
        DPConfig(noise_multiplier=0.0)
    with pytest.raises(ConfigError, match=r"training\.dp\.delta"):
        DPConfig(delta=1.0)
    with pytest.raises(ConfigError, match=r"training\.dp\.clip_norm"):
        validate_scenario({"training": {"dp": {"clip_norm": -1}}}, source="s.toml")


def test_the_plan_counts_per_sample_gradients() -> None:
    model = build_model("mlp", (64,), 10, hidden=(32,), seed=0)
    plain = MemoryPlan.candidates(model, (64,), 16, 1 << 30)
    private = MemoryPlan.candidates(model, (64,), 16, 1 << 30, dp=True)
    for a, b in zip(plain, private, strict=True):
        assert a.predicted.per_sample_gradients == 0
        assert b.predicted.per_sample_gradients == 4 * b.trained_numel * b.micro_batch
        assert b.predicted.total == a.predicted.total + b.predicted.per_sample_gradients


def test_a_dp_swarm_reports_epsilon_per_drone_over_time(tmp_path) -> None:
    raw = {
        "run": {"seed": 7, "duration_s": 6.0, "eval_interval_s": 3.0},
        "swarm": {"drones": 4},
        "model": {"hidden": [16]},
        "training": {"dp": {"enabled": True, "noise_multiplier": 1.1, "delta": 1e-5}},
    }
    summary = run_scenario(validate_scenario(raw, source="t"), tmp_path)
    import json

    with (tmp_path / "metrics.jsonl").open() as lines:
        rows = [json.loads(line) for line in lines]
    series = [r["epsilon"] for r in rows if r["drone"] == 0]
    assert series[0] == 0.0 and series[1] > 0 and series[2] > series[1]
    assert summary["privacy"]["epsilon_max"] == pytest.approx(max(r["epsilon"] for r in rows))
    assert summary["privacy"]["delta"] == 1e-5
