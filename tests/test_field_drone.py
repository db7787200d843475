"""A field drone built from its drone.toml, in process and without sockets: its own data
files, a pretrained start, a memory budget, its checkpoints and stream numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from _field_helpers import SECRET, agent_tables, unique_swarm_id, write_config

from swarmfl.config.drone_file import load_drone_config
from swarmfl.core.replay import MAX_EPOCH, epoch_start_seq
from swarmfl.errors import ConfigError
from swarmfl.field.agent import FieldAgent
from swarmfl.field.resume import next_boot_epoch


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWARMFL_SECRET", SECRET)


def test_each_life_starts_a_boot_epoch_past_the_saved_one_and_the_checkpoints() -> None:
    assert next_boot_epoch(0) == 1
    assert next_boot_epoch(7) == 8
    # The checkpoint's numbers (an epoch file lost, or older than the checkpoint) count too.
    assert next_boot_epoch(0, (epoch_start_seq(41) + 12, 3)) == 42
    assert next_boot_epoch(50, (epoch_start_seq(41) + 12,)) == 51
    assert epoch_start_seq(2) > epoch_start_seq(1) + 10**9  # a billion frames per life, at least
    with pytest.raises(ConfigError):
        next_boot_epoch(MAX_EPOCH)


@pytest.mark.parametrize("source", ["npz", "idx"])
def test_a_drone_trains_on_its_own_npz_folder_or_idx_files(
    tmp_path: Path, secret_env: None, source: str
) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(60, 6, 6), dtype=np.uint8)
    labels = np.arange(60) % 3
    if source == "npz":
        (tmp_path / "data").mkdir()
        np.savez(tmp_path / "data" / "a.npz", x=images[:25], y=labels[:25])
        np.savez(tmp_path / "data" / "b.npz", x=images[25:], y=labels[25:])
        data = {"dataset": "npz", "path": "data"}
    else:
        write_idx(tmp_path / "images.idx", images)
        write_idx(tmp_path / "labels.idx", labels)
        data = {"dataset": "idx", "images": "images.idx", "labels": "labels.idx"}
    tables = agent_tables(tmp_path, 0, 5, shards=1, extra={"data": {**data, "test_fraction": 0.2}})
    agent = FieldAgent(load_drone_config(write_config(tmp_path, 0, tables)))
    assert agent.learner.sample_count == 48 and len(agent.assembly.y_eval) == 12
    assert agent.assembly.input_shape == (1, 6, 6) and agent.assembly.dataset.num_classes == 3
    assert agent.description.startswith(source)


def test_field_agent_starts_from_the_pretrained_checkpoint(
    tmp_path: Path, secret_env: None
) -> None:
    import torch

    from swarmfl.learning.models import build_model
    from swarmfl.learning.pretrained import save_pretrained

    backbone = build_model("mlp", (1, 8, 8), 10, hidden=(32,), seed=99)
    save_pretrained(backbone, tmp_path / "backbone.pt", first_blocks=1)
    tables = agent_tables(
        tmp_path, 0, unique_swarm_id(), shards=2, extra={"model": {"checkpoint": "backbone.pt"}}
    )
    drone = FieldAgent(load_drone_config(write_config(tmp_path, 0, tables)))
    model = drone.learner.model
    first = backbone[0][1]  # Flatten, Linear, ReLU: the Linear
    torch.testing.assert_close(model[0][1].weight.detach(), first.weight.detach())
    assert not torch.equal(model[1][0].weight.detach(), backbone[1][0].weight.detach())


def test_a_drone_with_a_memory_budget_trains_and_sends_only_what_fits(
    tmp_path: Path, secret_env: None
) -> None:
    from swarmfl.core.wire import decode_frame
    from swarmfl.learning.plan import MemoryPlan

    tables = agent_tables(tmp_path, 0, unique_swarm_id(), shards=2)
    whole = FieldAgent(load_drone_config(write_config(tmp_path, 0, tables)))
    assert whole.plan is None and whole.trains == "full"
    # A budget one byte below the smallest way to train the whole model (as the agent plans).
    plans = MemoryPlan.candidates(
        whole.learner.model,
        whole.assembly.input_shape,
        32,
        0,
        neighbour_replicas=4,
        codec="int8",
        block_size=whole.config.gossip.block_size,
        replica_scope="model",
    )
    budget = min(p.predicted.total for p in plans if p.mode == "full") - 1
    tables["training"]["budget_bytes"] = budget
    tables["checkpoint"]["dir"] = "ckpt-budget"
    small = FieldAgent(load_drone_config(write_config(tmp_path, 0, tables)))
    assert small.plan is not None and small.plan.mode != "full"
    assert small.plan.predicted.total <= budget
    trained = small.learner.trained_layers
    assert 0 < len(trained) < len(whole.learner.trained_layers)
    # It trains only those layers, and its frames carry only those layers.
    params = small.learner.flat_parameters()
    before = params.copy()
    small.learner.train_round()
    offsets = small.learner.layer_offsets
    changed = [
        i for i in range(len(offsets) - 1) if (params != before)[offsets[i] : offsets[i + 1]].any()
    ]
    assert tuple(changed) == trained
    data = small.node.publish(params, small.learner.sample_count, 0.0)[0]  # then the roster
    assert small.identity is not None  # per-drone keys: the field default
    frame = decode_frame(
        data,
        small.loaded.key,
        swarm_id=small.swarm_id,
        signature=None,
        senders=small.identity.senders,
    )
    assert frame.layers == trained


def test_a_budget_below_every_plan_is_one_line_naming_the_key(
    tmp_path: Path, secret_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    from swarmfl.cli import main

    tables = agent_tables(tmp_path, 0, unique_swarm_id(), shards=2)
    tables["training"]["budget_bytes"] = "4KiB"
    path = write_config(tmp_path, 0, tables)
    with pytest.raises(ConfigError) as info:
        FieldAgent(load_drone_config(path))
    assert info.value.key == "training.budget_bytes"
    assert "smallest feasible plan" in info.value.problem
    assert main(["agent", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"swarmfl: error: {path}: key 'training.budget_bytes': budget ")


def test_a_resumed_drone_continues_its_momentum_exactly(tmp_path: Path, secret_env: None) -> None:
    # One batch holds the whole shard, so a step does not depend on the shuffle: a resumed
    # drone's next step must be bitwise the uninterrupted drone's.
    tables = agent_tables(tmp_path, 0, unique_swarm_id(), shards=2)
    tables["training"].update({"momentum": 0.9, "batch_size": 2048})
    path = write_config(tmp_path, 0, tables)
    flying = FieldAgent(load_drone_config(path))
    for _ in range(2):
        flying.learner.train_round()
    flying.checkpoints.store.save(flying.checkpoints.snapshot(rounds=2, accuracy=None))
    flying.learner.train_round()

    resumed = FieldAgent(load_drone_config(path))
    assert resumed.resumed_from is not None
    momentum = resumed.learner.momentum_state()
    assert momentum is not None and np.abs(momentum).max() > 0
    resumed.learner.train_round()
    np.testing.assert_array_equal(
        resumed.learner.flat_parameters(), flying.learner.flat_parameters()
    )

    # Without momentum in the new config, the saved buffer is ignored (a fresh optimizer).
    tables["training"]["momentum"] = 0.0
    plain = FieldAgent(load_drone_config(write_config(tmp_path, 0, tables)))
    assert plain.resumed_from is not None and plain.learner.momentum_state() is None


def test_a_resumed_drone_continues_its_learning_rate_schedule(
    tmp_path: Path, secret_env: None
) -> None:
    # A steep cosine over 4 rounds: a drone that restarted its schedule after a crash would
    # train its next round at the full rate instead of the decayed one.
    tables = agent_tables(tmp_path, 0, unique_swarm_id(), shards=2)
    tables["training"].update(
        {"batch_size": 2048, "lr_schedule": "cosine", "lr_final": 0.0, "lr_rounds": 4}
    )
    path = write_config(tmp_path, 0, tables)
    flying = FieldAgent(load_drone_config(path))
    for _ in range(3):
        flying.learner.train_round()
    flying.checkpoints.store.save(flying.checkpoints.snapshot(rounds=3, accuracy=None))
    flying.learner.train_round()

    resumed = FieldAgent(load_drone_config(path))
    assert resumed.resumed_from is not None
    assert resumed.learner.rounds_trained == 3
    assert resumed.learner.current_lr < 0.2 * tables["training"]["lr"]
    resumed.learner.train_round()
    np.testing.assert_array_equal(
        resumed.learner.flat_parameters(), flying.learner.flat_parameters()
    )
