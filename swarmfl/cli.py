"""The ``swarmfl`` command line.

``swarmfl sim [SCENARIO]`` runs a scenario in virtual time (the bundled quickstart when no file
is given). A bad scenario or argument prints one line naming the file, key and problem, and
exits with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib.resources
import math
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from swarmfl import __version__
from swarmfl.core.codecs import CODECS, DEFAULT_CODEC
from swarmfl.errors import ConfigError
from swarmfl.field.journal import configure_logging
from swarmfl.field.keys import add_keys_parser
from swarmfl.learning.trainplan import OPTIMIZERS

EXIT_USAGE = 2


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (exit 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seconds(text: str) -> float:
    """A wait in seconds: a finite number in (0, 3600]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not (math.isfinite(value) and 0 < value <= 3600):
        raise argparse.ArgumentTypeError(f"must be a number of seconds in (0, 3600], got {text}")
    return value


def _add_repeatable(
    parser: argparse.ArgumentParser,
    flag: str,
    *,
    metavar: str,
    help: str,
    dest: str | None = None,
    unset_is_none: bool = False,
) -> None:
    """A repeatable option: each use appends its value to a list, which is ``[]`` when the
    option is never given (``None`` with ``unset_is_none``, for "use the default")."""
    parser.add_argument(
        flag,
        dest=dest,
        action="append",
        default=None if unset_is_none else [],
        metavar=metavar,
        help=help,
    )


def _add_overrides(parser: argparse.ArgumentParser, what: str) -> None:
    """``--set KEY.PATH=VALUE`` (repeatable) into ``args.overrides``: override ``what``."""
    _add_repeatable(
        parser,
        "--set",
        dest="overrides",
        metavar="KEY.PATH=VALUE",
        help=f"override {what} (repeatable)",
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="swarmfl",
        description="Peer-to-peer gossip learning for drone swarms.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
    parser.add_argument(
        "--log-format",
        choices=["text", "json"],
        default="text",
        help="log lines as text (the default) or as JSON lines (t, level, logger, msg)",
    )
    parser.add_argument("--version", action="version", version=f"swarmfl {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sim = commands.add_parser(
        "sim",
        help="run a swarm scenario in virtual time",
        description="Run a swarm scenario in virtual time and write a run folder "
        "(scenario.toml, metrics.jsonl, summary.json, accuracy.png).",
    )
    sim.add_argument(
        "scenario",
        nargs="?",
        type=Path,
        help="scenario TOML file (default: the bundled quickstart)",
    )
    _add_overrides(sim, "a scenario key")
    sim.add_argument("--seed", type=int, help="override run.seed")
    sim.add_argument(
        "--out",
        type=Path,
        help="run folder (default: runs/<name>-seed<seed>, or a fresh -2, -3, ... if it exists)",
    )
    sim.add_argument(
        "--force", action="store_true", help="overwrite a finished run in the --out folder"
    )
    sim.add_argument("--no-progress", action="store_true", help="no live progress bar")
    sim.set_defaults(handler=_cmd_sim)
    _add_experiment_commands(commands)
    _add_field_commands(commands)
    _add_plan_command(commands)
    add_keys_parser(commands)
    return parser


# -- experiments: sweep, compare --------------------------------------------------------------


def _add_experiment_commands(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    sweep = commands.add_parser(
        "sweep",
        help="run a scenario's grid of settings x seeds (resumable)",
        description="Run the cross-product of --grid values (and the file's [sweep] table) "
        "times seeds, one run folder each under an experiment folder; finished runs are kept. "
        "Writes runs.csv, variants.csv (mean, std, 95 %% CI) and overlay plots.",
    )
    sweep.add_argument("scenario", type=Path, help="scenario TOML file (may hold [sweep])")
    _add_repeatable(
        sweep,
        "--grid",
        metavar="KEY.PATH=V1,V2",
        help="values to try for a scenario key (repeatable: the cross-product runs)",
    )
    sweep.add_argument("--seeds", type=int, help="seeds per variant: run.seed, run.seed+1, ...")
    _add_overrides(sweep, "a scenario key in every run")
    sweep.add_argument("--out", type=Path, help="experiment folder (default runs/<name>-sweep)")
    sweep.add_argument("--executor", choices=["local", "ray"], help="where runs execute (local)")
    sweep.add_argument("--workers", type=int, help="runs at once (default: every core)")
    sweep.add_argument("--ray-address", help="Ray cluster address (default: a local instance)")
    sweep.add_argument("--no-progress", action="store_true", help="no live progress bar")
    sweep.set_defaults(handler=_cmd_sweep)

    compare = commands.add_parser(
        "compare",
        help="overlay existing run or experiment folders",
        description="Overlay run folders and experiment folders: runs.csv, variants.csv and "
        "the overlay plots, written to --out.",
    )
    compare.add_argument("folders", type=Path, nargs="+", metavar="RUN_OR_EXPERIMENT")
    compare.add_argument(
        "--out", type=Path, help="where to write (default runs/compare, or a fresh -2, -3, ...)"
    )
    compare.set_defaults(handler=_cmd_compare)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swarmfl.sim.results import collect_experiment
    from swarmfl.sim.sweep import execute_plan, parse_grid, plan_sweep
    from swarmfl.sim.sweep_progress import print_variants

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"must be at least 1, got {args.workers}", source="--workers")
    plan = plan_sweep(
        args.scenario,
        grid=parse_grid(args.grid),
        seeds=args.seeds,
        out=args.out,
        overrides=list(args.overrides),
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
    )
    console = Console(stderr=True)
    if plan.finished:
        console.print(f"resuming {plan.folder}: {len(plan.finished)} of {len(plan.runs)} done")
    outcomes = execute_plan(plan, console=console, progress=not args.no_progress)
    experiment = collect_experiment(plan.folder, keys=plan.keys)
    experiment.write()
    print_variants(experiment, Console())
    failed = [o for o in outcomes if not o.ok]
    if failed:
        print(
            f"swarmfl: {len(failed)} of {len(outcomes)} runs failed "
            "(errors above, tracebacks in each run's error.txt; re-run to retry them)",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swarmfl.sim.results import collect_folders
    from swarmfl.sim.runfolder import fresh_folder
    from swarmfl.sim.sweep_progress import print_variants

    for folder in args.folders:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: no such folder", source="compare")
    out = args.out or fresh_folder(Path("runs") / "compare")  # never an earlier comparison
    experiment = collect_folders(args.folders, out)
    if not experiment.runs:
        raise ConfigError(
            "no finished run (no summary.json) in the folders given", source="compare"
        )
    experiment.write()
    print_variants(experiment, Console())
    return 0


# -- field commands: agent, status ------------------------------------------------------------


def _add_field_commands(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    agent = commands.add_parser(
        "agent",
        help="run one drone in real time (UDP or MQTT radio)",
        description="Run one drone of a real swarm in real time from its config file. "
        "SIGINT/SIGTERM: finish the training step, checkpoint, exit 0.",
    )
    agent.add_argument("--config", type=Path, required=True, help="the drone's TOML config")
    agent.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the newest good checkpoint if there is one (the default); "
        "--no-resume starts from scratch",
    )
    _add_overrides(agent, "a config key")
    agent.add_argument(
        "--check",
        action="store_true",
        help="validate the config, secret, data, memory plan, checkpoints and ports, then exit "
        "(0: ready, 2: a problem, named in one line); writes nothing",
    )
    agent.set_defaults(handler=_cmd_agent)

    status = commands.add_parser(
        "status",
        help="show the live swarm as a table",
        description="Show the drones of a live swarm: from MQTT telemetry (--broker) or by "
        "asking the agents over UDP (found by zeroconf, or --peer; queries are authenticated "
        "with the swarm secret). Every drone named by anyone is listed, silent ones as "
        "offline or stopped with the time since they were last heard.",
    )
    status.add_argument("--config", type=Path, help="a drone's config: use its swarm and radio")
    status.add_argument("--broker", help="MQTT broker URL (mqtt://host:port)")
    status.add_argument("--topic-prefix", default=None, help="MQTT topic prefix (swarmfl)")
    status.add_argument("--swarm-id", type=int, help="the swarm to show")
    _add_repeatable(
        status,
        "--peer",
        dest="peers",
        metavar="HOST:PORT",
        help="ask this agent over UDP (repeatable; default: find agents by zeroconf)",
    )
    _add_repeatable(
        status,
        "--interface",
        dest="interfaces",
        metavar="IP",
        help="address to run mDNS on (repeatable; default: all)",
        unset_is_none=True,
    )
    status.add_argument(
        "--wait-s",
        type=float,
        default=5.0,
        help="the longest to listen for drones and answers (it stops sooner once every drone "
        "named by anyone has answered)",
    )
    status.add_argument(
        "--secret-env",
        default="SWARMFL_SECRET",
        metavar="NAME",
        help="environment variable holding the swarm secret (UDP queries are authenticated)",
    )
    status.add_argument("--secret-file", type=Path, help="file holding the swarm secret")
    status.add_argument("--watch", action="store_true", help="refresh live until Ctrl-C")
    status.add_argument(
        "--interval-s", type=float, default=2.0, help="pause between refreshes (--watch)"
    )
    status.add_argument("--count", type=int, help="stop after this many refreshes (--watch)")
    status.add_argument("--json", action="store_true", help="print JSON lines, not a table")
    status.set_defaults(handler=_cmd_status)


def _cmd_agent(args: argparse.Namespace) -> int:
    from swarmfl.config.drone_file import load_drone_config
    from swarmfl.errors import RadioError
    from swarmfl.field.agent import run_agent

    loaded = load_drone_config(args.config, list(args.overrides))
    if args.check:
        from swarmfl.field.preflight import preflight

        for line in preflight(loaded):
            print(f"ok  {line}")
        print(f"swarmfl: {args.config} is ready to run")
        return 0
    try:
        return run_agent(loaded, resume=args.resume)
    except RadioError as exc:
        print(f"swarmfl: radio error: {exc}", file=sys.stderr)
        return 1


def _cmd_status(args: argparse.Namespace) -> int:
    from swarmfl.field.status_table import run_status

    return run_status(args)


# -- plan: what a device trains within its memory budget ---------------------------------------


def _add_plan_command(commands: argparse._SubParsersAction[_OneLineParser]) -> None:
    plan = commands.add_parser(
        "plan",
        help="show what a device trains within a memory budget",
        description="Plan partial training within a memory budget: print every candidate "
        "(full model, suffixes of blocks, biases only; micro-batches) with its predicted "
        "working set, and the plan chosen. With --config: the predicted peak RSS of that "
        "drone's whole field agent, by component.",
    )
    plan.add_argument(
        "--config",
        type=Path,
        help="a drone's TOML config: plan its whole agent process (the other options are unused)",
    )
    plan.add_argument("--model", choices=["mlp", "cnn"], default="cnn", help="model kind")
    plan.add_argument("--input", help="one sample's shape, e.g. 3x32x32 (image) or 64")
    plan.add_argument("--batch", type=int, help="training batch size")
    plan.add_argument("--budget", help="memory budget, e.g. 64MiB, 1.5GiB")
    plan.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default="sgd",
        help="what the learner's SGD keeps: nothing, or a momentum buffer (sgd)",
    )
    plan.add_argument("--classes", type=int, default=10, help="output classes (10)")
    plan.add_argument("--hidden", default="128", help="mlp widths, e.g. 128,64 (128)")
    plan.add_argument("--channels", default="16,32", help="cnn channels, e.g. 16,32,64 (16,32)")
    plan.add_argument(
        "--replicas", type=int, default=4, help="neighbour replicas held in memory (4)"
    )
    plan.add_argument(
        "--replica-scope",
        choices=["trained", "model"],
        default="trained",
        help="size a neighbour replica by our trained layers (a fleet of one class) or by "
        "the whole model (a mixed fleet)",
    )
    plan.add_argument(
        "--codec", choices=CODECS, default=DEFAULT_CODEC, help=f"gossip codec ({DEFAULT_CODEC})"
    )
    plan.add_argument("--block-size", type=int, default=128, help="codec block size (128)")
    plan.add_argument(
        "--all", action="store_true", help="every candidate, not the best one per trained set"
    )
    plan.add_argument(
        "--dp",
        action="store_true",
        help="DP-SGD ([training.dp]): count the per-sample gradients it holds",
    )
    plan.set_defaults(handler=_cmd_plan)


def _cmd_process_plan(config: Path) -> int:
    from swarmfl.config.drone_file import load_drone_config
    from swarmfl.field.footprint import drone_process_plan

    plan, budget = drone_process_plan(load_drone_config(config))
    print(f"{config}: {plan.describe()}")
    for name, value in plan.as_dict().items():
        print(f"  {name:<9} {value:>12,} bytes")
    if budget is not None:
        verdict = "fits" if plan.total <= budget else "does NOT fit"
        print(f"  training.process_budget_bytes {budget:,}: {verdict}")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    if args.config is not None:
        return _cmd_process_plan(args.config)
    for flag, value in (
        ("--input", args.input),
        ("--batch", args.batch),
        ("--budget", args.budget),
    ):
        if value is None:
            raise ConfigError(
                "is required (or give --config for a drone's whole process)", key=flag
            )

    from rich.console import Console

    from swarmfl.plan_table import PlanRequest, parse_shape, parse_widths, print_plan

    request = PlanRequest(
        model=args.model,
        input_shape=parse_shape(args.input, key="--input"),
        batch_size=args.batch,
        budget=args.budget,
        classes=args.classes,
        hidden=parse_widths(args.hidden, key="--hidden"),
        channels=parse_widths(args.channels, key="--channels"),
        optimizer=args.optimizer,
        neighbour_replicas=args.replicas,
        codec=args.codec,
        block_size=args.block_size,
        replica_scope=args.replica_scope,
        show_all=args.all,
        dp=args.dp,
    )
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a log or a pipe does not wrap: keep one row per plan
    print_plan(request, console)
    return 0


def _bundled_quickstart() -> Path:
    resource = importlib.resources.files("swarmfl.scenarios") / "quickstart.toml"
    return Path(str(resource))


def _cmd_sim(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swarmfl.config.scenario_file import load_scenario
    from swarmfl.sim.insiders import assign_attackers
    from swarmfl.sim.progress import SimulationProgress, print_summary
    from swarmfl.sim.runfolder import fresh_folder, is_finished, override_note
    from swarmfl.sim.runner import run_scenario

    path = args.scenario or _bundled_quickstart()
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"run.seed={args.seed}")
    scenario = load_scenario(path, overrides)
    try:
        assign_attackers(scenario)  # the kinds' parameters, refused before anything runs
    except ConfigError as exc:
        raise ConfigError(exc.problem, source=str(path), key=exc.key) from None
    if args.out is None:
        out = fresh_folder(Path("runs") / f"{scenario.run.name}-seed{scenario.run.seed}")
    elif is_finished(args.out) and not args.force:
        raise ConfigError(
            f"{args.out} holds a finished run; choose another --out or add --force",
            source="--out",
        )
    else:
        out = args.out
    _check_writable_folder(out)
    console = Console(stderr=True)
    with SimulationProgress(scenario, console, enabled=not args.no_progress) as progress:
        summary = run_scenario(
            scenario, out, on_point=progress.update, title_note=override_note(overrides)
        )
    print_summary(summary, out, Console())
    return 0


def _check_writable_folder(folder: Path) -> None:
    """Create ``folder`` and check it can take files; ConfigError naming ``--out`` if not."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the run folder {str(folder)!r}: {exc.strerror or exc}",
            key="--out",
            source="argument",
        ) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swarmfl`` console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    configure_logging(
        args.verbose, args.log_format, events=args.command == "agent" and not args.check
    )
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        print(f"swarmfl: error: {exc.one_line()}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("swarmfl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
