"""Seconds per local round, and peak RSS, of the lean (numpy) learner next to the torch learner.

Prints JSON lines:

* ``round``: per workload and backend, the median wall seconds of one local round (one epoch,
  batch 16, over a shard of ``--samples`` samples, as a quickstart drone holds), with
  ``ratio_lean_over_torch`` on the lean line. Both backends train the same model from the same
  weights on the same shard in the same process, their rounds interleaved, on one thread
  (``torch.set_num_threads(1)``, BLAS pools pinned to 1, the process pinned to one CPU).
  Workloads: the digits MLP 64-128-10, and the CNN with channels (16, 32) on digits as 1x8x8
  images (Conv2d) and on mnist1d signals of length 40 (Conv1d).
* ``rss`` (with ``--rss``): the peak resident set size (``VmHWM``, Linux only) of fresh Python
  processes: bare Python, numpy only, ``import torch`` only, and a process that trains the
  digits MLP for ``--rss-rounds`` rounds with each backend. The shard reaches the children as an
  ``.npz`` file, so neither loads scikit-learn.

    python benchmarks/bench_lean.py --repeats 30 --rss

Others share the CPU of the machines this runs on: read the ratios, not the absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Pin BLAS/OpenMP pools to one thread before numpy or torch is imported.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from bench_codec import pin_one_core  # noqa: E402  (this script's folder is on sys.path)

WORKLOADS: dict[str, tuple[str, str]] = {
    "mlp-digits": ("digits", "mlp"),
    "cnn2d-digits": ("digits", "cnn"),
    "cnn1d-mnist1d": ("mnist1d", "cnn"),
}
SEED = 0


def shard(dataset: str, samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``samples`` training samples of a built-in dataset (a drone's shard)."""
    from swarmfl.learning.datasets import load_builtin

    data = load_builtin(dataset, seed=SEED)
    return data.x_train[:samples].copy(), data.y_train[:samples].copy()


def time_rounds(workload: str, samples: int, repeats: int) -> list[dict[str, object]]:
    """Interleaved timed rounds of both learners on one workload; one line per backend."""
    import torch

    from swarmfl.learning.lean import LeanLearner
    from swarmfl.learning.learner import TorchLearner, TrainingConfig
    from swarmfl.learning.models import build_model
    from swarmfl.learning.spec import model_spec

    dataset, kind = WORKLOADS[workload]
    x, y = shard(dataset, samples)
    shape = tuple(x.shape[1:])
    config = TrainingConfig(lr=0.05, batch_size=16)
    model = build_model(kind, shape, 10, seed=SEED)
    torch_learner = TorchLearner(model, x, y, config, flops_per_sample=1.0, seed=SEED)
    lean_learner = LeanLearner(
        model_spec(kind, shape, 10, seed=SEED),
        x,
        y,
        config,
        flops_per_sample=1.0,
        seed=SEED,
        parameters=torch_learner.flat_parameters().copy(),  # same starting weights
    )
    learners = {"torch": torch_learner, "lean": lean_learner}
    seconds: dict[str, list[float]] = {name: [] for name in learners}
    for learner in learners.values():
        learner.train_round()  # warm-up: allocator, BLAS and torch dispatch caches
    for _ in range(repeats):
        for name, learner in learners.items():
            start = time.perf_counter()
            learner.train_round()
            seconds[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    accuracy = {name: learner.evaluate(x, y).accuracy for name, learner in learners.items()}
    lines: list[dict[str, object]] = []
    for name in learners:
        line: dict[str, object] = {
            "kind": "round",
            "model": workload,
            "backend": name,
            "seconds_per_round": round(median[name], 7),
            "samples": len(y),
            "batch_size": config.batch_size,
            "repeats": repeats,
            "torch_threads": torch.get_num_threads(),
            "train_accuracy_after": round(accuracy[name], 4),
        }
        if name == "lean":
            line["ratio_lean_over_torch"] = round(median["lean"] / median["torch"], 3)
        lines.append(line)
    return lines


# Child programs for --rss: each prints its own peak RSS in KiB. VmHWM, not ru_maxrss: Linux
# carries ru_maxrss over from the forking parent (this big process) across exec.
_PEAK = """
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        print(line.split()[1])
"""
_TRAIN_LEAN = """
import sys, numpy as np
from swarmfl.learning.lean import LeanLearner
from swarmfl.learning.seam import TrainingConfig
from swarmfl.learning.spec import model_spec
data = np.load(sys.argv[1])
x, y, rounds = data["x"], data["y"], int(sys.argv[2])
learner = LeanLearner(model_spec("mlp", x.shape[1:], 10), x, y, TrainingConfig(),
                      flops_per_sample=1.0, seed=0)
for _ in range(rounds):
    learner.train_round()
assert "torch" not in sys.modules
"""
_TRAIN_TORCH = """
import sys, numpy as np, torch
torch.set_num_threads(1)
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.models import build_model
data = np.load(sys.argv[1])
x, y, rounds = data["x"], data["y"], int(sys.argv[2])
learner = TorchLearner(build_model("mlp", x.shape[1:], 10), x, y, TrainingConfig(),
                       flops_per_sample=1.0, seed=0)
for _ in range(rounds):
    learner.train_round()
"""
RSS_PROGRAMS: dict[str, str] = {
    "python": "",
    "import numpy": "import numpy",
    "import torch": "import torch",
    "lean: train digits mlp": _TRAIN_LEAN,
    "torch: train digits mlp": _TRAIN_TORCH,
}


def peak_rss(samples: int, rounds: int) -> list[dict[str, object]]:
    """Peak RSS of fresh processes running each of :data:`RSS_PROGRAMS`."""
    x, y = shard("digits", samples)
    lines: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "shard.npz"
        np.savez(path, x=x, y=y)
        for name, program in RSS_PROGRAMS.items():
            result = subprocess.run(
                [sys.executable, "-c", f"{program}\n{_PEAK}", str(path), str(rounds)],
                capture_output=True,
                text=True,
                check=True,
            )
            kib = int(result.stdout.split()[-1])
            lines.append(
                {
                    "kind": "rss",
                    "process": name,
                    "peak_rss_mib": round(kib / 1024, 1),
                    "rounds": rounds if "train" in name else 0,
                }
            )
    return lines


def main() -> None:
    """Parse arguments, run the workloads, print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed rounds per backend")
    parser.add_argument("--samples", type=int, default=90, help="samples in the drone's shard")
    parser.add_argument("--models", nargs="*", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS per process")
    parser.add_argument("--rss-rounds", type=int, default=20, help="rounds the RSS children train")
    args = parser.parse_args()
    cpu = pin_one_core()
    import torch

    torch.set_num_threads(1)
    print(json.dumps({"kind": "setup", "pinned_cpu": cpu, "shared_cpu": True}), flush=True)
    for workload in args.models:
        for line in time_rounds(workload, args.samples, args.repeats):
            print(json.dumps(line), flush=True)
    if args.rss:
        for line in peak_rss(args.samples, args.rss_rounds):
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
