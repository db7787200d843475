"""Sweeps: grid × seeds, one folder per run, resumed without re-running, failures isolated."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from rich.console import Console

from swarmfl.cli import main
from swarmfl.errors import ConfigError
from swarmfl.sim.executors import RunOutcome
from swarmfl.sim.metrics import SwarmPoint
from swarmfl.sim.progress import SimulationProgress
from swarmfl.sim.sweep import parse_grid, plan_sweep, run_sweep
from swarmfl.sim.sweep_progress import SweepProgress

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "scenarios" / "quickstart.toml"
TINY = ["run.duration_s=10", "swarm.drones=4"]


def test_grid_values_are_toml_and_commas_inside_brackets_stay():
    grid = parse_grid(["gossip.codec=fp32,int8", "model.hidden=[64,32],[16]", "radio.loss=0,0.3"])
    assert grid == {
        "gossip.codec": ["fp32", "int8"],
        "model.hidden": [[64, 32], [16]],
        "radio.loss": [0, 0.3],
    }
    with pytest.raises(ConfigError, match="--grid"):
        parse_grid(["gossip.codec"])
    with pytest.raises(ConfigError, match="--grid"):
        parse_grid(["gossip.codec=fp32,"])


def test_plan_is_the_cross_product_times_seeds(tmp_path):
    plan = plan_sweep(
        QUICKSTART,
        grid={"gossip.codec": ["fp32", "int8"], "radio.loss": [0.0, 0.3]},
        seeds=3,
        out=tmp_path,
        overrides=TINY,
    )
    assert len(plan.runs) == 12 and not plan.finished
    assert {(r.scenario.gossip.codec, r.scenario.radio.loss) for r in plan.runs} == {
        ("fp32", 0.0),
        ("fp32", 0.3),
        ("int8", 0.0),
        ("int8", 0.3),
    }
    assert sorted({r.scenario.run.seed for r in plan.runs}) == [7, 8, 9]
    assert all(r.scenario.swarm.drones == 4 for r in plan.runs)
    assert len({r.folder for r in plan.runs}) == 12
    first = plan.runs[0]
    assert first.folder == tmp_path / "gossip.codec=fp32,radio.loss=0.0" / "seed-7"


def test_a_bad_grid_value_is_refused_before_anything_runs(tmp_path, capsys):
    code = main(
        ["sweep", str(QUICKSTART), "--grid", "radio.loss=0,2", "--out", str(tmp_path / "x")]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "radio.loss" in err
    assert not (tmp_path / "x").exists()


def test_the_sweep_table_is_validated(tmp_path, capsys):
    scenario = tmp_path / "s.toml"
    scenario.write_text(
        QUICKSTART.read_text() + '\n[sweep]\nseeds = 0\n[sweep.grid]\n"radio.loss" = [0.0]\n'
    )
    assert main(["sweep", str(scenario), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'sweep.seeds'" in err and str(scenario) in err
    scenario.write_text(QUICKSTART.read_text() + "\n[sweep]\ngrids = 1\n")
    assert main(["sweep", str(scenario)]) == 2
    assert "key 'sweep.grids': unknown key" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_from_the_table_runs_resumes_and_isolates_a_failure(tmp_path, capsys):
    scenario = tmp_path / "s.toml"
    # a 1-byte memory budget is valid as a value but no training plan fits it: that run fails
    scenario.write_text(
        QUICKSTART.read_text()
        + "\n[sweep]\nseeds = 2\nworkers = 2\n"
        + '[sweep.grid]\n"training.budget_bytes" = [1, "100MiB"]\n'
    )
    out = tmp_path / "exp"
    args = ["sweep", str(scenario), "--no-progress", "--out", str(out)]
    args += [arg for o in TINY for arg in ("--set", o)]
    assert main(args) == 1  # a failed run: exit 1, the others finished
    err = capsys.readouterr().err
    assert "2 of 4 runs failed" in err and "PlanError" in err
    good = sorted(out.glob("training.budget_bytes=100MiB/seed-*/summary.json"))
    assert len(good) == 2
    assert (out / "training.budget_bytes=1" / "seed-7" / "error.txt").is_file()
    with (out / "runs.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["seed"] for r in rows) == ["7", "8"]
    assert {r["training.budget_bytes"] for r in rows} == {"100MiB"}
    stamps = {p: p.stat().st_mtime_ns for p in good}

    # resumed: the finished runs are kept as they are, only the failed ones run again
    plan = plan_sweep(scenario, out=out, overrides=TINY)
    assert len(plan.finished) == 2 and len(plan.todo) == 2
    assert main(args) == 1
    assert {p: p.stat().st_mtime_ns for p in good} == stamps


@pytest.mark.slow
def test_run_sweep_returns_the_tables(tmp_path):
    experiment = run_sweep(
        QUICKSTART,
        grid={"gossip.codec": ["fp32", "int8"]},
        seeds=2,
        out=tmp_path,
        overrides=TINY,
        workers=2,
    )
    assert not experiment.failed
    assert len(experiment.runs) == 4
    variants = {v["variant"]: v for v in experiment.variants}
    assert set(variants) == {"gossip.codec=fp32", "gossip.codec=int8"}
    fp32, int8 = variants["gossip.codec=fp32"], variants["gossip.codec=int8"]
    assert fp32["runs"] == 2 and fp32["final_mean_accuracy_n"] == 2
    low, mean, high = (fp32[f"final_mean_accuracy_{k}"] for k in ("ci95_low", "mean", "ci95_high"))
    assert low <= mean <= high
    assert int8["bytes_sent_mean"] < 0.3 * fp32["bytes_sent_mean"]
    for name in ("runs.csv", "variants.csv", "accuracy.png", "accuracy-bytes.png"):
        assert (tmp_path / name).stat().st_size > 0
    run = json.loads((tmp_path / "gossip.codec=int8" / "seed-8" / "summary.json").read_text())
    assert run["codec"] == "int8" and run["seed"] == 8


def readme_sweep_example() -> str:
    """The Python block of the README's section on experiments and sweeps."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Experiments and sweeps", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_readme_sweep_example_runs_as_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "scenarios").mkdir()
    (tmp_path / "scenarios" / "quickstart.toml").write_text(QUICKSTART.read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(readme_sweep_example(), "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in printed] == ["gossip.codec=fp32", "gossip.codec=int8"]
    with (tmp_path / "runs" / "codec-sweep" / "runs.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 4


def test_a_misspelt_option_is_refused(tmp_path):
    with pytest.raises(TypeError, match="'seed'"):
        plan_sweep(QUICKSTART, seed=3, out=tmp_path)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="'seed'"):
        run_sweep(QUICKSTART, seed=3, out=tmp_path)  # type: ignore[call-arg]
    assert not any(tmp_path.iterdir())


def test_variants_that_would_share_a_folder_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="share the folder name"):
        plan_sweep(QUICKSTART, grid={"run.name": ["a/b", "a_b"]}, out=tmp_path)


def test_the_progress_bars_show_runs_and_accuracy(tmp_path):
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=160)
    with SweepProgress(total=3, finished=0, slots=2, console=console) as bar:
        bar.advance(RunOutcome("a", None, 1.0))
        bar.advance(RunOutcome("b", "PlanError: no plan fits", 1.0))
    shown = screen.getvalue()
    assert "2/3" in shown and "1 running · 1 failed" in shown

    screen = io.StringIO()
    scenario = plan_sweep(QUICKSTART, out=tmp_path, overrides=TINY).runs[0].scenario
    progress = SimulationProgress(scenario, Console(file=screen, force_terminal=True, width=160))
    with progress:
        progress.update(SwarmPoint(t=5.0, mean=0.625, min=0.5, max=0.75))
    assert "quickstart (4 drones)" in screen.getvalue()
    assert "acc mean 0.625 min 0.500" in screen.getvalue()

    screen = io.StringIO()
    with SweepProgress(3, 0, 2, Console(file=screen, force_terminal=True), enabled=False):
        pass
    assert screen.getvalue() == ""
