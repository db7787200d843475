"""The torch learner: flat parameter buffer, fused SGD equal to torch.optim.SGD, evaluation."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from swarmfl.errors import ConfigError
from swarmfl.learning.learner import TorchLearner, TrainingConfig
from swarmfl.learning.models import build_model


def data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n)


@pytest.mark.parametrize(
    ("config", "trained"),
    [
        (TrainingConfig(), None),
        (TrainingConfig(momentum=0.9, weight_decay=1e-3), None),
        (TrainingConfig(momentum=0.5, batch_size=7, local_epochs=2), (2, 3)),
    ],
)
def test_fused_step_equals_torch_sgd(config, trained):
    x, y = data()
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    reference = copy.deepcopy(model)
    learner = TorchLearner(
        model, x, y, config, flops_per_sample=1.0, seed=5, trained_layers=trained
    )
    params = list(reference.parameters())
    chosen = trained or tuple(range(len(params)))
    for index, p in enumerate(params):
        p.requires_grad_(index in chosen)
    optimizer = torch.optim.SGD(
        [params[i] for i in chosen],
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    generator = torch.Generator().manual_seed(5)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(4):
        learner.train_round()
        for _ in range(config.local_epochs):
            order = torch.randperm(len(y), generator=generator)
            for s in range(0, len(y), config.batch_size):
                index = order[s : s + config.batch_size]
                optimizer.zero_grad()
                loss_fn(reference(xt[index]), yt[index]).backward()
                optimizer.step()
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours.detach(), theirs.detach(), rtol=0, atol=1e-6)


def test_flat_vector_aliases_the_model_and_frozen_layers_stay_put():
    x, y = data()
    model = build_model("mlp", (1, 8, 8), 10, seed=0)
    learner = TorchLearner(
        model, x, y, TrainingConfig(), flops_per_sample=1.0, seed=0, trained_layers=(2, 3)
    )
    flat = learner.flat_parameters()
    frozen = flat[: learner.layer_offsets[2]].copy()
    result = learner.train_round()
    np.testing.assert_array_equal(flat[: learner.layer_offsets[2]], frozen)
    assert result.samples == 40 and result.flops == 40.0
    flat[:] = 0.0  # a merge writes here; the model sees it at once
    assert all(float(p.detach().abs().sum()) == 0.0 for p in model.parameters())


def test_training_learns_and_evaluate_reports_accuracy():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    x = (rng.standard_normal((200, 1, 8, 8)) + y[:, None, None, None] * 2).astype(np.float32)
    learner = TorchLearner(
        build_model("mlp", (1, 8, 8), 2, seed=0),
        x,
        y,
        TrainingConfig(),
        flops_per_sample=1.0,
        seed=0,
    )
    before = learner.evaluate(x, y).accuracy
    for _ in range(5):
        learner.train_round()
    after = learner.evaluate(x, y)
    assert after.accuracy > max(before, 0.95)
    assert after.loss < 0.2


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"lr": 0}, "training.lr"),
        ({"batch_size": 0}, "training.batch_size"),
        ({"momentum": 1.0}, "training.momentum"),
        ({"local_epochs": 0}, "training.local_epochs"),
    ],
)
def test_training_config_is_validated(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        TrainingConfig(**kwargs)
