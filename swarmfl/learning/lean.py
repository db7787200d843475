"""A learner without torch: the models swarmfl ships, trained in numpy.

:class:`LeanLearner` implements the learner seam (:class:`~swarmfl.learning.seam.Learner`) the way
:class:`~swarmfl.learning.learner.TorchLearner` does, for the models a
:class:`~swarmfl.learning.spec.ModelSpec` describes: the same flat float32 parameter vector (same
names, shapes and offsets, aliased by :meth:`~LeanLearner.flat_parameters`), the same
torch.optim.SGD update (one implementation for both: :class:`~swarmfl.learning.sgd.FlatSGD`), and
the same partial-training plans. So a lean drone and a torch drone can gossip in one swarm.

It exists for drones whose memory cannot hold torch: importing this module imports numpy and
swarmfl's torch-free modules only. Everything is float32; gradient and momentum buffers cover the
trained values only, back to back in parameter order; layers before the first trained parameter
run forward only and keep nothing for backward (see :mod:`~swarmfl.learning.lean_layers`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from swarmfl.errors import ConfigError
from swarmfl.learning.flatlearner import FlatLearner, check_training_data
from swarmfl.learning.lean_layers import NumpyLayer, Saved, make_layer, softmax_cross_entropy
from swarmfl.learning.seam import (
    Evaluation,
    Learner,
    PlanFields,
    TrainingConfig,
    plan_parameter_indexes,
)
from swarmfl.learning.sgd import FlatSGD
from swarmfl.learning.spec import ModelSpec, initial_parameters

__all__ = ["EVALUATION_CHUNK", "LeanLearner"]

EVALUATION_CHUNK = 256
"""Samples per forward pass in :meth:`LeanLearner.evaluate` (bounds its activation memory)."""


class LeanLearner(FlatLearner):
    """A model described by a :class:`ModelSpec`, trained with SGD in numpy on a local shard.

    ``parameters`` is the flat float32 starting vector (``spec.layer_offsets`` layout); the
    learner trains that very array in place, with no copy (None: fresh weights from
    :func:`~swarmfl.learning.spec.initial_parameters` with ``spec.seed``). ``flops_per_sample``
    is the training cost of one sample, charged by the simulator. ``seed`` seeds the numpy
    generator that shuffles the shard each epoch (its order is not torch's).

    What is trained is, as for ``TorchLearner``: every parameter (the default), the parameter
    tensors listed in ``trained_layers`` (indexes in ``named_parameters()`` order), or what
    ``plan`` says (a ``TrainPlan``, or anything with its fields: see
    :class:`~swarmfl.learning.seam.PlanFields`): its trained parameters, blocks before
    ``plan.first_trained_block`` frozen, and batches split into micro-batches of at most
    ``plan.micro_batch`` samples whose gradients accumulate before one step.

    Raises:
        ConfigError: mismatched or empty data (key ``data``), labels outside the model's
            classes, a ``parameters`` vector of the wrong dtype, shape or layout (key
            ``parameters``), both ``trained_layers`` and ``plan``, an empty or out-of-range
            ``trained_layers``, or a plan for another model or batch size, or one that trains a
            parameter of a block it freezes (key ``plan``).
    """

    def __init__(
        self,
        spec: ModelSpec,
        x: np.ndarray,
        y: np.ndarray,
        config: TrainingConfig,
        *,
        flops_per_sample: float,
        seed: int,
        trained_layers: tuple[int, ...] | None = None,
        plan: PlanFields | None = None,
        parameters: np.ndarray | None = None,
    ) -> None:
        check_training_data(len(x), len(y), plan, trained_layers)
        self.spec = spec
        self.config = config
        self.flops_per_sample = float(flops_per_sample)
        self._plan = plan
        self._offsets = spec.layer_offsets
        self._x = _samples(x, spec, "data")
        self._y = self._as_labels(y)
        self._flat = _own_parameters(spec, parameters)
        self._trained = _trained_indexes(spec, config, trained_layers, plan)
        self._generator = np.random.default_rng(seed & ((1 << 64) - 1))
        self._micro_batch = plan.micro_batch if plan is not None else config.batch_size

        trained_specs = [spec.parameters[i] for i in self._trained]
        self._sgd = FlatSGD(self._flat, [(p.offset, p.stop) for p in trained_specs], config)
        gradients: dict[str, np.ndarray] = {}
        position = 0
        for param in trained_specs:
            gradients[param.name] = self._sgd.gradient[position : position + param.numel]
            position += param.numel

        flatten_at = next(
            (i for i, layer in enumerate(spec.layers) if layer.kind == "flatten"), len(spec.layers)
        )
        self._channel_major = spec.kind == "cnn"
        self._layers: list[NumpyLayer] = [
            make_layer(layer, self._flat, gradients, self._channel_major and i <= flatten_at)
            for i, layer in enumerate(spec.layers)
        ]
        # Layers before the first one holding a trained parameter need no gradient: they run
        # forward only and keep nothing (the plan's frozen prefix, and more in bias-only plans).
        trained_names = set(gradients)
        self._first_graded = min(
            i
            for i, layer in enumerate(spec.layers)
            if any(p.name in trained_names for p in layer.parameters)
        )
        self._peak_saved_bytes = 0
        self._largest_micro_batch = 0  # the micro-batch size _peak_saved_bytes was measured at

    @property
    def labels(self) -> np.ndarray:
        """The local training labels (a copy)."""
        return self._y.copy()

    def _as_labels(self, y: np.ndarray) -> np.ndarray:
        return _labels(y, self.spec, "data")

    @property
    def peak_saved_activation_bytes(self) -> int:
        """The most bytes one micro-batch's forward pass kept for its backward, so far.

        Measured on the largest micro-batch trained yet (the arrays' memory, each byte once:
        a ReLU output that the next layer keeps as its input counts once); 0 before training.
        """
        return self._peak_saved_bytes

    def flat_parameters(self) -> np.ndarray:
        """All parameters as one float32 numpy vector: the live weights, not a copy."""
        return self._flat

    def _permutation(self, count: int) -> np.ndarray:
        return self._generator.permutation(count)

    def _batch_loss(self, x: np.ndarray, y: np.ndarray) -> float:
        return self._accumulate(x, y)

    def gradient(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """A copy of the gradient of the mean loss on ``(x, y)`` over the trained values.

        Computed as a training step computes it (micro-batches and all), without stepping.
        The trained values come back to back, in parameter order.

        Raises:
            ConfigError: ``x`` or ``y`` do not fit the model, or are empty (key ``batch``).
        """
        x, y = _samples(x, self.spec, "batch"), _labels(y, self.spec, "batch")
        if len(y) == 0 or len(x) != len(y):
            raise ConfigError(f"{len(x)} inputs and {len(y)} labels", key="batch")
        self._accumulate(x, y)
        return self._sgd.gradient.copy()

    def evaluate(self, x: np.ndarray, y: np.ndarray) -> Evaluation:
        """Accuracy and mean loss of the current model on ``(x, y)``; NaN for an empty set.

        Runs :data:`EVALUATION_CHUNK` samples at a time, keeping nothing for backward.

        Raises:
            ConfigError: ``x`` or ``y`` do not fit the model (key ``evaluation``).
        """
        x, y = _sample_shape(x, self.spec, "evaluation"), _labels(y, self.spec, "evaluation")
        if len(x) != len(y):
            raise ConfigError(f"{len(x)} inputs but {len(y)} labels", key="evaluation")
        if len(y) == 0:
            return Evaluation(math.nan, math.nan)
        correct = 0
        loss_sum = 0.0
        for start in range(0, len(y), EVALUATION_CHUNK):
            labels = y[start : start + EVALUATION_CHUNK]
            chunk = np.ascontiguousarray(x[start : start + EVALUATION_CHUNK], dtype=np.float32)
            logits = self._forward(chunk, record=False)
            correct += int(np.count_nonzero(logits.argmax(axis=1) == labels))
            loss, _ = softmax_cross_entropy(logits, labels, 1.0)
            loss_sum += loss * len(labels)
        return Evaluation(correct / len(y), loss_sum / len(y))

    def _forward(self, x: np.ndarray, record: bool, saved: list[Saved] | None = None) -> np.ndarray:
        """Logits for ``x``; with ``record``, what each graded layer keeps goes to ``saved``."""
        hidden = np.moveaxis(x, 0, -1) if self._channel_major else x  # (C, *spatial, B)
        for index, layer in enumerate(self._layers):
            keep = record and index >= self._first_graded
            hidden, kept = layer.forward(hidden, keep)
            if saved is not None and keep:
                saved.append(kept)
        return hidden

    def _accumulate(self, x: np.ndarray, y: np.ndarray) -> float:
        """Gradients of the batch's mean loss into the gradient buffer; returns that loss.

        One micro-batch at a time; what a micro-batch keeps for backward is dropped by its
        backward before the next one runs.
        """
        loss_sum = 0.0
        for index, (xb, yb, share) in enumerate(self._micro_batches(x, y)):
            saved: list[Saved] = []
            logits = self._forward(xb, record=True, saved=saved)
            if len(yb) > self._largest_micro_batch:  # measuring costs; sizes repeat
                self._largest_micro_batch = len(yb)
                self._peak_saved_bytes = max(self._peak_saved_bytes, _distinct_bytes(saved))
            loss, grad = softmax_cross_entropy(logits, yb, share)
            loss_sum += loss * share
            first = index == 0
            graded = self._layers[self._first_graded :]
            for offset in range(len(graded) - 1, -1, -1):
                back = graded[offset].backward(grad, saved.pop(), offset > 0, not first)
                if back is None:
                    break
                grad = back
        return loss_sum


def _sample_shape(x: np.ndarray, spec: ModelSpec, key: str) -> np.ndarray:
    """``x`` as an array, checked to be ``(N, *spec.input_shape)``."""
    array = np.asarray(x)
    if array.shape[1:] != spec.input_shape:
        raise ConfigError(
            f"inputs of shape {array.shape} do not match (N, *{spec.input_shape})", key=key
        )
    return array


def _samples(x: np.ndarray, spec: ModelSpec, key: str) -> np.ndarray:
    """``x`` as C-contiguous float32 ``(N, *spec.input_shape)`` (no copy if it already is)."""
    return np.ascontiguousarray(_sample_shape(x, spec, key), dtype=np.float32)


def _labels(y: np.ndarray, spec: ModelSpec, key: str) -> np.ndarray:
    """``y`` as int64 labels in ``[0, num_classes)``."""
    labels = np.ascontiguousarray(y, dtype=np.int64)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be a vector, got shape {labels.shape}", key=key)
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= spec.num_classes):
        raise ConfigError(
            f"labels must lie in [0, {spec.num_classes}), "
            f"got [{int(labels.min())}, {int(labels.max())}]",
            key=key,
        )
    return labels


def _own_parameters(spec: ModelSpec, parameters: np.ndarray | None) -> np.ndarray:
    if parameters is None:
        return initial_parameters(spec)
    if (
        not isinstance(parameters, np.ndarray)
        or parameters.dtype != np.float32
        or parameters.shape != (spec.numel,)
        or not parameters.flags.c_contiguous
        or not parameters.flags.writeable
    ):
        raise ConfigError(
            f"must be a writable contiguous float32 vector of {spec.numel} values, got "
            f"{getattr(parameters, 'dtype', type(parameters).__name__)} "
            f"{getattr(parameters, 'shape', '')}",
            key="parameters",
        )
    return parameters


def _trained_indexes(
    spec: ModelSpec,
    config: TrainingConfig,
    trained_layers: tuple[int, ...] | None,
    plan: PlanFields | None,
) -> tuple[int, ...]:
    count = len(spec.parameters)
    if plan is not None:
        indexes = plan_parameter_indexes(
            spec.parameter_names, spec.num_blocks, plan, config.batch_size
        )
        frozen = [
            spec.parameters[i].name
            for i in indexes
            if spec.parameters[i].block < plan.first_trained_block
        ]
        if frozen:
            raise ConfigError(
                f"the plan trains {frozen[:5]} in blocks before its first trained block "
                f"{plan.first_trained_block}",
                key="plan",
            )
        return indexes
    if trained_layers is None:
        return tuple(range(count))
    chosen = tuple(sorted(set(trained_layers)))
    if not chosen or not set(chosen) <= set(range(count)):
        raise ConfigError(
            f"must name parameter tensors in 0..{count - 1}, got {trained_layers}",
            key="trained_layers",
        )
    return chosen


def _distinct_bytes(kept: list[Saved]) -> int:
    """Bytes of memory the arrays cover, where they overlap (views of one buffer) counted once."""
    spans: list[tuple[int, int]] = []
    for item in kept:
        arrays = item if isinstance(item, tuple) else (item,)
        for array in arrays:
            if array is None or array.size == 0:
                continue
            low = high = array.__array_interface__["data"][0]
            for length, stride in zip(array.shape, array.strides, strict=True):
                reach = (length - 1) * stride
                low, high = (low + reach, high) if reach < 0 else (low, high + reach)
            spans.append((low, high + array.itemsize))
    total = 0
    end = -1
    for low, high in sorted(spans):
        if low >= end:
            total += high - low
        elif high > end:
            total += high - end
        end = max(end, high)
    return total


if TYPE_CHECKING:

    def _fits_the_seam(learner: LeanLearner) -> Learner:  # mypy checks the protocol here
        return learner
