"""The planners' shared search: every candidate plan, costed by a backend's cost model; the choice.

Both memory planners (:class:`~swarmfl.learning.plan.MemoryPlan` for torch,
:mod:`~swarmfl.learning.lean_plan` for the lean learner) consider the same plans in the same order
and count the same components; they differ only in what a backend knows about its model. That
is a :class:`PlanCosts`: its parameters (name, block, size, gradient bytes), its resident weight
bytes and what its learner keeps for backward under a plan (an :class:`ActivationLine`, which
each backend measures on its own learner). :func:`candidate_plans` walks the candidates,
:func:`choose_plan` picks one and :func:`plan_flops_per_sample` is what a sample costs under a
plan.

Candidates, in order of preference: the full model at the full batch, then at smaller
micro-batches (halving); then suffixes of decreasing length, each at the full batch and then
smaller micro-batches; then bias-only variants from the earliest block on. Of two candidates that
train the same parameters only the first is kept.

This module does not import torch: a lean drone plans with it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypedDict

from swarmfl.core.codecs import DEFAULT_CODEC, CodecName
from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.spec import TRAINING_FLOPS_FACTOR
from swarmfl.learning.trainplan import (
    OPTIMIZERS,
    MemoryBreakdown,
    OptimizerName,
    PlanMode,
    ReplicaScope,
    TrainPlan,
    check_gossip_settings,
    codec_buffer_bytes,
    per_sample_gradient_bytes,
)

__all__ = [
    "BIAS_ONLY_FLOPS_FACTOR",
    "TRAINING_FLOPS_FACTOR",
    "ActivationLine",
    "ParameterCost",
    "PlanCosts",
    "PlanSettings",
    "candidate_plans",
    "choose_plan",
    "plan_flops_per_sample",
]

BIAS_ONLY_FLOPS_FACTOR = 2
"""A bias-only block costs its forward plus the backward for its input; no weight gradients."""

_FLOAT32_BYTES = 4
_MIB = 1 << 20


@dataclass(frozen=True)
class ParameterCost:
    """One parameter tensor as the planner sees it.

    ``name`` as ``named_parameters()`` names it, ``block`` the index of the block holding it,
    ``numel`` its number of values and ``gradient_bytes`` what the learner's gradient buffer
    holds for it when it is trained.
    """

    name: str
    block: int
    numel: int
    gradient_bytes: int

    @property
    def is_bias(self) -> bool:
        """Whether this is a bias (what a bias-only plan trains)."""
        return self.name.rsplit(".", 1)[-1] == "bias"


@dataclass(frozen=True)
class ActivationLine:
    """Saved-for-backward bytes of one micro-batch: ``constant + per_sample * micro_batch``."""

    constant: int
    per_sample: int

    @classmethod
    def through(cls, one: int, two: int) -> ActivationLine:
        """The line through the bytes kept at micro-batch 1 and at micro-batch 2 (never below 0)."""
        return cls(constant=max(0, 2 * one - two), per_sample=max(0, two - one))

    def at(self, micro_batch: int) -> int:
        """Bytes kept at ``micro_batch``."""
        return self.constant + self.per_sample * micro_batch


class PlanSettings(TypedDict, total=False):
    """The keyword arguments of :func:`candidate_plans` after the budget, for passing on."""

    optimizer: OptimizerName
    neighbour_replicas: int
    codec: CodecName
    block_size: int
    replica_scope: ReplicaScope
    dp: bool


class PlanCosts(Protocol):
    """What one backend knows about its model: the per-backend cost model of the planner."""

    @property
    def num_blocks(self) -> int:
        """Blocks of the model."""
        ...

    @property
    def parameters(self) -> Sequence[ParameterCost]:
        """Every parameter tensor, in ``named_parameters()`` order."""
        ...

    @property
    def weights_bytes(self) -> int:
        """Bytes of every parameter and buffer of the model (resident whatever is trained)."""
        ...

    def activation_line(
        self, mode: PlanMode, first_trained_block: int, trained_names: tuple[str, ...]
    ) -> ActivationLine:
        """What the backend's learner keeps for backward under such a plan, per micro-batch."""
        ...


def candidate_plans(
    costs: PlanCosts,
    batch_size: int,
    budget_bytes: int,
    *,
    optimizer: OptimizerName = "sgd",
    neighbour_replicas: int = 0,
    codec: CodecName = DEFAULT_CODEC,
    block_size: int = 128,
    replica_scope: ReplicaScope = "trained",
    dp: bool = False,
) -> list[TrainPlan]:
    """Every candidate plan with its predicted working set, in order of preference.

    ``costs.activation_line`` is asked once per set of trained parameters, in that order. With
    ``dp`` (DP-SGD) every plan also holds one gradient per sample of its micro-batch, over the
    values it trains. Raises :class:`ConfigError` naming the argument if one is invalid.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"must be an int >= 1, got {batch_size!r}", key="batch_size")
    if not _is_int(budget_bytes) or budget_bytes < 0:
        raise ConfigError(f"must be an int >= 0, got {budget_bytes!r}", key="budget_bytes")
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"must be one of {OPTIMIZERS}, got {optimizer!r}", key="optimizer")
    check_gossip_settings(neighbour_replicas, codec, block_size, replica_scope)

    by_name = {p.name: p for p in costs.parameters}
    model_numel = sum(p.numel for p in costs.parameters)
    plans: list[TrainPlan] = []
    for mode, first_block, names in _subject_sets(costs.parameters, costs.num_blocks):
        line = costs.activation_line(mode, first_block, names)
        numels = [by_name[n].numel for n in names]
        gradients = sum(by_name[n].gradient_bytes for n in names)
        fixed = {
            "weights": costs.weights_bytes,
            "gradients": gradients,
            # the learner's momentum buffer holds one value per trained value
            "optimizer_state": gradients if optimizer == "sgd_momentum" else 0,
            "replicas": neighbour_replicas
            * (model_numel if replica_scope == "model" else sum(numels))
            * _FLOAT32_BYTES,
            "codec_buffers": codec_buffer_bytes(numels, codec, block_size),
        }
        for micro_batch in _micro_batches(batch_size):
            plans.append(
                TrainPlan(
                    mode=mode,
                    first_trained_block=first_block,
                    trained_parameters=names,
                    micro_batch=micro_batch,
                    predicted=MemoryBreakdown(
                        activations=line.at(micro_batch),
                        per_sample_gradients=(
                            per_sample_gradient_bytes(sum(numels), micro_batch) if dp else 0
                        ),
                        **fixed,
                    ),
                    budget_bytes=budget_bytes,
                    batch_size=batch_size,
                    trained_numel=sum(numels),
                    num_blocks=costs.num_blocks,
                )
            )
    return plans


def choose_plan(plans: Sequence[TrainPlan], budget_bytes: int, *, noun: str = "plan") -> TrainPlan:
    """The most capable of ``plans`` whose predicted working set fits ``budget_bytes``.

    Most capable: trains the most values; ties go to the larger micro-batch, then to the earlier
    candidate. Raises :class:`PlanError` stating the smallest feasible budget (in bytes and MiB,
    calling it the smallest feasible ``noun``) if none fits.
    """
    fitting = [plan for plan in plans if plan.fits]
    if not fitting:
        smallest = min(plans, key=lambda plan: plan.predicted.total)
        need = smallest.predicted.total
        raise PlanError(
            f"budget {_mib(budget_bytes)} ({budget_bytes} bytes) is below the smallest "
            f"feasible {noun} ({smallest.describe()}) which needs {_mib(need)} ({need} bytes)"
        )
    # max() keeps the first of equals, which is the earlier (preferred) candidate
    return max(fitting, key=lambda plan: (plan.trained_numel, plan.micro_batch))


def plan_flops_per_sample(flops_per_block: Sequence[int | float], plan: TrainPlan) -> float:
    """FLOPs to train on one sample following ``plan``, given each block's forward FLOPs.

    The frozen prefix costs its forward pass only. A trained block of a full or suffix plan costs
    :data:`TRAINING_FLOPS_FACTOR` times its forward (forward, backward for inputs, backward for
    weights); a block of a bias-only plan costs :data:`BIAS_ONLY_FLOPS_FACTOR` times (a bias
    gradient is a sum, the weight gradients are never formed). Micro-batches do not change the
    FLOPs, only how many run at once.

    Raises :class:`ConfigError` if ``flops_per_block`` is not for the plan's model (another
    number of blocks).
    """
    if len(flops_per_block) != plan.num_blocks:
        raise ConfigError(
            f"the plan is for a model of {plan.num_blocks} blocks, "
            f"this one has {len(flops_per_block)}",
            key="num_blocks",
        )
    factor = BIAS_ONLY_FLOPS_FACTOR if plan.mode == "bias" else TRAINING_FLOPS_FACTOR
    frozen = sum(flops_per_block[: plan.first_trained_block])
    trained = sum(flops_per_block[plan.first_trained_block :])
    return float(frozen + factor * trained)


def _micro_batches(batch_size: int) -> list[int]:
    """The batch size, then halvings (rounded up) down to 1, without repeats."""
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def _subject_sets(
    parameters: Sequence[ParameterCost], num_blocks: int
) -> list[tuple[PlanMode, int, tuple[str, ...]]]:
    """(mode, first trained block, trained names) in order of preference, without repeats."""

    def suffix(k: int) -> tuple[str, ...]:
        return tuple(p.name for p in parameters if p.block >= k)

    def biases(k: int) -> tuple[str, ...]:
        return tuple(p.name for p in parameters if p.block >= k and p.is_bias)

    ordered: list[tuple[PlanMode, int, tuple[str, ...]]] = [("full", 0, suffix(0))]
    # of two starts that train the same parameters, keep the later one: more blocks run frozen
    ordered += [
        ("suffix", k, suffix(k)) for k in range(1, num_blocks) if suffix(k) != suffix(k + 1)
    ]
    ordered += [("bias", k, biases(k)) for k in range(num_blocks) if biases(k) != biases(k + 1)]
    seen: set[tuple[str, ...]] = set()
    unique: list[tuple[PlanMode, int, tuple[str, ...]]] = []
    for mode, k, trained in ordered:
        if trained and trained not in seen:
            seen.add(trained)
            unique.append((mode, k, trained))
    return unique


def _mib(n: int) -> str:
    mib = n / _MIB
    return f"{mib:.1f} MiB" if mib >= 1 else f"{mib:.3g} MiB"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
