"""What a swarmfl model is, without torch: its blocks, layers, parameters and signature.

:func:`model_spec` takes the arguments of :func:`swarmfl.learning.models.build_model` and describes
the model that call builds: its blocks and layers (with the shape of one sample through each), and
every parameter's name (``named_parameters()`` names such as ``"0.1.weight"``), shape and offset in
the flat float32 vector both learners train (the parameters back to back, in ``named_parameters()``
order). Its :meth:`ModelSpec.signature` is byte-identical to
:func:`~swarmfl.learning.models.model_signature` of the torch model, so a drone without torch
speaks for the same architecture. :func:`initial_parameters` draws the starting weights from the
distributions torch's default initialisation uses for these layers, in numpy.

This module imports numpy only: it is what a torch-free drone knows about its model.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from swarmfl.errors import ConfigError

__all__ = [
    "MODEL_KINDS",
    "SIGNATURE_BYTES",
    "TRAINING_FLOPS_FACTOR",
    "LayerKind",
    "LayerSpec",
    "ModelSpec",
    "ParameterSpec",
    "initial_parameters",
    "model_spec",
    "signature_digest",
]

MODEL_KINDS: tuple[str, ...] = ("mlp", "cnn")
"""Kinds :func:`model_spec` (and ``build_model``) accept."""

SIGNATURE_BYTES = 8
"""Length of a model signature."""

TRAINING_FLOPS_FACTOR = 3
"""Training costs about 3x the forward pass: forward, plus backward for inputs and weights."""

LayerKind = Literal["flatten", "linear", "relu", "conv1d", "conv2d", "maxpool1d", "maxpool2d"]

KERNEL_SIZE = 3
"""Convolution kernel side (with padding 1, a convolution keeps the spatial shape)."""

POOL_SIZE = 2
"""Max-pooling window side and stride."""

# torch.nn class name of each layer kind, as model_signature hashes it
_TORCH_CLASS: dict[str, str] = {
    "flatten": "Flatten",
    "linear": "Linear",
    "relu": "ReLU",
    "conv1d": "Conv1d",
    "conv2d": "Conv2d",
    "maxpool1d": "MaxPool1d",
    "maxpool2d": "MaxPool2d",
}
_UINT64_MASK = (1 << 64) - 1
_FLOAT32 = "torch.float32"  # str(param.dtype) of every parameter swarmfl builds


@dataclass(frozen=True, slots=True)
class ParameterSpec:
    """One parameter tensor: its torch name, shape, place in the flat vector and fan-in.

    ``offset`` is where its values start in the flat float32 vector; ``fan_in`` is the number of
    inputs each output sums over (``in_features``, or ``in_channels * kernel volume``), which sets
    its initialisation bound.
    """

    name: str
    shape: tuple[int, ...]
    offset: int
    fan_in: int
    block: int

    @property
    def numel(self) -> int:
        """Number of values."""
        return math.prod(self.shape)

    @property
    def stop(self) -> int:
        """Offset one past its last value in the flat vector."""
        return self.offset + self.numel

    @property
    def is_bias(self) -> bool:
        """Whether this is a bias (what a bias-only plan trains)."""
        return self.name.rsplit(".", 1)[-1] == "bias"


@dataclass(frozen=True, slots=True)
class LayerSpec:
    """One layer: its kind, module path (``"0.1"``), block, and one sample's shape in and out.

    ``parameters`` holds the weight then the bias of a ``linear`` or ``conv*`` layer, nothing for
    the other kinds. ``torch_class`` is the ``torch.nn`` class that implements it.
    """

    kind: LayerKind
    path: str
    block: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    parameters: tuple[ParameterSpec, ...] = ()

    @property
    def torch_class(self) -> str:
        """The ``torch.nn`` class name, e.g. ``"Conv2d"``."""
        return _TORCH_CLASS[self.kind]

    @property
    def spatial_dims(self) -> int:
        """1 for ``conv1d``/``maxpool1d``, 2 for the 2-D kinds, 0 otherwise."""
        return int(self.kind[-2]) if self.kind[-1] == "d" and self.kind[-2].isdigit() else 0

    def forward_flops(self) -> int:
        """Forward FLOPs on one sample, counted as ``models.flops_per_block`` counts them.

        ``linear`` 2*in*out, ``conv*`` 2*in_channels*kernel volume per output value, pooling one
        per input value, ``relu`` one per output value, ``flatten`` nothing.
        """
        if self.kind == "linear":
            return 2 * self.in_shape[0] * self.out_shape[0]
        if self.kind in ("conv1d", "conv2d"):
            return 2 * self.parameters[0].fan_in * math.prod(self.out_shape)
        if self.kind in ("maxpool1d", "maxpool2d"):
            return math.prod(self.in_shape)
        if self.kind == "relu":
            return math.prod(self.out_shape)
        return 0


@dataclass(frozen=True)
class ModelSpec:
    """A model swarmfl ships, described without torch (build one with :func:`model_spec`).

    ``layers`` lists every layer in forward order (each knows its block); ``parameters`` lists
    every parameter tensor in ``named_parameters()`` order with its place in the flat vector;
    ``layer_offsets`` are those offsets plus the total at the end (``TorchLearner.layer_offsets``).
    ``seed`` is the seed the model's weights start from (see :func:`initial_parameters`).
    """

    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    hidden: tuple[int, ...]
    channels: tuple[int, ...]
    seed: int
    num_blocks: int
    layers: tuple[LayerSpec, ...]
    parameters: tuple[ParameterSpec, ...]

    @property
    def layer_offsets(self) -> tuple[int, ...]:
        """Offset of each parameter tensor in the flat vector, plus the total at the end."""
        return (*(p.offset for p in self.parameters), self.numel)

    @property
    def numel(self) -> int:
        """Number of values in the flat parameter vector."""
        return self.parameters[-1].stop

    @property
    def parameter_names(self) -> tuple[str, ...]:
        """Every parameter's name, in ``named_parameters()`` order."""
        return tuple(p.name for p in self.parameters)

    def block_layers(self, block: int) -> tuple[LayerSpec, ...]:
        """The layers of block ``block``, in order."""
        return tuple(layer for layer in self.layers if layer.block == block)

    def flops_per_block(self) -> list[int]:
        """Forward FLOPs for one sample through each block, equal to ``models.flops_per_block``."""
        counts = [0] * self.num_blocks
        for layer in self.layers:
            counts[layer.block] += layer.forward_flops()
        return counts

    def training_flops_per_sample(self) -> int:
        """FLOPs to train every parameter on one sample: :data:`TRAINING_FLOPS_FACTOR` x forward."""
        return TRAINING_FLOPS_FACTOR * sum(self.flops_per_block())

    def signature(self) -> bytes:
        """The 8-byte architecture fingerprint, byte-identical to ``models.model_signature``."""
        modules = [("", "Sequential")]
        for block in range(self.num_blocks):
            modules.append((str(block), "Sequential"))
            modules += [(layer.path, layer.torch_class) for layer in self.block_layers(block)]
        return signature_digest(modules, ((p.name, p.shape, _FLOAT32) for p in self.parameters))


def signature_digest(
    modules: Iterable[tuple[str, str]], parameters: Iterable[tuple[str, tuple[int, ...], str]]
) -> bytes:
    """The model signature: a blake2b digest of module and parameter descriptions.

    ``modules`` are ``(name, class name)`` in ``named_modules()`` order, ``parameters`` are
    ``(name, shape, dtype string)`` in ``named_parameters()`` order. Weights do not enter it.
    """
    digest = hashlib.blake2b(digest_size=SIGNATURE_BYTES, person=b"swarmfl-model")
    for name, class_name in modules:
        digest.update(f"m:{name}:{class_name}\n".encode())
    for name, shape, dtype in parameters:
        digest.update(f"p:{name}:{tuple(shape)}:{dtype}\n".encode())
    return digest.digest()


def _check_widths(values: object, key: str) -> tuple[int, ...]:
    if not isinstance(values, Sequence) or isinstance(values, str):
        raise ConfigError(f"must be a sequence of positive ints, got {values!r}", key=key)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ConfigError(f"must be a sequence of positive ints, got {values!r}", key=key)
    return tuple(values)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def model_spec(
    kind: str,
    input_shape: tuple[int, ...],
    num_classes: int,
    *,
    hidden: tuple[int, ...] = (128,),
    channels: tuple[int, ...] = (16, 32),
    seed: int = 0,
) -> ModelSpec:
    """Describe the model ``build_model`` builds from the same arguments.

    * ``"mlp"``: one block ``Linear + ReLU`` per width in ``hidden`` (the first block starts with
      ``Flatten``), then a ``Linear`` output block (with a ``Flatten`` first if there is no
      hidden block).
    * ``"cnn"``: one block ``Conv(k=3, pad=1) + ReLU + MaxPool(2)`` per width in ``channels``,
      ``Conv2d`` for inputs ``(C, H, W)`` and ``Conv1d`` for ``(C, L)``; pooling is left out of a
      block where it would shrink a spatial side below 2. Then a ``Flatten + Linear`` head block.

    Raises:
        ConfigError: unknown ``kind`` (the message lists the valid ones), an ``input_shape`` the
            kind cannot take (a CNN needs rank 2 or 3), or non-positive sizes.
    """
    if kind not in MODEL_KINDS:
        raise ConfigError(
            f"unknown model {kind!r}; valid kinds: {', '.join(MODEL_KINDS)}", key="kind"
        )
    shape = tuple(input_shape) if isinstance(input_shape, Sequence) else input_shape
    if not isinstance(shape, tuple) or not shape or not all(_is_int(d) and d > 0 for d in shape):
        raise ConfigError(
            f"must be a non-empty tuple of positive ints, got {input_shape!r}", key="input_shape"
        )
    if not _is_int(num_classes) or num_classes < 1:
        raise ConfigError(f"must be a positive int, got {num_classes!r}", key="num_classes")
    if not _is_int(seed):
        raise ConfigError(f"must be an int, got {seed!r}", key="seed")
    hidden = _check_widths(hidden, "hidden")
    channels = _check_widths(channels, "channels")
    builder = _LayerList()
    if kind == "mlp":
        _mlp_layers(builder, shape, num_classes, hidden)
    else:
        _cnn_layers(builder, shape, num_classes, channels)
    return ModelSpec(
        kind=kind,
        input_shape=shape,
        num_classes=num_classes,
        hidden=hidden,
        channels=channels,
        seed=seed,
        num_blocks=builder.block + 1,
        layers=tuple(builder.layers),
        parameters=tuple(p for layer in builder.layers for p in layer.parameters),
    )


class _LayerList:
    """Appends layers block by block, naming them and placing their parameters."""

    def __init__(self) -> None:
        self.layers: list[LayerSpec] = []
        self.block = -1
        self._index = 0
        self._offset = 0

    def new_block(self) -> None:
        self.block += 1
        self._index = 0

    def add(
        self,
        kind: LayerKind,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        weight_shape: tuple[int, ...] | None = None,
    ) -> tuple[int, ...]:
        path = f"{self.block}.{self._index}"
        self._index += 1
        parameters: list[ParameterSpec] = []
        if weight_shape is not None:
            fan_in = math.prod(weight_shape[1:])
            for name, param_shape in (("weight", weight_shape), ("bias", weight_shape[:1])):
                param = ParameterSpec(
                    f"{path}.{name}", param_shape, self._offset, fan_in, self.block
                )
                parameters.append(param)
                self._offset = param.stop
        self.layers.append(
            LayerSpec(kind, path, self.block, in_shape, out_shape, tuple(parameters))
        )
        return out_shape


def _mlp_layers(
    builder: _LayerList, input_shape: tuple[int, ...], num_classes: int, hidden: tuple[int, ...]
) -> None:
    shape: tuple[int, ...] = (math.prod(input_shape),)
    for i, out in enumerate(hidden):
        builder.new_block()
        if i == 0:
            builder.add("flatten", input_shape, shape)
        shape = builder.add("linear", shape, (out,), (out, shape[0]))
        shape = builder.add("relu", shape, shape)
    builder.new_block()
    if not hidden:
        builder.add("flatten", input_shape, shape)
    builder.add("linear", shape, (num_classes,), (num_classes, shape[0]))


def _cnn_layers(
    builder: _LayerList, input_shape: tuple[int, ...], num_classes: int, channels: tuple[int, ...]
) -> None:
    if len(input_shape) not in (2, 3):
        raise ConfigError(
            f"a cnn needs an input of rank 3 (C, H, W) or 2 (C, L), got {input_shape}",
            key="input_shape",
        )
    if not channels:
        raise ConfigError("a cnn needs at least one conv block", key="channels")
    dims = len(input_shape) - 1
    conv: LayerKind = "conv2d" if dims == 2 else "conv1d"
    pool: LayerKind = "maxpool2d" if dims == 2 else "maxpool1d"
    shape = input_shape
    for out_channels in channels:
        builder.new_block()
        spatial = shape[1:]
        weight = (out_channels, shape[0], *(KERNEL_SIZE,) * dims)
        shape = builder.add(conv, shape, (out_channels, *spatial), weight)
        shape = builder.add("relu", shape, shape)
        if all(side // POOL_SIZE >= 2 for side in spatial):
            pooled = (out_channels, *(side // POOL_SIZE for side in spatial))
            shape = builder.add(pool, shape, pooled)
    builder.new_block()
    flat = (math.prod(shape),)
    builder.add("flatten", shape, flat)
    builder.add("linear", flat, (num_classes,), (num_classes, flat[0]))


def initial_parameters(spec: ModelSpec, seed: int | None = None) -> np.ndarray:
    """Fresh starting weights for ``spec`` as one flat float32 vector, from ``seed`` alone.

    Each tensor is drawn as torch's default initialisation draws it for these layers: weights by
    ``kaiming_uniform_(a=sqrt(5))`` and biases uniformly, both of which are
    ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``. The values come from a numpy ``Generator`` seeded with
    ``seed`` (``spec.seed`` when None), tensor after tensor in flat order: the same seed gives the
    same vector, bit for bit, but not the values torch's own generator would draw.

    Raises:
        ConfigError: ``seed`` is not an int.
    """
    seed = spec.seed if seed is None else seed
    if not _is_int(seed):
        raise ConfigError(f"must be an int, got {seed!r}", key="seed")
    rng = np.random.default_rng(seed & _UINT64_MASK)  # a negative seed wraps, as torch's does
    flat = np.empty(spec.numel, dtype=np.float32)
    for param in spec.parameters:
        values = flat[param.offset : param.stop]
        bound = np.float32(1.0 / math.sqrt(param.fan_in))
        rng.random(out=values, dtype=np.float32)  # U[0, 1), then mapped onto [-bound, bound)
        values *= 2 * bound
        values -= bound
    return flat
