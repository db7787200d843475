"""The memory planner: what a device trains so that its training working set fits its budget.

A model is an ``nn.Sequential`` whose children are its *blocks*. :meth:`MemoryPlan.choose` picks
the most capable :class:`~swarmfl.learning.trainplan.TrainPlan` (the whole model, a suffix of
blocks, or biases only, at the full batch or at smaller micro-batches) whose predicted working
set fits the device's ``budget_bytes``; :func:`plan_flops_per_sample` is what training on one
sample under a plan costs, which the simulator charges to the virtual clock. The module
:mod:`~swarmfl.learning.trainplan` says what the working set counts; the plan value objects are
defined there (torch-free) and exported here too.

Activations are not fitted constants: the planner runs the forward pass the learner trains with
(:class:`~swarmfl.learning.learner.PlanForward`: frozen prefix under ``torch.no_grad``, trained part
with autograd) at micro-batch 1 and 2 under a
:class:`~swarmfl.learning.measure.SavedTensorMeter` and extrapolates linearly:
``slope = A(2) - A(1)`` bytes per sample, ``constant = 2 A(1) - A(2)`` (per-channel statistics
and the like). The probe leaves the model, its buffers and the global RNG as they were.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypedDict, Unpack

import torch
from torch import nn

from swarmfl.core.codecs import DEFAULT_CODEC, CodecName
from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.learner import PlanForward
from swarmfl.learning.measure import SavedTensorMeter
from swarmfl.learning.models import TRAINING_FLOPS_FACTOR, flops_per_block
from swarmfl.learning.privacy import per_sample_gradient_bytes
from swarmfl.learning.trainplan import (
    OPTIMIZERS,
    MemoryBreakdown,
    OptimizerName,
    PlanMode,
    ReplicaScope,
    TrainPlan,
    check_gossip_settings,
    codec_buffer_bytes,
    plan_table_rows,
    planner_optimizer,
)

__all__ = [
    "BIAS_ONLY_FLOPS_FACTOR",
    "MemoryBreakdown",
    "MemoryPlan",
    "OptimizerName",
    "PlanMode",
    "PlanSettings",
    "ReplicaScope",
    "TrainPlan",
    "plan_flops_per_sample",
    "plan_table_rows",
    "planner_optimizer",
]

_MIB = 1 << 20
_FLOAT32_BYTES = 4

BIAS_ONLY_FLOPS_FACTOR = 2
"""A bias-only block costs its forward plus the backward for its input; no weight gradients."""


def plan_flops_per_sample(
    model: nn.Sequential, input_shape: tuple[int, ...], plan: TrainPlan
) -> float:
    """FLOPs to train on one sample following ``plan``: what the simulator charges.

    The frozen prefix costs its forward pass only (it runs under ``torch.no_grad``). A trained
    block of a full or suffix plan costs :data:`~swarmfl.learning.models.TRAINING_FLOPS_FACTOR`
    times its forward (forward, backward for inputs, backward for weights); a block of a
    bias-only plan costs :data:`BIAS_ONLY_FLOPS_FACTOR` times (a bias gradient is a sum, the
    weight gradients are never formed). Micro-batches do not change the FLOPs, only how many run
    at once. For a full plan this equals :func:`~swarmfl.learning.models.training_flops_per_sample`.

    Raises :class:`ConfigError` if the model does not run on ``input_shape`` or is not the
    plan's model (another number of blocks).
    """
    per_block = flops_per_block(model, input_shape)
    if len(per_block) != plan.num_blocks:
        raise ConfigError(
            f"the plan is for a model of {plan.num_blocks} blocks, this one has {len(per_block)}",
            key="num_blocks",
        )
    factor = BIAS_ONLY_FLOPS_FACTOR if plan.mode == "bias" else TRAINING_FLOPS_FACTOR
    frozen = sum(per_block[: plan.first_trained_block])
    trained = sum(per_block[plan.first_trained_block :])
    return float(frozen + factor * trained)


class PlanSettings(TypedDict, total=False):
    """The keyword arguments of :meth:`MemoryPlan.candidates` after the budget, for passing on."""

    optimizer: OptimizerName
    neighbour_replicas: int
    codec: CodecName
    block_size: int
    replica_scope: ReplicaScope
    dp: bool


class MemoryPlan:
    """Chooses what a device trains so that its training working set fits its memory budget.

    Use :meth:`choose` for the plan to train with and :meth:`candidates` for every plan
    considered (for tables and diagnostics). Candidates, in order of preference: the full model
    at the full batch, then at smaller micro-batches (halving); then suffixes of decreasing
    length, each at the full batch and then smaller micro-batches; then bias-only variants from
    the earliest block on. The chosen plan is the one that fits and trains the most values, ties
    going to the larger micro-batch, then to the earlier candidate.
    """

    @classmethod
    def candidates(
        cls,
        model: nn.Sequential,
        input_shape: tuple[int, ...],
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

        ``input_shape`` is one sample's shape (without the batch dimension). The model is
        probed with a few real forward passes at micro-batch 1 and 2; its parameters, buffers,
        flags and the global RNG are left as they were. With ``dp`` (DP-SGD) every plan also
        holds one gradient per sample of its micro-batch, over the values it trains.
        Raises :class:`ConfigError` naming the argument if one is invalid.
        """
        if not isinstance(model, nn.Sequential) or len(model) == 0:
            raise ConfigError("the model must be a non-empty nn.Sequential of blocks", key="model")
        if not any(True for _ in model.parameters()):
            raise ConfigError("the model has no parameters to train", key="model")
        if not isinstance(input_shape, tuple) or not all(
            _is_int(d) and d >= 1 for d in input_shape
        ):
            raise ConfigError(
                f"must be a tuple of positive ints, got {input_shape!r}", key="input_shape"
            )
        if not _is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"must be an int >= 1, got {batch_size!r}", key="batch_size")
        if not _is_int(budget_bytes) or budget_bytes < 0:
            raise ConfigError(f"must be an int >= 0, got {budget_bytes!r}", key="budget_bytes")
        if optimizer not in OPTIMIZERS:
            raise ConfigError(f"must be one of {OPTIMIZERS}, got {optimizer!r}", key="optimizer")
        check_gossip_settings(neighbour_replicas, codec, block_size, replica_scope)

        params = dict(model.named_parameters())
        model_numel = sum(p.numel() for p in params.values())
        weights = sum(_tensor_bytes(p) for p in params.values()) + sum(
            _tensor_bytes(b) for b in model.buffers()
        )
        plans: list[TrainPlan] = []
        with _model_state_preserved(model):
            model.train()
            for mode, first_block, names in _subject_sets(model):
                line = _probe_activations(model, first_block, frozenset(names), input_shape)
                trained = [params[n] for n in names]
                numels = [p.numel() for p in trained]
                gradients = sum(_tensor_bytes(p) for p in trained)
                fixed = {
                    "weights": weights,
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
                            num_blocks=len(model),
                        )
                    )
        return plans

    @classmethod
    def choose(
        cls,
        model: nn.Sequential,
        input_shape: tuple[int, ...],
        batch_size: int,
        budget_bytes: int,
        **settings: Unpack[PlanSettings],
    ) -> TrainPlan:
        """The most capable plan whose predicted working set fits ``budget_bytes``.

        Takes the arguments of :meth:`candidates`. Most capable: trains the most values; ties
        go to the larger micro-batch, then to the earlier candidate (see :meth:`candidates`).
        Raises :class:`PlanError` (stating the smallest feasible budget in bytes and MiB) if no
        plan fits, and :class:`ConfigError` for an invalid argument.
        """
        plans = cls.candidates(model, input_shape, batch_size, budget_bytes, **settings)
        fitting = [plan for plan in plans if plan.fits]
        if not fitting:
            smallest = min(plans, key=lambda plan: plan.predicted.total)
            need = smallest.predicted.total
            raise PlanError(
                f"budget {_mib(budget_bytes)} ({budget_bytes} bytes) is below the smallest "
                f"feasible plan ({smallest.describe()}) which needs {_mib(need)} ({need} bytes)"
            )
        # max() keeps the first of equals, which is the earlier (preferred) candidate
        return max(fitting, key=lambda plan: (plan.trained_numel, plan.micro_batch))


@dataclass(frozen=True)
class _ActivationLine:
    """Saved-for-backward bytes of one micro-batch: ``constant + per_sample * micro_batch``."""

    constant: int
    per_sample: int

    def at(self, micro_batch: int) -> int:
        return self.constant + self.per_sample * micro_batch


@contextlib.contextmanager
def _model_state_preserved(model: nn.Module) -> Iterator[None]:
    """Restore requires_grad flags, buffers, train/eval mode and the global RNG afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
        for module, training in modes:
            module.training = training


def _probe_activations(
    model: nn.Sequential,
    first_trained_block: int,
    trained_names: frozenset[str],
    input_shape: tuple[int, ...],
) -> _ActivationLine:
    """Run the plan's forward at micro-batch 1 and 2 and fit the line through the two counts."""
    first = next(iter(model.parameters()))
    dtype = first.dtype if first.dtype.is_floating_point else torch.get_default_dtype()
    generator = torch.Generator(device=first.device).manual_seed(0)
    meter = SavedTensorMeter(model)
    forward = PlanForward(model, first_trained_block, meter=meter)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trained_names)
    counts: list[int] = []
    for micro_batch in (1, 2):
        x = torch.randn(
            (micro_batch, *input_shape), generator=generator, dtype=dtype, device=first.device
        )
        output = forward(x)
        del output  # frees the graph and the saved tensors before the next probe
        counts.append(meter.last_bytes)
    one, two = counts
    return _ActivationLine(constant=max(0, 2 * one - two), per_sample=max(0, two - one))


def _micro_batches(batch_size: int) -> list[int]:
    """The batch size, then halvings (rounded up) down to 1, without repeats."""
    sizes = [batch_size]
    while sizes[-1] > 1:
        sizes.append(math.ceil(sizes[-1] / 2))
    return sizes


def _subject_sets(model: nn.Sequential) -> list[tuple[PlanMode, int, tuple[str, ...]]]:
    """(mode, first trained block, trained names) in order of preference, without repeats."""
    n_blocks = len(model)
    names = [name for name, _ in model.named_parameters()]
    # children may have any names (an OrderedDict Sequential), so map names through them
    block_index = {child: i for i, (child, _) in enumerate(model.named_children())}

    def block_of(name: str) -> int:
        return block_index[name.split(".", 1)[0]]

    def suffix(k: int) -> tuple[str, ...]:
        return tuple(n for n in names if block_of(n) >= k)

    def biases(k: int) -> tuple[str, ...]:
        return tuple(n for n in names if block_of(n) >= k and n.rsplit(".", 1)[-1] == "bias")

    ordered: list[tuple[PlanMode, int, tuple[str, ...]]] = [("full", 0, tuple(names))]
    # of two starts that train the same parameters, keep the later one: more blocks run frozen
    ordered += [("suffix", k, suffix(k)) for k in range(1, n_blocks) if suffix(k) != suffix(k + 1)]
    ordered += [("bias", k, biases(k)) for k in range(n_blocks) if biases(k) != biases(k + 1)]
    seen: set[tuple[str, ...]] = set()
    unique: list[tuple[PlanMode, int, tuple[str, ...]]] = []
    for mode, k, trained in ordered:
        if trained and trained not in seen:
            seen.add(trained)
            unique.append((mode, k, trained))
    return unique


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _mib(n: int) -> str:
    mib = n / _MIB
    return f"{mib:.1f} MiB" if mib >= 1 else f"{mib:.3g} MiB"


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
