"""`swarmfl sim` never overwrites a run silently: fresh default folders, a refused --out."""

from __future__ import annotations

import json

import pytest

from swarmfl.cli import main
from swarmfl.sim.runfolder import fresh_folder, is_finished, override_note

TINY = ["--no-progress", "--set", "run.duration_s=10", "--set", "swarm.drones=4"]


def test_fresh_folder_skips_taken_names(tmp_path):
    base = tmp_path / "quickstart-seed7"
    assert fresh_folder(base) == base
    base.mkdir()
    (tmp_path / "quickstart-seed7-2").mkdir()
    assert fresh_folder(base) == tmp_path / "quickstart-seed7-3"


def test_override_note_names_every_override():
    assert override_note([]) == ""
    assert override_note(["radio.loss=0.3", "churn.enabled = true"]) == (
        " · radio.loss=0.3, churn.enabled=true"
    )


@pytest.mark.slow
def test_default_folder_that_exists_gets_a_fresh_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["sim", *TINY]) == 0
    first = tmp_path / "runs" / "quickstart-seed7"
    before = (first / "summary.json").read_bytes()
    assert main(["sim", *TINY, "--set", "radio.loss=0.5"]) == 0
    second = tmp_path / "runs" / "quickstart-seed7-2"
    assert (first / "summary.json").read_bytes() == before  # the first run is untouched
    assert is_finished(second)
    assert json.loads((second / "summary.json").read_text())["frames_lost"] > 0
    assert "quickstart-seed7-2" in capsys.readouterr().out


@pytest.mark.slow
def test_explicit_out_holding_a_finished_run_is_refused_unless_forced(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["sim", *TINY, "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_bytes()
    capsys.readouterr()
    assert main(["sim", *TINY, "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "finished run" in err and "--force" in err
    assert (out / "metrics.jsonl").read_bytes() == before
    assert main(["sim", *TINY, "--seed", "1", "--out", str(out), "--force"]) == 0
    assert json.loads((out / "summary.json").read_text())["seed"] == 1


@pytest.mark.slow
def test_out_folder_of_a_killed_run_is_run_again(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text("partial\n")  # killed before summary.json
    assert not is_finished(out)
    assert main(["sim", *TINY, "--out", str(out)]) == 0
    assert is_finished(out) and "partial" not in (out / "metrics.jsonl").read_text()
