"""Small block models for the planner and measurement tests (an MLP, a 2-D CNN, named blocks),
and a learner that follows a plan on one random batch."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.plan import TrainPlan

MLP_INPUT = (64,)
CNN_INPUT = (3, 32, 32)


def make_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU()),
        nn.Sequential(nn.Linear(128, 10)),
    )


def make_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)

    def conv_block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(
        conv_block(3, 16),
        conv_block(16, 32),
        conv_block(32, 64),
        nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 10)),
    )


def make_named_cnn() -> nn.Sequential:
    """:func:`make_cnn` with blocks named ``stem``, ``mid``, ``deep``, ``head``."""
    cnn = make_cnn()
    return nn.Sequential(OrderedDict(zip(("stem", "mid", "deep", "head"), cnn, strict=True)))


MODELS: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...]]] = {
    "mlp": (make_mlp, MLP_INPUT),
    "cnn": (make_cnn, CNN_INPUT),
}


def learner_on_one_batch(
    model: nn.Sequential,
    plan: TrainPlan,
    input_shape: tuple[int, ...],
    *,
    seed: int = 0,
    momentum: float = 0.0,
) -> tuple[TorchLearner, np.ndarray]:
    """A learner following ``plan`` on one batch of random samples (returned too), 10 classes."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((plan.batch_size, *input_shape)).astype(np.float32)
    learner = TorchLearner(
        model,
        x,
        rng.integers(0, 10, plan.batch_size),
        TrainingConfig(batch_size=plan.batch_size, momentum=momentum),
        flops_per_sample=1.0,
        seed=seed,
        plan=plan,
    )
    return learner, x
