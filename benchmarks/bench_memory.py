"""Benchmark: full backprop vs memory-planned training, on a CNN whose activations dominate.

The task (built offline, nothing downloaded): scikit-learn's 8x8 digits as a drone camera sees
them, upsampled to 3x32x32 with a random per-image foreground and background colour, a random
shift of up to 3 pixels and sensor noise. The model: ``build_model("cnn", channels=(16, 32,
64))``, four blocks (three Conv3x3-ReLU-MaxPool blocks and a linear head), trained at batch 32:
at that batch the activations saved for backward are about 50 times the weights.

The realistic drone case is fine-tuning: both variants start from the same backbone (the three
conv blocks) pretrained on *other data*: a third of the digit images, disjoint from the swarm's
train and test images, seen through another camera (grey levels, no colour, other noise), with a
task head that is discarded. The head the swarm trains starts from its seeded initialisation.

Variants, side by side in one run:

* ``full``: every drone trains the whole model with full backprop;
* ``planned``: every drone runs ``MemoryPlan.choose`` at a tight budget (the inference weights
  plus ``--budget-fraction`` of full backprop's training overhead) and trains what it picks.

Reported per variant: the training memory overhead (everything a training step holds beyond the
weights inference needs: gradients, optimizer state, saved activations, neighbour replicas,
codec buffers), predicted by the planner and measured on a real step; the peak RSS of a process
that trains one drone's shard for a few rounds (and its growth over the same process after an
inference pass); the swarm's mean test accuracy after a fixed virtual time; bytes per frame.
Each variant runs in its own subprocess, so the RSS figures are its own. Prints JSON lines.

    python benchmarks/bench_memory.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

SEED = 11
CHANNELS = (16, 32, 64)
INPUT_SHAPE = (3, 32, 32)
BATCH = 32
REPLICAS = 4
CODEC = "int8"
BLOCK_SIZE = 128
PRETRAIN_FRACTION = 1 / 3
TARGET_OVERHEAD_RATIO = 0.15


# ----------------------------------------------------------------------------------------------
# The task


def _upsample(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) in [0, 1] to (N, 32, 32), bilinear."""
    import torch

    x = torch.from_numpy(images[:, None].astype(np.float32))
    return torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear")[:, 0].numpy()


def _shift(images: np.ndarray, rng: np.random.Generator, pixels: int) -> np.ndarray:
    out = np.zeros_like(images)
    for i, image in enumerate(images):
        dy, dx = rng.integers(-pixels, pixels + 1, size=2)
        out[i] = np.roll(image, (dy, dx), axis=(0, 1))
    return out


def drone_camera(digits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The swarm's images: colour foreground on a colour background, shifted, noisy."""
    gray = _shift(_upsample(digits), rng, 3)
    n = len(gray)
    foreground = rng.uniform(0.5, 1.0, size=(n, 3, 1, 1))
    background = rng.uniform(0.0, 0.4, size=(n, 3, 1, 1))
    images = background + (foreground - background) * gray[:, None]
    images += rng.normal(0.0, 0.08, size=images.shape)
    return images.astype(np.float32)


def other_camera(digits: np.ndarray, rng: np.random.Generator, copies: int) -> np.ndarray:
    """The pretraining images: grey levels on all three channels, shifted, other noise."""
    gray = _shift(_upsample(np.repeat(digits, copies, axis=0)), rng, 3)
    images = np.repeat(gray[:, None], 3, axis=1)
    images += rng.normal(0.0, 0.03, size=images.shape)
    return images.astype(np.float32)


def build_task(workdir: Path) -> dict[str, Any]:
    """Write the swarm's dataset (npz) and the pretrained backbone; describe them."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    from swarmfl.learning.models import build_model
    from swarmfl.learning.pretrained import save_pretrained

    torch.set_num_threads(1)  # as the simulator does; steadier on a shared machine
    rng = np.random.default_rng(SEED)
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = rng.permutation(len(labels))
    cut = int(len(labels) * PRETRAIN_FRACTION)
    pre, swarm = order[:cut], order[cut:]
    test_cut = int(len(swarm) * 0.2)
    test, train = swarm[:test_cut], swarm[test_cut:]

    x_train = drone_camera(images[train], rng)
    x_test = drone_camera(images[test], rng)
    mean = x_train.mean(axis=(0, 2, 3), keepdims=True)
    std = x_train.std(axis=(0, 2, 3), keepdims=True)
    np.savez(
        workdir / "drone-digits.npz",
        x_train=(x_train - mean) / std,
        y_train=labels[train],
        x_test=(x_test - mean) / std,
        y_test=labels[test],
    )

    copies = 4
    x_pre = other_camera(images[pre], rng, copies)
    y_pre = np.repeat(labels[pre], copies)
    x_pre = (x_pre - x_pre.mean(axis=(0, 2, 3), keepdims=True)) / x_pre.std(
        axis=(0, 2, 3), keepdims=True
    )
    torch.manual_seed(SEED)
    model = build_model("cnn", INPUT_SHAPE, 10, channels=CHANNELS, seed=SEED + 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    xt, yt = torch.from_numpy(x_pre), torch.from_numpy(y_pre)
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for _ in range(6):
        perm = torch.randperm(len(yt), generator=generator)
        for s in range(0, len(yt), 64):
            index = perm[s : s + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xt[index]), yt[index]).backward()
            optimizer.step()
    with torch.no_grad():
        pre_accuracy = float((model(xt).argmax(1) == yt).float().mean())
    save_pretrained(model, workdir / "backbone.pt", first_blocks=len(CHANNELS))
    return {
        "bench": "memory_task",
        "task": "sklearn digits as 3x32x32 colour camera images (upsampled, shifted, noisy)",
        "swarm_train": len(train),
        "swarm_test": len(test),
        "pretrain_images": len(pre) * copies,
        "pretrain": "backbone (conv blocks 0-2) on disjoint digit images, grey camera, "
        "head discarded",
        "pretrain_train_accuracy": round(pre_accuracy, 4),
        "pretrain_seconds": round(time.perf_counter() - start, 1),
    }


# ----------------------------------------------------------------------------------------------
# One variant, in its own process


def scenario_overrides(workdir: Path, drones: int, duration_s: float) -> dict[str, Any]:
    return {
        "run.name": "bench-memory",
        "run.seed": SEED,
        "run.duration_s": duration_s,
        "run.eval_interval_s": duration_s,
        "data.dataset": "npz",
        "data.path": str(workdir / "drone-digits.npz"),
        "data.partition": "dirichlet",
        "data.alpha": 0.5,
        "model.kind": "cnn",
        "model.channels": list(CHANNELS),
        "model.checkpoint": str(workdir / "backbone.pt"),
        "training.batch_size": BATCH,
        "training.lr": 0.05,
        "training.local_epochs": 1,
        "gossip.period_s": 1.0,
        "gossip.codec": CODEC,
        "gossip.block_size": BLOCK_SIZE,
        "swarm.drones": drones,
        "swarm.flops_per_s": 5e9,
        "topology.kind": "random_regular",
        "topology.degree": REPLICAS,
    }


def _vm_kib(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_rss(workdir: Path, budget_bytes: int | None) -> dict[str, float]:
    """Peak RSS of this process while one drone trains its shard, and its growth.

    The shard, the model, the learner and an inference pass at the training batch are set up
    first; then the peak-RSS counter is reset (``/proc/self/clear_refs``) and three local rounds
    run. The growth is that peak over the RSS after the inference pass: what training adds.
    """
    import torch

    from swarmfl.learning.learner import TorchLearner, TrainingConfig
    from swarmfl.learning.models import build_model
    from swarmfl.learning.plan import MemoryPlan, plan_flops_per_sample
    from swarmfl.learning.pretrained import load_pretrained

    torch.set_num_threads(1)
    with np.load(workdir / "drone-digits.npz") as arrays:
        x = np.array(arrays["x_train"][:120])
        y = np.array(arrays["y_train"][:120])
    model = build_model("cnn", INPUT_SHAPE, 10, channels=CHANNELS, seed=SEED)
    load_pretrained(model, workdir / "backbone.pt")
    plan = None
    if budget_bytes is not None:
        plan = MemoryPlan.choose(
            model, INPUT_SHAPE, BATCH, budget_bytes, neighbour_replicas=REPLICAS, codec=CODEC
        )
    learner = TorchLearner(
        model,
        x,
        y,
        TrainingConfig(lr=0.05, batch_size=BATCH),
        flops_per_sample=plan_flops_per_sample(model, INPUT_SHAPE, plan) if plan else 1.0,
        seed=SEED,
        plan=plan,
    )
    learner.evaluate(x[:BATCH], y[:BATCH])
    warm = torch.ones(1, requires_grad=True)
    (warm * 2).sum().backward()  # autograd's one-time setup is not training's working set
    with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
        clear.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _vm_kib("VmRSS")
    for _ in range(3):
        learner.train_round()
    peak = _vm_kib("VmHWM")
    return {"peak_rss_mib": peak / 1024, "rss_growth_mib": (peak - before) / 1024}


def run_swarm(workdir: Path, budget_bytes: int | None, drones: int, duration_s: float) -> dict:
    from swarmfl.sim.runner import run_scenario
    from swarmfl.testing import scenario

    overrides = scenario_overrides(workdir, drones, duration_s)
    if budget_bytes is not None:
        overrides["swarm.devices"] = [
            {
                "name": "tight",
                "count": drones,
                "budget_bytes": budget_bytes,
                "neighbour_replicas": REPLICAS,
            }
        ]
    start = time.perf_counter()
    summary = run_scenario(scenario("quickstart", overrides), None)
    return {
        "accuracy": summary["accuracy"]["mean"],
        "accuracy_min": summary["accuracy"]["min"],
        "bytes_per_frame": summary["bytes_sent"] / max(1, summary["frames_sent"]),
        "sim_wall_seconds": time.perf_counter() - start,
    }


def child(workdir: Path, budget_bytes: int | None, drones: int, duration_s: float) -> None:
    result: dict[str, Any] = measure_rss(workdir, budget_bytes)
    result.update(run_swarm(workdir, budget_bytes, drones, duration_s))
    result["process_peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


# ----------------------------------------------------------------------------------------------
# The comparison


def plans_and_overheads(fractions: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per variant: the budget, the plan, and its predicted and measured working set."""
    from swarmfl.learning.measure import measure_training_step
    from swarmfl.learning.models import build_model
    from swarmfl.learning.plan import MemoryPlan

    model = build_model("cnn", INPUT_SHAPE, 10, channels=CHANNELS, seed=SEED)
    settings: dict[str, Any] = {"neighbour_replicas": REPLICAS, "codec": CODEC}
    full = MemoryPlan.candidates(model, INPUT_SHAPE, BATCH, 0, **settings)[0]
    out: dict[str, dict[str, Any]] = {}
    for name, fraction in fractions.items():
        if fraction >= 1:
            budget, plan = None, full
        else:
            budget = int(full.predicted.weights + fraction * full.predicted.training_overhead)
            plan = MemoryPlan.choose(model, INPUT_SHAPE, BATCH, budget, **settings)
        measured = measure_training_step(model, plan, INPUT_SHAPE, **settings)
        out[name] = {"budget": budget, "plan": plan, "measured": measured}
    return out


def measure_variant(workdir: Path, budget: int | None, drones: int, duration_s: float) -> dict:
    command = [
        sys.executable,
        __file__,
        "--child",
        "--workdir",
        str(workdir),
        "--drones",
        str(drones),
        "--duration",
        str(duration_s),
    ]
    if budget is not None:
        command += ["--budget", str(budget)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"variant with budget {budget} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--drones", type=int, default=8)
    parser.add_argument("--duration", type=float, default=100.0, help="virtual seconds")
    parser.add_argument(
        "--budget-fraction",
        type=float,
        default=0.125,
        help="tight budget: inference weights + this fraction of full backprop's overhead",
    )
    parser.add_argument(
        "--tiny-fraction",
        type=float,
        default=0.05,
        help="a tighter budget still, shown for the trade-off (0 to skip)",
    )
    parser.add_argument("--child", action="store_true")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--budget", type=int)
    args = parser.parse_args()
    if args.child:
        child(args.workdir, args.budget, args.drones, args.duration)
        return

    fractions = {"full": 1.0, "planned": args.budget_fraction}
    if args.tiny_fraction > 0:
        fractions["planned_tiny"] = args.tiny_fraction
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        workdir = Path(tmp)
        print(json.dumps(build_task(workdir)))
        variants = plans_and_overheads(fractions)
        full_overhead = variants["full"]["measured"].training_overhead
        rows: dict[str, dict[str, Any]] = {}
        for name, variant in variants.items():
            plan, measured = variant["plan"], variant["measured"]
            result = measure_variant(workdir, variant["budget"], args.drones, args.duration)
            row = {
                "bench": "memory",
                "variant": name,
                "budget_bytes": variant["budget"],
                "plan": plan.describe(),
                "trained_values": plan.trained_numel,
                "inference_weights_bytes": measured.weights,
                "overhead_predicted_bytes": plan.predicted.training_overhead,
                "overhead_measured_bytes": measured.training_overhead,
                "overhead_vs_full": round(measured.training_overhead / full_overhead, 4),
                "measured": {
                    k: v for k, v in measured.as_dict().items() if k not in ("weights", "total")
                },
                "peak_rss_mib": round(result["peak_rss_mib"], 1),
                "rss_growth_mib": round(result["rss_growth_mib"], 2),
                "accuracy": round(result["accuracy"], 4),
                "accuracy_min": round(result["accuracy_min"], 4),
                "bytes_per_frame": round(result["bytes_per_frame"], 1),
                "virtual_seconds": args.duration,
                "drones": args.drones,
                "sim_wall_seconds": round(result["sim_wall_seconds"], 1),
            }
            rows[name] = row
            print(json.dumps(row))
        full = rows["full"]
        for name, row in rows.items():
            if name == "full":
                continue
            print(
                json.dumps(
                    {
                        "bench": "memory",
                        "compare": f"{name} vs full",
                        "overhead_ratio": row["overhead_vs_full"],
                        "rss_growth_ratio": round(
                            row["rss_growth_mib"] / max(full["rss_growth_mib"], 1e-9), 3
                        ),
                        "accuracy_delta_points": round(
                            100 * (row["accuracy"] - full["accuracy"]), 2
                        ),
                        "bytes_per_frame_ratio": round(
                            row["bytes_per_frame"] / full["bytes_per_frame"], 3
                        ),
                        "target": f"overhead_ratio <= {TARGET_OVERHEAD_RATIO}, "
                        "accuracy_delta_points >= -1 (stretch) / >= -2",
                    }
                )
            )


if __name__ == "__main__":
    main()
