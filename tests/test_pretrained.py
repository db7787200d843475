"""Starting from a pretrained model: torch, npz and swarmfl checkpoint files; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swarmfl.core.checkpoint import Checkpoint, encode
from swarmfl.errors import ConfigError
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.models import build_model
from swarmfl.learning.pretrained import load_pretrained, save_pretrained

SHAPE = (3, 8, 8)


def cnn(seed: int, classes: int = 10) -> torch.nn.Sequential:
    return build_model("cnn", SHAPE, classes, channels=(4, 8), seed=seed)


def short_flat_checkpoint() -> bytes:
    return encode(Checkpoint(1, 0, 0, {"parameters": np.zeros(3, np.float32)}, {}, 0.0))


def tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_backbone_only_checkpoint_loads_the_backbone_and_keeps_the_seeded_head(tmp_path) -> None:
    pretrained = cnn(seed=1, classes=5)  # another task: its head has another shape
    path = tmp_path / "backbone.pt"
    save_pretrained(pretrained, path, first_blocks=2)
    model = cnn(seed=2)
    fresh = tensors(model)
    loaded = load_pretrained(model, path)
    assert loaded == ["0.0.weight", "0.0.bias", "1.0.weight", "1.0.bias"]
    state = model.state_dict()
    for name in loaded:
        assert torch.equal(state[name], pretrained.state_dict()[name])
    for name in ("2.1.weight", "2.1.bias"):
        assert torch.equal(state[name], fresh[name])


def test_loading_writes_through_a_learners_flat_buffer(tmp_path) -> None:
    """A model already flattened by a learner stays flat: the gossip layer sees the weights."""
    source = cnn(seed=3)
    path = tmp_path / "model.pt"
    torch.save({"model_state_dict": source.state_dict(), "epoch": 7}, path)
    model = cnn(seed=4)
    x = np.zeros((2, *SHAPE), np.float32)
    learner = TorchLearner(
        model, x, np.zeros(2, np.int64), TrainingConfig(), flops_per_sample=1.0, seed=0
    )
    load_pretrained(model, path)
    expected = torch.cat([p.detach().reshape(-1) for p in source.parameters()]).numpy()
    np.testing.assert_array_equal(learner.flat_parameters(), expected)


def test_npz_and_swarmfl_checkpoints(tmp_path) -> None:
    source = cnn(seed=5)
    npz = tmp_path / "weights.npz"
    np.savez(npz, **{k: v.numpy() for k, v in source.state_dict().items()})
    model = cnn(seed=6)
    load_pretrained(model, npz)
    assert all(map(torch.equal, model.parameters(), source.parameters()))

    flat = torch.cat([p.detach().reshape(-1) for p in source.parameters()]).numpy()
    swfl = tmp_path / "ckpt-000000000001.swfl"
    # a field drone's checkpoint: the flat parameter vector under "params"
    swfl.write_bytes(encode(Checkpoint(1, 0, 0, {"params": flat}, {}, 0.0)))
    model = cnn(seed=7)
    assert len(load_pretrained(model, swfl)) == len(list(model.parameters()))
    assert all(map(torch.equal, model.parameters(), source.parameters()))


@pytest.mark.parametrize(
    ("write", "problem"),
    [
        (None, "file not found"),
        (lambda p: p.write_bytes(b"not a checkpoint at all"), "not a torch checkpoint"),
        (lambda p: torch.save({"extra.weight": torch.zeros(3)}, p), "does not have"),
        (lambda p: torch.save({"0.0.weight": torch.zeros(3)}, p), "has shape (3,)"),
        (lambda p: torch.save([1, 2, 3], p), "holds no state dict"),
        (lambda p: torch.save({}, p), "holds no tensor"),
        (lambda p: p.write_bytes(short_flat_checkpoint()), "holds 3 values"),
    ],
)
def test_bad_checkpoints_are_one_line_config_errors(tmp_path, write, problem) -> None:
    path = tmp_path / "bad.pt"
    if write is not None:
        write(path)
    with pytest.raises(ConfigError) as caught:
        load_pretrained(cnn(seed=0), path)
    line = caught.value.one_line()
    assert "\n" not in line
    assert line.startswith(str(path))
    assert "model.checkpoint" in line
    assert problem in line


def test_damaged_swarmfl_checkpoint(tmp_path) -> None:
    path = tmp_path / "x.swfl"
    data = bytearray(short_flat_checkpoint())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match="damaged swarmfl checkpoint"):
        load_pretrained(cnn(seed=0), path)


def test_save_pretrained_checks_first_blocks(tmp_path) -> None:
    with pytest.raises(ConfigError, match="first_blocks"):
        save_pretrained(cnn(seed=0), tmp_path / "x.pt", first_blocks=9)
