"""Sweeps: a scenario's cross-product of settings × seeds, one run folder each, resumable.

From the command line (``swarmfl sweep``) or from Python::

    from swarmfl.sim.sweep import run_sweep

    experiment = run_sweep(
        "scenarios/quickstart.toml",
        grid={"gossip.codec": ["fp32", "int8"], "radio.loss": [0.0, 0.3]},
        seeds=3,
        out="runs/codec-vs-loss",
    )
    experiment.variants   # one dict per variant: mean, std and 95 % CI of each metric
    experiment.runs       # one dict per run (pandas.DataFrame(experiment.runs) if you like)

The same sweep can be a ``[sweep]`` table in the scenario file (``grid``, ``seeds``, ``out``,
``executor``, ``workers``, ``ray_address``); arguments given here or on the command line win.
Each run's folder is ``<out>/<variant>/seed-<n>``. Running the same sweep again resumes it:
finished runs (their ``summary.json`` exists) are kept and not run again; a failed run is
reported with its error, does not stop the others, and runs again next time.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypedDict, Unpack

from pydantic import Field, field_validator
from rich.console import Console

from swarmfl.config.loader import (
    apply_overrides,
    parse_override,
    read_toml,
    resolve_paths,
    validate,
)
from swarmfl.config.scenario_file import (
    SCENARIO_PATH_KEYS,
    Scenario,
    scenario_to_toml,
    toml_value,
    validate_scenario,
)
from swarmfl.config.sections import PositiveInt, Section
from swarmfl.errors import ConfigError
from swarmfl.sim.executors import Executor, RunOutcome, RunTask, make_executor
from swarmfl.sim.results import RUN_FILE, Experiment, collect_experiment
from swarmfl.sim.runfolder import is_finished, override_note
from swarmfl.sim.sweep_progress import SweepProgress

__all__ = [
    "PlannedRun",
    "SweepOptions",
    "SweepPlan",
    "SweepSection",
    "Variant",
    "parse_grid",
    "plan_sweep",
    "run_sweep",
]

GridValue = bool | int | float | str | list[Any]
_MAX_RUNS = 100_000


class SweepSection(Section):
    """The ``[sweep]`` table of a scenario file.

    ``grid`` maps dotted scenario keys to the values to try (the cross-product is run);
    ``seeds`` is a count (``run.seed``, ``run.seed + 1``, ...) or a list of seeds.
    """

    grid: dict[str, Annotated[list[GridValue], Field(min_length=1)]] = Field(default_factory=dict)
    seeds: int | list[int] = 1
    out: str | None = None
    executor: Literal["local", "ray"] = "local"
    workers: PositiveInt | None = None
    ray_address: str | None = None

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: int | list[int]) -> int | list[int]:
        if isinstance(seeds, int) and seeds < 1:
            raise ValueError(f"must be at least 1, got {seeds}")
        if isinstance(seeds, list) and not seeds:
            raise ValueError("must list at least one seed")
        return seeds

    @field_validator("grid")
    @classmethod
    def _dotted_keys(cls, grid: dict[str, list[GridValue]]) -> dict[str, list[GridValue]]:
        for key in grid:
            if not key or any(not part for part in key.split(".")) or key.startswith("sweep."):
                raise ValueError(f"{key!r} is not a dotted scenario key")
        return grid


class _SweepTable(Section):
    sweep: SweepSection = Field(default_factory=SweepSection)


@dataclass(frozen=True, slots=True)
class Variant:
    """One point of the grid: ``settings`` are ``(key, value)`` pairs."""

    settings: tuple[tuple[str, Any], ...]

    @property
    def name(self) -> str:
        """``gossip.codec=int8,radio.loss=0.3`` (``base`` for an empty grid)."""
        return ",".join(f"{k}={_label(v)}" for k, v in self.settings) or "base"

    @property
    def folder_name(self) -> str:
        """The name as a safe folder name."""
        return re.sub(r"[^A-Za-z0-9._=,+-]", "_", self.name)[:200]

    @property
    def overrides(self) -> list[str]:
        """The settings as ``--set`` overrides."""
        return [f"{k}={_toml_text(v)}" for k, v in self.settings]


@dataclass(frozen=True, slots=True)
class PlannedRun:
    """One run of a sweep: its variant, seed, folder and resolved scenario."""

    variant: Variant
    seed: int
    folder: Path
    scenario: Scenario
    title_note: str


@dataclass
class SweepPlan:
    """Every run of a sweep, and how to execute them."""

    folder: Path
    runs: list[PlannedRun]
    keys: list[str]
    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    finished: list[PlannedRun] = field(default_factory=list)

    @property
    def todo(self) -> list[PlannedRun]:
        """The runs not finished yet."""
        done = {id(run) for run in self.finished}
        return [run for run in self.runs if id(run) not in done]


def _label(value: Any) -> str:
    """A grid value as written in variant names: strings bare, the rest as TOML."""
    return value if isinstance(value, str) else _toml_text(value)


def _toml_text(value: Any) -> str:
    """A grid value as TOML text (for ``--set``; list items joined by a bare comma, as in
    variant and folder names). Raises :class:`ConfigError` for a value TOML cannot hold."""
    try:
        return toml_value(value, separator=",")
    except TypeError:
        raise ConfigError(f"cannot sweep over {value!r}", source="--grid") from None


def _split_top_level(text: str) -> list[str]:
    """``a,[1,2],"x,y"`` -> ``a``, ``[1,2]``, ``"x,y"``: commas inside brackets or quotes stay."""
    items: list[str] = []
    current: list[str] = []
    depth, quote = 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        elif char == "," and depth == 0:
            items.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    items.append("".join(current).strip())
    return items


def parse_grid(texts: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid key=v1,v2`` arguments as a grid. Raises :class:`ConfigError` naming the bad one."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        items = _split_top_level(raw)
        if not sep or not key.strip() or any(not item for item in items):
            raise ConfigError(f"expected key.path=v1,v2,..., got {text!r}", source="--grid")
        grid[key.strip()] = [parse_override(f"{key}={item}")[1] for item in items]
    return grid


def _variants(grid: Mapping[str, Sequence[Any]]) -> list[Variant]:
    variants = [Variant(())]
    for key, values in grid.items():
        variants = [Variant((*v.settings, (key, value))) for v in variants for value in values]
    return variants


class SweepOptions(TypedDict, total=False):
    """The keyword arguments of :func:`plan_sweep` and :func:`run_sweep`."""

    grid: Mapping[str, Sequence[Any]] | None
    """Dotted scenario keys and the values to try (added to the ``[sweep]`` table's grid)."""
    seeds: int | Sequence[int] | None
    """A count (``run.seed``, ``run.seed + 1``, ...) or a list of seeds."""
    out: str | Path | None
    """The experiment folder."""
    overrides: Sequence[str]
    """``--set`` overrides applied to every run."""
    executor: str | None
    """``local`` or ``ray``."""
    workers: int | None
    """Runs at once (default: every core; Ray: the cluster's CPUs)."""
    ray_address: str | None
    """The Ray cluster to join (default: a local instance)."""


def plan_sweep(scenario: str | Path, **options: Unpack[SweepOptions]) -> SweepPlan:
    """Resolve every run of a sweep and see which are finished already.

    Options left out (or None) come from the file's ``[sweep]`` table, else defaults (one seed,
    folder ``runs/<name>-sweep``, the local executor). Raises :class:`ConfigError` (one line:
    file, key, problem) for a bad file, table, grid value or override, and for a finished run
    whose scenario differs from the one planned (the sweep changed under the same folder), and
    :class:`TypeError` for an option not in :class:`SweepOptions`.
    """
    unknown = sorted(set(options) - SweepOptions.__optional_keys__)
    if unknown:  # what a signature with named parameters would refuse
        raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
    grid, seeds, out = options.get("grid"), options.get("seeds"), options.get("out")
    overrides = options.get("overrides", ())
    path = Path(scenario)
    raw = read_toml(path)
    raw_sweep = validate(_SweepTable, {"sweep": raw.pop("sweep", {})}, source=str(path)).sweep
    resolve_paths(raw, SCENARIO_PATH_KEYS, path.parent)
    base = validate_scenario(apply_overrides(raw, list(overrides)), source=str(path))
    merged_grid: dict[str, Sequence[Any]] = dict(raw_sweep.grid)
    merged_grid.update(grid or {})
    seed_spec = seeds if seeds is not None else raw_sweep.seeds
    if isinstance(seed_spec, int):
        if seed_spec < 1:
            raise ConfigError(f"must be at least 1, got {seed_spec}", source="--seeds")
        seed_list = [base.run.seed + i for i in range(seed_spec)]
    else:
        seed_list = list(dict.fromkeys(seed_spec))
    variants = _variants(merged_grid)
    names = [v.folder_name for v in variants]
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ConfigError(
                f"two variants share the folder name {name!r}: {variants[index].name!r}",
                source="--grid",
            )
    if len(variants) * len(seed_list) > _MAX_RUNS:
        raise ConfigError(f"{len(variants) * len(seed_list)} runs; at most {_MAX_RUNS}")
    folder = Path(out or raw_sweep.out or Path("runs") / f"{base.run.name}-sweep")
    plan = SweepPlan(
        folder=folder,
        runs=[],
        keys=list(merged_grid),
        executor=options.get("executor") or raw_sweep.executor,
        workers=options.get("workers") or raw_sweep.workers,
        ray_address=options.get("ray_address") or raw_sweep.ray_address,
    )
    for variant in variants:
        every = [*overrides, *variant.overrides]
        for seed in seed_list:
            resolved = validate_scenario(
                apply_overrides(raw, [*every, f"run.seed={seed}"]), source=str(path)
            )
            run = PlannedRun(
                variant,
                seed,
                folder / variant.folder_name / f"seed-{seed}",
                resolved,
                override_note(every),
            )
            plan.runs.append(run)
            if is_finished(run.folder):
                _check_same_scenario(run)
                plan.finished.append(run)
    return plan


def _check_same_scenario(run: PlannedRun) -> None:
    written = run.folder / "scenario.toml"
    if written.is_file() and written.read_text(encoding="utf-8") != scenario_to_toml(run.scenario):
        raise ConfigError(
            f"{run.folder} holds a finished run of a different scenario; "
            "choose another --out for a changed sweep",
            source="--out",
        )


def execute_plan(
    plan: SweepPlan,
    *,
    console: Console | None = None,
    progress: bool = True,
    executor: Executor | None = None,
) -> list[RunOutcome]:
    """Run the plan's unfinished runs on its executor (or on ``executor``, given); report each
    failure as it happens."""
    console = console or Console(stderr=True)
    todo = plan.todo
    plan.folder.mkdir(parents=True, exist_ok=True)
    for run in todo:
        run.folder.mkdir(parents=True, exist_ok=True)
        (run.folder / RUN_FILE).write_text(
            json.dumps(
                {
                    "variant": dict(run.variant.settings),
                    "variant_name": run.variant.name,
                    "seed": run.seed,
                },
                sort_keys=True,
            )
            + "\n",
            encoding="utf-8",
        )
    outcomes: list[RunOutcome] = []
    if not todo:
        return outcomes
    if executor is None:
        executor = make_executor(plan.executor, workers=plan.workers, ray_address=plan.ray_address)
    tasks = [RunTask(run.scenario, str(run.folder), run.title_note) for run in todo]
    running = executor.run(tasks)  # workers start before the progress bar's thread
    with SweepProgress(
        len(plan.runs), len(plan.finished), executor.slots, console, enabled=progress
    ) as bar:
        for outcome in running:
            outcomes.append(outcome)
            bar.advance(outcome)
            if not outcome.ok:
                console.print(f"[red]failed[/red] {outcome.folder}: {outcome.error}")
    return outcomes


def run_sweep(
    scenario: str | Path, *, progress: bool = False, **options: Unpack[SweepOptions]
) -> Experiment:
    """Run (or resume) a sweep and return its results; writes ``runs.csv``, ``variants.csv``
    and the overlay plots into the experiment folder.

    ``grid`` maps dotted scenario keys to lists of values; ``seeds`` is a count or a list.
    ``executor`` is ``"local"`` (a process pool of ``workers``, default every core) or ``"ray"``
    (``ray_address``: a cluster; default a local instance). Failed runs are listed in
    ``Experiment.failed``. Raises :class:`ConfigError` for a bad scenario, grid or argument.
    """
    plan = plan_sweep(scenario, **options)
    outcomes = execute_plan(plan, progress=progress)
    experiment = collect_experiment(plan.folder, keys=plan.keys)
    experiment.failed = [{"folder": o.folder, "error": o.error} for o in outcomes if not o.ok]
    experiment.write()
    return experiment
