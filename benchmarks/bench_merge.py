"""Merge-rule cost: each rule of swarmfl.core.robust against the plain mean, and the mean
against the code on main, on one core.

Prints JSON lines:

* ``rule``: seconds per merge of ``--values`` float32 values with 4 and 16 replicas, for
  ``mean`` (swarmfl.core.merge.merge_into), ``clip``, ``trimmed_mean`` and ``median``, best of
  ``--repeats``, and each one's ratio to ``mean`` measured in the same run.
* ``main``: the same ``mean`` merge by ``merge_into`` as it is on ``--baseline`` (loaded from
  git), and ``GossipNode.mix`` with the default rule on this tree and on ``--baseline``,
  measured in turns; the ratios say whether the default got slower (1.0 = the same; the
  ``merge_into`` ratio, of code that may be identical on both sides, shows the noise floor).

The replicas are read-only float32 arrays (what every codec decodes to), their staleness
weights drawn in (0.3, 1]. Every timed merge starts from the same model (a copy, counted in
both sides of every ratio).

    python benchmarks/bench_merge.py --values 100000 --repeats 15
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

# One BLAS/OpenMP thread, set before numpy is imported (main() also pins the process to a CPU).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from bench_codec import best_seconds, pin_one_core  # noqa: E402

from swarmfl.core.merge import MERGE_RULES, Contribution, MergeRule, merge_into  # noqa: E402
from swarmfl.core.node import GossipNode, NodeConfig  # noqa: E402
from swarmfl.core.robust import robust_merge_into  # noqa: E402
from swarmfl.core.wire import derive_swarm_key  # noqa: E402

KEY = derive_swarm_key("bench merge", 1)
SIGNATURE = b"benchmrg"
RULES = MERGE_RULES


def layer_offsets(values: int) -> tuple[int, ...]:
    """Four layers, like a small MLP: 80 %, 0.1 %, 19.8 %, the rest."""
    cuts = [0, int(values * 0.8), int(values * 0.801), int(values * 0.999), values]
    return tuple(cuts)


def replicas(
    x: np.ndarray, count: int, offsets: tuple[int, ...], rng: np.random.Generator
) -> list[Contribution]:
    """``count`` read-only full-model replicas near ``x`` with staleness-like weights."""
    layers = tuple(range(len(offsets) - 1))
    out = []
    for _ in range(count):
        values = (x + 0.05 * rng.standard_normal(x.size)).astype(np.float32)
        values.flags.writeable = False
        out.append(Contribution(layers, values, float(rng.uniform(0.3, 1.0))))
    return out


def setup(values: int, seed: int) -> tuple[np.random.Generator, tuple[int, ...], np.ndarray]:
    """The random generator, layer offsets and model every measurement starts from."""
    rng = np.random.default_rng(seed)
    return rng, layer_offsets(values), rng.standard_normal(values).astype(np.float32)


def timed_merge(merge: Callable[[np.ndarray], object], x: np.ndarray, repeats: int) -> float:
    """Best seconds of ``merge`` on a fresh copy of ``x``."""
    work = np.empty_like(x)

    def once() -> None:
        work[:] = x
        merge(work)

    return best_seconds(once, repeats)


def timed_pair(
    here: Callable[[np.ndarray], object],
    there: Callable[[np.ndarray], object],
    x: np.ndarray,
    repeats: int,
) -> tuple[float, float]:
    """Best seconds of ``here`` and ``there``, measured in turns so that load drifts hit both."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for side, merge in enumerate((here, there)):
            best[side] = min(best[side], timed_merge(merge, x, 1))
    return best[0], best[1]


def load_from_git(ref: str, path: str, name: str) -> ModuleType | None:
    """The module at ``path`` as it is on ``ref``, imported as ``name`` (None without git)."""
    root = Path(__file__).resolve().parent.parent
    try:
        source = subprocess.run(
            ["git", "-C", str(root), "show", f"{ref}:{path}"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while they are built
    exec(compile(source, f"{ref}:{path}", "exec"), module.__dict__)
    return module


def rule_rows(values: int, repeats: int, seed: int) -> list[dict[str, object]]:
    """Each rule's time per merge and its ratio to the mean."""
    rng, offsets, x = setup(values, seed)
    rows: list[dict[str, object]] = []
    for count in (4, 16):
        contributions = replicas(x, count, offsets, rng)
        seconds = {}
        for rule in RULES:
            merge = functools.partial(
                robust_merge_into,
                offsets=offsets,
                contributions=contributions,
                rule=MergeRule(rule=rule),
            )
            seconds[rule] = timed_merge(merge, x, repeats)
        for rule in RULES:
            rows.append(
                {
                    "bench": "rule",
                    "rule": rule,
                    "values": values,
                    "replicas": count,
                    "ms": round(seconds[rule] * 1e3, 3),
                    "vs_mean": round(seconds[rule] / seconds["mean"], 2),
                }
            )
    return rows


def main_rows(values: int, repeats: int, seed: int, baseline: str) -> list[dict[str, object]]:
    """The default mean, here and on ``baseline``: as a function and through GossipNode.mix."""
    old_merge = load_from_git(baseline, "swarmfl/core/merge.py", "baseline_merge")
    old_node = load_from_git(baseline, "swarmfl/core/node.py", "baseline_node")
    if old_merge is None or old_node is None:
        return [{"bench": "main", "skipped": f"cannot read {baseline} with git"}]
    rng, offsets, x = setup(values, seed)
    rows: list[dict[str, object]] = []
    for count in (4, 16):
        contributions = replicas(x, count, offsets, rng)
        merge_here = functools.partial(merge_into, offsets=offsets, contributions=contributions)
        merge_there = functools.partial(
            old_merge.merge_into, offsets=offsets, contributions=contributions
        )
        here, there = timed_pair(merge_here, merge_there, x, repeats)
        node_here, node_there = receivers(x, count, offsets, old_node, rng)
        mix_here, mix_there = timed_pair(
            functools.partial(node_here.mix, now=0.5),
            functools.partial(node_there.mix, now=0.5),
            x,
            repeats,
        )
        rows.append(
            {
                "bench": "main",
                "baseline": baseline,
                "values": values,
                "replicas": count,
                "merge_into_ms": round(here * 1e3, 3),
                "baseline_merge_into_ms": round(there * 1e3, 3),
                "merge_into_vs_baseline": round(here / there, 3),
                "mix_ms": round(mix_here * 1e3, 3),
                "baseline_mix_ms": round(mix_there * 1e3, 3),
                "mix_vs_baseline": round(mix_here / mix_there, 3),
            }
        )
    return rows


def receivers(
    x: np.ndarray,
    count: int,
    offsets: tuple[int, ...],
    old_node: ModuleType,
    rng: np.random.Generator,
) -> tuple[GossipNode, Any]:
    """A node of this tree and one of the baseline, each holding ``count`` peers' replicas."""
    layers = tuple(range(len(offsets) - 1))

    def config(drone_id: int) -> NodeConfig:
        return NodeConfig(drone_id, 1, SIGNATURE, KEY, offsets, layers)

    here = GossipNode(config(0))
    there = old_node.GossipNode(old_node.NodeConfig(0, 1, SIGNATURE, KEY, offsets, layers))
    for peer in range(1, count + 1):
        values = (x + 0.05 * rng.standard_normal(x.size)).astype(np.float32)
        (frame,) = GossipNode(config(peer)).publish(values, 10, 0.0)
        here.receive(frame, 0.0)
        there.receive(frame, 0.0)
    return here, there


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print one JSON object per line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", default="main", help="git revision to compare the mean with")
    args = parser.parse_args(argv)
    cpu = pin_one_core()
    print(json.dumps({"bench": "setup", "pinned_cpu": cpu, "numpy": np.__version__}))
    for row in rule_rows(args.values, args.repeats, args.seed):
        print(json.dumps(row))
    for row in main_rows(args.values, args.repeats, args.seed, args.baseline):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
