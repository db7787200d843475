"""swarmfl.learning.memory: predicted working sets match real training steps, and plans fit."""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Callable
from typing import TypedDict

import pytest
import torch
from torch import nn

from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.memory import (
    CodecName,
    MemoryBreakdown,
    MemoryPlan,
    OptimizerName,
    SavedTensorMeter,
    TrainPlan,
    apply_plan,
    build_optimizer,
    format_bytes,
    measure_training_step,
    parse_bytes,
    plan_table_rows,
    train_step_following_plan,
)

MLP_INPUT = (64,)
CNN_INPUT = (3, 32, 32)


def make_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU()),
        nn.Sequential(nn.Linear(128, 10)),
    )


def make_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)

    def conv_block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))

    return nn.Sequential(
        conv_block(3, 16),
        conv_block(16, 32),
        conv_block(32, 64),
        nn.Sequential(nn.Flatten(), nn.Linear(64 * 4 * 4, 10)),
    )


MODELS: dict[str, tuple[Callable[[], nn.Sequential], tuple[int, ...]]] = {
    "mlp": (make_mlp, MLP_INPUT),
    "cnn": (make_cnn, CNN_INPUT),
}


class Settings(TypedDict):
    optimizer: OptimizerName
    neighbour_replicas: int
    codec: CodecName


# every optimizer and codec appears at least once
GOSSIP_SETTINGS: list[Settings] = [
    {"optimizer": "sgd", "neighbour_replicas": 0, "codec": "int8"},
    {"optimizer": "adam", "neighbour_replicas": 2, "codec": "int4"},
    {"optimizer": "sgd_momentum", "neighbour_replicas": 1, "codec": "fp32"},
]


def assert_close(predicted: MemoryBreakdown, measured: MemoryBreakdown, rel: float = 0.10) -> None:
    assert measured.total == pytest.approx(predicted.total, rel=rel)
    for name, value in predicted.as_dict().items():
        got = measured.as_dict()[name]
        if value or got:
            assert got == pytest.approx(value, rel=rel), name


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("batch_size", [1, 8, 32])
@pytest.mark.parametrize("settings", GOSSIP_SETTINGS[:2], ids=lambda s: s["optimizer"])
def test_chosen_plan_fits_budget_and_prediction_matches_measurement(
    model_name: str, batch_size: int, settings: Settings
) -> None:
    make, input_shape = MODELS[model_name]
    model = make()
    plans = MemoryPlan.candidates(model, input_shape, batch_size, 0, **settings)
    smallest = min(p.predicted.total for p in plans)
    full = plans[0].predicted.total
    assert plans[0].mode == "full" and plans[0].micro_batch == batch_size
    budgets = sorted(
        {smallest, *(smallest + (full - smallest) * f // 4 for f in (1, 2, 3)), full - 1, full}
    )
    measured: dict[TrainPlan, MemoryBreakdown] = {}
    for budget in budgets:
        plan = MemoryPlan.choose(model, input_shape, batch_size, budget, **settings)
        assert plan.predicted.total <= budget
        # the most capable fitting plan: nothing that fits trains more, or as much at a larger
        # micro-batch
        key = (plan.trained_numel, plan.micro_batch)
        fitting = [p for p in plans if p.predicted.total <= budget]
        assert all((p.trained_numel, p.micro_batch) <= key for p in fitting)
        unbudgeted = dataclasses.replace(plan, budget_bytes=0)
        if unbudgeted not in measured:
            measured[unbudgeted] = measure_training_step(
                model, plan, input_shape, batch_size, **settings
            )
        real = measured[unbudgeted]
        assert real.total <= budget
        assert_close(plan.predicted, real)


def test_sgd_momentum_and_fp32_codec_prediction_matches_measurement() -> None:
    model = make_cnn()
    settings = GOSSIP_SETTINGS[2]
    for plan in MemoryPlan.candidates(model, CNN_INPUT, 4, 0, **settings)[::5]:
        real = measure_training_step(model, plan, CNN_INPUT, 4, **settings)
        assert real.optimizer_state == real.gradients > 0
        assert_close(plan.predicted, real)


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

    plans = MemoryPlan.candidates(model, (3, 8, 8), 6, 0, optimizer="adam")
    for plan in plans:
        real = measure_training_step(model, plan, (3, 8, 8), 6, optimizer="adam")
        assert_close(plan.predicted, real)

    assert not model.training
    assert [p.requires_grad for p in model.parameters()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def smallest_plan(plans: list[TrainPlan]) -> TrainPlan:
    return min(plans, key=lambda p: p.predicted.total)


def test_budget_below_smallest_feasible_raises_plan_error_naming_the_need() -> None:
    model = make_cnn()
    plans = MemoryPlan.candidates(model, CNN_INPUT, 16, 0, optimizer="adam")
    need = smallest_plan(plans).predicted.total
    with pytest.raises(PlanError) as caught:
        MemoryPlan.choose(model, CNN_INPUT, 16, need - 1, optimizer="adam")
    message = str(caught.value)
    assert f"({need} bytes)" in message
    assert f"{need / 2**20:.3g} MiB" in message
    assert smallest_plan(plans).describe() in message
    assert isinstance(caught.value, ConfigError)
    # exactly the need is feasible, and gives the smallest plan
    plan = MemoryPlan.choose(model, CNN_INPUT, 16, need, optimizer="adam")
    assert plan.predicted.total == need


def test_generous_budget_trains_full_model_and_just_below_gives_up_something() -> None:
    model = make_cnn()
    full = MemoryPlan.candidates(model, CNN_INPUT, 32, 0)[0]
    generous = MemoryPlan.choose(model, CNN_INPUT, 32, 10 * full.predicted.total)
    assert (generous.mode, generous.micro_batch) == ("full", 32)
    assert generous.trained_parameters == tuple(n for n, _ in model.named_parameters())

    tight = MemoryPlan.choose(model, CNN_INPUT, 32, full.predicted.total - 1)
    assert tight.mode in ("full", "suffix")
    assert tight.micro_batch < 32 or tight.mode == "suffix"
    assert tight.predicted.total < full.predicted.total


def test_tiny_budget_falls_back_to_bias_only_and_trains_only_biases() -> None:
    model = make_cnn()
    plans = MemoryPlan.candidates(model, CNN_INPUT, 8, 0)
    non_bias = min(p.predicted.total for p in plans if p.mode != "bias")
    bias_plans = [p for p in plans if p.mode == "bias" and p.predicted.total < non_bias]
    assert bias_plans
    plan = MemoryPlan.choose(model, CNN_INPUT, 8, non_bias - 1)
    assert plan.mode == "bias"
    trained = apply_plan(model, plan)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == list(plan.trained_parameters)
    assert all(n.endswith(".bias") for n in names)
    assert [p.shape for p in trained] == [dict(model.named_parameters())[n].shape for n in names]


@pytest.mark.parametrize("first_block", [1, 2, 3])
def test_frozen_prefix_saves_nothing_for_backward(first_block: int) -> None:
    model = make_cnn()
    plan = next(
        p
        for p in MemoryPlan.candidates(model, CNN_INPUT, 8, 0)
        if p.mode == "suffix" and p.first_trained_block == first_block
    )
    trained = apply_plan(model, plan)
    optimizer = build_optimizer("sgd", trained, lr=0.1)

    running = [-1]
    for index, block in enumerate(model):
        block.register_forward_pre_hook(lambda _m, _a, i=index: running.__setitem__(0, i))
    saved_in_block: list[int] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved_in_block.append(running[0])
        return tensor

    x = torch.randn(8, *CNN_INPUT)
    y = torch.randint(0, 10, (8,))
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        train_step_following_plan(model, plan, optimizer, x, y, nn.functional.cross_entropy)
    assert saved_in_block
    assert min(saved_in_block) == first_block

    # the frozen prefix adds nothing: the same bytes as training the suffix alone on the
    # prefix's output
    with torch.no_grad():
        prefix_output = model[:first_block](x)
    suffix_alone = nn.Sequential(*list(model)[first_block:])
    alone_plan = MemoryPlan.candidates(suffix_alone, tuple(prefix_output.shape[1:]), 8, 0)[0]
    on_prefix = measure_training_step(model, plan, CNN_INPUT, 8)
    alone = measure_training_step(suffix_alone, alone_plan, tuple(prefix_output.shape[1:]), 8)
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


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("micro_batch", [1, 5, 16])
def test_gradient_accumulation_matches_full_batch_update(model_name: str, micro_batch: int) -> None:
    make, input_shape = MODELS[model_name]
    full_plan = MemoryPlan.candidates(make(), input_shape, 32, 0)[0]
    micro_plan = dataclasses.replace(full_plan, micro_batch=micro_batch)
    torch.manual_seed(7)
    x = torch.randn(32, *input_shape)
    y = torch.randint(0, 10, (32,))

    results = []
    for plan in (full_plan, micro_plan):
        model = make()
        optimizer = build_optimizer("sgd", apply_plan(model, plan), lr=0.5)
        loss = train_step_following_plan(model, plan, optimizer, x, y, nn.functional.cross_entropy)
        results.append((loss, [p.detach().clone() for p in model.parameters()]))
    (full_loss, full_params), (micro_loss, micro_params) = results
    assert micro_loss == pytest.approx(full_loss, rel=1e-5)
    untouched = list(make().parameters())
    for full_p, micro_p, start in zip(full_params, micro_params, untouched, strict=True):
        assert not torch.equal(full_p, start)  # the step really moved the weights
        torch.testing.assert_close(micro_p, full_p, rtol=1e-5, atol=1e-6)


def test_micro_batches_accumulate_more_steps_but_hold_fewer_activations() -> None:
    model = make_cnn()
    plans = [p for p in MemoryPlan.candidates(model, CNN_INPUT, 32, 0) if p.mode == "full"]
    assert [p.micro_batch for p in plans] == [32, 16, 8, 4, 2, 1]
    assert [p.accumulation_steps for p in plans] == [1, 2, 4, 8, 16, 32]
    activations = [p.predicted.activations for p in plans]
    assert activations == sorted(activations, reverse=True)
    # activations scale linearly with the micro-batch for this model: no constant term
    assert activations[0] == 32 * activations[-1]


def test_train_step_refuses_a_model_not_set_up_for_the_plan() -> None:
    model = make_mlp()
    plan = next(p for p in MemoryPlan.candidates(model, MLP_INPUT, 4, 0) if p.mode == "suffix")
    optimizer = build_optimizer("sgd", list(model.parameters()), lr=0.1)
    with pytest.raises(ConfigError, match="apply_plan"):
        train_step_following_plan(
            model,
            plan,
            optimizer,
            torch.randn(4, 64),
            torch.zeros(4, dtype=torch.long),
            nn.functional.cross_entropy,
        )


def make_named_cnn() -> nn.Sequential:
    cnn = make_cnn()
    return nn.Sequential(OrderedDict(zip(("stem", "mid", "deep", "head"), cnn, strict=True)))


def test_apply_plan_refuses_a_plan_for_another_model() -> None:
    plan = MemoryPlan.candidates(make_cnn(), CNN_INPUT, 2, 0)[0]
    with pytest.raises(ConfigError, match="4 blocks"):
        apply_plan(make_mlp(), plan)
    with pytest.raises(ConfigError, match="does not have"):
        apply_plan(make_named_cnn(), plan)


def test_blocks_with_names_plan_like_numbered_blocks() -> None:
    named, numbered = make_named_cnn(), make_cnn()
    named_plans = MemoryPlan.candidates(named, CNN_INPUT, 4, 0)
    numbered_plans = MemoryPlan.candidates(numbered, CNN_INPUT, 4, 0)
    assert [(p.describe(), p.predicted) for p in named_plans] == [
        (p.describe(), p.predicted) for p in numbered_plans
    ]
    head_only = next(p for p in named_plans if p.mode == "suffix" and p.first_trained_block == 3)
    assert head_only.trained_parameters == ("head.1.weight", "head.1.bias")
    real = measure_training_step(named, head_only, CNN_INPUT, 4)
    assert real == head_only.predicted


def test_plan_table_rows_describe_every_candidate() -> None:
    model = make_cnn()
    budget = 1_500_000
    plans = MemoryPlan.candidates(model, CNN_INPUT, 8, budget, optimizer="adam")
    rows = plan_table_rows(plans)
    assert len(rows) == len(plans)
    for row, plan in zip(rows, plans, strict=True):
        parts = ("weights", "gradients", "optimizer_state", "activations", "replicas")
        assert row["total"] == sum(row[k] for k in (*parts, "codec_buffers"))  # type: ignore[misc]
        assert row["fits"] == ("yes" if plan.predicted.total <= budget else "no")
        assert row["mode"] == plan.mode
        assert row["micro_batch"] == plan.micro_batch
        assert row["trained_params"] == sum(
            dict(model.named_parameters())[n].numel() for n in plan.trained_parameters
        )
    assert rows[0]["trained_blocks"] == "0-3"
    assert {r["fits"] for r in rows} == {"yes", "no"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("64MiB", 64 * 2**20),
        ("1.5GiB", 3 * 2**29),
        ("512KiB", 512 * 1024),
        ("100MB", 100_000_000),
        ("1000000", 1_000_000),
        (" 2 gib ", 2 * 2**30),
        ("1.1GB", 1_100_000_000),
        ("0.5KiB", 512),
        (4096, 4096),
    ],
)
def test_parse_bytes_accepts_sizes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "MiB", "-5MiB", "12 parsecs", "1.5", "1e6", "5 Mi B"])
def test_parse_bytes_rejects_bad_text(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_bytes(text)


def test_format_bytes_uses_binary_units() -> None:
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(1_782_579) == "1.7 MiB"
    assert format_bytes(3 * 2**29) == "1.5 GiB"
    assert parse_bytes(format_bytes(64 * 2**20).replace(" ", "")) == 64 * 2**20


def test_value_objects_validate_their_fields() -> None:
    plan = MemoryPlan.candidates(make_mlp(), MLP_INPUT, 4, 0)[0]
    with pytest.raises(ConfigError, match="micro_batch"):
        dataclasses.replace(plan, micro_batch=5)
    with pytest.raises(ConfigError, match="first_trained_block"):
        dataclasses.replace(plan, first_trained_block=1)
    with pytest.raises(ConfigError, match="mode"):
        dataclasses.replace(plan, mode="most")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="trained_parameters"):
        dataclasses.replace(plan, trained_parameters=())
    with pytest.raises(ConfigError, match="activations"):
        dataclasses.replace(plan.predicted, activations=-1)
    with pytest.raises(ConfigError, match="optimizer"):
        MemoryPlan.choose(make_mlp(), MLP_INPUT, 4, 10**9, optimizer="lion")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        MemoryPlan.choose(make_mlp(), MLP_INPUT, 0, 10**9)
    with pytest.raises(ConfigError, match="model"):
        MemoryPlan.choose(nn.Linear(3, 3), (3,), 1, 10**9)  # type: ignore[arg-type]


def test_replica_scope_model_sizes_neighbour_replicas_by_the_whole_model() -> None:
    model = make_cnn()
    whole = sum(p.numel() for p in model.parameters()) * 4
    settings = {"neighbour_replicas": 3, "replica_scope": "model"}
    plans = MemoryPlan.candidates(model, CNN_INPUT, 4, 0, **settings)  # type: ignore[arg-type]
    trained_scope = MemoryPlan.candidates(model, CNN_INPUT, 4, 0, neighbour_replicas=3)
    for plan, narrow in list(zip(plans, trained_scope, strict=True))[::7]:
        assert plan.predicted.replicas == 3 * whole
        assert narrow.predicted.replicas == 3 * plan.trained_numel * 4
        real = measure_training_step(model, plan, CNN_INPUT, 4, **settings)  # type: ignore[arg-type]
        assert real.replicas == plan.predicted.replicas
        assert_close(plan.predicted, real)
    with pytest.raises(ConfigError, match="replica_scope"):
        MemoryPlan.choose(model, CNN_INPUT, 4, 10**9, replica_scope="all")  # type: ignore[arg-type]
