"""The torch learner: a model, the local data that never leaves the drone, and an optimizer.

It implements the learner seam of :mod:`swarmfl.learning.seam` (re-exported here: ``Learner``,
``TrainingConfig``, ``StepResult``, ``Evaluation``).

:class:`TorchLearner` keeps every parameter of the model as a view into one contiguous float32
buffer, so the gossip layer reads and merges the whole model as a single numpy array with no
copies (``flat_parameters()``), and the optimizer sees the merged values at once.

Given a :class:`~swarmfl.learning.trainplan.TrainPlan`, it trains the way the plan was costed:
the frozen prefix of blocks runs under ``torch.no_grad`` (it saves nothing for backward), the
gradient and momentum buffers cover the trained parameters only, and a batch larger than the plan's
micro-batch is split into micro-batches whose gradients accumulate before one step. The forward
pass a plan prescribes is :class:`PlanForward`, which the planner probes too, and
:func:`~swarmfl.learning.measure.measure_training_step` measures this learner's own training
step: what the planner predicts is what the code that trains holds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from swarmfl.errors import ConfigError
from swarmfl.learning.flatlearner import FlatLearner, check_training_data
from swarmfl.learning.privacy import DPConfig, DPSGDGradient, PrivacyLedger
from swarmfl.learning.seam import Evaluation as Evaluation
from swarmfl.learning.seam import Learner as Learner
from swarmfl.learning.seam import PlanFields, plan_parameter_indexes
from swarmfl.learning.seam import StepResult as StepResult
from swarmfl.learning.seam import TrainingConfig as TrainingConfig
from swarmfl.learning.sgd import FlatSGD

if TYPE_CHECKING:
    from swarmfl.learning.measure import SavedTensorMeter
    from swarmfl.learning.trainplan import TrainPlan


_DP_NOISE_STREAM = 0xD9_5EED  # the noise generator's seed: the drone's seed, xor this


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


class PlanForward:
    """The forward pass a plan prescribes: the frozen prefix without autograd, then the rest.

    Blocks ``0 .. first_trained_block - 1`` of ``model`` run under ``torch.no_grad`` (they save
    nothing for backward); the blocks from ``first_trained_block`` on run with autograd. With
    ``first_trained_block=0`` this is ``model(x)``. The learner trains through it and the planner
    probes activations through it, so both see the same forward. ``meter``, if given, records
    what autograd saves during each call (one micro-batch's forward through the model; the loss
    is outside it).

    Raises :class:`ConfigError` if ``first_trained_block`` is not a block index of an
    ``nn.Sequential`` model (any module is accepted for ``first_trained_block=0``).
    """

    def __init__(
        self,
        model: nn.Module,
        first_trained_block: int = 0,
        *,
        meter: SavedTensorMeter | None = None,
    ) -> None:
        self._meter = meter
        if first_trained_block == 0:
            self._prefix: nn.Module | None = None
            self._suffix: nn.Module = model
            return
        if not isinstance(model, nn.Sequential) or not 0 < first_trained_block < len(model):
            raise ConfigError(
                f"must be a block index of an nn.Sequential, got {first_trained_block!r}",
                key="first_trained_block",
            )
        self._prefix = model[:first_trained_block]
        self._suffix = model[first_trained_block:]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The model's output for ``x``; autograd records the trained blocks only."""
        if self._meter is None:
            return self._run(x)
        with self._meter.recording():
            return self._run(x)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        if self._prefix is not None:
            with torch.no_grad():
                x = self._prefix(x)
        return self._suffix(x)


class TorchLearner(FlatLearner):
    """A PyTorch model trained with SGD on a local shard.

    ``flops_per_sample`` is the training cost of one sample, used by the simulator to charge
    virtual time (for a plan, :func:`~swarmfl.learning.plan.plan_flops_per_sample`).

    What is trained is either every parameter (the default), the parameter tensors listed in
    ``trained_layers`` (indexes in ``named_parameters()`` order; the forward pass is unchanged),
    or what ``plan`` says: its trained parameters, with the blocks before
    ``plan.first_trained_block`` run under ``torch.no_grad`` and batches split into
    micro-batches of at most ``plan.micro_batch`` samples. Frozen tensors keep
    ``requires_grad=False``; they still change when the gossip layer merges them from peers that
    train them. Gradient and momentum buffers are allocated for the trained tensors only, as the
    planner counts them.

    ``meter`` is a hook for measuring the working set: a
    :class:`~swarmfl.learning.measure.SavedTensorMeter` that records what autograd saves during
    each micro-batch's forward (see
    :func:`~swarmfl.learning.measure.measure_training_step`); leave it None to train.

    ``dp`` trains with DP-SGD (:mod:`swarmfl.learning.privacy`): each sample's gradient over the
    trained tensors clipped, Gaussian noise added, the privacy spent counted in ``privacy``
    (:attr:`epsilon`).

    Raises :class:`ConfigError` for mismatched data, both ``trained_layers`` and ``plan``, an
    empty or out-of-range ``trained_layers``, or a plan for another model or batch size.
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
        plan: TrainPlan | None = None,
        meter: SavedTensorMeter | None = None,
        dp: DPConfig | None = None,
    ) -> None:
        check_training_data(len(x), len(y), plan, trained_layers)
        self.model = model
        self.config = config
        self.flops_per_sample = float(flops_per_sample)
        self._plan: PlanFields | None = plan
        self._train_plan = plan
        self._flat, self._offsets = flatten_parameters(model)
        self._flat_np = self._flat.numpy()
        params = list(model.parameters())
        every = tuple(range(len(params)))
        if plan is not None:
            self._trained = _plan_layers(model, plan, config.batch_size)
        elif trained_layers is None:
            self._trained = every
        else:
            self._trained = tuple(sorted(set(trained_layers)))
            if not self._trained or not set(self._trained) <= set(every):
                raise ConfigError(
                    f"must name parameter tensors in 0..{len(params) - 1}, got {trained_layers}",
                    key="trained_layers",
                )
        for index, p in enumerate(params):
            p.requires_grad_(index in self._trained)
        self._x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        self._y = self._as_labels(y)
        self._generator = torch.Generator().manual_seed(seed)
        # Gradients live in one flat buffer too, holding the trained tensors only (back to
        # back, in parameter order): autograd accumulates into the preassigned ``.grad`` views
        # in place, so micro-batches accumulate there for free, and the SGD step runs over flat
        # ranges instead of torch.optim's per-tensor Python machinery (the step dominated the
        # cost of a small model's round). FlatSGD owns the buffers (numpy; the tensors share
        # their memory) and takes the step LeanLearner takes.
        self._sgd = FlatSGD(
            self._flat_np,
            [(self._offsets[i], self._offsets[i + 1]) for i in self._trained],
            config,
        )
        self._grad = torch.from_numpy(self._sgd.gradient)
        position = 0
        for index in self._trained:
            size = self._offsets[index + 1] - self._offsets[index]
            params[index].grad = self._grad[position : position + size].view_as(params[index])
            position += size
        self._loss = nn.CrossEntropyLoss()
        self._micro_batch = plan.micro_batch if plan is not None else config.batch_size
        self._forward = PlanForward(
            model, plan.first_trained_block if plan is not None else 0, meter=meter
        )
        self._dp: DPSGDGradient | None = None
        self.privacy: PrivacyLedger | None = None
        if dp is not None:
            self.privacy = PrivacyLedger(dp, min(1.0, config.batch_size / len(self._y)))
            self._dp = DPSGDGradient(
                model,
                self._trained,
                dp,
                micro_batch=self._micro_batch,
                generator=torch.Generator().manual_seed(seed ^ _DP_NOISE_STREAM),
            )

    @property
    def plan(self) -> TrainPlan | None:
        """The memory plan this learner follows (None: every parameter, whole batches)."""
        return self._train_plan

    def flat_parameters(self) -> np.ndarray:
        """All parameters as one float32 numpy vector aliasing the model."""
        return self._flat_np

    @property
    def labels(self) -> np.ndarray:
        """The local training labels (a copy)."""
        return self._y.numpy().copy()

    def _as_labels(self, y: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64))

    def _start_round(self) -> None:
        if not self.model.training:  # train() walks every module: skip it when it's a no-op
            self.model.train()

    def _permutation(self, count: int) -> torch.Tensor:
        return torch.randperm(count, generator=self._generator)

    def _batch_loss(self, x: torch.Tensor, y: torch.Tensor) -> float:
        if self._dp is not None and self.privacy is not None:
            with torch.no_grad():
                loss_value = float(self._loss(self._forward(x), y))
            self._dp(x, y, self._grad)
            self.privacy.step()
            return loss_value
        self._grad.zero_()
        if len(y) <= self._micro_batch:
            loss = self._loss(self._forward(x), y)
            loss.backward()
            return float(loss.item())
        return self._accumulate(x, y)

    def _accumulate(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Gradients of the batch's mean loss, one micro-batch at a time; returns that loss.

        Each micro-batch's graph (and so its saved activations) is freed by its backward before
        the next one runs: at most one micro-batch's activations are alive at a time.
        """
        loss_sum = 0.0
        for xb, yb, share in self._micro_batches(x, y):
            loss = self._loss(self._forward(xb), yb)
            (loss * share).backward()
            loss_sum += loss.item() * share
        return loss_sum

    @torch.inference_mode()
    def evaluate(self, x: np.ndarray, y: np.ndarray) -> Evaluation:
        """Accuracy and mean loss of the current model on ``(x, y)``."""
        self.model.eval()
        with torch.no_grad():  # keep nothing for a backward that never comes
            logits = self.model(torch.as_tensor(x))
        target = torch.as_tensor(y)
        accuracy = float((logits.argmax(dim=1) == target).float().mean())
        return Evaluation(accuracy, float(self._loss(logits, target)))


def _plan_layers(model: nn.Module, plan: TrainPlan, batch_size: int) -> tuple[int, ...]:
    """Indexes of the parameter tensors ``plan`` trains; checks the plan is for this model."""
    if not isinstance(model, nn.Sequential):
        raise ConfigError(
            f"the plan is for an nn.Sequential of {plan.num_blocks} blocks", key="plan"
        )
    names = [name for name, _ in model.named_parameters()]
    return plan_parameter_indexes(names, len(model), plan, batch_size)
