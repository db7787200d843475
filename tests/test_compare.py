"""`swarmfl compare` overlays run folders that already exist; the tables' statistics."""

from __future__ import annotations

import csv

import pytest
from scipy import stats

from swarmfl.cli import main
from swarmfl.sim.results import interval
from swarmfl.sim.runner import run_scenario
from swarmfl.testing import scenario


def test_interval_is_the_t_confidence_interval():
    values = [0.80, 0.84, 0.86, 0.90]
    result = interval(values)
    low, high = stats.t.interval(0.95, 3, loc=result["mean"], scale=stats.sem(values))
    assert result["mean"] == pytest.approx(0.85)
    assert result["ci95_low"] == pytest.approx(low)
    assert result["ci95_high"] == pytest.approx(high)
    assert interval([0.5]) == {"mean": 0.5, "std": None, "ci95_low": None, "ci95_high": None}
    assert interval([])["mean"] is None


def test_compare_without_finished_runs_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "c")]) == 2
    assert main(["compare", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("swarmfl: error: ") for line in err)


@pytest.mark.slow
def test_compare_overlays_existing_runs(tmp_path, capsys):
    for name, codec in (("fp32-run", "fp32"), ("int8-run", "int8")):
        tiny = {"swarm.drones": 4, "run.duration_s": 10.0, "gossip.codec": codec}
        run_scenario(scenario("quickstart", tiny), tmp_path / name)
    out = tmp_path / "compared"
    assert (
        main(["compare", str(tmp_path / "fp32-run"), str(tmp_path / "int8-run"), "--out", str(out)])
        == 0
    )
    with (out / "runs.csv").open() as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"fp32-run", "int8-run"}
    assert int(rows["int8-run"]["bytes_sent"]) < 0.3 * int(rows["fp32-run"]["bytes_sent"])
    for name in ("variants.csv", "accuracy.png", "accuracy-bytes.png"):
        assert (out / name).stat().st_size > 0
    assert "int8-run" in capsys.readouterr().out
