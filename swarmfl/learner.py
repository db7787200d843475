"""The learner seam: a model, the local data that never leaves the drone, and an optimizer.

:class:`TorchLearner` keeps every parameter of the model as a view into one contiguous float32
buffer, so the gossip layer reads and merges the whole model as a single numpy array with no
copies (``flat_parameters()``), and the optimizer sees the merged values at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from swarmfl.errors import ConfigError


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


@dataclass(frozen=True, slots=True)
class TrainingConfig:
    """Local optimisation settings. Raises :class:`ConfigError` for out-of-range values."""

    lr: float = 0.05
    batch_size: int = 16
    local_epochs: int = 1
    momentum: float = 0.0
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
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


def _contiguous_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged


def flatten_parameters(model: nn.Module) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Re-home every parameter of ``model`` into one contiguous float32 buffer.

    Returns the buffer and the offsets of each parameter (named_parameters order) plus the total.
    The parameters keep their values; afterwards they are views into the buffer.
    """
    params = list(model.parameters())
    offsets = [0]
    for p in params:
        offsets.append(offsets[-1] + p.numel())
    flat = torch.empty(offsets[-1], dtype=torch.float32)
    with torch.no_grad():
        for p, start, stop in zip(params, offsets[:-1], offsets[1:], strict=True):
            flat[start:stop].copy_(p.detach().reshape(-1))
            p.data = flat[start:stop].view_as(p)
    return flat, tuple(offsets)


class TorchLearner:
    """A PyTorch model trained with SGD on a local shard.

    ``flops_per_sample`` is the training cost of one sample (forward + backward), used by the
    simulator to charge virtual time. ``trained_layers`` restricts training (and gossip) to a
    subset of the parameter tensors; the others are frozen.
    """

    def __init__(
        self,
        model: nn.Module,
        x: np.ndarray,
        y: np.ndarray,
        config: TrainingConfig,
        *,
        flops_per_sample: float,
        seed: int,
        trained_layers: tuple[int, ...] | None = None,
    ) -> None:
        if len(x) != len(y):
            raise ConfigError(f"{len(x)} inputs but {len(y)} labels", key="data")
        if len(x) == 0:
            raise ConfigError("a drone needs at least one training sample", key="data")
        self.model = model
        self.config = config
        self.flops_per_sample = float(flops_per_sample)
        self._flat, self._offsets = flatten_parameters(model)
        self._flat_np = self._flat.numpy()
        params = list(model.parameters())
        every = tuple(range(len(params)))
        self._trained = every if trained_layers is None else tuple(sorted(set(trained_layers)))
        for index, p in enumerate(params):
            p.requires_grad_(index in self._trained)
        self._x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self._y = torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))
        self._generator = torch.Generator().manual_seed(seed)
        # Gradients live in one flat buffer too: autograd accumulates into the preassigned
        # ``.grad`` views in place, and the SGD step is one fused op per contiguous trained
        # range instead of torch.optim's per-tensor Python machinery (the step dominated the
        # cost of a small model's round).
        self._grad = torch.zeros_like(self._flat)
        for index in self._trained:
            start, stop = self._offsets[index], self._offsets[index + 1]
            params[index].grad = self._grad[start:stop].view_as(params[index])
        self._ranges = _contiguous_ranges(
            [(self._offsets[i], self._offsets[i + 1]) for i in self._trained]
        )
        self._momentum = torch.zeros_like(self._flat) if config.momentum > 0 else None
        self._momentum_started = False
        self._loss = nn.CrossEntropyLoss()

    @property
    def layer_offsets(self) -> tuple[int, ...]:
        """Offsets of each parameter tensor in the flat vector, plus the total at the end."""
        return self._offsets

    @property
    def trained_layers(self) -> tuple[int, ...]:
        """Indexes of the parameter tensors this learner trains."""
        return self._trained

    @property
    def sample_count(self) -> int:
        """Number of local training samples."""
        return len(self._y)

    def flat_parameters(self) -> np.ndarray:
        """All parameters as one float32 numpy vector aliasing the model."""
        return self._flat_np

    def train_round(self) -> StepResult:
        """``local_epochs`` shuffled passes of minibatch SGD over the local shard."""
        if not self.model.training:  # train() walks every module: skip it when it's a no-op
            self.model.train()
        count = len(self._y)
        batch = self.config.batch_size
        total_loss = 0.0
        steps = 0
        for _ in range(self.config.local_epochs):
            if count <= batch:
                # One batch holds the whole shard: the mean loss, and so the step, does not
                # depend on the order, so skip the shuffle and the gather.
                batches = [(self._x, self._y)]
            else:
                order = torch.randperm(count, generator=self._generator)
                batches = [
                    (self._x[order[s : s + batch]], self._y[order[s : s + batch]])
                    for s in range(0, count, batch)
                ]
            for x, y in batches:
                self._grad.zero_()
                loss = self._loss(self.model(x), y)
                loss.backward()
                self._sgd_step()
                total_loss += loss.item()
                steps += 1
        samples = count * self.config.local_epochs
        return StepResult(samples, samples * self.flops_per_sample, total_loss / max(steps, 1))

    def _sgd_step(self) -> None:
        """torch.optim.SGD's update (weight decay, momentum with dampening 0), on flat ranges.

        The buffers are plain tensors that do not require grad (the parameters are views of
        them), so no ``torch.no_grad()`` context is needed; it would cost more than the update.
        """
        lr, decay = self.config.lr, self.config.weight_decay
        for start, stop in self._ranges:
            weights, grad = self._flat[start:stop], self._grad[start:stop]
            if decay:
                grad.add_(weights, alpha=decay)
            if self._momentum is not None:
                buffer = self._momentum[start:stop]
                if self._momentum_started:
                    buffer.mul_(self.config.momentum).add_(grad)
                else:
                    buffer.copy_(grad)
                grad = buffer
            weights.add_(grad, alpha=-lr)
        self._momentum_started = True

    @torch.no_grad()
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> Evaluation:
        """Accuracy and mean loss of the current model on ``(x, y)``."""
        self.model.eval()
        logits = self.model(torch.as_tensor(x))
        target = torch.as_tensor(y)
        accuracy = float((logits.argmax(dim=1) == target).float().mean())
        return Evaluation(accuracy, float(self._loss(logits, target)))
