"""The learning-rate schedule (``training.lr_schedule``): the rate per local round, the same in
both learners, the default unchanged, and bad keys refused with one line naming them."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest

from swarmfl.cli import main
from swarmfl.config.scenario_file import load_scenario
from swarmfl.errors import ConfigError
from swarmfl.learning.backends import build_torch_model
from swarmfl.learning.lean import LeanLearner
from swarmfl.learning.learner import TorchLearner
from swarmfl.learning.seam import TrainingConfig
from swarmfl.learning.sgd import scheduled_lr
from swarmfl.learning.spec import model_spec
from swarmfl.sim.runner import run_scenario
from swarmfl.testing import scenario

QUICKSTART = Path(__file__).resolve().parent.parent / "scenarios" / "quickstart.toml"


def test_schedules_go_from_lr_to_lr_final_over_lr_rounds_and_stay() -> None:
    constant = TrainingConfig(lr=0.5)
    cosine = TrainingConfig(lr=0.5, lr_schedule="cosine", lr_final=0.1, lr_rounds=10)
    exponential = TrainingConfig(lr=0.5, lr_schedule="exponential", lr_final=0.005, lr_rounds=4)
    assert [scheduled_lr(constant, r) for r in (0, 7, 10**6)] == [0.5, 0.5, 0.5]
    assert scheduled_lr(cosine, 0) == pytest.approx(0.5)
    assert scheduled_lr(cosine, 5) == pytest.approx(0.3)  # half way: the mean of the two
    assert scheduled_lr(cosine, 2) == pytest.approx(0.1 + 0.4 * (1 + math.cos(0.2 * math.pi)) / 2)
    assert scheduled_lr(cosine, 10) == pytest.approx(0.1)
    assert scheduled_lr(cosine, 500) == pytest.approx(0.1)
    rates = [scheduled_lr(cosine, r) for r in range(11)]
    assert all(a > b for a, b in pairwise(rates))
    # exponential: the same factor (0.01 ** 0.25) each round
    assert [scheduled_lr(exponential, r) for r in range(6)] == pytest.approx(
        [0.5, 0.5 * 0.01**0.25, 0.05, 0.5 * 0.01**0.75, 0.005, 0.005]
    )


def _pair(config: TrainingConfig) -> tuple[LeanLearner, TorchLearner, np.ndarray]:
    spec = model_spec("mlp", (12,), 4, seed=3, hidden=(16,))
    rng = np.random.default_rng(1)
    x = rng.standard_normal((24, 12)).astype(np.float32)
    y = rng.integers(0, 4, 24)
    lean = LeanLearner(spec, x, y, config, flops_per_sample=1.0, seed=0)
    start = lean.flat_parameters().copy()
    torch_learner = TorchLearner(
        build_torch_model(spec, start), x, y, config, flops_per_sample=1.0, seed=0
    )
    return lean, torch_learner, start


@pytest.mark.parametrize("schedule", ["cosine", "exponential"])
def test_both_backends_step_each_round_with_the_scheduled_rate(schedule: str) -> None:
    # the whole shard is one batch: one step a round, in the same order in both learners
    config = TrainingConfig(lr=0.4, batch_size=24, lr_schedule=schedule, lr_final=0.01, lr_rounds=5)
    lean, torch_learner, _ = _pair(config)
    for round_index in range(7):
        expected = scheduled_lr(config, round_index)
        assert lean.current_lr == torch_learner.current_lr == expected
        before = lean.flat_parameters().copy()
        lean.train_round()
        torch_learner.train_round()
        # the step the lean learner took is its gradient times this round's rate
        step = before - lean.flat_parameters()
        np.testing.assert_allclose(
            step, np.float32(expected) * lean._sgd.gradient, rtol=1e-5, atol=1e-7
        )
        np.testing.assert_allclose(
            lean.flat_parameters(), torch_learner.flat_parameters(), rtol=1e-5, atol=1e-6
        )
    assert lean.rounds_trained == torch_learner.rounds_trained == 7
    assert lean.current_lr == pytest.approx(0.01)


def test_a_decaying_schedule_trains_differently_from_constant() -> None:
    constant, _, start = _pair(TrainingConfig(lr=0.4, batch_size=8))
    cosine, _, _ = _pair(TrainingConfig(lr=0.4, batch_size=8, lr_schedule="cosine", lr_rounds=3))
    np.testing.assert_array_equal(constant.flat_parameters(), cosine.flat_parameters())
    constant.train_round()
    cosine.train_round()  # round 0: the full rate in both
    np.testing.assert_array_equal(constant.flat_parameters(), cosine.flat_parameters())
    for _ in range(3):
        constant.train_round()
        cosine.train_round()
    moved = np.abs(constant.flat_parameters() - start).sum()
    assert np.abs(constant.flat_parameters() - cosine.flat_parameters()).sum() > 1e-3 * moved


# Measured on main before the schedule existed (the same scenario, seed 7): a seeded swarm with
# the default (constant) rate must give these exact numbers still, with either backend.
BEFORE = {
    "torch": (0.92037, [0.325759, 0.302531, 0.280503, 0.291901, 0.254572, 0.274009]),
    "lean": (0.918981, [0.327382, 0.298972, 0.277056, 0.289187, 0.299976, 0.283901]),
}


@pytest.mark.parametrize("backend", ["torch", "lean"])
def test_the_default_constant_rate_leaves_a_seeded_run_unchanged(
    backend: str, tmp_path: Path
) -> None:
    settings = {"swarm.drones": 6, "run.duration_s": 20.0, "training.backend": backend}
    summary = run_scenario(scenario("quickstart", settings), tmp_path)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    final_losses = [line["loss"] for line in lines if line.get("t") == 20.0]
    accuracy, losses = BEFORE[backend]
    assert summary["accuracy"]["mean"] == accuracy
    assert final_losses == losses


@pytest.mark.parametrize(
    ("sets", "key", "problem"),
    [
        (["training.lr_schedule='linear'"], "training.lr_schedule", "'constant'"),
        (["training.lr_schedule='cosine'"], "training.lr_rounds", "needs the rounds"),
        (
            ["training.lr_schedule='cosine'", "training.lr_rounds=10", "training.lr_final=0.5"],
            "training.lr_final",
            "at most lr",
        ),
        (
            ["training.lr_schedule='exponential'", "training.lr_rounds=10"],
            "training.lr_final",
            "lr_final > 0",
        ),
        (["training.lr_final=-1"], "training.lr_final", "greater than or equal to 0"),
        (["training.lr_rounds=1e9"], "training.lr_rounds", "less than or equal to 100000000"),
    ],
)
def test_bad_schedule_keys_are_refused_naming_the_key(
    sets: list[str], key: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        load_scenario(QUICKSTART, sets)
    line = err.value.one_line()
    assert "\n" not in line and f"key '{key}'" in line and problem in line
    args = ["sim", str(QUICKSTART), "--no-progress"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"key '{key}'" in error and problem in error


def test_the_training_config_refuses_what_the_scenario_refuses() -> None:
    with pytest.raises(ConfigError, match="lr_rounds"):
        TrainingConfig(lr_schedule="cosine")
    with pytest.raises(ConfigError, match="lr_schedule"):
        TrainingConfig(lr_schedule="step")
    with pytest.raises(ConfigError, match="lr_final"):
        TrainingConfig(lr_final=float("nan"))
