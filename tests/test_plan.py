"""swarmfl.learning.plan: the planner picks the most capable plan that fits, and its prediction
is what the learner's real training step measures."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from _plan_models import (
    CNN_INPUT,
    MLP_INPUT,
    MODELS,
    learner_on_one_batch,
    make_cnn,
    make_mlp,
    make_named_cnn,
)
from torch import nn

from swarmfl.core.codecs import DEFAULT_CODEC
from swarmfl.core.node import NodeConfig
from swarmfl.errors import ConfigError, PlanError
from swarmfl.learning.measure import allocate_gossip_buffers, measure_training_step
from swarmfl.learning.plan import (
    MemoryBreakdown,
    MemoryPlan,
    PlanSettings,
    TrainPlan,
    plan_table_rows,
    planner_optimizer,
)
from swarmfl.learning.plan_search import (
    ActivationLine,
    ParameterCost,
    candidate_plans,
    choose_plan,
)
from swarmfl.learning.trainplan import PlanMode

# every optimizer and codec appears at least once
GOSSIP_SETTINGS: list[PlanSettings] = [
    {"optimizer": "sgd", "neighbour_replicas": 0, "codec": "int8"},
    {"optimizer": "sgd_momentum", "neighbour_replicas": 2, "codec": "int4"},
    {"optimizer": "sgd_momentum", "neighbour_replicas": 1, "codec": "fp32"},
]


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
@pytest.mark.parametrize("batch_size", [1, 8, 32])
@pytest.mark.parametrize("settings", GOSSIP_SETTINGS[:2], ids=lambda s: s["codec"])
def test_chosen_plan_fits_budget_and_prediction_matches_measurement(
    model_name: str, batch_size: int, settings: PlanSettings
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
            measured[unbudgeted] = measure_training_step(model, plan, input_shape, **settings)
        assert measured[unbudgeted] == plan.predicted
        assert measured[unbudgeted].total <= budget


def test_sgd_momentum_and_fp32_codec_prediction_matches_measurement() -> None:
    model = make_cnn()
    settings = GOSSIP_SETTINGS[2]
    for plan in MemoryPlan.candidates(model, CNN_INPUT, 4, 0, **settings)[::5]:
        real = measure_training_step(model, plan, CNN_INPUT, **settings)
        assert real.optimizer_state == real.gradients > 0
        assert real == plan.predicted


def test_default_codec_is_fp32_as_for_the_scenario_and_the_node() -> None:
    assert DEFAULT_CODEC == "fp32"
    codec_field = next(f for f in dataclasses.fields(NodeConfig) if f.name == "codec")
    assert codec_field.default == DEFAULT_CODEC
    model = make_mlp()
    default = MemoryPlan.candidates(model, MLP_INPUT, 4, 0)
    fp32 = MemoryPlan.candidates(model, MLP_INPUT, 4, 0, codec="fp32")
    assert default == fp32
    # fp32: the encoder's replica and a float32 payload, both one float32 per trained value
    for plan in default:
        assert plan.predicted.codec_buffers == 2 * 4 * plan.trained_numel
    numels = [p.numel() for p in model.parameters()]
    _, buffers = allocate_gossip_buffers(
        numels, neighbour_replicas=0, codec=DEFAULT_CODEC, block_size=128
    )
    assert sum(b.nbytes for b in buffers) == default[0].predicted.codec_buffers


def smallest_plan(plans: list[TrainPlan]) -> TrainPlan:
    return min(plans, key=lambda p: p.predicted.total)


def test_budget_below_smallest_feasible_raises_plan_error_naming_the_need() -> None:
    model = make_cnn()
    plans = MemoryPlan.candidates(model, CNN_INPUT, 16, 0, optimizer="sgd_momentum")
    need = smallest_plan(plans).predicted.total
    with pytest.raises(PlanError) as caught:
        MemoryPlan.choose(model, CNN_INPUT, 16, need - 1, optimizer="sgd_momentum")
    message = str(caught.value)
    assert f"({need} bytes)" in message
    assert f"{need / 2**20:.3g} MiB" in message
    assert smallest_plan(plans).describe() in message
    assert isinstance(caught.value, ConfigError)
    # exactly the need is feasible, and gives the smallest plan
    plan = MemoryPlan.choose(model, CNN_INPUT, 16, need, optimizer="sgd_momentum")
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


def test_tiny_budget_falls_back_to_bias_only_and_the_learner_trains_only_biases() -> None:
    model = make_cnn()
    plans = MemoryPlan.candidates(model, CNN_INPUT, 8, 0)
    non_bias = min(p.predicted.total for p in plans if p.mode != "bias")
    bias_plans = [p for p in plans if p.mode == "bias" and p.predicted.total < non_bias]
    assert bias_plans
    plan = MemoryPlan.choose(model, CNN_INPUT, 8, non_bias - 1)
    assert plan.mode == "bias"
    learner, _ = learner_on_one_batch(model, plan, CNN_INPUT)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == list(plan.trained_parameters)
    assert all(n.endswith(".bias") for n in names)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == plan.trained_numel
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    learner.train_round()
    for name, param in model.named_parameters():
        moved = not np.array_equal(param.detach().numpy(), before[name].numpy())
        assert moved == (name in names), name


def test_micro_batches_accumulate_more_steps_but_hold_fewer_activations() -> None:
    model = make_cnn()
    plans = [p for p in MemoryPlan.candidates(model, CNN_INPUT, 32, 0) if p.mode == "full"]
    assert [p.micro_batch for p in plans] == [32, 16, 8, 4, 2, 1]
    assert [p.accumulation_steps for p in plans] == [1, 2, 4, 8, 16, 32]
    activations = [p.predicted.activations for p in plans]
    assert activations == sorted(activations, reverse=True)
    # activations scale linearly with the micro-batch for this model: no constant term
    assert activations[0] == 32 * activations[-1]


def test_blocks_with_names_plan_like_numbered_blocks() -> None:
    named, numbered = make_named_cnn(), make_cnn()
    named_plans = MemoryPlan.candidates(named, CNN_INPUT, 4, 0)
    numbered_plans = MemoryPlan.candidates(numbered, CNN_INPUT, 4, 0)
    assert [(p.describe(), p.predicted) for p in named_plans] == [
        (p.describe(), p.predicted) for p in numbered_plans
    ]
    head_only = next(p for p in named_plans if p.mode == "suffix" and p.first_trained_block == 3)
    assert head_only.trained_parameters == ("head.1.weight", "head.1.bias")
    real = measure_training_step(named, head_only, CNN_INPUT)
    assert real == head_only.predicted


def test_plan_table_rows_describe_every_candidate() -> None:
    model = make_cnn()
    budget = 1_500_000
    plans = MemoryPlan.candidates(model, CNN_INPUT, 8, budget, optimizer="sgd_momentum")
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
    # the learner trains with SGD only: the planner predicts for nothing else
    for optimizer in ("adam", "lion"):
        with pytest.raises(ConfigError, match="optimizer"):
            MemoryPlan.choose(make_mlp(), MLP_INPUT, 4, 10**9, optimizer=optimizer)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="codec"):
        MemoryPlan.choose(make_mlp(), MLP_INPUT, 4, 10**9, codec="int2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="batch_size"):
        MemoryPlan.choose(make_mlp(), MLP_INPUT, 0, 10**9)
    with pytest.raises(ConfigError, match="model"):
        MemoryPlan.choose(nn.Linear(3, 3), (3,), 1, 10**9)  # type: ignore[arg-type]


def test_planner_optimizer_names_what_the_learner_keeps() -> None:
    assert planner_optimizer(0.0) == "sgd"
    assert planner_optimizer(0.9) == "sgd_momentum"
    model = make_mlp()
    plan = MemoryPlan.candidates(model, MLP_INPUT, 4, 0, optimizer=planner_optimizer(0.5))[0]
    learner, _ = learner_on_one_batch(make_mlp(), plan, MLP_INPUT, momentum=0.5)
    assert learner.optimizer_state_bytes == plan.predicted.optimizer_state > 0


def test_replica_scope_model_sizes_neighbour_replicas_by_the_whole_model() -> None:
    model = make_cnn()
    whole = sum(p.numel() for p in model.parameters()) * 4
    settings = {"neighbour_replicas": 3, "replica_scope": "model"}
    plans = MemoryPlan.candidates(model, CNN_INPUT, 4, 0, **settings)  # type: ignore[arg-type]
    trained_scope = MemoryPlan.candidates(model, CNN_INPUT, 4, 0, neighbour_replicas=3)
    for plan, narrow in list(zip(plans, trained_scope, strict=True))[::7]:
        assert plan.predicted.replicas == 3 * whole
        assert narrow.predicted.replicas == 3 * plan.trained_numel * 4
        real = measure_training_step(model, plan, CNN_INPUT, **settings)  # type: ignore[arg-type]
        assert real == plan.predicted
    with pytest.raises(ConfigError, match="replica_scope"):
        MemoryPlan.choose(model, CNN_INPUT, 4, 10**9, replica_scope="all")  # type: ignore[arg-type]


class _RecordingCosts:
    """A backend's cost model with made-up bytes: three blocks, the middle one without a bias."""

    num_blocks = 3
    weights_bytes = 1000

    def __init__(self) -> None:
        self.parameters = [
            ParameterCost("0.weight", 0, 10, 40),
            ParameterCost("0.bias", 0, 2, 8),
            ParameterCost("1.weight", 1, 6, 24),
            ParameterCost("2.weight", 2, 4, 16),
            ParameterCost("2.bias", 2, 1, 4),
        ]
        self.asked: list[tuple[str, int, tuple[str, ...]]] = []

    def activation_line(
        self, mode: PlanMode, first_trained_block: int, trained_names: tuple[str, ...]
    ) -> ActivationLine:
        self.asked.append((mode, first_trained_block, trained_names))
        return ActivationLine(constant=100 * (3 - first_trained_block), per_sample=10)


def test_the_shared_search_asks_the_backend_once_per_trained_set_and_adds_its_bytes() -> None:
    costs = _RecordingCosts()
    settings: PlanSettings = {"optimizer": "sgd_momentum", "neighbour_replicas": 2}
    plans = candidate_plans(costs, 4, 1250, **settings)
    # bias-only from block 1 trains what bias-only from block 2 trains: asked once, as block 2
    assert costs.asked == [
        ("full", 0, ("0.weight", "0.bias", "1.weight", "2.weight", "2.bias")),
        ("suffix", 1, ("1.weight", "2.weight", "2.bias")),
        ("suffix", 2, ("2.weight", "2.bias")),
        ("bias", 0, ("0.bias", "2.bias")),
        ("bias", 2, ("2.bias",)),
    ]
    assert [(p.mode, p.first_trained_block, p.micro_batch) for p in plans] == [
        (mode, first, micro) for mode, first, _ in costs.asked for micro in (4, 2, 1)
    ]
    suffix_at_2 = plans[4]  # suffix from block 1 at micro-batch 2: 11 values, 44 gradient bytes
    assert suffix_at_2.predicted.as_dict() == {
        "weights": 1000,
        "gradients": 44,
        "optimizer_state": 44,  # momentum: one value per trained value
        "activations": 200 + 10 * 2,
        "replicas": 2 * 11 * 4,
        "codec_buffers": 11 * 4 + 11 * 4,  # fp32 replica and payload
        "per_sample_gradients": 0,
        "total": 1000 + 44 + 44 + 220 + 88 + 88,
    }
    # the most values within 1250 bytes: the suffix from block 2 (5 values), which needs 1260
    # bytes at micro-batch 4 and 1240 at micro-batch 2
    chosen = choose_plan(plans, 1250)
    assert (chosen.mode, chosen.first_trained_block, chosen.micro_batch) == ("suffix", 2, 2)
    # the least any plan needs: one bias at micro-batch 1, 1000 + 4 + 4 + 110 + 8 + 8 bytes
    with pytest.raises(
        PlanError,
        match=r"feasible lean plan \(bias-only from block 2, micro-batch 1\) "
        r"which needs 0.00108 MiB \(1134 bytes\)",
    ):
        choose_plan(candidate_plans(costs, 4, 1000, **settings), 1000, noun="lean plan")
