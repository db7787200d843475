"""What both learners share: a flat parameter vector, the trained tensors, and the local round.

:class:`FlatLearner` is the base of :class:`~swarmfl.learning.learner.TorchLearner` and
:class:`~swarmfl.learning.lean.LeanLearner`. It owns the parts that do not depend on how a
gradient is computed: which parameter tensors are trained, the SGD step over them
(:class:`~swarmfl.learning.sgd.FlatSGD`, with its momentum state), and the loop of a local round
(epochs of shuffled batches, one step per batch). A subclass supplies how an epoch is shuffled
and how one batch's gradient is computed. Torch-free: the lean learner builds on it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from swarmfl.errors import ConfigError
from swarmfl.learning.seam import Evaluation, PlanFields, StepResult, TrainingConfig
from swarmfl.learning.sgd import FlatSGD, scheduled_lr

if TYPE_CHECKING:
    from swarmfl.learning.privacy import PrivacyLedger

__all__ = ["FlatLearner", "check_training_data"]


def check_training_data(
    samples: int, labels: int, plan: PlanFields | None, trained_layers: Sequence[int] | None
) -> None:
    """Refuse what no learner can train on: mismatched or empty data, or both ways of saying
    what is trained. Raises :class:`ConfigError` naming ``data`` or ``trained_layers``."""
    if samples != labels:
        raise ConfigError(f"{samples} inputs but {labels} labels", key="data")
    if samples == 0:
        raise ConfigError("a drone needs at least one training sample", key="data")
    if plan is not None and trained_layers is not None:
        raise ConfigError("give trained_layers or a plan, not both", key="trained_layers")


class FlatLearner(ABC):
    """A learner whose parameters live in one flat float32 vector, trained by :class:`FlatSGD`.

    Subclasses set ``config``, ``flops_per_sample``, ``_offsets`` (each parameter tensor's offset
    in the flat vector, plus the total), ``_trained`` (the trained tensors' indexes), ``_plan``,
    ``_sgd`` and the local shard ``_x``/``_y`` (numpy arrays or tensors), and implement
    :meth:`_as_labels`, :meth:`_permutation` and :meth:`_batch_loss`.
    """

    #: local rounds trained so far: the round count the learning-rate schedule follows
    rounds_trained: int = 0
    #: DP-SGD's privacy ledger (None: no DP; only the torch learner offers DP-SGD)
    privacy: PrivacyLedger | None = None

    @property
    def epsilon(self) -> float | None:
        """The privacy this drone spent so far under DP-SGD (None without DP)."""
        return None if self.privacy is None else self.privacy.epsilon()

    @property
    @abstractmethod
    def labels(self) -> np.ndarray:
        """The local training labels (a copy)."""

    def replace_labels(self, y: np.ndarray) -> None:
        """Train on ``y`` from now on (a simulated label-poisoning insider).

        Raises :class:`ConfigError` unless ``y`` holds one label per local sample, and what
        :meth:`_as_labels` raises.
        """
        if len(y) != len(self._y):
            raise ConfigError(f"{len(y)} labels for {len(self._y)} samples", key="data")
        self._y = self._as_labels(y)

    @abstractmethod
    def _as_labels(self, y: np.ndarray) -> Any:
        """``y`` as this learner keeps its training labels (raises :class:`ConfigError` for
        labels it cannot train on)."""

    config: TrainingConfig
    flops_per_sample: float
    _offsets: tuple[int, ...]
    _trained: tuple[int, ...]
    _plan: PlanFields | None
    _sgd: FlatSGD
    _x: Any
    _y: Any
    _micro_batch: int

    @property
    def layer_offsets(self) -> tuple[int, ...]:
        """Offsets of each parameter tensor in the flat vector, plus the total at the end."""
        return self._offsets

    @property
    def trained_layers(self) -> tuple[int, ...]:
        """Indexes of the parameter tensors this learner trains."""
        return self._trained

    @property
    def plan(self) -> PlanFields | None:
        """The memory plan this learner follows (None: every parameter, whole batches)."""
        return self._plan

    @property
    def sample_count(self) -> int:
        """Number of local training samples."""
        return len(self._y)

    @abstractmethod
    def flat_parameters(self) -> np.ndarray:
        """All parameters as one float32 vector: the live weights, not a copy."""

    def train_round(self) -> StepResult:
        """``local_epochs`` shuffled passes of minibatch SGD over the local shard.

        A batch larger than the plan's micro-batch runs as micro-batches whose gradients
        accumulate (each loss scaled by its share of the batch) before one step: the same
        update as the whole batch at once, up to float rounding.
        """
        self._start_round()
        self._sgd.start_round(self.rounds_trained)
        count = self.sample_count
        batch = self.config.batch_size
        total_loss = 0.0
        steps = 0
        for _ in range(self.config.local_epochs):
            for x, y in self._epoch_batches(count, batch):
                total_loss += self._batch_loss(x, y)
                self._sgd.step()
                steps += 1
        self.rounds_trained += 1
        samples = count * self.config.local_epochs
        return StepResult(samples, samples * self.flops_per_sample, total_loss / max(steps, 1))

    @property
    def current_lr(self) -> float:
        """The learning rate of the next local round (``lr`` unless a schedule decays it)."""
        return scheduled_lr(self.config, self.rounds_trained)

    def _start_round(self) -> None:  # noqa: B027 (a hook: most learners need nothing here)
        """Called before each round (the torch learner puts its model in training mode)."""

    def _epoch_batches(self, count: int, batch: int) -> list[tuple[Any, Any]]:
        """One epoch's ``(inputs, labels)`` batches, shuffled (in order when one batch holds
        the whole shard: the mean loss, and so the step, does not depend on the order)."""
        if count <= batch:
            return [(self._x, self._y)]
        order = self._permutation(count)
        return [
            (self._x[order[s : s + batch]], self._y[order[s : s + batch]])
            for s in range(0, count, batch)
        ]

    @abstractmethod
    def _permutation(self, count: int) -> Any:
        """``range(count)`` shuffled by the learner's seeded generator, as ``_x`` is indexed."""

    def _micro_batches(self, x: Any, y: Any) -> Iterator[tuple[Any, Any, float]]:
        """A batch in slices of at most ``_micro_batch`` samples, in order, each with its share
        of the batch (the weight of its mean loss in the batch's mean loss)."""
        count = len(y)
        for start in range(0, count, self._micro_batch):
            yb = y[start : start + self._micro_batch]
            yield x[start : start + self._micro_batch], yb, len(yb) / count

    @abstractmethod
    def _batch_loss(self, x: Any, y: Any) -> float:
        """Write the gradient of the batch's mean loss into ``_sgd.gradient``; return the loss."""

    @abstractmethod
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> Evaluation:
        """Accuracy and mean loss of the current model on ``(x, y)``; NaN for an empty set."""

    def momentum_state(self) -> np.ndarray | None:
        """A copy of the SGD momentum buffer (the trained values, flat), for a checkpoint.

        None without momentum, or before the first step (there is no buffer yet).
        """
        return self._sgd.momentum_state()

    def load_momentum_state(self, buffer: np.ndarray) -> None:
        """Restore a momentum buffer saved by :meth:`momentum_state`.

        Raises :class:`ConfigError` if this learner has no momentum or ``buffer`` is not one
        float32 value per trained value.
        """
        self._sgd.load_momentum_state(buffer)

    @property
    def optimizer_state_bytes(self) -> int:
        """Bytes the optimizer keeps between steps: the momentum buffer, 0 for plain SGD."""
        momentum = self._sgd.momentum
        return 0 if momentum is None else momentum.nbytes

    def reset_optimizer_state(self) -> None:
        """Forget the momentum: the next step starts it afresh, as a new torch.optim.SGD would.

        For a drone that lost its RAM and came back from a checkpoint of its weights only.
        """
        self._sgd.reset()
