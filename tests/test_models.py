"""Tests for swarmfl.learning.models: architectures, seeded init, signatures, FLOP counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from swarmfl.errors import ConfigError
from swarmfl.learning.models import (
    MODEL_KINDS,
    SIGNATURE_BYTES,
    build_model,
    flops_per_block,
    flops_per_sample,
    model_signature,
    parameter_layers,
    training_flops_per_sample,
)

SHAPES = [(1, 8, 8), (1, 40), (3, 32, 32)]


@pytest.mark.parametrize("kind", MODEL_KINDS)
@pytest.mark.parametrize("shape", SHAPES)
def test_output_shape(kind: str, shape: tuple[int, ...]) -> None:
    model = build_model(kind, shape, 10)
    assert isinstance(model, nn.Sequential)
    assert all(isinstance(block, nn.Module) for block in model)
    out = model(torch.randn(4, *shape))
    assert out.shape == (4, 10)
    assert torch.isfinite(out).all()


def test_mlp_on_digits_is_64_128_10_in_blocks() -> None:
    model = build_model("mlp", (1, 8, 8), 10)
    assert len(model) == 2
    first, head = model
    assert isinstance(first[0], nn.Flatten)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 128), (128, 10)]
    assert isinstance(first[-1], nn.ReLU)
    assert isinstance(head[-1], nn.Linear)


def test_mlp_hidden_widths_and_no_hidden() -> None:
    deep = build_model("mlp", (1, 40), 3, hidden=(32, 16))
    assert len(deep) == 3
    linears = [m for m in deep.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(40, 32), (32, 16), (16, 3)]
    linear_only = build_model("mlp", (1, 40), 3, hidden=())
    assert len(linear_only) == 1
    assert linear_only(torch.zeros(2, 1, 40)).shape == (2, 3)


def test_cnn_uses_conv2d_for_images_and_conv1d_for_signals() -> None:
    image = build_model("cnn", (1, 8, 8), 10)
    signal = build_model("cnn", (1, 40), 10)
    assert any(isinstance(m, nn.Conv2d) for m in image.modules())
    assert not any(isinstance(m, nn.Conv1d) for m in image.modules())
    assert any(isinstance(m, nn.Conv1d) for m in signal.modules())
    # Blocks: one per conv width, then the head.
    assert len(image) == 3
    assert isinstance(image[-1][0], nn.Flatten)
    # 8x8 pooled twice -> 2x2 with 32 channels.
    assert image[-1][1].in_features == 32 * 2 * 2
    # 40 pooled twice -> 10 with 32 channels.
    assert signal[-1][1].in_features == 32 * 10


def test_cnn_skips_pooling_below_two() -> None:
    model = build_model("cnn", (1, 5, 5), 4, channels=(8, 8, 8))
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert len(pools) == 1  # 5 -> 2, after which pooling would give 1
    assert model[-1][1].in_features == 8 * 2 * 2
    assert model(torch.zeros(3, 1, 5, 5)).shape == (3, 4)


def test_init_is_deterministic_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(1)
    state = torch.get_rng_state()
    a = build_model("cnn", (1, 8, 8), 10, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)  # a different global state must not change the weights
    b = build_model("cnn", (1, 8, 8), 10, seed=7)
    c = build_model("cnn", (1, 8, 8), 10, seed=8)
    for (_, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert not all(
        torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_signature_ignores_weights_and_sees_architecture() -> None:
    a = build_model("mlp", (1, 8, 8), 10, seed=0)
    b = build_model("mlp", (1, 8, 8), 10, seed=1)
    sig = model_signature(a)
    assert isinstance(sig, bytes)
    assert len(sig) == SIGNATURE_BYTES == 8
    assert model_signature(b) == sig
    with torch.no_grad():
        for p in a.parameters():
            p.add_(1.0)
    assert model_signature(a) == sig
    others = [
        build_model("mlp", (1, 8, 8), 10, hidden=(64,)),
        build_model("mlp", (1, 8, 8), 9),
        build_model("mlp", (1, 40), 10),
        build_model("cnn", (1, 8, 8), 10),
        build_model("mlp", (1, 8, 8), 10).double(),
    ]
    sigs = {model_signature(m) for m in others}
    assert sig not in sigs
    assert len(sigs) == len(others)


def test_signature_sees_module_classes_with_equal_parameter_shapes() -> None:
    relu = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    tanh = nn.Sequential(nn.Sequential(nn.Linear(4, 4), nn.Tanh()))
    assert model_signature(relu) != model_signature(tanh)


def test_parameter_layers_order_and_names() -> None:
    model = build_model("mlp", (1, 8, 8), 10)
    layers = parameter_layers(model)
    assert [name for name, _ in layers] == ["0.1.weight", "0.1.bias", "1.0.weight", "1.0.bias"]
    assert [tuple(p.shape) for _, p in layers] == [(128, 64), (128,), (10, 128), (10,)]
    assert all(p is q for (_, p), q in zip(layers, model.parameters(), strict=True))


def test_mlp_flops() -> None:
    model = build_model("mlp", (1, 8, 8), 10)
    matmuls = 2 * (64 * 128 + 128 * 10)
    forward = flops_per_sample(model, (1, 8, 8))
    # The extras are the 128 ReLUs.
    assert forward == matmuls + 128
    assert flops_per_block(model, (1, 8, 8)) == [2 * 64 * 128 + 128, 2 * 128 * 10]
    assert training_flops_per_sample(model, (1, 8, 8)) == 3 * forward


def test_cnn_flops() -> None:
    model = build_model("cnn", (1, 8, 8), 10, channels=(4,))
    conv = 2 * 1 * 9 * 4 * 8 * 8  # per output element: 2 * Cin * k, times Cout * H * W
    relu = 4 * 8 * 8
    pool = 4 * 8 * 8
    head = 2 * (4 * 4 * 4) * 10
    assert flops_per_block(model, (1, 8, 8)) == [conv + relu + pool, head]
    big = build_model("cnn", (3, 32, 32), 10)
    assert flops_per_sample(big, (3, 32, 32)) > 10 * flops_per_sample(model, (1, 8, 8))


def test_flops_keeps_training_mode_and_grad_state() -> None:
    model = build_model("cnn", (1, 40), 10)
    model.train()
    flops_per_sample(model, (1, 40))
    assert all(m.training for m in model.modules())
    model.eval()
    flops_per_sample(model, (1, 40))
    assert not any(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    # Hooks are removed: a later forward pass does not count anything.
    assert all(not m._forward_hooks for m in model.modules())


def test_flops_with_wrong_input_shape_is_config_error() -> None:
    model = build_model("mlp", (1, 8, 8), 10)
    with pytest.raises(ConfigError, match="input_shape"):
        flops_per_sample(model, (1, 40))


@pytest.mark.parametrize(
    ("args", "kwargs", "key"),
    [
        (("transformer", (1, 8, 8), 10), {}, "kind"),
        (("cnn", (64,), 10), {}, "input_shape"),
        (("cnn", (1, 2, 3, 4), 10), {}, "input_shape"),
        (("mlp", (1, 0), 10), {}, "input_shape"),
        (("mlp", (1, 8, 8), 0), {}, "num_classes"),
        (("mlp", (1, 8, 8), 10), {"hidden": (0,)}, "hidden"),
        (("cnn", (1, 8, 8), 10), {"channels": ()}, "channels"),
    ],
)
def test_bad_build_arguments(args: tuple, kwargs: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(*args, **kwargs)
    assert info.value.key == key


def test_unknown_kind_lists_valid_kinds() -> None:
    with pytest.raises(ConfigError) as info:
        build_model("resnet", (1, 8, 8), 10)
    for kind in MODEL_KINDS:
        assert kind in str(info.value)
