"""What a device trains and what its training working set costs: the plan's value objects.

A :class:`TrainPlan` says which parameters a device trains, from which block on, at which
micro-batch, and carries its predicted :class:`MemoryBreakdown`. The planner that makes plans
(:class:`~swarmfl.learning.plan.MemoryPlan`) needs torch to probe the model; this module does
not import torch, so a learner or a tool without torch can read, check and show a plan.

What the working set counts (the planner's prediction and
:func:`~swarmfl.learning.measure.measure_training_step` count exactly the same things):

* ``weights``: every parameter and buffer of the model (the whole model stays resident, since
  the device also runs inference with it).
* ``gradients``: the learner's gradient buffer, one float32 per trained value.
* ``optimizer_state``: what the learner's SGD keeps between steps: nothing for plain SGD
  (``"sgd"``), one momentum value per trained value with momentum (``"sgd_momentum"``).
* ``activations``: the tensors autograd saves for backward during the forward of *one*
  micro-batch through the model (deduplicated by the storage bytes they cover; tensors that live
  in a parameter's or buffer's storage are excluded, they are already in ``weights``). Micro-batches
  run one after the other and each one's saved tensors are freed by its backward, so the peak is
  one micro-batch's worth. The input batch and labels are not counted as such (inference needs
  the input too), but when the first trained op saves its input (a trained first layer does), that
  slice of the input is an activation and is counted. The loss function's own saved tensors
  (the size of the logits) are outside the model and not counted.
* ``replicas``: ``neighbour_replicas`` CHOCO public replicas, held in float32. With
  ``replica_scope="trained"`` a neighbour's replica is sized by our own trained set (right in a
  homogeneous fleet, where every peer runs the same plan and its frames carry exactly those
  layers); with ``replica_scope="model"`` by the whole model (a mixed fleet: a peer may train,
  and send, layers this device keeps frozen, and the node keeps what it hears so that the
  frozen layers can still be merged from the peers that train them).
* ``codec_buffers``: the encoder's own public replica (float32) of the trained parameters plus
  the quantized payload buffer (int8: 1 byte per value, int4: half a byte, fp32: 4 bytes; plus
  one float32 scale per block of ``block_size`` values for int8/int4, blocks taken per tensor).

Plan modes: ``"full"`` trains every parameter; ``"suffix"`` trains every parameter of blocks
``first_trained_block`` and after, the blocks before run under ``torch.no_grad``; ``"bias"``
trains only the parameters named ``bias`` in blocks ``first_trained_block`` and after (the blocks
before are frozen and run without autograd; weights of later blocks are frozen but still carry the
gradient back to the earlier biases).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from swarmfl.core.codecs import CODECS
from swarmfl.errors import ConfigError

__all__ = [
    "OPTIMIZERS",
    "MemoryBreakdown",
    "OptimizerName",
    "PlanMode",
    "ReplicaScope",
    "TrainPlan",
    "check_gossip_settings",
    "codec_buffer_bytes",
    "per_sample_gradient_bytes",
    "plan_table_rows",
    "planner_optimizer",
]

PlanMode = Literal["full", "suffix", "bias"]
OptimizerName = Literal["sgd", "sgd_momentum"]
"""What the learner's optimizer keeps, as the planner names it: SGD without or with momentum."""
ReplicaScope = Literal["trained", "model"]

OPTIMIZERS: tuple[OptimizerName, ...] = get_args(OptimizerName)
"""The optimizer names the planner accepts (those :class:`TorchLearner` trains with)."""
_PLAN_MODES: tuple[str, ...] = get_args(PlanMode)
_REPLICA_SCOPES: tuple[str, ...] = get_args(ReplicaScope)

_FLOAT32_BYTES = 4
_SCALE_BYTES = 4  # one float32 scale per quantization block


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes of a training working set, by component (see the module docstring for each).

    Raises :class:`ConfigError` if a component is not a non-negative int.
    """

    weights: int
    gradients: int
    optimizer_state: int
    activations: int
    replicas: int
    codec_buffers: int
    per_sample_gradients: int = 0  # DP-SGD: one gradient per sample of a micro-batch

    def __post_init__(self) -> None:
        for name in _BREAKDOWN_FIELDS:
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ConfigError(f"must be a non-negative int of bytes, got {value!r}", key=name)

    @property
    def total(self) -> int:
        """Every component added up: the bytes the device needs to train."""
        return self.weights + self.training_overhead

    @property
    def training_overhead(self) -> int:
        """Everything beyond the weights inference needs anyway."""
        return (
            self.gradients
            + self.optimizer_state
            + self.activations
            + self.replicas
            + self.codec_buffers
            + self.per_sample_gradients
        )

    def as_dict(self) -> dict[str, int]:
        """The components and the total, by name."""
        return {**{name: getattr(self, name) for name in _BREAKDOWN_FIELDS}, "total": self.total}


_BREAKDOWN_FIELDS: tuple[str, ...] = (
    "weights",
    "gradients",
    "optimizer_state",
    "activations",
    "replicas",
    "codec_buffers",
    "per_sample_gradients",
)


@dataclass(frozen=True)
class TrainPlan:
    """What one device trains, at which micro-batch, and what that is predicted to cost.

    ``trained_parameters`` are names from ``model.named_parameters()``, in that order. Blocks
    before ``first_trained_block`` run under ``torch.no_grad``. A step over ``batch_size``
    samples runs ``accumulation_steps`` micro-batches of at most ``micro_batch`` samples and
    accumulates their gradients before one optimizer step. ``trained_numel`` is the number of
    trained scalar values, ``num_blocks`` the number of blocks of the model the plan is for.

    Raises :class:`ConfigError` naming the field if a value is inconsistent.
    """

    mode: PlanMode
    first_trained_block: int
    trained_parameters: tuple[str, ...]
    micro_batch: int
    predicted: MemoryBreakdown
    budget_bytes: int
    batch_size: int
    trained_numel: int
    num_blocks: int

    def __post_init__(self) -> None:
        if self.mode not in _PLAN_MODES:
            raise ConfigError(f"must be one of {_PLAN_MODES}, got {self.mode!r}", key="mode")
        if not _is_int(self.first_trained_block) or self.first_trained_block < 0:
            raise ConfigError(
                f"must be an int >= 0, got {self.first_trained_block!r}", key="first_trained_block"
            )
        if not _is_int(self.num_blocks) or self.num_blocks < 1:
            raise ConfigError(f"must be an int >= 1, got {self.num_blocks!r}", key="num_blocks")
        if self.first_trained_block >= self.num_blocks:
            raise ConfigError(
                f"must be below num_blocks={self.num_blocks}, got {self.first_trained_block}",
                key="first_trained_block",
            )
        if self.mode == "full" and self.first_trained_block != 0:
            raise ConfigError("must be 0 for a full plan", key="first_trained_block")
        if self.mode == "suffix" and self.first_trained_block < 1:
            raise ConfigError("must be >= 1 for a suffix plan", key="first_trained_block")
        if (
            not isinstance(self.trained_parameters, tuple)
            or not self.trained_parameters
            or not all(isinstance(n, str) for n in self.trained_parameters)
        ):
            raise ConfigError("must be a non-empty tuple of names", key="trained_parameters")
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ConfigError(f"must be an int >= 1, got {self.batch_size!r}", key="batch_size")
        if not _is_int(self.micro_batch) or not 1 <= self.micro_batch <= self.batch_size:
            raise ConfigError(
                f"must be an int in [1, batch_size={self.batch_size}], got {self.micro_batch!r}",
                key="micro_batch",
            )
        if not isinstance(self.predicted, MemoryBreakdown):
            raise ConfigError("must be a MemoryBreakdown", key="predicted")
        if not _is_int(self.budget_bytes) or self.budget_bytes < 0:
            raise ConfigError(f"must be an int >= 0, got {self.budget_bytes!r}", key="budget_bytes")
        if not _is_int(self.trained_numel) or self.trained_numel < 1:
            raise ConfigError(
                f"must be an int >= 1, got {self.trained_numel!r}", key="trained_numel"
            )

    @property
    def accumulation_steps(self) -> int:
        """Micro-batches per optimizer step: ``ceil(batch_size / micro_batch)``."""
        return math.ceil(self.batch_size / self.micro_batch)

    @property
    def fits(self) -> bool:
        """Whether the predicted working set is within the budget."""
        return self.predicted.total <= self.budget_bytes

    def describe(self) -> str:
        """A short human description, e.g. ``"suffix from block 2, micro-batch 8"``."""
        what = {
            "full": "full model",
            "suffix": f"suffix from block {self.first_trained_block}",
            "bias": f"bias-only from block {self.first_trained_block}",
        }[self.mode]
        return f"{what}, micro-batch {self.micro_batch}"

    def trained_blocks(self) -> range:
        """Indices of the blocks that run with autograd: ``first_trained_block`` and after."""
        return range(self.first_trained_block, self.num_blocks)


def planner_optimizer(momentum: float) -> OptimizerName:
    """What the learner's SGD keeps, as the planner names it: a momentum buffer or nothing."""
    return "sgd_momentum" if momentum > 0 else "sgd"


def check_gossip_settings(
    neighbour_replicas: int, codec: str, block_size: int, replica_scope: str = "trained"
) -> None:
    """Check the gossip settings the planner and the measurement size buffers by.

    Raises :class:`ConfigError` naming the argument: ``neighbour_replicas`` not an int >= 0,
    ``codec`` not one of :data:`~swarmfl.core.quant.CODECS`, ``block_size`` not an int >= 1, or
    ``replica_scope`` neither ``"trained"`` nor ``"model"``.
    """
    if replica_scope not in _REPLICA_SCOPES:
        raise ConfigError(
            f"must be one of {_REPLICA_SCOPES}, got {replica_scope!r}", key="replica_scope"
        )
    if not _is_int(neighbour_replicas) or neighbour_replicas < 0:
        raise ConfigError(
            f"must be an int >= 0, got {neighbour_replicas!r}", key="neighbour_replicas"
        )
    if codec not in CODECS:
        raise ConfigError(f"must be one of {CODECS}, got {codec!r}", key="codec")
    if not _is_int(block_size) or block_size < 1:
        raise ConfigError(f"must be an int >= 1, got {block_size!r}", key="block_size")


def codec_buffer_bytes(numels: Sequence[int], codec: str, block_size: int) -> int:
    """Bytes of the encoder's float32 public replica plus its quantized payload buffer.

    ``numels`` are the trained tensors' sizes; blocks of ``block_size`` values (one float32 scale
    each, for int8 and int4) are taken per tensor. Raises :class:`ConfigError` for an unknown
    codec or a bad block size.
    """
    check_gossip_settings(0, codec, block_size)
    replica = sum(numels) * _FLOAT32_BYTES
    if codec == "fp32":
        payload = sum(numels) * _FLOAT32_BYTES
    elif codec == "int8":
        payload = sum(n + _SCALE_BYTES * math.ceil(n / block_size) for n in numels)
    else:
        payload = sum(math.ceil(n / 2) + _SCALE_BYTES * math.ceil(n / block_size) for n in numels)
    return replica + payload


def per_sample_gradient_bytes(trained_values: int, micro_batch: int) -> int:
    """Bytes DP-SGD's per-sample gradients take: ``micro_batch`` float32 copies of the trained
    values (their clipped sum reuses the learner's gradient buffer)."""
    return _FLOAT32_BYTES * trained_values * micro_batch


def plan_table_rows(plans: Sequence[TrainPlan]) -> list[dict[str, object]]:
    """One row per plan for a CLI table.

    Keys: ``mode``, ``trained_blocks`` (the blocks run with autograd, e.g. ``"2-3"``),
    ``trained_params`` (values trained),
    ``micro_batch``, ``accumulation_steps``, the breakdown components in bytes (``weights``,
    ``gradients``, ``optimizer_state``, ``activations``, ``replicas``, ``codec_buffers``),
    ``total`` in bytes, and ``fits`` (``"yes"`` or ``"no"``). Format bytes with
    :func:`~swarmfl.sizes.format_bytes`.
    """
    rows: list[dict[str, object]] = []
    for plan in plans:
        blocks = plan.trained_blocks()
        rows.append(
            {
                "mode": plan.mode,
                "trained_blocks": f"{blocks[0]}-{blocks[-1]}"
                if len(blocks) > 1
                else str(blocks[0]),
                "trained_params": plan.trained_numel,
                "micro_batch": plan.micro_batch,
                "accumulation_steps": plan.accumulation_steps,
                **plan.predicted.as_dict(),
                "fits": "yes" if plan.fits else "no",
            }
        )
    return rows


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
