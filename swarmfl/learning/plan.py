"""The memory planner: what a device trains so that its training working set fits its budget.

A model is an ``nn.Sequential`` whose children are its *blocks*. :meth:`MemoryPlan.choose` picks
the most capable :class:`~swarmfl.learning.trainplan.TrainPlan` (the whole model, a suffix of
blocks, or biases only, at the full batch or at smaller micro-batches) whose predicted working
set fits the device's ``budget_bytes``; :func:`plan_flops_per_sample` is what training on one
sample under a plan costs, which the simulator charges to the virtual clock. The module
:mod:`~swarmfl.learning.trainplan` says what the working set counts; the plan value objects are
defined there (torch-free) and exported here too. The candidate walk, the choice and the FLOPs
count are shared with the lean planner (:mod:`~swarmfl.learning.plan_search`); what this module
adds is torch's cost model.

Activations are not fitted constants: the planner runs the forward pass the learner trains with
(:class:`~swarmfl.learning.learner.PlanForward`: frozen prefix under ``torch.no_grad``, trained part
with autograd) at micro-batch 1 and 2 under a
:class:`~swarmfl.learning.measure.SavedTensorMeter` and extrapolates linearly:
``slope = A(2) - A(1)`` bytes per sample, ``constant = 2 A(1) - A(2)`` (per-channel statistics
and the like). The probe leaves the model, its buffers and the global RNG as they were.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Unpack

import torch
from torch import nn

from swarmfl.errors import ConfigError
from swarmfl.learning.learner import PlanForward
from swarmfl.learning.measure import SavedTensorMeter
from swarmfl.learning.models import flops_per_block
from swarmfl.learning.plan_search import (
    BIAS_ONLY_FLOPS_FACTOR,
    ActivationLine,
    ParameterCost,
    PlanSettings,
    candidate_plans,
    choose_plan,
)
from swarmfl.learning.plan_search import plan_flops_per_sample as _flops_under_plan
from swarmfl.learning.trainplan import (
    MemoryBreakdown,
    OptimizerName,
    PlanMode,
    ReplicaScope,
    TrainPlan,
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


def plan_flops_per_sample(
    model: nn.Sequential, input_shape: tuple[int, ...], plan: TrainPlan
) -> float:
    """FLOPs to train on one sample following ``plan``: what the simulator charges.

    The frozen prefix costs its forward pass only (it runs under ``torch.no_grad``); trained
    blocks cost as :func:`~swarmfl.learning.plan_search.plan_flops_per_sample` says. For a full
    plan this equals :func:`~swarmfl.learning.models.training_flops_per_sample`.

    Raises :class:`ConfigError` if the model does not run on ``input_shape`` or is not the
    plan's model (another number of blocks).
    """
    return _flops_under_plan(flops_per_block(model, input_shape), plan)


class MemoryPlan:
    """Chooses what a device trains so that its training working set fits its memory budget.

    Use :meth:`choose` for the plan to train with and :meth:`candidates` for every plan
    considered (for tables and diagnostics). The candidates and the choice are those of
    :mod:`~swarmfl.learning.plan_search`, costed with autograd's saved tensors.
    """

    @classmethod
    def candidates(
        cls,
        model: nn.Sequential,
        input_shape: tuple[int, ...],
        batch_size: int,
        budget_bytes: int,
        **settings: Unpack[PlanSettings],
    ) -> list[TrainPlan]:
        """Every candidate plan with its predicted working set, in order of preference.

        ``input_shape`` is one sample's shape (without the batch dimension); ``settings`` are
        those of :func:`~swarmfl.learning.plan_search.candidate_plans` (optimizer, gossip
        replicas and codec, ``dp``). The model is probed with a few real forward passes at
        micro-batch 1 and 2; its parameters, buffers, flags and the global RNG are left as they
        were. Raises :class:`ConfigError` naming the argument if one is invalid.
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
        with _model_state_preserved(model):
            model.train()
            costs = _TorchCosts(model, input_shape)
            return candidate_plans(costs, batch_size, budget_bytes, **settings)

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
        return choose_plan(plans, budget_bytes)


class _TorchCosts:
    """The torch backend's cost model: tensor bytes, and autograd's saved tensors measured."""

    def __init__(self, model: nn.Sequential, input_shape: tuple[int, ...]) -> None:
        self._model = model
        self._input_shape = input_shape
        # children may have any names (an OrderedDict Sequential), so map names through them
        block_index = {child: i for i, (child, _) in enumerate(model.named_children())}
        self.num_blocks = len(model)
        self.parameters: Sequence[ParameterCost] = [
            ParameterCost(name, block_index[name.split(".", 1)[0]], p.numel(), _tensor_bytes(p))
            for name, p in model.named_parameters()
        ]
        self.weights_bytes = sum(_tensor_bytes(p) for p in model.parameters()) + sum(
            _tensor_bytes(b) for b in model.buffers()
        )

    def activation_line(
        self, mode: PlanMode, first_trained_block: int, trained_names: tuple[str, ...]
    ) -> ActivationLine:
        """Run the plan's forward at micro-batch 1 and 2 and fit the line through the counts."""
        model = self._model
        first = next(iter(model.parameters()))
        dtype = first.dtype if first.dtype.is_floating_point else torch.get_default_dtype()
        generator = torch.Generator(device=first.device).manual_seed(0)
        meter = SavedTensorMeter(model)
        forward = PlanForward(model, first_trained_block, meter=meter)
        names = frozenset(trained_names)
        for name, param in model.named_parameters():
            param.requires_grad_(name in names)
        counts: list[int] = []
        for micro_batch in (1, 2):
            x = torch.randn(
                (micro_batch, *self._input_shape),
                generator=generator,
                dtype=dtype,
                device=first.device,
            )
            output = forward(x)
            del output  # frees the graph and the saved tensors before the next probe
            counts.append(meter.last_bytes)
        return ActivationLine.through(*counts)


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


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
