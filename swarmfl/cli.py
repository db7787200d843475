"""The ``swarmfl`` command line.

``swarmfl sim [SCENARIO]`` runs a scenario in virtual time (the bundled quickstart when no file
is given). A bad scenario or argument prints one line naming the file, key and problem, and
exits with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import importlib.resources
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from swarmfl.errors import ConfigError

EXIT_USAGE = 2


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swarmfl",
        description="Peer-to-peer gossip learning for drone swarms.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v info, -vv debug)"
    )
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
    sim.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a scenario key (repeatable)",
    )
    sim.add_argument("--seed", type=int, help="override run.seed")
    sim.add_argument("--out", type=Path, help="run folder (default: runs/<name>-seed<seed>)")
    sim.add_argument("--no-progress", action="store_true", help="no live progress bar")
    sim.set_defaults(handler=_cmd_sim)
    return parser


def _bundled_quickstart() -> Path:
    resource = importlib.resources.files("swarmfl.scenarios") / "quickstart.toml"
    return Path(str(resource))


def _cmd_sim(args: argparse.Namespace) -> int:
    from rich.console import Console

    from swarmfl.config import load_scenario
    from swarmfl.sim.progress import SimulationProgress, print_summary
    from swarmfl.sim.runner import run_scenario

    path = args.scenario or _bundled_quickstart()
    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"run.seed={args.seed}")
    scenario = load_scenario(path, overrides)
    out = args.out or Path("runs") / f"{scenario.run.name}-seed{scenario.run.seed}"
    console = Console(stderr=True)
    with SimulationProgress(scenario, console, enabled=not args.no_progress) as progress:
        summary = run_scenario(scenario, out, on_point=progress.update)
    print_summary(summary, out, Console())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``swarmfl`` console script; returns the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
