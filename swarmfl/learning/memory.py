"""Partial training within a per-device memory budget (FTTE-like, but per device).

A model is an ``nn.Sequential`` whose children are its *blocks*. A :class:`TrainPlan` says which
parameters a device trains and at which micro-batch size; :meth:`MemoryPlan.choose` picks the most
capable plan whose predicted training working set fits the device's ``budget_bytes``.

What the working set counts (prediction and measurement count exactly the same things):

* ``weights``: every parameter and buffer of the model (the whole model stays resident, since
  the device also runs inference with it).
* ``gradients``: one ``.grad`` per trained parameter.
* ``optimizer_state``: what the torch optimizer keeps per trained parameter (nothing for plain
  SGD, a momentum buffer for SGD with momentum, two moments plus a scalar step for Adam).
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

Activations are not fitted constants: the planner runs the real forward pass of each candidate
(frozen prefix under ``torch.no_grad``, trained part with autograd) at micro-batch 1 and 2 inside
``torch.autograd.graph.saved_tensors_hooks`` and extrapolates linearly: ``slope = A(2) - A(1)``
bytes per sample, ``constant = 2 A(1) - A(2)`` (per-channel statistics and the like). The probe
leaves the model, its buffers and the global RNG as they were.

Plan modes: ``"full"`` trains every parameter; ``"suffix"`` trains every parameter of blocks
``first_trained_block`` and after, the blocks before run under ``torch.no_grad``; ``"bias"``
trains only the parameters named ``bias`` in blocks ``first_trained_block`` and after (the blocks
before are frozen and run without autograd; weights of later blocks are frozen but still carry the
gradient back to the earlier biases).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.models import TRAINING_FLOPS_FACTOR, flops_per_block
from swarmfl.sizes import format_bytes, parse_bytes

__all__ = [
    "BIAS_ONLY_FLOPS_FACTOR",
    "CodecName",
    "MemoryBreakdown",
    "MemoryPlan",
    "OptimizerName",
    "PlanMode",
    "ReplicaScope",
    "SavedTensorMeter",
    "TrainPlan",
    "allocate_gossip_buffers",
    "apply_plan",
    "build_optimizer",
    "format_bytes",
    "measure_training_step",
    "parse_bytes",
    "plan_flops_per_sample",
    "plan_table_rows",
    "train_step_following_plan",
]

PlanMode = Literal["full", "suffix", "bias"]
OptimizerName = Literal["sgd", "sgd_momentum", "adam"]
CodecName = Literal["fp32", "int8", "int4"]
ReplicaScope = Literal["trained", "model"]

_PLAN_MODES: tuple[str, ...] = get_args(PlanMode)
_OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
_CODECS: tuple[str, ...] = get_args(CodecName)
_REPLICA_SCOPES: tuple[str, ...] = get_args(ReplicaScope)

_MIB = 1 << 20
_FLOAT32_BYTES = 4
_SCALE_BYTES = 4  # one float32 scale per quantization block


# ----------------------------------------------------------------------------------------------
# Value objects


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

    def __post_init__(self) -> None:
        for name in _BREAKDOWN_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
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


# ----------------------------------------------------------------------------------------------
# Counting what autograd saves


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward, through ``saved_tensors_hooks``.

    Each :meth:`recording` context is one micro-batch's forward. Saved tensors are deduplicated
    by the bytes of storage they cover (a ReLU output saved by the ReLU and again by the next
    layer, or a flattened view of it, counts once); tensors living in a parameter's or buffer's
    storage are skipped (they belong to ``weights``). ``peak_bytes`` is the largest count over
    the recordings so far, ``last_bytes`` the latest one, ``last_saved`` the (storage address,
    byte offset, byte length) of each tensor the latest recording saw.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model_storages = {
            t.untyped_storage().data_ptr()
            for t in [*model.parameters(), *model.buffers()]
            if t.numel() > 0
        }
        self.peak_bytes = 0
        self.last_bytes = 0
        self.recordings = 0
        self.last_saved: list[tuple[int, int, int]] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record what autograd saves inside this context; see the class docstring."""
        spans: list[tuple[int, int, int]] = []
        unstrided = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal unstrided
            if tensor.layout != torch.strided:
                # sparse and other layouts have no single storage to dedupe against
                unstrided += tensor.numel() * tensor.element_size()
                return tensor
            span = _storage_span(tensor)
            if span is not None and span[0] not in self._model_storages:
                spans.append(span)
            return tensor

        def unpack(tensor: torch.Tensor) -> torch.Tensor:
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield
        # every saved tensor is still alive here (autograd holds it), so no two of them can
        # share an address by reuse: equal addresses really are shared memory
        self.last_saved = spans
        self.last_bytes = _union_bytes(spans) + unstrided
        self.peak_bytes = max(self.peak_bytes, self.last_bytes)
        self.recordings += 1


def _storage_span(tensor: torch.Tensor) -> tuple[int, int, int] | None:
    """(storage address, byte offset, byte length) of the storage a strided tensor covers."""
    if tensor.numel() == 0:
        return None
    size = tensor.element_size()
    if tensor.is_contiguous():
        length = tensor.numel() * size
    else:
        extent = 1 + sum(
            (n - 1) * abs(s) for n, s in zip(tensor.shape, tensor.stride(), strict=True)
        )
        length = extent * size
    return tensor.untyped_storage().data_ptr(), int(tensor.storage_offset()) * size, int(length)


def _union_bytes(spans: Sequence[tuple[int, int, int]]) -> int:
    """Bytes covered by the union of the byte ranges, per storage."""
    by_storage: dict[int, list[tuple[int, int]]] = {}
    for address, offset, length in spans:
        by_storage.setdefault(address, []).append((offset, offset + length))
    total = 0
    for ranges in by_storage.values():
        ranges.sort()
        start, end = ranges[0]
        for lo, hi in ranges[1:]:
            if lo > end:
                total += end - start
                start, end = lo, hi
            else:
                end = max(end, hi)
        total += end - start
    return total


# ----------------------------------------------------------------------------------------------
# Applying a plan and training with it


def _blocks(model: nn.Module) -> list[nn.Module]:
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        raise ConfigError("the model must be a non-empty nn.Sequential of blocks", key="model")
    return list(model)


def apply_plan(model: nn.Sequential, plan: TrainPlan) -> list[nn.Parameter]:
    """Set ``requires_grad`` as the plan says and return the trained parameters.

    The parameters come in ``model.named_parameters()`` order, ready for an optimizer.
    Raises :class:`ConfigError` if the model has another number of blocks than the plan or
    lacks a parameter the plan names.
    """
    blocks = _blocks(model)
    if len(blocks) != plan.num_blocks:
        raise ConfigError(
            f"the plan is for a model of {plan.num_blocks} blocks, this one has {len(blocks)}",
            key="num_blocks",
        )
    named = dict(model.named_parameters())
    missing = [name for name in plan.trained_parameters if name not in named]
    if missing:
        raise ConfigError(
            f"the plan trains parameters the model does not have: {missing[:5]}",
            key="trained_parameters",
        )
    wanted = set(plan.trained_parameters)
    trained: list[nn.Parameter] = []
    for name, param in named.items():
        param.requires_grad_(name in wanted)
        if name in wanted:
            trained.append(param)
    return trained


def build_optimizer(
    kind: OptimizerName, params: Sequence[nn.Parameter], *, lr: float, momentum: float = 0.9
) -> torch.optim.Optimizer:
    """The torch optimizer the planner predicts for: SGD, SGD with momentum, or Adam.

    Raises :class:`ConfigError` for an unknown ``kind`` or a non-positive ``lr``.
    """
    if kind not in _OPTIMIZERS:
        raise ConfigError(f"must be one of {_OPTIMIZERS}, got {kind!r}", key="optimizer")
    if not lr > 0:
        raise ConfigError(f"must be > 0, got {lr!r}", key="lr")
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr)
    if kind == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    return torch.optim.Adam(params, lr=lr)


def _forward_following_plan(
    blocks: Sequence[nn.Module],
    first_trained_block: int,
    x: torch.Tensor,
    meter: SavedTensorMeter | None,
) -> torch.Tensor:
    """Frozen prefix without autograd, then the trained part with autograd (metered)."""
    hidden = x
    if first_trained_block > 0:
        with torch.no_grad():
            for block in blocks[:first_trained_block]:
                hidden = block(hidden)
        hidden = hidden.detach()
    recording = meter.recording() if meter is not None else contextlib.nullcontext()
    with recording:
        for block in blocks[first_trained_block:]:
            hidden = block(hidden)
    return hidden


def train_step_following_plan(
    model: nn.Sequential,
    plan: TrainPlan,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    meter: SavedTensorMeter | None = None,
) -> float:
    """One optimizer step over the batch ``(x, y)``, the way the plan says.

    Call :func:`apply_plan` first and build ``optimizer`` over the parameters it returns. The
    frozen prefix runs under ``torch.no_grad``; the batch is split into micro-batches of at most
    ``plan.micro_batch`` samples whose gradients accumulate (each loss scaled by its share of the
    batch, so ``loss_fn`` must return the mean over its micro-batch) before one
    ``optimizer.step()``. ``meter``, if given, records each micro-batch's saved tensors.
    Returns the mean loss over the batch.

    Raises :class:`ConfigError` if the model's ``requires_grad`` flags do not match the plan or
    the batch is empty or ``x`` and ``y`` differ in length.
    """
    blocks = _blocks(model)
    wanted = set(plan.trained_parameters)
    for name, param in model.named_parameters():
        if param.requires_grad != (name in wanted):
            raise ConfigError(
                f"parameter {name!r} has requires_grad={param.requires_grad} but the plan "
                "says otherwise; call apply_plan(model, plan) first",
                key="plan",
            )
    batch = int(x.shape[0])
    if batch == 0 or int(y.shape[0]) != batch:
        raise ConfigError(
            f"x and y must hold the same non-zero number of samples, got {batch} and "
            f"{int(y.shape[0])}",
            key="batch",
        )
    optimizer.zero_grad(set_to_none=True)
    loss_sum = 0.0
    for start in range(0, batch, plan.micro_batch):
        xb = x[start : start + plan.micro_batch]
        yb = y[start : start + plan.micro_batch]
        output = _forward_following_plan(blocks, plan.first_trained_block, xb, meter)
        loss = loss_fn(output, yb)
        share = xb.shape[0] / batch
        (loss * share).backward()
        loss_sum += float(loss.detach()) * share
    optimizer.step()
    return loss_sum


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


# ----------------------------------------------------------------------------------------------
# Prediction


def _param_bytes(param: torch.Tensor) -> int:
    return param.numel() * param.element_size()


def _codec_buffer_bytes(numels: Sequence[int], codec: CodecName, block_size: int) -> int:
    """Encoder replica (float32) plus quantized payload (with per-block scales)."""
    replica = sum(numels) * _FLOAT32_BYTES
    if codec == "fp32":
        payload = sum(numels) * _FLOAT32_BYTES
    elif codec == "int8":
        payload = sum(n + _SCALE_BYTES * math.ceil(n / block_size) for n in numels)
    else:
        payload = sum(math.ceil(n / 2) + _SCALE_BYTES * math.ceil(n / block_size) for n in numels)
    return replica + payload


def allocate_gossip_buffers(
    numels: Sequence[int],
    *,
    neighbour_replicas: int,
    codec: CodecName,
    block_size: int,
    replica_numels: Sequence[int] | None = None,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Allocate the arrays the gossip layer holds for trained tensors of the given sizes.

    Returns ``(replicas, codec_buffers)``: one float32 array per neighbour replica per tensor of
    ``replica_numels`` (default: ``numels``, the trained tensors); and per trained tensor the
    encoder's float32 public replica and the quantized payload (float32 for ``fp32``; int8
    values plus float32 scales per block for ``int8``; two int4 values packed per uint8 plus
    float32 scales for ``int4``). Raises :class:`ConfigError` for a bad argument.
    """
    _check_gossip_args(neighbour_replicas, codec, block_size)
    held = numels if replica_numels is None else replica_numels
    replicas = [np.zeros(n, dtype=np.float32) for _ in range(neighbour_replicas) for n in held]
    codec_buffers: list[np.ndarray] = []
    for n in numels:
        codec_buffers.append(np.zeros(n, dtype=np.float32))
        if codec == "fp32":
            codec_buffers.append(np.zeros(n, dtype=np.float32))
            continue
        values = n if codec == "int8" else math.ceil(n / 2)
        codec_buffers.append(np.zeros(values, dtype=np.int8 if codec == "int8" else np.uint8))
        codec_buffers.append(np.zeros(math.ceil(n / block_size), dtype=np.float32))
    return replicas, codec_buffers


def _check_gossip_args(
    neighbour_replicas: int, codec: str, block_size: int, replica_scope: str = "trained"
) -> None:
    if replica_scope not in _REPLICA_SCOPES:
        raise ConfigError(
            f"must be one of {_REPLICA_SCOPES}, got {replica_scope!r}", key="replica_scope"
        )
    if not _is_int(neighbour_replicas) or neighbour_replicas < 0:
        raise ConfigError(
            f"must be an int >= 0, got {neighbour_replicas!r}", key="neighbour_replicas"
        )
    if codec not in _CODECS:
        raise ConfigError(f"must be one of {_CODECS}, got {codec!r}", key="codec")
    if not _is_int(block_size) or block_size < 1:
        raise ConfigError(f"must be an int >= 1, got {block_size!r}", key="block_size")


def _optimizer_state_bytes(kind: OptimizerName, trained: Sequence[torch.Tensor]) -> int:
    """What torch's optimizers keep per parameter (see torch.optim.SGD / Adam)."""
    if kind == "sgd":
        return 0
    if kind == "sgd_momentum":
        return sum(_param_bytes(p) for p in trained)
    # Adam: exp_avg and exp_avg_sq like the parameter, plus a 0-d "step" tensor whose dtype
    # torch takes from the default dtype (float64 only when that is float64)
    step_dtype = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    step_bytes = torch.empty((), dtype=step_dtype).element_size()
    return sum(2 * _param_bytes(p) + step_bytes for p in trained)


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
    blocks: Sequence[nn.Module],
    first_trained_block: int,
    trained_names: frozenset[str],
    input_shape: tuple[int, ...],
) -> _ActivationLine:
    """Run the plan's forward at micro-batch 1 and 2 and fit the line through the two counts."""
    first = next(iter(model.parameters()))
    dtype = first.dtype if first.dtype.is_floating_point else torch.get_default_dtype()
    generator = torch.Generator(device=first.device).manual_seed(0)
    counts: list[int] = []
    for micro_batch in (1, 2):
        for name, param in model.named_parameters():
            param.requires_grad_(name in trained_names)
        meter = SavedTensorMeter(model)
        x = torch.randn(
            (micro_batch, *input_shape), generator=generator, dtype=dtype, device=first.device
        )
        output = _forward_following_plan(blocks, first_trained_block, x, meter)
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


def _subject_sets(
    model: nn.Sequential, n_blocks: int
) -> list[tuple[PlanMode, int, tuple[str, ...]]]:
    """(mode, first trained block, trained names) in order of preference, without repeats."""
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
        codec: CodecName = "int8",
        block_size: int = 128,
        replica_scope: ReplicaScope = "trained",
    ) -> list[TrainPlan]:
        """Every candidate plan with its predicted working set, in order of preference.

        ``input_shape`` is one sample's shape (without the batch dimension). The model is
        probed with a few real forward passes at micro-batch 1 and 2; its parameters, buffers,
        flags and the global RNG are left as they were.
        Raises :class:`ConfigError` naming the argument if one is invalid.
        """
        blocks = _blocks(model)
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
        if optimizer not in _OPTIMIZERS:
            raise ConfigError(f"must be one of {_OPTIMIZERS}, got {optimizer!r}", key="optimizer")
        _check_gossip_args(neighbour_replicas, codec, block_size, replica_scope)

        params = dict(model.named_parameters())
        model_numel = sum(p.numel() for p in params.values())
        weights = sum(_param_bytes(p) for p in params.values()) + sum(
            _param_bytes(b) for b in model.buffers()
        )
        plans: list[TrainPlan] = []
        with _model_state_preserved(model):
            model.train()
            for mode, first_block, names in _subject_sets(model, len(blocks)):
                line = _probe_activations(model, blocks, first_block, frozenset(names), input_shape)
                trained = [params[n] for n in names]
                numels = [p.numel() for p in trained]
                fixed = {
                    "weights": weights,
                    "gradients": sum(_param_bytes(p) for p in trained),
                    "optimizer_state": _optimizer_state_bytes(optimizer, trained),
                    "replicas": neighbour_replicas
                    * (model_numel if replica_scope == "model" else sum(numels))
                    * _FLOAT32_BYTES,
                    "codec_buffers": _codec_buffer_bytes(numels, codec, block_size),
                }
                for micro_batch in _micro_batches(batch_size):
                    plans.append(
                        TrainPlan(
                            mode=mode,
                            first_trained_block=first_block,
                            trained_parameters=names,
                            micro_batch=micro_batch,
                            predicted=MemoryBreakdown(activations=line.at(micro_batch), **fixed),
                            budget_bytes=budget_bytes,
                            batch_size=batch_size,
                            trained_numel=sum(numels),
                            num_blocks=len(blocks),
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
        *,
        optimizer: OptimizerName = "sgd",
        neighbour_replicas: int = 0,
        codec: CodecName = "int8",
        block_size: int = 128,
        replica_scope: ReplicaScope = "trained",
    ) -> TrainPlan:
        """The most capable plan whose predicted working set fits ``budget_bytes``.

        Most capable: trains the most values; ties go to the larger micro-batch, then to the
        earlier candidate (see :meth:`candidates`).
        Raises :class:`PlanError` (stating the smallest feasible budget in bytes and MiB) if no
        plan fits, and :class:`ConfigError` for an invalid argument.
        """
        plans = cls.candidates(
            model,
            input_shape,
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
                f"budget {_mib(budget_bytes)} ({budget_bytes} bytes) is below the smallest "
                f"feasible plan ({smallest.describe()}) which needs {_mib(need)} ({need} bytes)"
            )
        # max() keeps the first of equals, which is the earlier (preferred) candidate
        return max(fitting, key=lambda plan: (plan.trained_numel, plan.micro_batch))


# ----------------------------------------------------------------------------------------------
# Measurement


def _default_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if output.dim() == 2 and output.shape[1] > 1:
        return nn.functional.cross_entropy(output, target)
    return nn.functional.mse_loss(output, target)


def measure_training_step(
    model: nn.Sequential,
    plan: TrainPlan,
    input_shape: tuple[int, ...],
    batch_size: int,
    *,
    optimizer: OptimizerName = "sgd",
    neighbour_replicas: int = 0,
    codec: CodecName = "int8",
    block_size: int = 128,
    replica_scope: ReplicaScope = "trained",
    seed: int = 0,
    lr: float = 0.01,
) -> MemoryBreakdown:
    """Really run one training step following ``plan`` and measure its working set.

    The step runs on a deep copy of ``model`` (so the caller's weights, flags and buffers are
    untouched) with random inputs from ``seed``, the real torch optimizer and
    :func:`train_step_following_plan`; the loss is cross-entropy against random labels for
    ``(N, C)`` outputs, mean squared error against random targets otherwise. Measured: weights
    (parameter and buffer bytes), gradients (``p.grad`` bytes after backward), optimizer state
    (tensor bytes in ``optimizer.state`` after the step), activations (the peak over
    micro-batches of what :class:`SavedTensorMeter` saw), replicas and codec buffers (the bytes
    of the numpy arrays :func:`allocate_gossip_buffers` really allocates). The global RNG is
    left as it was. Raises :class:`ConfigError` for an invalid argument or a plan that does not
    match the model.
    """
    if not _is_int(batch_size) or batch_size < 1:
        raise ConfigError(f"must be an int >= 1, got {batch_size!r}", key="batch_size")
    _check_gossip_args(neighbour_replicas, codec, block_size, replica_scope)
    work = copy.deepcopy(model)
    work.train()
    for param in work.parameters():
        param.grad = None  # deepcopy carries the caller's gradients along
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        trained = apply_plan(work, plan)
        torch_optimizer = build_optimizer(optimizer, trained, lr=lr)
        first = trained[0]
        dtype = first.dtype if first.dtype.is_floating_point else torch.get_default_dtype()
        x = torch.randn((batch_size, *input_shape), dtype=dtype, device=first.device)
        with torch.no_grad():
            probe = work(x[:1])
        if probe.dim() == 2 and probe.shape[1] > 1:
            y = torch.randint(0, probe.shape[1], (batch_size,), device=first.device)
        else:
            y = torch.randn((batch_size, *probe.shape[1:]), dtype=probe.dtype, device=first.device)
        del probe
        meter = SavedTensorMeter(work)
        train_step_following_plan(work, plan, torch_optimizer, x, y, _default_loss, meter=meter)

    gradients = sum(_param_bytes(p.grad) for p in work.parameters() if p.grad is not None)
    optimizer_state = sum(
        _param_bytes(value)
        for state in torch_optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor)
    )
    numels = [p.numel() for p in trained]
    replicas, codec_buffers = allocate_gossip_buffers(
        numels,
        neighbour_replicas=neighbour_replicas,
        codec=codec,
        block_size=block_size,
        replica_numels=[p.numel() for p in work.parameters()] if replica_scope == "model" else None,
    )
    return MemoryBreakdown(
        weights=sum(_param_bytes(p) for p in work.parameters())
        + sum(_param_bytes(b) for b in work.buffers()),
        gradients=gradients,
        optimizer_state=optimizer_state,
        activations=meter.peak_bytes,
        replicas=sum(a.nbytes for a in replicas),
        codec_buffers=sum(a.nbytes for a in codec_buffers),
    )


# ----------------------------------------------------------------------------------------------
# Tables


def _mib(n: int) -> str:
    mib = n / _MIB
    return f"{mib:.1f} MiB" if mib >= 1 else f"{mib:.3g} MiB"


def plan_table_rows(plans: Sequence[TrainPlan]) -> list[dict[str, object]]:
    """One row per plan for a CLI table.

    Keys: ``mode``, ``trained_blocks`` (the blocks run with autograd, e.g. ``"2-3"``),
    ``trained_params`` (values trained),
    ``micro_batch``, ``accumulation_steps``, the breakdown components in bytes (``weights``,
    ``gradients``, ``optimizer_state``, ``activations``, ``replicas``, ``codec_buffers``),
    ``total`` in bytes, and ``fits`` (``"yes"`` or ``"no"``). Format bytes with
    :func:`format_bytes`.
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
