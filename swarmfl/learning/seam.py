"""The learner seam, without torch: what the agent asks of a learner and what it gets back.

:class:`Learner` is the protocol both learners implement (:class:`~swarmfl.learning.learner.
TorchLearner` and :class:`~swarmfl.learning.lean.LeanLearner`); :class:`TrainingConfig`,
:class:`StepResult` and :class:`Evaluation` are the values that cross it. :class:`PlanFields` is
what a learner reads from a memory plan (a ``TrainPlan``), and :func:`plan_parameter_indexes`
checks a plan against a model's parameter names. Numpy only, so a torch-free drone imports it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from swarmfl.errors import ConfigError

__all__ = [
    "LR_SCHEDULES",
    "Evaluation",
    "Learner",
    "PlanFields",
    "StepResult",
    "TrainingConfig",
    "lr_schedule_problem",
    "plan_parameter_indexes",
]


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one local training round did: samples seen, FLOPs spent, mean training loss."""

    samples: int
    flops: float
    loss: float


@dataclass(frozen=True, slots=True)
class Evaluation:
    """Accuracy and mean cross-entropy loss on a labelled set."""

    accuracy: float
    loss: float


class Learner(Protocol):
    """What the agent trains: the model as a flat vector and a local training round."""

    @property
    def layer_offsets(self) -> tuple[int, ...]:
        """Offsets of each parameter tensor in the flat vector, plus the total at the end."""
        ...

    @property
    def trained_layers(self) -> tuple[int, ...]:
        """Indexes of the parameter tensors this drone trains (and gossips)."""
        ...

    @property
    def sample_count(self) -> int:
        """Number of local training samples."""
        ...

    def flat_parameters(self) -> np.ndarray:
        """The model's parameters as one float32 vector that aliases the model (no copy)."""
        ...

    def train_round(self) -> StepResult:
        """Train for one local round (the configured number of epochs) on the local data."""
        ...

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> Evaluation:
        """Accuracy and loss of the current model on ``(x, y)``."""
        ...

    def reset_optimizer_state(self) -> None:
        """Forget optimizer state (momentum), as a crash that loses RAM does."""
        ...


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Local optimisation settings. Raises :class:`ConfigError` for out-of-range values."""

    lr: float = 0.05
    batch_size: int = 16
    local_epochs: int = 1
    momentum: float = 0.0
    weight_decay: float = 0.0
    lr_schedule: str = "constant"  # "constant", "cosine" or "exponential", by local round
    lr_final: float = 0.0  # the rate the schedule reaches after lr_rounds rounds
    lr_rounds: int = 0  # rounds over which the schedule goes from lr to lr_final

    def __post_init__(self) -> None:
        problem = lr_schedule_problem(self.lr_schedule, self.lr, self.lr_final, self.lr_rounds)
        if problem is not None:
            raise ConfigError(problem[1], key=f"training.{problem[0]}")
        if not self.lr > 0:
            raise ConfigError(f"must be > 0, got {self.lr!r}", key="training.lr")
        if self.batch_size < 1:
            raise ConfigError(f"must be >= 1, got {self.batch_size!r}", key="training.batch_size")
        if self.local_epochs < 1:
            raise ConfigError(
                f"must be >= 1, got {self.local_epochs!r}", key="training.local_epochs"
            )
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"must be in [0, 1), got {self.momentum!r}", key="training.momentum")
        if self.weight_decay < 0:
            raise ConfigError(
                f"must be >= 0, got {self.weight_decay!r}", key="training.weight_decay"
            )


LR_SCHEDULES = ("constant", "cosine", "exponential")
"""The learning-rate schedules a :class:`TrainingConfig` names."""


def lr_schedule_problem(
    schedule: str, lr: float, lr_final: float, lr_rounds: int
) -> tuple[str, str] | None:
    """What is wrong with a learning-rate schedule, as ``(key, message)``; None if nothing.

    A decaying schedule needs ``lr_rounds >= 1`` and ``lr_final`` at most ``lr`` (and above 0
    for ``"exponential"``, which multiplies by a constant factor).
    """
    if schedule not in LR_SCHEDULES:
        return "lr_schedule", f"must be one of {', '.join(LR_SCHEDULES)}, got {schedule!r}"
    if not 0 <= lr_final <= 1e6:  # also refuses NaN
        return "lr_final", f"must be in [0, 1e6], got {lr_final!r}"
    if not 0 <= lr_rounds <= 100_000_000:
        return "lr_rounds", f"must be in [0, 100000000], got {lr_rounds!r}"
    if schedule == "constant":
        return None
    if lr_rounds < 1:
        return "lr_rounds", f"a {schedule} schedule needs the rounds it decays over (>= 1)"
    if lr_final > lr:
        return "lr_final", f"must be at most lr ({lr!r}) for a decaying schedule, got {lr_final!r}"
    if schedule == "exponential" and lr_final <= 0:
        return "lr_final", "an exponential schedule needs lr_final > 0"
    return None


class PlanFields(Protocol):
    """What a learner reads from a memory plan (``TrainPlan`` has these fields and more).

    ``trained_parameters`` are ``named_parameters()`` names; the blocks before
    ``first_trained_block`` run frozen; a batch of ``batch_size`` runs as micro-batches of at
    most ``micro_batch`` samples; ``num_blocks`` is the number of blocks of the model it is for.
    """

    @property
    def mode(self) -> str:
        """``"full"``, ``"suffix"`` or ``"bias"``."""
        ...

    @property
    def first_trained_block(self) -> int:
        """The first block that runs with gradients."""
        ...

    @property
    def trained_parameters(self) -> tuple[str, ...]:
        """Names of the trained parameters."""
        ...

    @property
    def micro_batch(self) -> int:
        """Largest number of samples per forward/backward pass."""
        ...

    @property
    def batch_size(self) -> int:
        """Samples per optimizer step."""
        ...

    @property
    def num_blocks(self) -> int:
        """Number of blocks of the model the plan is for."""
        ...


def plan_parameter_indexes(
    names: Sequence[str], num_blocks: int, plan: PlanFields, batch_size: int
) -> tuple[int, ...]:
    """Indexes (into ``names``) of the parameters ``plan`` trains; checks the plan fits the model.

    ``names`` are the model's parameter names in ``named_parameters()`` order, ``num_blocks`` its
    number of blocks, ``batch_size`` the training batch size.

    Raises:
        ConfigError: (key ``plan``) the plan is for another number of blocks or batch size, or
            names parameters the model does not have.
    """
    if num_blocks != plan.num_blocks:
        raise ConfigError(
            f"the plan is for an nn.Sequential of {plan.num_blocks} blocks", key="plan"
        )
    if plan.batch_size != batch_size:
        raise ConfigError(
            f"the plan is for batches of {plan.batch_size}, training uses {batch_size}",
            key="plan",
        )
    missing = sorted(set(plan.trained_parameters) - set(names))
    if missing:
        raise ConfigError(
            f"the plan trains parameters the model does not have: {missing[:5]}", key="plan"
        )
    wanted = set(plan.trained_parameters)
    return tuple(index for index, name in enumerate(names) if name in wanted)
