"""``swarmfl plan``: what a device would train within its memory budget, as a table.

Builds the model the simulator would build (:func:`~swarmfl.learning.models.build_model`), asks
:class:`~swarmfl.learning.plan.MemoryPlan` for its candidates and its choice, and renders them
with rich, byte counts in binary units (:func:`~swarmfl.sizes.format_bytes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from rich import box
from rich.console import Console
from rich.table import Table

from swarmfl.config.sections import MAX_MODEL_WEIGHTS
from swarmfl.core.codecs import DEFAULT_CODEC, CodecName
from swarmfl.core.quant import MAX_BLOCK_SIZE, MIN_BLOCK_SIZE
from swarmfl.errors import ConfigError
from swarmfl.learning.models import build_model
from swarmfl.learning.plan import (
    MemoryPlan,
    OptimizerName,
    PlanSettings,
    ReplicaScope,
    TrainPlan,
    plan_table_rows,
)
from swarmfl.sizes import format_bytes, parse_bytes

__all__ = ["PlanRequest", "parse_shape", "parse_widths", "print_plan"]

#: The largest batch and layer width ``swarmfl plan`` considers (the config files' bounds).
MAX_BATCH_SIZE = 65_536
MAX_WIDTH = 65_536


def parse_shape(text: str, *, key: str = "input") -> tuple[int, ...]:
    """``"3x32x32"`` to ``(3, 32, 32)``, ``"64"`` to ``(64,)``.

    Raises :class:`ConfigError` naming ``key`` for anything but positive ints joined by ``x``.
    """
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise ConfigError(f"expected a shape like '3x32x32' or '64', got {text!r}", key=key)
    return shape


def parse_widths(text: str, *, key: str) -> tuple[int, ...]:
    """``"16,32"`` to ``(16, 32)``. Raises :class:`ConfigError` naming ``key``."""
    try:
        widths = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        raise ConfigError(f"expected positive ints separated by commas, got {text!r}", key=key)
    return widths


@dataclass(frozen=True)
class PlanRequest:
    """What ``swarmfl plan`` was asked. ``budget`` is text (``"64MiB"``) or bytes."""

    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    budget: str | int
    classes: int = 10
    hidden: tuple[int, ...] = (128,)
    channels: tuple[int, ...] = (16, 32)
    optimizer: OptimizerName = "sgd"
    neighbour_replicas: int = 4
    codec: CodecName = DEFAULT_CODEC
    block_size: int = 128
    replica_scope: ReplicaScope = "trained"
    show_all: bool = False
    dp: bool = False


def _check_bounds(request: PlanRequest) -> None:
    """Refuse what no device can train (before a model of that size is built)."""

    def within(value: int, low: int, high: int, key: str) -> None:
        if not low <= value <= high:
            raise ConfigError(f"must be in [{low}, {high}], got {value}", key=key)

    within(request.batch_size, 1, MAX_BATCH_SIZE, "batch")
    within(request.block_size, MIN_BLOCK_SIZE, MAX_BLOCK_SIZE, "block-size")
    within(request.classes, 1, MAX_WIDTH, "classes")
    within(request.neighbour_replicas, 0, 4096, "replicas")
    for key, values in (
        ("input", request.input_shape),
        ("hidden", request.hidden),
        ("channels", request.channels),
    ):
        if len(values) > 32:
            raise ConfigError(f"at most 32 values, got {len(values)}", key=key)
        for value in values:
            within(value, 1, MAX_WIDTH, key)
    inputs = math.prod(request.input_shape)
    if request.model == "mlp":
        dims = (inputs, *request.hidden, request.classes)
        weights = sum(a * b for a, b in pairwise(dims))
        key = "hidden"
    else:
        convs = (request.input_shape[0], *request.channels)
        weights = sum(9 * a * b for a, b in pairwise(convs))
        weights += inputs // request.input_shape[0] * request.channels[-1] * request.classes
        key = "input"
    if weights > MAX_MODEL_WEIGHTS:
        raise ConfigError(
            f"the model would have about {weights:,} weights, over the limit of "
            f"{MAX_MODEL_WEIGHTS:,}",
            key=key,
        )


def print_plan(request: PlanRequest, console: Console) -> TrainPlan:
    """Print the candidates and the chosen plan; return the chosen plan.

    Without ``show_all`` the table keeps, per set of trained parameters, the plan at the
    largest micro-batch that fits (or at micro-batch 1 if none fits).
    Raises :class:`ConfigError` for a bad budget, model or shape, and
    :class:`~swarmfl.errors.PlanError` (naming the smallest feasible budget) if nothing fits.
    """
    try:
        budget = parse_bytes(request.budget)
    except ConfigError as exc:
        raise ConfigError(exc.problem, key="budget") from None
    _check_bounds(request)
    model = build_model(
        request.model,
        request.input_shape,
        request.classes,
        hidden=request.hidden,
        channels=request.channels,
    )
    args = (model, request.input_shape, request.batch_size, budget)
    settings = PlanSettings(
        optimizer=request.optimizer,
        neighbour_replicas=request.neighbour_replicas,
        codec=request.codec,
        block_size=request.block_size,
        replica_scope=request.replica_scope,
        dp=request.dp,
    )
    chosen = MemoryPlan.choose(*args, **settings)
    plans = MemoryPlan.candidates(*args, **settings)
    shown = plans if request.show_all else _best_per_trained_set(plans)
    total_values = sum(p.numel() for p in model.parameters())
    console.print(
        f"[bold]{request.model}[/] {request.input_shape} -> {request.classes} classes: "
        f"{len(model)} blocks, {total_values:,} parameters "
        f"({format_bytes(plans[0].predicted.weights)} of weights); batch {request.batch_size}, "
        f"{request.optimizer}, {request.neighbour_replicas} neighbour replicas "
        f"({request.replica_scope}), {request.codec} codec"
        f"{', DP-SGD (per-sample gradients)' if request.dp else ''}; budget {format_bytes(budget)}"
    )
    console.print(_table(shown, chosen))
    full = plans[0]
    share = chosen.predicted.training_overhead / max(1, full.predicted.training_overhead)
    console.print(
        f"chosen: [bold]{chosen.describe()}[/] ({chosen.accumulation_steps} step"
        f"{'s' if chosen.accumulation_steps > 1 else ''} per batch): trains "
        f"{chosen.trained_numel:,} of {total_values:,} values "
        f"({100 * chosen.trained_numel / total_values:.0f} %), needs "
        f"{format_bytes(chosen.predicted.total)} of {format_bytes(budget)}; training overhead "
        f"{format_bytes(chosen.predicted.training_overhead)} "
        f"({100 * share:.0f} % of full backprop's)"
    )
    return chosen


def _best_per_trained_set(plans: Sequence[TrainPlan]) -> list[TrainPlan]:
    # each set's plans come by decreasing micro-batch: keep the first that fits, else the last
    best: dict[tuple[str, ...], TrainPlan] = {}
    for plan in plans:
        kept = best.get(plan.trained_parameters)
        if kept is None or not kept.fits:
            best[plan.trained_parameters] = plan
    return list(best.values())


def _table(plans: Sequence[TrainPlan], chosen: TrainPlan) -> Table:
    table = Table(
        title="training plans: predicted bytes per component",
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    # plain SGD keeps no optimizer state: leave out a column of zeros
    with_optimizer = any(plan.predicted.optimizer_state for plan in plans)
    table.add_column("", no_wrap=True)
    table.add_column("trains (blocks)")
    table.add_column("values", justify="right")
    table.add_column("micro x steps", justify="right")
    components = ["gradients", *(["optimizer"] if with_optimizer else [])]
    with_dp = any(plan.predicted.per_sample_gradients for plan in plans)
    components += ["activations", "replicas", "codec", *(["per-sample"] if with_dp else [])]
    components.append("total")
    for name in components:
        table.add_column(name, justify="right")
    table.add_column("fits")
    for plan, row in zip(plans, plan_table_rows(plans), strict=True):
        predicted = plan.predicted
        values = [predicted.gradients, *([predicted.optimizer_state] if with_optimizer else [])]
        values += [predicted.activations, predicted.replicas, predicted.codec_buffers]
        values += [predicted.per_sample_gradients] if with_dp else []
        values.append(predicted.total)
        table.add_row(
            "▶" if plan == chosen else "",
            f"{row['mode']} {row['trained_blocks']}",
            f"{plan.trained_numel:,}",
            f"{plan.micro_batch} x {plan.accumulation_steps}",
            *(format_bytes(v) for v in values),
            "[green]yes[/]" if plan.fits else "[red]no[/]",
            style="bold" if plan == chosen else None,
        )
    return table
