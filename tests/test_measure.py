"""swarmfl.learning.measure: the learner's own training step, measured, equals the prediction
byte for byte; the saved-tensor meter; what the measurement refuses."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from _plan_models import (
    CNN_INPUT,
    MLP_INPUT,
    learner_on_one_batch,
    make_cnn,
    make_mlp,
    make_named_cnn,
)
from torch import nn

from swarmfl.core.codecs import CodecName
from swarmfl.errors import ConfigError
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.measure import SavedTensorMeter, measure_training_step
from swarmfl.learning.models import build_model
from swarmfl.learning.plan import MemoryPlan, OptimizerName

# the model kinds swarmfl ships, small: an MLP of three blocks, CNNs over 1-D and 2-D inputs
SHIPPED: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...], CodecName]] = {
    "mlp": (lambda: build_model("mlp", (1, 8, 8), 10, hidden=(32, 16), seed=1), (1, 8, 8), "int8"),
    "cnn1d": (lambda: build_model("cnn", (2, 40), 10, channels=(4, 8), seed=2), (2, 40), "int4"),
    "cnn2d": (
        lambda: build_model("cnn", (3, 12, 12), 10, channels=(4, 8, 8), seed=3),
        (3, 12, 12),
        "fp32",
    ),
}


@pytest.mark.parametrize("optimizer", ["sgd", "sgd_momentum"])
@pytest.mark.parametrize("kind", sorted(SHIPPED))
def test_every_candidate_predicts_the_learners_step_byte_for_byte(
    kind: str, optimizer: OptimizerName
) -> None:
    make, input_shape, codec = SHIPPED[kind]
    model = make()
    settings = {"optimizer": optimizer, "neighbour_replicas": 2, "codec": codec}
    # batch 5: micro-batches 5, 3 (then a last one of 2), 2 (then 1) and 1
    plans = MemoryPlan.candidates(model, input_shape, 5, 0, **settings)  # type: ignore[arg-type]
    assert {p.mode for p in plans} == {"full", "suffix", "bias"}
    assert {p.micro_batch for p in plans} == {5, 3, 2, 1}
    for plan in plans:
        measured = measure_training_step(model, plan, input_shape, **settings)  # type: ignore[arg-type]
        assert measured == plan.predicted, plan.describe()
        # a head's bias alone needs nothing saved: its gradient is a sum of the output's
        assert measured.activations > 0 or plan.mode == "bias"
        assert (measured.optimizer_state > 0) == (optimizer == "sgd_momentum")


def test_prediction_holds_with_batchnorm_and_dropout_and_leaves_model_untouched() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(8 * 8 * 8, 5)),
    )
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()

    plans = MemoryPlan.candidates(model, (3, 8, 8), 6, 0, optimizer="sgd_momentum")
    for plan in plans:
        real = measure_training_step(model, plan, (3, 8, 8), optimizer="sgd_momentum")
        assert real == plan.predicted, plan.describe()

    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("first_block", [1, 2, 3])
def test_frozen_prefix_saves_nothing_for_backward(first_block: int) -> None:
    model = make_cnn()
    plan = next(
        p
        for p in MemoryPlan.candidates(model, CNN_INPUT, 8, 0)
        if p.mode == "suffix" and p.first_trained_block == first_block
    )
    learner, x = learner_on_one_batch(model, plan, CNN_INPUT, seed=first_block)

    running = [-1]
    for index, block in enumerate(model):
        block.register_forward_pre_hook(lambda _m, _a, i=index: running.__setitem__(0, i))
    saved_in_block: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved_in_block.append(running[0])
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        learner.train_round()
    assert saved_in_block
    assert min(saved_in_block) == first_block

    # the frozen prefix adds nothing: the same bytes as training the suffix alone on the
    # prefix's output
    with torch.no_grad():
        prefix_output = model[:first_block](torch.from_numpy(x))
    suffix_alone = nn.Sequential(*list(model)[first_block:])
    alone_shape = tuple(prefix_output.shape[1:])
    alone_plan = MemoryPlan.candidates(suffix_alone, alone_shape, 8, 0)[0]
    on_prefix = measure_training_step(model, plan, CNN_INPUT)
    alone = measure_training_step(suffix_alone, alone_plan, alone_shape)
    assert on_prefix.activations == alone.activations > 0


def test_meter_counts_shared_saved_tensors_once_and_skips_parameters() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    meter = SavedTensorMeter(model)
    x = torch.randn(3, 4)
    with meter.recording():
        output = model(x)
    # the input (saved by the first Linear for its weight's gradient) and the ReLU output
    # (saved by the ReLU and again by the second Linear); weights are skipped
    assert meter.last_bytes == 3 * 4 * 4 + 3 * 8 * 4
    output.sum().backward()
    with meter.recording():
        model(x[:1])
    assert meter.last_bytes == 1 * 4 * 4 + 1 * 8 * 4
    assert meter.peak_bytes == 3 * 4 * 4 + 3 * 8 * 4
    assert meter.recordings == 2


def test_meter_skips_parameters_the_learner_moved_into_its_flat_buffer() -> None:
    """The meter looks the weights up when it records: the learner re-homes them after."""
    model = make_mlp()
    meter = SavedTensorMeter(model)
    plan = MemoryPlan.candidates(model, MLP_INPUT, 4, 0)[0]
    learner = TorchLearner(
        model,
        np.ones((4, *MLP_INPUT), dtype=np.float32),
        np.arange(4),
        TrainingConfig(batch_size=4),
        flops_per_sample=1.0,
        seed=0,
        plan=plan,
        meter=meter,
    )
    learner.train_round()
    assert meter.recordings == 1
    flat = learner.flat_parameters().ctypes.data
    assert all(address != flat for address, _, _ in meter.last_saved)
    assert meter.peak_bytes == plan.predicted.activations


def test_measurement_refuses_a_plan_for_another_model() -> None:
    plan = MemoryPlan.candidates(make_cnn(), CNN_INPUT, 2, 0)[0]
    with pytest.raises(ConfigError, match="4 blocks"):
        measure_training_step(make_mlp(), plan, MLP_INPUT)
    with pytest.raises(ConfigError, match="does not have"):
        measure_training_step(make_named_cnn(), plan, CNN_INPUT)


def test_measurement_refuses_what_the_learner_cannot_train() -> None:
    model = make_mlp()
    plan = MemoryPlan.candidates(model, MLP_INPUT, 2, 0)[0]
    with pytest.raises(ConfigError, match="optimizer"):
        measure_training_step(model, plan, MLP_INPUT, optimizer="adam")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="codec"):
        measure_training_step(model, plan, MLP_INPUT, codec="int2")  # type: ignore[arg-type]
    # a regression head returns (N,) values, not (N, classes) logits
    regression = nn.Sequential(nn.Sequential(nn.Linear(3, 1), nn.Flatten(0)))
    regression_plan = MemoryPlan.candidates(regression, (3,), 2, 0)[0]
    with pytest.raises(ConfigError, match="classifiers"):
        measure_training_step(regression, regression_plan, (3,))
