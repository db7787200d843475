"""torch.optim.SGD's update on a flat float32 parameter vector, in numpy, for both learners.

:class:`FlatSGD` owns the gradient buffer and the momentum buffer of the values a learner trains
(back to back, in parameter order, nothing for frozen values) and applies torch.optim.SGD's step
to them: weight decay added to the gradient, momentum with dampening 0 and no Nesterov, the
momentum buffer started from the first step's gradient. ``TorchLearner`` (through numpy views of
its torch buffers) and ``LeanLearner`` step through the same code, so a torch drone and a lean
drone given the same gradient take the same step.

The step runs over chunks of at most :data:`STEP_CHUNK` values with one small scratch buffer:
no temporary array the size of the model is allocated, whatever the model's size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from swarmfl.errors import ConfigError
from swarmfl.learning.seam import TrainingConfig

__all__ = ["STEP_CHUNK", "FlatSGD", "scheduled_lr"]

STEP_CHUNK = 1 << 16
"""Values updated per pass of the step (its scratch buffer holds this many float32)."""


def scheduled_lr(config: TrainingConfig, round_index: int) -> float:
    """The learning rate of local round ``round_index`` (0: the first) under ``config``'s schedule.

    ``"constant"``: ``lr``. ``"cosine"``: ``lr_final + (lr - lr_final) * (1 + cos(pi * t)) / 2``
    with ``t = min(round_index, lr_rounds) / lr_rounds``. ``"exponential"``:
    ``lr * (lr_final / lr) ** t``. Both reach ``lr_final`` at round ``lr_rounds`` and stay there.
    """
    if config.lr_schedule == "constant":
        return config.lr
    t = min(max(round_index, 0), config.lr_rounds) / config.lr_rounds
    if config.lr_schedule == "cosine":
        return config.lr_final + (config.lr - config.lr_final) * (1.0 + math.cos(math.pi * t)) / 2
    return config.lr * (config.lr_final / config.lr) ** t


class FlatSGD:
    """SGD with momentum and weight decay over the trained ranges of ``flat``.

    ``trained`` lists the ``(start, stop)`` ranges of ``flat`` that are trained, in parameter
    order. ``gradient`` is the flat gradient of those values (the learner writes it before each
    :meth:`step`), ``momentum`` the matching buffer (None without momentum).
    """

    def __init__(
        self, flat: np.ndarray, trained: Sequence[tuple[int, int]], config: TrainingConfig
    ) -> None:
        numel = sum(stop - start for start, stop in trained)
        self.config = config
        self.gradient = np.zeros(numel, dtype=np.float32)
        self.momentum = np.zeros(numel, dtype=np.float32) if config.momentum > 0 else None
        self._started = False
        self._lr = np.float32(config.lr)
        self._scratch = np.empty(min(numel, STEP_CHUNK), dtype=np.float32)
        # (weights, gradient, momentum) views per chunk of each contiguous trained range
        self._chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        position = 0
        for start, stop in _contiguous_ranges(trained):
            for low in range(start, stop, STEP_CHUNK):
                high = min(low + STEP_CHUNK, stop)
                end = position + high - low
                buffer = self.momentum[position:end] if self.momentum is not None else None
                self._chunks.append((flat[low:high], self.gradient[position:end], buffer))
                position = end

    @property
    def lr(self) -> float:
        """The learning rate the next :meth:`step` uses."""
        return float(self._lr)

    def start_round(self, round_index: int) -> None:
        """Take the learning rate of local round ``round_index`` from the schedule."""
        self._lr = np.float32(scheduled_lr(self.config, round_index))

    def step(self) -> None:
        """One update from ``gradient``; ``gradient`` holds the decayed gradient afterwards."""
        lr = self._lr
        decay = np.float32(self.config.weight_decay)
        momentum = np.float32(self.config.momentum)
        for weights, grad, buffer in self._chunks:
            scratch = self._scratch[: len(weights)]
            if decay:
                grad += np.multiply(weights, decay, out=scratch)
            step = grad
            if buffer is not None:
                if self._started:
                    buffer *= momentum
                    buffer += grad
                else:
                    buffer[:] = grad
                step = buffer
            weights -= np.multiply(step, lr, out=scratch)
        self._started = True

    def momentum_state(self) -> np.ndarray | None:
        """A copy of the momentum buffer; None without momentum or before the first step."""
        if self.momentum is None or not self._started:
            return None
        return self.momentum.copy()

    def load_momentum_state(self, buffer: np.ndarray) -> None:
        """Restore a buffer saved by :meth:`momentum_state`; the next step continues from it.

        Raises:
            ConfigError: there is no momentum, or ``buffer`` is not one float32 value per
                trained value (key ``momentum``).
        """
        if self.momentum is None:
            raise ConfigError("this learner trains without momentum", key="momentum")
        if buffer.dtype != np.float32 or buffer.shape != self.momentum.shape:
            raise ConfigError(
                f"expected {self.momentum.size} float32 values, got {buffer.dtype} {buffer.shape}",
                key="momentum",
            )
        self.momentum[:] = buffer
        self._started = True

    def reset(self) -> None:
        """Forget the momentum: the next step starts it afresh, as a new torch.optim.SGD would."""
        self._started = False


def _contiguous_ranges(ranges: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """``(start, stop)`` ranges sorted, with touching ranges joined into one."""
    merged: list[tuple[int, int]] = []
    for start, stop in sorted(ranges):
        if merged and merged[-1][1] == start:
            merged[-1] = (merged[-1][0], stop)
        else:
            merged.append((start, stop))
    return merged
