"""The whole agent's memory plan: its parts are what the drone holds, a too-small
``training.process_budget_bytes`` refuses the drone with the smallest budget that fits, and
``swarmfl agent`` says the prediction at start-up."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from _field_helpers import SECRET, agent_tables, unique_swarm_id, write_config

from swarmfl.config.drone_file import load_drone_config
from swarmfl.errors import ConfigError
from swarmfl.field.agent import FieldAgent
from swarmfl.field.footprint import RUNTIME_BASELINE_BYTES


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)


def config(folder: Path, backend: str, **training: object) -> Path:
    tables = agent_tables(folder, 0, unique_swarm_id(), shards=4)
    if backend == "lean":
        tables["training"].pop("threads")
    tables["training"].update({"backend": backend, **training})
    return write_config(folder, 0, tables)


@pytest.mark.parametrize("backend", ["torch", "lean"])
def test_the_plan_counts_the_runtime_data_model_and_replicas_the_drone_holds(
    tmp_path: Path, secret_env: None, backend: str
) -> None:
    agent = FieldAgent(load_drone_config(config(tmp_path, backend)))
    plan = agent.process_plan
    assert plan.backend == backend and plan.runtime == RUNTIME_BASELINE_BYTES[backend]
    numel = agent.assembly.spec.numel
    assert plan.model == 2 * 4 * numel  # the shared start and the learner's live copy
    assert plan.data >= agent.assembly.dataset.x_train.nbytes + agent.assembly.x_eval.nbytes
    assert plan.replicas >= 4 * 4 * numel  # four neighbours' replicas of the whole model
    assert plan.total == sum(v for k, v in plan.as_dict().items() if k != "total")
    assert RUNTIME_BASELINE_BYTES["lean"] < RUNTIME_BASELINE_BYTES["torch"] / 2


def test_a_drone_below_its_process_budget_is_refused_naming_the_smallest_that_fits(
    tmp_path: Path, secret_env: None
) -> None:
    with pytest.raises(ConfigError) as caught:
        FieldAgent(load_drone_config(config(tmp_path, "lean", process_budget_bytes="64MiB")))
    assert caught.value.key == "training.process_budget_bytes"
    smallest = int(re.search(r"smallest budget that fits is (\d+) bytes", str(caught.value))[1])
    # exactly that budget fits; one byte less does not
    FieldAgent(load_drone_config(config(tmp_path, "lean", process_budget_bytes=smallest)))
    with pytest.raises(ConfigError):
        FieldAgent(load_drone_config(config(tmp_path, "lean", process_budget_bytes=smallest - 1)))


def test_swarmfl_agent_refuses_a_small_process_budget_in_one_line(tmp_path: Path) -> None:
    path = config(tmp_path, "torch", process_budget_bytes="128MiB")
    result = subprocess.run(
        [sys.executable, "-m", "swarmfl.cli", "agent", "--config", str(path)],
        env=dict(os.environ, SWARMFL_SECRET=SECRET),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(path) in lines[0] and "training.process_budget_bytes" in lines[0]
    assert "smallest budget that fits is" in lines[0] and "torch:" in lines[0]


def test_swarmfl_plan_prints_a_drones_whole_process_plan(
    tmp_path: Path, secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from swarmfl.cli import main

    path = config(tmp_path, "lean", process_budget_bytes="64MiB")
    assert main(["plan", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    agent_plan = FieldAgent(load_drone_config(config(tmp_path, "lean"))).process_plan
    assert f"  total     {agent_plan.total:>12,} bytes" in out  # what the agent itself predicts
    assert "peak RSS (lean: runtime" in out
    assert "training.process_budget_bytes 67,108,864: does NOT fit" in out


def test_swarmfl_plan_without_config_still_needs_the_model_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from swarmfl.cli import main

    assert main(["plan", "--batch", "16", "--budget", "1MiB"]) == 2
    assert "'--input': is required (or give --config" in capsys.readouterr().err
