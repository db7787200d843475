"""The memory planner for the lean backend: the same plans as the torch planner, without torch.

:func:`lean_candidates` considers what :class:`~swarmfl.learning.plan.MemoryPlan` considers, in
the same order (the whole model, suffixes of blocks, biases only; each at the full batch and at
halved micro-batches) and costs them the same way (weights, gradients, optimizer state,
replicas, codec buffers): both walk :func:`~swarmfl.learning.plan_search.candidate_plans`. Only
the activations differ: this planner measures what :class:`~swarmfl.learning.lean.LeanLearner`
itself keeps for backward (:attr:`~swarmfl.learning.lean.LeanLearner.peak_saved_activation_bytes`)
at micro-batch 1 and 2 under each candidate and extrapolates linearly, as the torch planner does
with autograd's saved tensors. :func:`choose_lean_plan` picks as ``MemoryPlan.choose`` picks.
The plans are :class:`~swarmfl.learning.trainplan.TrainPlan` values a lean learner trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Unpack

import numpy as np

from swarmfl.errors import ConfigError
from swarmfl.learning.lean import LeanLearner
from swarmfl.learning.plan_search import (
    ActivationLine,
    ParameterCost,
    PlanSettings,
    candidate_plans,
    choose_plan,
    plan_flops_per_sample,
)
from swarmfl.learning.seam import TrainingConfig
from swarmfl.learning.spec import ModelSpec
from swarmfl.learning.trainplan import PlanMode, TrainPlan

__all__ = ["choose_lean_plan", "lean_candidates", "lean_plan_flops_per_sample"]

_F32 = 4
_PROBE_CONFIG = TrainingConfig(lr=0.1, batch_size=2)


@dataclass(frozen=True)
class _Probe:
    """The plan fields a probing learner reads (a batch of 2, one micro-batch)."""

    mode: str
    first_trained_block: int
    trained_parameters: tuple[str, ...]
    micro_batch: int = 2
    batch_size: int = 2
    num_blocks: int = 1


class _LeanCosts:
    """The lean backend's cost model: float32 everywhere, and the lean learner's saved arrays."""

    def __init__(self, spec: ModelSpec) -> None:
        self._spec = spec
        self.num_blocks = spec.num_blocks
        self.parameters = [
            ParameterCost(p.name, p.block, p.numel, p.numel * _F32) for p in spec.parameters
        ]
        self.weights_bytes = spec.numel * _F32

    def activation_line(
        self, mode: PlanMode, first_trained_block: int, trained_names: tuple[str, ...]
    ) -> ActivationLine:
        """Train a probing learner on 1 sample, then on 2, and fit the line through what it kept."""
        spec = self._spec
        rng = np.random.default_rng(0)
        x = rng.standard_normal((2, *spec.input_shape)).astype(np.float32)
        y = np.zeros(2, dtype=np.int64)
        probe = _Probe(mode, first_trained_block, trained_names, num_blocks=spec.num_blocks)
        learner = LeanLearner(spec, x, y, _PROBE_CONFIG, flops_per_sample=0.0, seed=0, plan=probe)
        learner.gradient(x[:1], y[:1])
        one = learner.peak_saved_activation_bytes
        learner.gradient(x, y)
        return ActivationLine.through(one, learner.peak_saved_activation_bytes)


def lean_candidates(
    spec: ModelSpec, batch_size: int, budget_bytes: int, **settings: Unpack[PlanSettings]
) -> list[TrainPlan]:
    """Every candidate plan for a lean learner of ``spec``, in order of preference.

    ``settings`` are those of :func:`~swarmfl.learning.plan_search.candidate_plans`. Raises
    :class:`~swarmfl.errors.ConfigError` for ``dp`` (the lean learner has no DP-SGD) and for an
    invalid argument, naming it.
    """
    if settings.get("dp"):
        raise ConfigError(
            "DP-SGD needs per-sample gradients, which only the torch backend has",
            key="training.dp.enabled",
        )
    return candidate_plans(_LeanCosts(spec), batch_size, budget_bytes, **settings)


def choose_lean_plan(
    spec: ModelSpec, batch_size: int, budget_bytes: int, **settings: Unpack[PlanSettings]
) -> TrainPlan:
    """The most capable lean plan that fits ``budget_bytes`` (as ``MemoryPlan.choose``).

    Takes the arguments of :func:`lean_candidates`. Raises :class:`PlanError` stating the
    smallest feasible budget if none fits, and :class:`ConfigError` as :func:`lean_candidates`.
    """
    plans = lean_candidates(spec, batch_size, budget_bytes, **settings)
    return choose_plan(plans, budget_bytes, noun="lean plan")


def lean_plan_flops_per_sample(spec: ModelSpec, plan: TrainPlan) -> float:
    """FLOPs to train one sample under ``plan``, counted as the torch planner counts them."""
    return plan_flops_per_sample(spec.flops_per_block(), plan)
