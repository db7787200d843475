"""TorchLearner follows a memory plan: frozen prefix without autograd, micro-batches, and
buffers for the trained parameters only; the FLOPs charged for a plan."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from swarmfl.errors import ConfigError
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.measure import _storage_span, _union_bytes, measure_training_step
from swarmfl.learning.models import (
    TRAINING_FLOPS_FACTOR,
    build_model,
    flops_per_block,
    training_flops_per_sample,
)
from swarmfl.learning.plan import (
    BIAS_ONLY_FLOPS_FACTOR,
    MemoryPlan,
    TrainPlan,
    plan_flops_per_sample,
)

CNN_INPUT = (3, 16, 16)
CHANNELS = (8, 16, 16)


def cnn(seed: int = 0) -> nn.Sequential:
    return build_model("cnn", CNN_INPUT, 10, channels=CHANNELS, seed=seed)


def mlp(seed: int = 0) -> nn.Sequential:
    return build_model("mlp", CNN_INPUT, 10, hidden=(32, 16), seed=seed)


MODELS: dict[str, Callable[[], nn.Sequential]] = {"cnn": cnn, "mlp": mlp}


def data(n: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *CNN_INPUT)).astype(np.float32), rng.integers(0, 10, n)


def plan_for(model: nn.Sequential, mode: str, first: int, micro: int, batch: int = 16) -> TrainPlan:
    return next(
        p
        for p in MemoryPlan.candidates(model, CNN_INPUT, batch, 0)
        if p.mode == mode and p.first_trained_block == first and p.micro_batch == micro
    )


def params_of(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize(
    ("kind", "mode", "first"),
    [
        ("cnn", "full", 0),
        ("cnn", "suffix", 2),
        ("cnn", "bias", 1),
        ("mlp", "full", 0),
        ("mlp", "suffix", 1),
        ("mlp", "bias", 0),
    ],
)
def test_micro_batches_give_the_whole_batch_update(
    momentum: float, kind: str, mode: str, first: int
) -> None:
    make = MODELS[kind]
    x, y = data()
    # three steps: float rounding differs between the orders of summation, and many steps of
    # momentum on random data would amplify it
    config = TrainingConfig(lr=0.05, batch_size=16, momentum=momentum)
    results = []
    for micro in (16, 5, 3, 1):
        model = make()
        plan = plan_for(model, mode, first, 16)
        plan = dataclasses.replace(plan, micro_batch=micro)
        learner = TorchLearner(model, x, y, config, flops_per_sample=1.0, seed=3, plan=plan)
        losses = [learner.train_round().loss for _ in range(2)]
        results.append((losses, params_of(model)))
    (losses, whole), *micro_results = results
    start = params_of(make())
    moved = [not torch.equal(a, b) for a, b in zip(whole, start, strict=True)]
    trained = set(plan.trained_parameters)
    names = [n for n, _ in make().named_parameters()]
    assert moved == [n in trained for n in names]  # exactly the trained tensors moved
    for micro_losses, params in micro_results:
        assert micro_losses == pytest.approx(losses, rel=1e-5)
        for a, b in zip(params, whole, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_plan_training_equals_whole_batch_torch_sgd_on_the_trained_parameters(
    momentum: float,
) -> None:
    """Frozen prefix, micro-batches and the fused step: torch.optim.SGD's update, whole batch."""
    x, y = data(16)
    model = cnn()
    plan = dataclasses.replace(plan_for(model, "suffix", 1, 16), micro_batch=5)
    reference = copy.deepcopy(model)
    config = TrainingConfig(lr=0.2, batch_size=16, momentum=momentum)
    learner = TorchLearner(model, x, y, config, flops_per_sample=1.0, seed=0, plan=plan)
    trained = [p for n, p in reference.named_parameters() if n in plan.trained_parameters]
    for p in reference.parameters():
        p.requires_grad_(any(p is t for t in trained))
    optimizer = torch.optim.SGD(trained, lr=0.2, momentum=momentum)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(3):
        learner.train_round()  # one batch holds the whole shard: no shuffle
        optimizer.zero_grad()
        nn.functional.cross_entropy(reference(xt), yt).backward()
        optimizer.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=1e-5, atol=1e-6)


def test_learner_without_plan_is_unchanged_by_a_full_plan_at_the_whole_batch() -> None:
    x, y = data()
    config = TrainingConfig(lr=0.1, batch_size=16, momentum=0.5)
    plain, planned = cnn(), cnn()
    full = plan_for(planned, "full", 0, 16)
    a = TorchLearner(plain, x, y, config, flops_per_sample=1.0, seed=9)
    b = TorchLearner(planned, x, y, config, flops_per_sample=1.0, seed=9, plan=full)
    for _ in range(2):
        assert a.train_round() == b.train_round()
    np.testing.assert_array_equal(a.flat_parameters(), b.flat_parameters())


def test_frozen_prefix_keeps_no_activations_and_saved_bytes_match_the_prediction() -> None:
    """Per micro-batch, the learner saves exactly what the planner predicted and measured."""
    x, y = data(16)
    model = cnn()
    plan = plan_for(model, "suffix", 2, 4)
    predicted = plan.predicted.activations
    measured = measure_training_step(model, plan, CNN_INPUT).activations
    assert predicted == measured > 0
    learner = TorchLearner(
        model, x, y, TrainingConfig(batch_size=16), flops_per_sample=1.0, seed=0, plan=plan
    )
    running = [-1]
    for index, block in enumerate(model):
        block.register_forward_pre_hook(lambda _m, _a, i=index: running.__setitem__(0, i))
    # after the last block the loss function runs: its saved tensors are outside the model
    model[-1].register_forward_hook(lambda _m, _a, _o: running.__setitem__(0, len(model)))
    spans: dict[int, list[tuple[int, int, int]]] = {}  # micro-batch -> saved byte ranges
    micro = [-1]
    model[plan.first_trained_block].register_forward_pre_hook(
        lambda _m, _a: micro.__setitem__(0, micro[0] + 1)
    )
    blocks_seen: set[int] = set()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        blocks_seen.add(running[0])
        span = _storage_span(tensor)
        if running[0] < len(model) and span is not None and span[0] not in weights:
            spans.setdefault(micro[0], []).append(span)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        learner.train_round()
    assert min(blocks_seen) == plan.first_trained_block  # nothing saved in the frozen prefix
    assert len(spans) == plan.accumulation_steps == 4
    # counted as the planner counts: the union of the storage bytes saved (a ReLU output saved
    # again, flattened, by the next layer counts once)
    per_micro = [_union_bytes(saved) for saved in spans.values()]
    assert per_micro == [predicted] * 4


def test_buffers_cover_the_trained_parameters_only() -> None:
    x, y = data(8)
    model = cnn()
    plan = plan_for(model, "suffix", 3, 16)
    learner = TorchLearner(
        model,
        x,
        y,
        TrainingConfig(batch_size=16, momentum=0.9),
        flops_per_sample=1.0,
        seed=0,
        plan=plan,
    )
    trained = sum(p.numel() for n, p in model.named_parameters() if n in plan.trained_parameters)
    assert learner._grad.numel() == trained
    assert learner._sgd.momentum is not None and learner._sgd.momentum.size == trained
    assert [p.grad is not None for p in model.parameters()] == [
        n in plan.trained_parameters for n, _ in model.named_parameters()
    ]
    assert learner.plan is plan
    offsets = learner.layer_offsets
    assert learner.trained_layers == tuple(
        i for i, (n, _) in enumerate(model.named_parameters()) if n in plan.trained_parameters
    )
    frozen = learner.flat_parameters()[: offsets[learner.trained_layers[0]]].copy()
    learner.train_round()
    np.testing.assert_array_equal(learner.flat_parameters()[: frozen.size], frozen)


def test_reset_optimizer_state_restarts_momentum_like_a_new_torch_optimizer() -> None:
    x, y = data(16)
    config = TrainingConfig(lr=0.1, batch_size=16, momentum=0.9)
    a = TorchLearner(cnn(), x, y, config, flops_per_sample=1.0, seed=0)
    b = TorchLearner(cnn(), x, y, config, flops_per_sample=1.0, seed=0)
    a.train_round()
    b.flat_parameters()[:] = a.flat_parameters()  # b: fresh optimizer, same weights
    a.reset_optimizer_state()
    a.train_round()
    b.train_round()
    np.testing.assert_array_equal(a.flat_parameters(), b.flat_parameters())


def test_learner_refuses_a_plan_for_another_model_or_batch() -> None:
    x, y = data(8)
    plan = plan_for(cnn(), "suffix", 2, 16)
    config = TrainingConfig(batch_size=16)
    with pytest.raises(ConfigError, match="4 blocks"):
        TorchLearner(
            build_model("mlp", CNN_INPUT, 10), x, y, config, flops_per_sample=1, seed=0, plan=plan
        )
    with pytest.raises(ConfigError, match="batches of 16"):
        TorchLearner(
            cnn(), x, y, TrainingConfig(batch_size=8), flops_per_sample=1, seed=0, plan=plan
        )
    with pytest.raises(ConfigError, match="not both"):
        TorchLearner(
            cnn(), x, y, config, flops_per_sample=1, seed=0, plan=plan, trained_layers=(0,)
        )
    with pytest.raises(ConfigError, match="trained_layers"):
        TorchLearner(cnn(), x, y, config, flops_per_sample=1, seed=0, trained_layers=(99,))


def test_flops_charged_per_plan() -> None:
    model = cnn()
    blocks = flops_per_block(model, CNN_INPUT)
    full = plan_for(model, "full", 0, 16)
    assert plan_flops_per_sample(model, CNN_INPUT, full) == training_flops_per_sample(
        model, CNN_INPUT
    )
    suffix = plan_for(model, "suffix", 2, 16)
    assert plan_flops_per_sample(model, CNN_INPUT, suffix) == sum(blocks[:2]) + (
        TRAINING_FLOPS_FACTOR * sum(blocks[2:])
    )
    bias = plan_for(model, "bias", 1, 16)
    assert plan_flops_per_sample(model, CNN_INPUT, bias) == blocks[0] + (
        BIAS_ONLY_FLOPS_FACTOR * sum(blocks[1:])
    )
    # the cheaper the plan, the fewer FLOPs
    assert (
        plan_flops_per_sample(model, CNN_INPUT, plan_for(model, "suffix", 3, 16))
        < plan_flops_per_sample(model, CNN_INPUT, suffix)
        < plan_flops_per_sample(model, CNN_INPUT, full)
    )
    with pytest.raises(ConfigError, match="blocks"):
        plan_flops_per_sample(build_model("mlp", CNN_INPUT, 10), CNN_INPUT, suffix)
