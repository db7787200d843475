"""The lean (numpy) learner against torch: layout, signature, gradients, SGD steps, plans, memory.

Every comparison builds the torch model from the same arguments, loads the lean learner's flat
vector into it, and checks lean against torch autograd or TorchLearner on the same batch.
"""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from swarmfl.errors import ConfigError
from swarmfl.learning.backends import build_torch_model
from swarmfl.learning.datasets import load_builtin
from swarmfl.learning.lean import EVALUATION_CHUNK, LeanLearner
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.models import build_model, flops_per_block, model_signature
from swarmfl.learning.plan import MemoryPlan
from swarmfl.learning.spec import ModelSpec, initial_parameters, model_spec

# (kind, input shape, keyword arguments): every layer kind, odd sides that pooling crops, a side
# too short to pool, several blocks, an MLP without hidden layers
MODELS = {
    "mlp": ("mlp", (1, 8, 8), {"hidden": (12, 9)}),
    "mlp-linear": ("mlp", (20,), {"hidden": ()}),
    "cnn1d": ("cnn", (2, 11), {"channels": (4, 5)}),
    "cnn2d": ("cnn", (1, 8, 8), {"channels": (4, 6)}),
    "cnn2d-odd": ("cnn", (3, 5, 7), {"channels": (3, 4, 2)}),
}
CLASSES = 5


@dataclass(frozen=True)
class Plan:
    """The fields a learner reads from a TrainPlan (both learners duck-type it)."""

    mode: str
    first_trained_block: int
    trained_parameters: tuple[str, ...]
    micro_batch: int
    batch_size: int
    num_blocks: int


def make_plan(spec: ModelSpec, mode: str, first: int, micro: int, batch: int) -> Plan:
    names = tuple(
        p.name for p in spec.parameters if p.block >= first and (mode != "bias" or p.is_bias)
    )
    return Plan(mode, first, names, micro, batch, spec.num_blocks)


def spec_of(name: str, seed: int = 0) -> ModelSpec:
    kind, shape, kwargs = MODELS[name]
    return model_spec(kind, shape, CLASSES, seed=seed, **kwargs)


def batch_for(spec: ModelSpec, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *spec.input_shape)).astype(np.float32)
    return x, rng.integers(0, spec.num_classes, n)


def torch_gradient(
    spec: ModelSpec, flat: np.ndarray, x: np.ndarray, y: np.ndarray, plan: Plan | None
) -> np.ndarray:
    """Autograd's gradient of the whole batch's mean loss over the trained values, flat."""
    model = build_torch_model(spec, flat)
    trained = set(plan.trained_parameters if plan else spec.parameter_names)
    for name, param in model.named_parameters():
        param.requires_grad_(name in trained)
    first = plan.first_trained_block if plan else 0
    hidden = torch.from_numpy(x)
    with torch.no_grad():
        hidden = model[:first](hidden)
    nn.functional.cross_entropy(model[first:](hidden), torch.from_numpy(y)).backward()
    return np.concatenate(
        [p.grad.numpy().ravel() for n, p in model.named_parameters() if n in trained]
    )


def lean(spec: ModelSpec, x: np.ndarray, y: np.ndarray, **kwargs: object) -> LeanLearner:
    config = kwargs.pop("config", TrainingConfig(batch_size=len(y)))
    assert isinstance(config, TrainingConfig)
    return LeanLearner(spec, x, y, config, flops_per_sample=1.0, seed=0, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# torch-free


def test_importing_the_lean_learner_imports_no_torch_scipy_or_sklearn() -> None:
    program = (
        "import sys\n"
        "import swarmfl.learning.lean, swarmfl.learning.spec, swarmfl.learning.seam\n"
        "heavy = {'torch', 'scipy', 'sklearn'}\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


# ------------------------------------------------------------------------------------------------
# spec: layout, signature, FLOPs, initialisation


shapes_and_widths = st.one_of(
    st.tuples(
        st.just("mlp"),
        st.lists(st.integers(1, 6), min_size=1, max_size=3).map(tuple),
        st.lists(st.integers(1, 9), max_size=3).map(tuple),
    ),
    st.tuples(
        st.just("cnn"),
        st.lists(st.integers(1, 9), min_size=2, max_size=3).map(tuple),
        st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple),
    ),
)


@settings(max_examples=60, deadline=None)
@given(model=shapes_and_widths, classes=st.integers(1, 7))
def test_spec_matches_the_torch_model(
    model: tuple[str, tuple[int, ...], tuple[int, ...]], classes: int
) -> None:
    kind, shape, widths = model
    widths_kw = {"hidden": widths} if kind == "mlp" else {"channels": widths}
    spec = model_spec(kind, shape, classes, **widths_kw)  # type: ignore[arg-type]
    torch_model = build_model(kind, shape, classes, **widths_kw)  # type: ignore[arg-type]
    assert spec.signature() == model_signature(torch_model)
    named = list(torch_model.named_parameters())
    assert spec.parameter_names == tuple(name for name, _ in named)
    assert [p.shape for p in spec.parameters] == [tuple(t.shape) for _, t in named]
    offsets = np.cumsum([0, *(t.numel() for _, t in named)]).tolist()
    assert list(spec.layer_offsets) == offsets
    assert spec.num_blocks == len(torch_model)
    assert [layer.torch_class for layer in spec.layers] == [
        type(m).__name__ for block in torch_model for m in block
    ]
    assert spec.flops_per_block() == flops_per_block(torch_model, shape)
    # the flat layout TorchLearner uses is the spec's
    learner = TorchLearner(
        torch_model,
        np.zeros((1, *shape), np.float32),
        np.zeros(1, np.int64),
        TrainingConfig(),
        flops_per_sample=1.0,
        seed=0,
    )
    assert learner.layer_offsets == spec.layer_offsets


def test_signature_tells_architectures_apart() -> None:
    signatures = {spec_of(name).signature() for name in MODELS}
    assert len(signatures) == len(MODELS)
    assert spec_of("cnn2d", seed=1).signature() == spec_of("cnn2d", seed=2).signature()


def test_spec_refuses_what_build_model_refuses() -> None:
    for args, kwargs, key in [
        (("rnn", (1, 8, 8), 10), {}, "kind"),
        (("cnn", (64,), 10), {}, "input_shape"),
        (("mlp", (1, 0), 10), {}, "input_shape"),
        (("mlp", (4,), 0), {}, "num_classes"),
        (("mlp", (4,), 3), {"hidden": (3, -1)}, "hidden"),
        (("cnn", (1, 8), 3), {"channels": ()}, "channels"),
    ]:
        with pytest.raises(ConfigError) as spec_error:
            model_spec(*args, **kwargs)  # type: ignore[arg-type]
        with pytest.raises(ConfigError) as torch_error:
            build_model(*args, **kwargs)  # type: ignore[arg-type]
        assert spec_error.value.key == torch_error.value.key == key
        assert str(spec_error.value) == str(torch_error.value)


def test_initial_parameters_are_seeded_and_drawn_from_torch_default_bounds() -> None:
    spec = model_spec("cnn", (3, 16, 16), 10, channels=(32, 64))
    flat = initial_parameters(spec, 5)
    assert flat.dtype == np.float32 and flat.shape == (spec.numel,)
    np.testing.assert_array_equal(flat, initial_parameters(spec, 5))
    assert not np.array_equal(flat, initial_parameters(spec, 6))
    np.testing.assert_array_equal(initial_parameters(spec), initial_parameters(spec, spec.seed))
    torch_model = build_model("cnn", (3, 16, 16), 10, channels=(32, 64))
    for param, (_, theirs) in zip(spec.parameters, torch_model.named_parameters(), strict=True):
        ours = flat[param.offset : param.stop]
        bound = 1 / math.sqrt(param.fan_in)
        # torch's own draw respects the same bound: the distributions agree
        assert float(theirs.detach().abs().max()) <= bound
        assert ours.min() >= -bound and ours.max() <= bound
        if param.numel >= 1000:  # uniform on [-b, b]: std b / sqrt(3), filling the range
            assert ours.std() == pytest.approx(bound / math.sqrt(3), rel=0.05)
            assert ours.max() > 0.99 * bound and ours.min() < -0.99 * bound
            assert abs(float(ours.mean())) < 0.05 * bound


# ------------------------------------------------------------------------------------------------
# gradients against autograd


@pytest.mark.parametrize("name", list(MODELS))
def test_full_gradient_equals_autograd(name: str) -> None:
    spec = spec_of(name)
    x, y = batch_for(spec, 7)
    learner = lean(spec, x, y)
    expected = torch_gradient(spec, learner.flat_parameters(), x, y, None)
    np.testing.assert_allclose(learner.gradient(x, y), expected, rtol=1e-4, atol=2e-6)


@st.composite
def plans(draw: st.DrawFn) -> tuple[str, Plan, int]:
    name = draw(st.sampled_from(list(MODELS)))
    spec = spec_of(name)
    mode = draw(st.sampled_from(["full", "suffix", "bias"]))
    first = {
        "full": 0,
        "suffix": draw(st.integers(1, max(1, spec.num_blocks - 1))),
        "bias": draw(st.integers(0, spec.num_blocks - 1)),
    }[mode]
    if mode == "suffix" and spec.num_blocks == 1:
        mode, first = "full", 0
    batch = draw(st.integers(1, 9))
    micro = draw(st.integers(1, batch))
    return name, make_plan(spec, mode, first, micro, batch), draw(st.integers(0, 10_000))


@settings(max_examples=80, deadline=None)
@given(case=plans())
def test_gradient_following_any_plan_equals_autograd(case: tuple[str, Plan, int]) -> None:
    name, plan, seed = case
    spec = spec_of(name)
    x, y = batch_for(spec, plan.batch_size, seed)
    config = TrainingConfig(batch_size=plan.batch_size)
    learner = lean(spec, x, y, config=config, plan=plan, parameters=initial_parameters(spec, seed))
    expected = torch_gradient(spec, learner.flat_parameters(), x, y, plan)
    assert len(expected) == sum(spec.parameters[i].numel for i in learner.trained_layers)
    np.testing.assert_allclose(learner.gradient(x, y), expected, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("name", ["cnn1d", "cnn2d", "cnn2d-odd"])
def test_max_pool_ties_go_to_the_first_maximum_as_in_torch(name: str) -> None:
    spec = spec_of(name)
    x, y = batch_for(spec, 4)
    flat = initial_parameters(spec)
    first_conv = spec.parameters[0]
    flat[first_conv.offset : first_conv.stop] = 0.0  # every output is its bias: all windows tie
    flat[first_conv.stop : spec.parameters[1].stop] = 0.5
    learner = lean(spec, x, y, parameters=flat)
    expected = torch_gradient(spec, flat, x, y, None)
    np.testing.assert_allclose(learner.gradient(x, y), expected, rtol=1e-4, atol=2e-6)


@pytest.mark.parametrize("name", ["mlp", "cnn2d"])
def test_gradient_with_every_planner_candidate_equals_autograd(name: str) -> None:
    spec = spec_of(name)
    model = build_torch_model(spec, initial_parameters(spec))
    candidates = MemoryPlan.candidates(model, spec.input_shape, 6, 0)
    assert {plan.mode for plan in candidates} == {"full", "suffix", "bias"}
    x, y = batch_for(spec, 6)
    for plan in candidates:
        learner = lean(spec, x, y, config=TrainingConfig(batch_size=6), plan=plan)
        expected = torch_gradient(spec, learner.flat_parameters(), x, y, plan)  # type: ignore[arg-type]
        np.testing.assert_allclose(learner.gradient(x, y), expected, rtol=1e-4, atol=2e-6)


# ------------------------------------------------------------------------------------------------
# SGD steps against TorchLearner


@pytest.mark.parametrize("name", ["mlp", "cnn1d", "cnn2d-odd"])
@pytest.mark.parametrize(
    ("mode", "first", "micro"),
    [("full", 0, 8), ("full", 0, 3), ("suffix", 1, 8), ("bias", 0, 5)],
)
def test_steps_with_momentum_and_weight_decay_equal_torch_learner(
    name: str, mode: str, first: int, micro: int
) -> None:
    spec = spec_of(name)
    x, y = batch_for(spec, 8)
    # the whole shard is one batch: no shuffling, so both learners take the same steps
    config = TrainingConfig(lr=0.1, batch_size=8, momentum=0.9, weight_decay=0.01)
    plan = make_plan(spec, mode, first, micro, 8)
    ours = lean(spec, x, y, config=config, plan=plan)
    torch_learner = TorchLearner(
        build_torch_model(spec, ours.flat_parameters()),
        x,
        y,
        config,
        flops_per_sample=1.0,
        seed=0,
        plan=plan,  # type: ignore[arg-type]
    )
    assert ours.trained_layers == torch_learner.trained_layers
    for _ in range(4):
        mine, theirs = ours.train_round(), torch_learner.train_round()
        assert mine.samples == theirs.samples and mine.flops == theirs.flops
        assert mine.loss == pytest.approx(theirs.loss, rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(
            ours.flat_parameters(), torch_learner.flat_parameters(), rtol=1e-5, atol=1e-6
        )
    momentum = ours.momentum_state()
    assert momentum is not None
    np.testing.assert_allclose(momentum, torch_learner.momentum_state(), rtol=1e-4, atol=1e-6)


def test_untrained_values_stay_put_and_the_flat_vector_is_the_live_model() -> None:
    spec = spec_of("cnn2d")
    x, y = batch_for(spec, 20)
    learner = lean(spec, x, y, config=TrainingConfig(batch_size=6), trained_layers=(2, 5))
    flat = learner.flat_parameters()
    assert flat is learner.flat_parameters()
    before = flat.copy()
    learner.train_round()
    trained = np.zeros(spec.numel, dtype=bool)
    for index in (2, 5):
        trained[spec.parameters[index].offset : spec.parameters[index].stop] = True
    np.testing.assert_array_equal(flat[~trained], before[~trained])
    assert not np.array_equal(flat[trained], before[trained])
    flat[:] = 0.0  # a merge writes here: the model sees it at once
    assert learner.evaluate(x, y).loss == pytest.approx(math.log(CLASSES), rel=1e-6)


def test_given_parameters_are_trained_in_place() -> None:
    spec = spec_of("mlp")
    x, y = batch_for(spec, 10)
    start = initial_parameters(spec, 3)
    learner = lean(spec, x, y, parameters=start)
    assert learner.flat_parameters() is start
    for bad in (start.astype(np.float64), start[:-1], start[::2], np.zeros((2, 3), np.float32)):
        with pytest.raises(ConfigError, match="parameters"):
            lean(spec, x, y, parameters=bad)


def test_momentum_state_round_trip_and_reset() -> None:
    spec = spec_of("mlp")
    x, y = batch_for(spec, 12)
    config = TrainingConfig(batch_size=12, momentum=0.8)
    a = lean(spec, x, y, config=config)
    assert a.momentum_state() is None  # no buffer before the first step
    a.train_round()
    saved = a.momentum_state()
    assert saved is not None
    b = lean(spec, x, y, config=config, parameters=a.flat_parameters().copy())
    b.load_momentum_state(saved)
    a.train_round()
    b.train_round()
    np.testing.assert_array_equal(a.flat_parameters(), b.flat_parameters())
    # forgetting the momentum makes the next step a first step
    fresh = lean(spec, x, y, config=config, parameters=a.flat_parameters().copy())
    a.reset_optimizer_state()
    a.train_round()
    fresh.train_round()
    np.testing.assert_array_equal(a.flat_parameters(), fresh.flat_parameters())
    with pytest.raises(ConfigError, match="momentum"):
        a.load_momentum_state(saved[:-1])
    with pytest.raises(ConfigError, match="without momentum"):
        lean(spec, x, y).load_momentum_state(saved)


# ------------------------------------------------------------------------------------------------
# memory kept for backward


def test_frozen_layers_keep_nothing_for_backward() -> None:
    spec = spec_of("mlp")  # blocks: [Flatten, Linear 64-12, ReLU], [Linear 12-9, ReLU], [Linear]
    x, y = batch_for(spec, 8)
    config = TrainingConfig(batch_size=8)
    full = lean(spec, x, y, config=config)
    head = lean(spec, x, y, config=config, plan=make_plan(spec, "suffix", 2, 8, 8))
    biases = lean(spec, x, y, config=config, plan=make_plan(spec, "bias", 0, 4, 8))
    for learner in (full, head, biases):
        assert learner.peak_saved_activation_bytes == 0
        learner.train_round()
    # full: the input, both ReLU outputs (each also the next Linear's input)
    assert full.peak_saved_activation_bytes == 4 * 8 * (64 + 12 + 9)
    # head only: its input, nothing from the frozen blocks
    assert head.peak_saved_activation_bytes == 4 * 8 * 9
    # bias-only, micro-batch 4: the ReLU masks; frozen weights keep no inputs
    assert biases.peak_saved_activation_bytes == 4 * 4 * (12 + 9)


# ------------------------------------------------------------------------------------------------
# evaluation and learning


def test_evaluate_equals_torch_in_chunks() -> None:
    spec = spec_of("cnn1d")
    x, y = batch_for(spec, EVALUATION_CHUNK + 37)
    learner = lean(spec, x[:4], y[:4])
    model = build_torch_model(spec, learner.flat_parameters())
    with torch.no_grad():
        logits = model(torch.from_numpy(x))
    ours = learner.evaluate(x.astype(np.float64), y)
    assert ours.accuracy == float((logits.argmax(1).numpy() == y).mean())
    expected_loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(y)))
    assert ours.loss == pytest.approx(expected_loss, rel=1e-5)
    empty = learner.evaluate(x[:0], y[:0])
    assert math.isnan(empty.accuracy) and math.isnan(empty.loss)


@pytest.mark.parametrize(("kind", "rounds", "floor"), [("mlp", 6, 0.9), ("cnn", 3, 0.85)])
def test_a_few_rounds_on_digits_reach_useful_accuracy(kind: str, rounds: int, floor: float) -> None:
    data = load_builtin("digits", seed=0)
    spec = model_spec(kind, data.input_shape, data.num_classes)
    learner = LeanLearner(
        spec,
        data.x_train,
        data.y_train,
        TrainingConfig(lr=0.05, batch_size=16, momentum=0.5),
        flops_per_sample=float(spec.training_flops_per_sample()),
        seed=1,
    )
    before = learner.evaluate(data.x_test, data.y_test).accuracy
    losses = [learner.train_round().loss for _ in range(rounds)]
    after = learner.evaluate(data.x_test, data.y_test)
    assert before < 0.3 < floor <= after.accuracy
    assert losses[-1] < losses[0]
    assert learner.train_round().flops == data.num_train * spec.training_flops_per_sample()


# ------------------------------------------------------------------------------------------------
# refusals


def test_bad_arguments_are_refused_naming_the_key() -> None:
    spec = spec_of("mlp")
    x, y = batch_for(spec, 8)
    config = TrainingConfig(batch_size=8)
    plan = make_plan(spec, "suffix", 1, 8, 8)
    cases: list[tuple[dict[str, object], str]] = [
        ({"x": x[:3]}, "data"),
        ({"x": x[:0], "y": y[:0]}, "data"),
        ({"x": x.reshape(8, 64)}, "data"),
        ({"y": y + 10}, "data"),
        ({"trained_layers": (0,), "plan": plan}, "trained_layers"),
        ({"trained_layers": ()}, "trained_layers"),
        ({"trained_layers": (99,)}, "trained_layers"),
        ({"plan": make_plan(spec, "full", 0, 4, 4)}, "plan"),  # another batch size
        ({"plan": Plan("full", 0, ("0.1.weight",), 8, 8, 2)}, "plan"),  # another model
        ({"plan": Plan("full", 0, ("9.9.weight",), 8, 8, 3)}, "plan"),  # unknown name
        ({"plan": Plan("suffix", 1, ("0.1.bias",), 8, 8, 3)}, "plan"),  # trains a frozen block
    ]
    for change, key in cases:
        arguments: dict[str, object] = {"x": x, "y": y, **change}
        with pytest.raises(ConfigError) as error:
            LeanLearner(
                spec,
                arguments.pop("x"),  # type: ignore[arg-type]
                arguments.pop("y"),  # type: ignore[arg-type]
                config,
                flops_per_sample=1.0,
                seed=0,
                **arguments,  # type: ignore[arg-type]
            )
        assert error.value.key == key, change
    learner = lean(spec, x, y)
    with pytest.raises(ConfigError, match="evaluation"):
        learner.evaluate(x.reshape(8, 64), y)
    with pytest.raises(ConfigError, match="batch"):
        learner.gradient(x[:0], y[:0])
