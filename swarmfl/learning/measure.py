"""Measuring what training really holds: saved activations, gradients, optimizer and gossip buffers.

:class:`SavedTensorMeter` counts the bytes autograd saves for backward, through
``torch.autograd.graph.saved_tensors_hooks``. :func:`measure_training_step` runs one real
training step of :class:`~swarmfl.learning.learner.TorchLearner` (the code drones train with)
following a plan, with a meter around each micro-batch's forward, and reports its working set
counted as :mod:`~swarmfl.learning.trainplan` says; the planner's prediction must equal it, byte
for byte. :func:`allocate_gossip_buffers` allocates the arrays the gossip layer holds, so that
their bytes are measured rather than computed.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from swarmfl.core.codecs import DEFAULT_CODEC, CodecName
from swarmfl.errors import ConfigError
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.trainplan import (
    OPTIMIZERS,
    MemoryBreakdown,
    OptimizerName,
    ReplicaScope,
    TrainPlan,
    check_gossip_settings,
)

__all__ = ["SavedTensorMeter", "allocate_gossip_buffers", "measure_training_step"]

MEASURED_MOMENTUM = 0.9
"""The momentum :func:`measure_training_step` trains with for ``optimizer="sgd_momentum"``."""


class SavedTensorMeter:
    """Counts the bytes autograd saves for backward, through ``saved_tensors_hooks``.

    Each :meth:`recording` context is one micro-batch's forward. Saved tensors are deduplicated
    by the bytes of storage they cover (a ReLU output saved by the ReLU and again by the next
    layer, or a flattened view of it, counts once); tensors living in a parameter's or buffer's
    storage of ``model`` (looked up when a recording starts, so a learner may re-home the
    parameters after the meter is made) are skipped: they belong to ``weights``. ``peak_bytes``
    is the largest count over the recordings so far, ``last_bytes`` the latest one,
    ``last_saved`` the (storage address, byte offset, byte length) of each tensor the latest
    recording saw.
    """

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self.peak_bytes = 0
        self.last_bytes = 0
        self.recordings = 0
        self.last_saved: list[tuple[int, int, int]] = []

    @contextlib.contextmanager
    def recording(self) -> Iterator[None]:
        """Record what autograd saves inside this context; see the class docstring."""
        model_storages = {
            t.untyped_storage().data_ptr()
            for t in [*self._model.parameters(), *self._model.buffers()]
            if t.numel() > 0
        }
        spans: list[tuple[int, int, int]] = []
        unstrided = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal unstrided
            if tensor.layout != torch.strided:
                # sparse and other layouts have no single storage to dedupe against
                unstrided += tensor.numel() * tensor.element_size()
                return tensor
            span = _storage_span(tensor)
            if span is not None and span[0] not in model_storages:
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


def measure_training_step(
    model: nn.Sequential,
    plan: TrainPlan,
    input_shape: tuple[int, ...],
    *,
    optimizer: OptimizerName = "sgd",
    neighbour_replicas: int = 0,
    codec: CodecName = DEFAULT_CODEC,
    block_size: int = 128,
    replica_scope: ReplicaScope = "trained",
    seed: int = 0,
    lr: float = 0.01,
) -> MemoryBreakdown:
    """Run one real training step of the learner following ``plan`` and measure its working set.

    A :class:`~swarmfl.learning.learner.TorchLearner` is built on a deep copy of ``model`` (the
    caller's weights, flags and buffers are untouched) with ``plan``, SGD at ``lr`` (with
    momentum :data:`MEASURED_MOMENTUM` for ``optimizer="sgd_momentum"``), and one batch of
    ``plan.batch_size`` random inputs of ``input_shape`` and random labels drawn from ``seed``;
    its :meth:`~swarmfl.learning.learner.TorchLearner.train_round` then runs that batch as one
    step, micro-batches and all. Measured: weights (parameter and buffer bytes), gradients (the
    bytes of the storages the parameters' ``.grad`` live in after the step: the learner's
    gradient buffer), optimizer state (the learner's momentum buffer), activations (the peak
    over micro-batches of what a :class:`SavedTensorMeter` around each micro-batch's forward
    saw), replicas and codec buffers (the bytes of the numpy arrays
    :func:`allocate_gossip_buffers` really allocates). The global RNG is left as it was.

    Raises :class:`ConfigError` for an invalid argument, a model that does not return
    ``(N, classes)`` logits (the learner trains classifiers), or a plan that does not match the
    model.
    """
    if optimizer not in OPTIMIZERS:
        raise ConfigError(f"must be one of {OPTIMIZERS}, got {optimizer!r}", key="optimizer")
    check_gossip_settings(neighbour_replicas, codec, block_size, replica_scope)
    work = copy.deepcopy(model)
    for param in work.parameters():
        param.grad = None  # deepcopy carries the caller's gradients along
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((plan.batch_size, *input_shape), generator=generator)
    work.eval()
    with torch.no_grad():
        logits = work(x[:1])
    if logits.dim() != 2:
        raise ConfigError(
            f"the learner trains classifiers: the model must return (N, classes) logits, "
            f"got shape {tuple(logits.shape)}",
            key="model",
        )
    y = torch.randint(0, logits.shape[1], (plan.batch_size,), generator=generator)
    meter = SavedTensorMeter(work)
    config = TrainingConfig(
        lr=lr,
        batch_size=plan.batch_size,
        momentum=MEASURED_MOMENTUM if optimizer == "sgd_momentum" else 0.0,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # dropout draws from the global RNG
        learner = TorchLearner(
            work,
            x.numpy(),
            y.numpy(),
            config,
            flops_per_sample=0.0,
            seed=seed,
            plan=plan,
            meter=meter,
        )
        learner.train_round()  # one batch holds the whole shard: exactly one step

    grad_storages = {
        p.grad.untyped_storage().data_ptr(): p.grad.untyped_storage().nbytes()
        for p in work.parameters()
        if p.grad is not None
    }
    numels = [p.numel() for name, p in work.named_parameters() if name in plan.trained_parameters]
    replicas, codec_buffers = allocate_gossip_buffers(
        numels,
        neighbour_replicas=neighbour_replicas,
        codec=codec,
        block_size=block_size,
        replica_numels=[p.numel() for p in work.parameters()] if replica_scope == "model" else None,
    )
    return MemoryBreakdown(
        weights=sum(_tensor_bytes(p) for p in work.parameters())
        + sum(_tensor_bytes(b) for b in work.buffers()),
        gradients=sum(grad_storages.values()),
        optimizer_state=learner.optimizer_state_bytes,
        activations=meter.peak_bytes,
        replicas=sum(a.nbytes for a in replicas),
        codec_buffers=sum(a.nbytes for a in codec_buffers),
    )


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
    check_gossip_settings(neighbour_replicas, codec, block_size)
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


def _tensor_bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()
