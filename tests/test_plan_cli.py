"""``swarmfl plan``: the plan table, and one line with exit code 2 for a bad or too small budget."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from swarmfl.cli import main
from swarmfl.learning.models import build_model
from swarmfl.learning.plan import MemoryPlan
from swarmfl.sizes import format_bytes

CNN = ["plan", "--model", "cnn", "--input", "3x32x32", "--batch", "32", "--channels", "16,32,64"]


def smallest_need() -> int:
    model = build_model("cnn", (3, 32, 32), 10, channels=(16, 32, 64))
    plans = MemoryPlan.candidates(model, (3, 32, 32), 32, 0, neighbour_replicas=4)
    return min(p.predicted.total for p in plans)


def test_plan_prints_the_candidates_and_marks_the_chosen_one(capsys) -> None:
    assert main([*CNN, "--budget", "1.2MiB", "--optimizer", "sgd_momentum"]) == 0
    out = capsys.readouterr().out
    model = build_model("cnn", (3, 32, 32), 10, channels=(16, 32, 64))
    chosen = MemoryPlan.choose(
        model, (3, 32, 32), 32, 1258291, optimizer="sgd_momentum", neighbour_replicas=4
    )
    assert f"chosen: {chosen.describe()}" in out
    assert "budget 1.2 MiB" in out and "sgd_momentum" in out and "fp32 codec" in out
    rows = [line for line in out.splitlines() if line.lstrip().startswith("▶")]
    assert len(rows) == 1
    assert f"{chosen.trained_numel:,}" in rows[0]
    assert format_bytes(chosen.predicted.total) in rows[0]
    assert format_bytes(chosen.predicted.optimizer_state) in rows[0]
    # one row per trained set: full, three suffixes, four bias-only
    table = [line for line in out.splitlines() if re.match(r"\s*▶?\s+(full|suffix|bias) ", line)]
    assert len(table) == 8


def test_plan_all_lists_every_micro_batch(capsys) -> None:
    assert main([*CNN, "--budget", "64MiB", "--all"]) == 0
    out = capsys.readouterr().out
    full_rows = [line for line in out.splitlines() if re.match(r"\s*▶?\s+full 0-3", line)]
    assert len(full_rows) == 6  # micro-batches 32, 16, 8, 4, 2, 1
    assert "chosen: full model, micro-batch 32" in out  # 64 MiB is plenty


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--budget", "12 parsecs"], "key 'budget': cannot parse '12 parsecs' as a byte size"),
        (["--budget=-1MiB"], "key 'budget': cannot parse"),
        (["--budget", "64MiB", "--input", "3xfoo"], "key '--input': expected a shape"),
        (["--budget", "64MiB", "--channels", "16,,x"], "key '--channels'"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(capsys, args, problem) -> None:
    argv = [*CNN, *args] if "--input" not in args else ["plan", "--batch", "32", *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("swarmfl: error: ")
    assert problem in err


def test_budget_too_small_names_the_smallest_feasible_budget(capsys) -> None:
    need = smallest_need()
    assert main([*CNN, "--budget", str(need - 1)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"needs {need / 2**20:.3g} MiB ({need} bytes)" in err
    assert main([*CNN, "--budget", str(need)]) == 0


def test_console_script_runs_plan() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "swarmfl.cli", *CNN, "--budget", "2MiB"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "chosen:" in done.stdout and "MiB" in done.stdout
