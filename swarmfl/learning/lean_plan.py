"""The memory planner for the lean backend: the same plans as the torch planner, without torch.

:func:`lean_candidates` considers what :class:`~swarmfl.learning.plan.MemoryPlan` considers, in
the same order (the whole model, suffixes of blocks, biases only; each at the full batch and at
halved micro-batches) and costs them the same way (weights, gradients, optimizer state,
replicas, codec buffers), except for activations: it measures what
:class:`~swarmfl.learning.lean.LeanLearner` itself keeps for backward
(:attr:`~swarmfl.learning.lean.LeanLearner.peak_saved_activation_bytes`) at micro-batch 1 and 2
under each candidate and extrapolates linearly, as the torch planner does with autograd's saved
tensors. :func:`choose_lean_plan` picks as ``MemoryPlan.choose`` picks. The plans are
:class:`~swarmfl.learning.trainplan.TrainPlan` values a lean learner trains with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from swarmfl.core.codecs import CodecName
from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.lean import LeanLearner
from swarmfl.learning.seam import TrainingConfig
from swarmfl.learning.spec import TRAINING_FLOPS_FACTOR, ModelSpec
from swarmfl.learning.trainplan import (
    MemoryBreakdown,
    OptimizerName,
    PlanMode,
    ReplicaScope,
    TrainPlan,
    check_gossip_settings,
    codec_buffer_bytes,
)

__all__ = ["choose_lean_plan", "lean_candidates", "lean_plan_flops_per_sample"]

_F32 = 4
_BIAS_ONLY_FLOPS_FACTOR = 2  # as swarmfl.learning.plan.BIAS_ONLY_FLOPS_FACTOR


@dataclass(frozen=True)
class _Probe:
    """The plan fields a probing learner reads (a batch of 2, one micro-batch)."""

    mode: str
    first_trained_block: int
    trained_parameters: tuple[str, ...]
    micro_batch: int = 2
    batch_size: int = 2
    num_blocks: int = 1


def _subject_sets(spec: ModelSpec) -> list[tuple[PlanMode, int, tuple[str, ...]]]:
    """(mode, first trained block, trained names) in the torch planner's order, no repeats."""
    params = spec.parameters

    def suffix(k: int) -> tuple[str, ...]:
        return tuple(p.name for p in params if p.block >= k)

    def biases(k: int) -> tuple[str, ...]:
        return tuple(p.name for p in params if p.block >= k and p.is_bias)

    n = spec.num_blocks
    ordered: list[tuple[PlanMode, int, tuple[str, ...]]] = [("full", 0, spec.parameter_names)]
    ordered += [("suffix", k, suffix(k)) for k in range(1, n) if suffix(k) != suffix(k + 1)]
    ordered += [("bias", k, biases(k)) for k in range(n) if biases(k) != biases(k + 1)]
    seen: set[tuple[str, ...]] = set()
    unique = []
    for mode, k, trained in ordered:
        if trained and trained not in seen:
            seen.add(trained)
            unique.append((mode, k, trained))
    return unique


def _activation_line(
    spec: ModelSpec, mode: str, first: int, names: tuple[str, ...]
) -> tuple[int, int]:
    """(constant, per sample) bytes the lean learner keeps for backward under this plan."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *spec.input_shape)).astype(np.float32)
    y = np.zeros(2, dtype=np.int64)
    probe = _Probe(mode, first, names, num_blocks=spec.num_blocks)
    learner = LeanLearner(
        spec,
        x,
        y,
        TrainingConfig(lr=0.1, batch_size=2),
        flops_per_sample=0.0,
        seed=0,
        plan=probe,
    )
    learner.gradient(x[:1], y[:1])
    one = learner.peak_saved_activation_bytes
    learner.gradient(x, y)
    two = learner.peak_saved_activation_bytes
    return max(0, 2 * one - two), max(0, two - one)


def _micro_batches(batch_size: int) -> list[int]:
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // 2))
    return sizes


def lean_candidates(
    spec: ModelSpec,
    batch_size: int,
    budget_bytes: int,
    *,
    optimizer: OptimizerName = "sgd",
    neighbour_replicas: int = 0,
    codec: CodecName = "fp32",
    block_size: int = 128,
    replica_scope: ReplicaScope = "trained",
) -> list[TrainPlan]:
    """Every candidate plan for a lean learner of ``spec``, in order of preference.

    Raises :class:`~swarmfl.errors.ConfigError` for invalid gossip settings.
    """
    check_gossip_settings(neighbour_replicas, codec, block_size, replica_scope)
    numel = {p.name: p.numel for p in spec.parameters}
    weights = spec.numel * _F32
    plans: list[TrainPlan] = []
    for mode, first, names in _subject_sets(spec):
        constant, per_sample = _activation_line(spec, mode, first, names)
        numels = [numel[n] for n in names]
        gradients = sum(numels) * _F32
        fixed = {
            "weights": weights,
            "gradients": gradients,
            "optimizer_state": gradients if optimizer == "sgd_momentum" else 0,
            "replicas": neighbour_replicas
            * (spec.numel if replica_scope == "model" else sum(numels))
            * _F32,
            "codec_buffers": codec_buffer_bytes(numels, codec, block_size),
        }
        for micro_batch in _micro_batches(batch_size):
            plans.append(
                TrainPlan(
                    mode=mode,
                    first_trained_block=first,
                    trained_parameters=names,
                    micro_batch=micro_batch,
                    predicted=MemoryBreakdown(
                        activations=constant + per_sample * micro_batch, **fixed
                    ),
                    budget_bytes=budget_bytes,
                    batch_size=batch_size,
                    trained_numel=sum(numels),
                    num_blocks=spec.num_blocks,
                )
            )
    return plans


def choose_lean_plan(
    spec: ModelSpec,
    batch_size: int,
    budget_bytes: int,
    *,
    optimizer: OptimizerName = "sgd",
    neighbour_replicas: int = 0,
    codec: CodecName = "fp32",
    block_size: int = 128,
    replica_scope: ReplicaScope = "trained",
    dp: bool = False,
) -> TrainPlan:
    """The most capable lean plan that fits ``budget_bytes`` (as ``MemoryPlan.choose``).

    Raises :class:`PlanError` stating the smallest feasible budget if none fits, and
    :class:`ConfigError` for ``dp`` (the lean learner has no DP-SGD).
    """
    if dp:
        raise ConfigError(
            "DP-SGD needs per-sample gradients, which only the torch backend has",
            key="training.dp.enabled",
        )
    plans = lean_candidates(
        spec,
        batch_size,
        budget_bytes,
        optimizer=optimizer,
        neighbour_replicas=neighbour_replicas,
        codec=codec,
        block_size=block_size,
        replica_scope=replica_scope,
    )
    fitting = [plan for plan in plans if plan.fits]
    if not fitting:
        smallest = min(plans, key=lambda plan: plan.predicted.total)
        need = smallest.predicted.total
        raise PlanError(
            f"budget {budget_bytes / 2**20:.3g} MiB ({budget_bytes} bytes) is below the smallest "
            f"feasible lean plan ({smallest.describe()}) which needs {need / 2**20:.3g} MiB "
            f"({need} bytes)"
        )
    return max(fitting, key=lambda plan: (plan.trained_numel, plan.micro_batch))


def lean_plan_flops_per_sample(spec: ModelSpec, plan: TrainPlan) -> float:
    """FLOPs to train one sample under ``plan``, counted as the torch planner counts them."""
    per_block = spec.flops_per_block()
    factor = _BIAS_ONLY_FLOPS_FACTOR if plan.mode == "bias" else TRAINING_FLOPS_FACTOR
    frozen = sum(per_block[: plan.first_trained_block])
    trained = sum(per_block[plan.first_trained_block :])
    return float(frozen + factor * trained)
