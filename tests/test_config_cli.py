"""Scenario validation and the CLI's contract: one clear line and exit code 2 for bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from swarmfl.cli import main
from swarmfl.config.loader import apply_overrides
from swarmfl.config.scenario_file import load_scenario, scenario_to_toml
from swarmfl.errors import ConfigError

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"


def write(tmp_path, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("[radio]\nrate_bps = -5\n", "radio.rate_bps", "greater than 0"),
        ("[radio]\nrate_bps = 1e6\nfoo = 1\n", "radio.foo", "unknown key"),
        ("[bogus]\nx = 1\n", "bogus", "unknown key"),
        ("[swarm]\ndrones = 'many'\n", "swarm.drones", "integer"),
        ("[radio]\nloss = 1.5\n", "radio.loss", "less than 1"),
        ("[gossip]\ncodec = 'int3'\n", "gossip.codec", "'fp32', 'int8' or 'int4'"),
        ("[topology]\nkind = 'edges'\nedges = [[0, 99]]\n", "topology.edges.0", "edge (0, 99)"),
        ("[data]\ndataset = 'npz'\n", "data", "needs data.path"),
    ],
)
def test_bad_scenarios_name_file_key_and_problem(tmp_path, text, key, problem):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    line = err.value.one_line()
    assert "\n" not in line
    assert line.startswith(str(path))
    assert f"key '{key}'" in line
    assert problem in line


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_scenario(write(tmp_path, "[radio\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_scenario(tmp_path / "nope.toml")


def test_overrides_parse_toml_values_and_strings():
    raw = apply_overrides(
        {"radio": {"loss": 0.0}}, ["radio.loss=0.25", "run.name=demo", "model.hidden=[32, 16]"]
    )
    assert raw == {"radio": {"loss": 0.25}, "run": {"name": "demo"}, "model": {"hidden": [32, 16]}}
    with pytest.raises(ConfigError, match=r"key\.path=value"):
        apply_overrides({}, ["no-equals-sign"])


def test_every_bundled_scenario_validates_and_round_trips(tmp_path):
    files = sorted(SCENARIOS.glob("*.toml"))
    assert files
    for path in files:
        scenario = load_scenario(path)
        again = write(tmp_path, scenario_to_toml(scenario))
        assert load_scenario(again) == scenario, path.name


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["sim", "missing.toml"], "missing.toml: file not found"),
        (
            ["sim", str(SCENARIOS / "quickstart.toml"), "--set", "radio.rate_bps=-1"],
            "key 'radio.rate_bps': input should be greater than 0",
        ),
        (
            ["sim", str(SCENARIOS / "quickstart.toml"), "--set", "radio.colour=3"],
            "key 'radio.colour': unknown key",
        ),
    ],
)
def test_cli_exits_2_with_one_line(capsys, args, expected):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("swarmfl: error: ")
    assert expected in err


def test_console_script_bad_scenario_has_no_traceback(tmp_path):
    bad = write(tmp_path, "[radio]\nrate_bps = -1\n")
    done = subprocess.run(
        [sys.executable, "-m", "swarmfl.cli", "sim", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"swarmfl: error: {bad}: key 'radio.rate_bps': input should be greater than 0 (got -1)"
    ]


@pytest.mark.slow
def test_cli_sim_writes_the_run_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "sim",
            "--no-progress",
            "--seed",
            "3",
            "--out",
            str(out),
            "--set",
            "run.duration_s=20",
            "--set",
            "swarm.drones=6",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seed"] == 3 and summary["drones"] == 6
    assert {p.name for p in out.iterdir()} == {
        "scenario.toml",
        "metrics.jsonl",
        "summary.json",
        "accuracy.png",
        "topology.png",
        "bytes.png",
        "delivery.png",
        "groups.png",
        "down.png",
    }
    assert "accuracy mean / min / max" in capsys.readouterr().out
