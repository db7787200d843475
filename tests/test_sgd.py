"""FlatSGD, the step both learners take, against torch.optim.SGD itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from swarmfl.errors import ConfigError
from swarmfl.learning.seam import TrainingConfig
from swarmfl.learning.sgd import STEP_CHUNK, FlatSGD


@pytest.mark.parametrize(
    "config",
    [
        TrainingConfig(lr=0.1),
        TrainingConfig(lr=0.05, momentum=0.9),
        TrainingConfig(lr=0.02, momentum=0.5, weight_decay=0.01),
    ],
)
def test_steps_equal_torch_optim_sgd_across_chunks_and_frozen_gaps(config: TrainingConfig) -> None:
    rng = np.random.default_rng(0)
    size = 2 * STEP_CHUNK + 1000
    # trained: two touching ranges (joined, then cut into chunks) and one after a frozen gap
    trained = [(0, 500), (500, STEP_CHUNK + 700), (STEP_CHUNK + 900, size)]
    flat = rng.standard_normal(size).astype(np.float32)
    sgd = FlatSGD(flat, trained, config)
    reference = [torch.tensor(flat[a:b]) for a, b in trained]
    optimizer = torch.optim.SGD(
        reference, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
    )
    frozen = flat[STEP_CHUNK + 700 : STEP_CHUNK + 900].copy()
    for step in range(4):
        gradient = rng.standard_normal(sgd.gradient.size).astype(np.float32)
        sgd.gradient[:] = gradient
        position = 0
        for tensor in reference:
            tensor.grad = torch.from_numpy(gradient[position : position + tensor.numel()].copy())
            position += tensor.numel()
        sgd.step()
        optimizer.step()
        for (a, b), tensor in zip(trained, reference, strict=True):
            np.testing.assert_allclose(flat[a:b], tensor.numpy(), rtol=1e-6, atol=1e-6)
        if config.momentum and step == 1:
            # a reset starts the buffer afresh, as a new torch optimizer does
            sgd.reset()
            optimizer = torch.optim.SGD(
                reference, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
            )
    np.testing.assert_array_equal(flat[STEP_CHUNK + 700 : STEP_CHUNK + 900], frozen)


def test_momentum_state_needs_a_step_and_a_matching_buffer() -> None:
    flat = np.ones(10, dtype=np.float32)
    sgd = FlatSGD(flat, [(2, 8)], TrainingConfig(momentum=0.9))
    assert sgd.momentum_state() is None
    sgd.gradient[:] = 1.0
    sgd.step()
    state = sgd.momentum_state()
    assert state is not None and state.shape == (6,)
    with pytest.raises(ConfigError, match="6 float32"):
        sgd.load_momentum_state(state.astype(np.float64))
    with pytest.raises(ConfigError, match="without momentum"):
        FlatSGD(flat, [(2, 8)], TrainingConfig()).load_momentum_state(state)
