"""The models a swarm trains, and what it costs to train them.

A model is an ``nn.Sequential`` of *blocks*, each block itself a module (``Sequential(Linear,
ReLU)``, ``Sequential(Conv, ReLU, MaxPool)``...). The memory planner trains a suffix of blocks and
runs the prefix frozen, so blocks are the unit of partial training.

Weights are initialised from ``seed`` alone: every drone that builds the same model with the same
seed starts from the same weights, whatever the global torch RNG state.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from swarmfl.errors import ConfigError
from swarmfl.learning.spec import (
    KERNEL_SIZE,
    POOL_SIZE,
    LayerSpec,
    ModelSpec,
    model_spec,
    signature_digest,
)
from swarmfl.learning.spec import MODEL_KINDS as MODEL_KINDS
from swarmfl.learning.spec import SIGNATURE_BYTES as SIGNATURE_BYTES
from swarmfl.learning.spec import TRAINING_FLOPS_FACTOR as TRAINING_FLOPS_FACTOR

_CONV: dict[str, type[nn.Conv1d | nn.Conv2d]] = {"conv1d": nn.Conv1d, "conv2d": nn.Conv2d}
_POOL: dict[str, type[nn.MaxPool1d | nn.MaxPool2d]] = {
    "maxpool1d": nn.MaxPool1d,
    "maxpool2d": nn.MaxPool2d,
}


def build_model(
    kind: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: tuple[int, ...] = (128,),
    channels: tuple[int, ...] = (16, 32),
    seed: int = 0,
) -> nn.Sequential:
    """Build a model as an ``nn.Sequential`` of blocks, initialised deterministically from ``seed``.

    * ``"mlp"``: one block ``Linear + ReLU`` per width in ``hidden`` (the first block starts with
      ``Flatten``), then a ``Linear`` output block. Digits with ``hidden=(128,)`` is 64-128-10.
    * ``"cnn"``: one block ``Conv(k=3, pad=1) + ReLU + MaxPool(2)`` per width in ``channels``,
      ``Conv2d`` for inputs ``(C, H, W)`` and ``Conv1d`` for ``(C, L)``; pooling is left out of a
      block where it would shrink a spatial side below 2. Then a ``Flatten + Linear`` head block.

    The architecture is the one :func:`~swarmfl.learning.spec.model_spec` describes from the same
    arguments. The model takes batches of shape ``(B, *input_shape)`` and returns logits
    ``(B, num_classes)``. Initialisation uses a forked torch RNG seeded with ``seed``: the global
    RNG is neither read nor advanced.

    Raises:
        ConfigError: unknown ``kind`` (the message lists the valid ones), an ``input_shape`` the
            kind cannot take (a CNN needs rank 2 or 3), or non-positive sizes.
    """
    return model_from_spec(
        model_spec(kind, input_shape, num_classes, hidden=hidden, channels=channels, seed=seed)
    )


def model_from_spec(spec: ModelSpec) -> nn.Sequential:
    """The torch model ``spec`` describes (see :func:`build_model`), initialised from ``spec.seed``.

    Initialisation uses a forked torch RNG: the global RNG is neither read nor advanced.
    """
    # fork_rng(devices=[]) saves and restores only the CPU generator: no CUDA is touched.
    with torch.random.fork_rng(devices=[]):
        # Seed only the CPU generator: torch.manual_seed also queues lazy seeding of every
        # accelerator backend, capturing a traceback each time (half of building a small model).
        torch.default_generator.manual_seed(spec.seed)
        # Layers are created (and so initialised) in forward order, as the spec lists them.
        return nn.Sequential(
            *(
                nn.Sequential(*(_torch_layer(layer) for layer in spec.block_layers(block)))
                for block in range(spec.num_blocks)
            )
        )


def _torch_layer(layer: LayerSpec) -> nn.Module:
    if layer.kind == "flatten":
        return nn.Flatten()
    if layer.kind == "relu":
        return nn.ReLU()
    if layer.kind == "linear":
        return nn.Linear(layer.in_shape[0], layer.out_shape[0])
    if layer.kind in _CONV:
        return _CONV[layer.kind](
            layer.in_shape[0], layer.out_shape[0], kernel_size=KERNEL_SIZE, padding=1
        )
    return _POOL[layer.kind](POOL_SIZE)


def model_signature(model: nn.Module) -> bytes:
    """An 8-byte fingerprint of the architecture, for frames to refuse a foreign model.

    A blake2b digest of the module class names in ``modules()`` order and of every parameter's
    name, shape and dtype (:func:`~swarmfl.learning.spec.signature_digest`). Weights do not enter
    it: two models of the same architecture have the same signature whatever their training.
    """
    return signature_digest(
        ((name, type(module).__name__) for name, module in model.named_modules()),
        ((name, tuple(p.shape), str(p.dtype)) for name, p in model.named_parameters()),
    )


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The model's parameters in ``named_parameters()`` order.

    Frames name layers by their index in this list, so every drone must agree on it; it depends
    only on the architecture.
    """
    return list(model.named_parameters())


_FREE_MODULES = (nn.Flatten, nn.Unflatten, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d)
_POOL_MODULES = (
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
)
_NORM_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


def _leaf_flops(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> int:
    """Forward FLOPs of one leaf module on a batch of one sample."""
    if isinstance(module, nn.Linear):
        rows = inputs[0].numel() // module.in_features
        return 2 * module.in_features * module.out_features * rows
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel = math.prod(module.kernel_size)
        per_output = 2 * (module.in_channels // module.groups) * kernel
        return per_output * output.numel()
    if isinstance(module, _FREE_MODULES):
        return 0
    if isinstance(module, _POOL_MODULES):
        return inputs[0].numel()
    if isinstance(module, _NORM_MODULES):
        return 2 * output.numel()
    # Activations and anything else element-wise: one operation per output element.
    return output.numel() if isinstance(output, torch.Tensor) else 0


def flops_per_block(model: nn.Module, input_shape: tuple[int, ...]) -> list[int]:
    """Forward FLOPs for one sample through each top-level block of ``model``, in order.

    The planner charges a frozen prefix its forward cost only and a trained suffix
    :data:`TRAINING_FLOPS_FACTOR` times that. Counts: ``Linear`` 2*in*out, ``Conv``
    2*(Cin/groups)*k per output element, pooling one per input element, norms two and
    activations one per output element; ``Flatten``/``Dropout`` are free. Measured with forward
    hooks on a zero batch of one under ``torch.no_grad``, in eval mode (restored afterwards).

    Raises:
        ConfigError: the model cannot run on inputs of ``input_shape``.
    """
    counts: dict[int, int] = {}
    hooks = []
    block_of: dict[nn.Module, int] = {}
    for i, block in enumerate(model.children()):
        for leaf in block.modules():
            if not any(True for _ in leaf.children()):
                block_of.setdefault(leaf, i)
    num_blocks = len(list(model.children()))

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        i = block_of[module]
        counts[i] = counts.get(i, 0) + _leaf_flops(module, inputs, output)

    was_training = [m.training for m in model.modules()]
    try:
        for leaf in block_of:
            hooks.append(leaf.register_forward_hook(hook))
        model.eval()
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.float32
        device = param.device if param is not None else torch.device("cpu")
        with torch.no_grad():
            model(torch.zeros((1, *input_shape), dtype=dtype, device=device))
    except (RuntimeError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"the model does not run on inputs of shape {tuple(input_shape)}: {exc}",
            key="input_shape",
        ) from exc
    finally:
        for handle in hooks:
            handle.remove()
        for module, training in zip(model.modules(), was_training, strict=True):
            module.training = training
    return [counts.get(i, 0) for i in range(num_blocks)]


def flops_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs for one sample of shape ``input_shape`` (see :func:`flops_per_block`).

    Raises:
        ConfigError: the model cannot run on inputs of ``input_shape``.
    """
    return sum(flops_per_block(model, input_shape))


def training_flops_per_sample(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """FLOPs to train on one sample: :data:`TRAINING_FLOPS_FACTOR` times the forward pass.

    Raises:
        ConfigError: the model cannot run on inputs of ``input_shape``.
    """
    return TRAINING_FLOPS_FACTOR * flops_per_sample(model, input_shape)
