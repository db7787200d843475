"""Forward and backward passes, in numpy, of the layers swarmfl's models use.

Each layer object holds views of its weights (into the learner's flat parameter vector) and, for
the parameters that are trained, views of their gradients (into the flat gradient buffer), so a
backward pass writes gradients in place and an optimizer step sees them at once. A layer's
:meth:`~NumpyLayer.forward` returns its output and what its backward needs (or ``None`` when it
needs nothing, as in a frozen prefix); :meth:`~NumpyLayer.backward` takes that back.

Layouts: dense layers see ``(B, features)``. Convolutional layers, and the ReLU and pooling that
follow them, see *channel-major* arrays ``(C, *spatial, B)``, batch last: then a convolution is a
single matrix product ``(O, C*k) @ (C*k, spatial*B)`` over im2col columns, whose result is
already in that layout, and the copies that build the columns (and pool) run over whole rows of
``side * B`` values instead of ``side`` (numpy's per-row overhead dominated at these sizes).
``Flatten`` turns channel-major activations into torch's ``(B, C*spatial)`` order as a
transposed view. Everything is float32.

Convolutions (kernel 3, padding 1, stride 1) keep their input, not their columns, for backward:
the columns are rebuilt there, which costs a copy but keeps the saved activations as small as
torch's. The input gradient is the convolution of the output gradient with the kernel flipped
and transposed. Max pooling (window 2, stride 2, floor) keeps the position of each window's
maximum (the first one on ties, as torch does), as one bool per pair of values it compared.
"""

from __future__ import annotations

import math
from typing import Protocol

import numpy as np

from swarmfl.learning.spec import KERNEL_SIZE, POOL_SIZE, LayerSpec

__all__ = [
    "NumpyLayer",
    "Saved",
    "make_layer",
    "softmax_cross_entropy",
]

_F32 = np.float32

Saved = np.ndarray | tuple[np.ndarray, ...] | None
"""What a layer keeps from its forward pass for its backward pass (None: nothing)."""


class NumpyLayer(Protocol):
    """One layer's forward and backward pass on float32 arrays."""

    def forward(self, x: np.ndarray, keep: bool) -> tuple[np.ndarray, Saved]:
        """The output for input ``x``, and (when ``keep``) what :meth:`backward` needs."""
        ...

    def backward(
        self, grad: np.ndarray, saved: Saved, want_input: bool, accumulate: bool
    ) -> np.ndarray | None:
        """Write (``accumulate``: add) the trained parameters' gradients for output gradient
        ``grad``; return the input's gradient if ``want_input``, else None."""
        ...


def make_layer(
    layer: LayerSpec,
    flat: np.ndarray,
    gradients: dict[str, np.ndarray],
    channel_major: bool,
) -> NumpyLayer:
    """The numpy layer for ``layer``, with weights viewed in ``flat``.

    ``gradients`` maps a trained parameter's name to its (flat) gradient view; parameters not in
    it are frozen. ``channel_major`` says whether the layer's input is channel-major (the layers
    of a convolutional model before its ``Flatten``).
    """
    if layer.kind == "linear":
        return _Linear(layer, flat, gradients)
    if layer.kind in ("conv1d", "conv2d"):
        return _Conv(layer, flat, gradients)
    if layer.kind == "relu":
        return _ReLU()
    if layer.kind in ("maxpool1d", "maxpool2d"):
        return _MaxPool(layer)
    return _Flatten(layer, channel_major)


def _views(
    layer: LayerSpec, flat: np.ndarray, gradients: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(weight, bias, weight gradient, bias gradient) views; a frozen parameter's gradient is
    None."""
    weight_spec, bias_spec = layer.parameters
    weight = flat[weight_spec.offset : weight_spec.stop].reshape(weight_spec.shape)
    bias = flat[bias_spec.offset : bias_spec.stop]
    weight_grad = gradients.get(weight_spec.name)
    return weight, bias, weight_grad, gradients.get(bias_spec.name)


class _Linear:
    """``y = x W^T + b`` on ``(B, in)``; keeps ``x`` when the weight is trained."""

    def __init__(self, layer: LayerSpec, flat: np.ndarray, gradients: dict[str, np.ndarray]):
        self.weight, self.bias, weight_grad, self.bias_grad = _views(layer, flat, gradients)
        self.weight_grad = None if weight_grad is None else weight_grad.reshape(self.weight.shape)

    def forward(self, x: np.ndarray, keep: bool) -> tuple[np.ndarray, Saved]:
        out = x @ self.weight.T
        out += self.bias
        return out, x if keep and self.weight_grad is not None else None

    def backward(
        self, grad: np.ndarray, saved: Saved, want_input: bool, accumulate: bool
    ) -> np.ndarray | None:
        if self.weight_grad is not None:
            assert isinstance(saved, np.ndarray)
            if accumulate:
                self.weight_grad += grad.T @ saved
            else:
                np.matmul(grad.T, saved, out=self.weight_grad)
        if self.bias_grad is not None:
            if accumulate:
                self.bias_grad += grad.sum(axis=0)
            else:
                np.sum(grad, axis=0, out=self.bias_grad)
        return grad @ self.weight if want_input else None


def _im2col(x: np.ndarray) -> np.ndarray:
    """Columns ``(C * 3**d, prod(spatial) * B)`` of a channel-major ``(C, *spatial, B)`` array.

    Row ``c * 3**d + kernel offset`` holds the zero-padded input that kernel tap sees at every
    output position, so a padding-1 convolution is ``weight.reshape(O, -1) @ columns``. With the
    batch last, each copied run is a whole padded row of ``side * B`` values, not ``side``.
    """
    channels, *spatial, batch = x.shape
    dims = len(spatial)
    padded = np.zeros((channels, *(side + 2 for side in spatial), batch), dtype=_F32)
    padded[(slice(None), *(slice(1, -1),) * dims, slice(None))] = x
    strides = padded.strides
    # (C, *kernel, *spatial, B): a window view, no copy until the reshape
    windows = np.ndarray(
        (channels, *(KERNEL_SIZE,) * dims, *spatial, batch),
        dtype=_F32,
        buffer=padded,
        strides=(strides[0], *strides[1:-1], *strides[1:-1], strides[-1]),
    )
    return windows.reshape(channels * KERNEL_SIZE**dims, -1)


class _Conv:
    """Conv1d/Conv2d, kernel 3, padding 1, on channel-major arrays; keeps its input."""

    def __init__(self, layer: LayerSpec, flat: np.ndarray, gradients: dict[str, np.ndarray]):
        self.weight, self.bias, weight_grad, self.bias_grad = _views(layer, flat, gradients)
        out_channels = self.weight.shape[0]
        self.matrix = self.weight.reshape(out_channels, -1)  # a view: (O, C * 3**d)
        self.bias_column = self.bias[:, None]
        self.weight_grad = None if weight_grad is None else weight_grad.reshape(self.matrix.shape)
        self.dims = layer.spatial_dims

    def forward(self, x: np.ndarray, keep: bool) -> tuple[np.ndarray, Saved]:
        out = self.matrix @ _im2col(x)
        out += self.bias_column
        return out.reshape(len(out), *x.shape[1:]), (
            x if keep and self.weight_grad is not None else None
        )

    def backward(
        self, grad: np.ndarray, saved: Saved, want_input: bool, accumulate: bool
    ) -> np.ndarray | None:
        rows = grad.reshape(len(grad), -1)  # (O, spatial * B)
        if self.weight_grad is not None:
            assert isinstance(saved, np.ndarray)
            columns = _im2col(saved)
            if accumulate:
                self.weight_grad += rows @ columns.T
            else:
                np.matmul(rows, columns.T, out=self.weight_grad)
        if self.bias_grad is not None:
            if accumulate:
                self.bias_grad += rows.sum(axis=1)
            else:
                np.sum(rows, axis=1, out=self.bias_grad)
        if not want_input:
            return None
        # dx = conv(grad, weight flipped in space, in/out channels swapped), padding 1
        spatial_flip = (slice(None), slice(None), *(slice(None, None, -1),) * self.dims)
        flipped = self.weight[spatial_flip].swapaxes(0, 1).reshape(self.weight.shape[1], -1)
        out = flipped @ _im2col(grad)
        return out.reshape(len(out), *grad.shape[1:])


class _ReLU:
    """``max(x, 0)``; keeps its output, whose sign is the gradient's mask."""

    def forward(self, x: np.ndarray, keep: bool) -> tuple[np.ndarray, Saved]:
        out = np.maximum(x, _F32(0))
        return out, out if keep else None

    def backward(
        self, grad: np.ndarray, saved: Saved, want_input: bool, accumulate: bool
    ) -> np.ndarray | None:
        assert isinstance(saved, np.ndarray)
        return grad * (saved > 0) if want_input else None


def _pair_max(x: np.ndarray, rows: int, keep: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Max over adjacent pairs along the axis that splits ``x`` into ``rows`` x 2 x rest.

    Returns the maxima ``(rows, rest)`` and, with ``keep``, whether each came from the second
    of its pair (the first wins ties, as in torch).
    """
    pairs = x.reshape(rows, 2, -1)
    first, second = pairs[:, 0], pairs[:, 1]
    return np.maximum(first, second), (second > first) if keep else None


def _pair_spread(grad: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_pair_max` for gradients: each one goes to the pair member that won."""
    rows = len(grad)
    out = np.empty((rows, 2, grad.size // rows), dtype=_F32)
    np.multiply(grad, second, out=out[:, 1])
    np.subtract(grad, out[:, 1], out=out[:, 0])  # exact: grad - grad or grad - 0
    return out


class _MaxPool:
    """MaxPool1d/2d(2) on channel-major arrays (a trailing odd row or column is dropped).

    Pools one spatial axis at a time, last first, over pairs; keeps one bool per pair, saying
    which member won (the first on ties, so the first maximum of each window wins, as in
    torch).
    """

    def __init__(self, layer: LayerSpec) -> None:
        self.in_spatial = layer.in_shape[1:]
        self.out_spatial = layer.out_shape[1:]
        self.crop = tuple(POOL_SIZE * side for side in self.out_spatial)

    def forward(self, x: np.ndarray, keep: bool) -> tuple[np.ndarray, Saved]:
        channels, batch = x.shape[0], x.shape[-1]
        if self.crop != self.in_spatial:
            x = np.ascontiguousarray(
                x[(slice(None), *(slice(0, side) for side in self.crop), slice(None))]
            )
        winners: list[np.ndarray] = []
        # axis by axis from the last spatial one: rows are everything before the pooled axis
        for axis in range(len(self.crop), 0, -1):
            rows = channels * math.prod(self.crop[: axis - 1]) * self.out_spatial[axis - 1]
            x, second = _pair_max(x, rows, keep)
            if second is not None:
                winners.append(second)
        out = x.reshape(channels, *self.out_spatial, batch)
        return out, tuple(winners) if keep else None

    def backward(
        self, grad: np.ndarray, saved: Saved, want_input: bool, accumulate: bool
    ) -> np.ndarray | None:
        if not want_input:
            return None
        assert isinstance(saved, tuple)
        channels, batch = grad.shape[0], grad.shape[-1]
        spread = grad
        for second in reversed(saved):
            spread = _pair_spread(spread.reshape(second.shape), second)
        tiled = spread.reshape(channels, *self.crop, batch)
        if self.crop == self.in_spatial:
            return tiled
        full = np.zeros((channels, *self.in_spatial, batch), dtype=_F32)
        full[(slice(None), *(slice(0, side) for side in self.crop), slice(None))] = tiled
        return full


class _Flatten:
    """``(B, ...)`` to ``(B, features)`` in torch's order; from channel-major if its input is."""

    def __init__(self, layer: LayerSpec, channel_major: bool) -> None:
        self.in_shape = layer.in_shape
        self.channel_major = channel_major

    def forward(self, x: np.ndarray, keep: bool) -> tuple[np.ndarray, Saved]:
        if self.channel_major:
            # (C, *spatial, B) -> (features, B) -> its transpose: a view, no copy
            return x.reshape(-1, x.shape[-1]).T, None
        return x.reshape(len(x), -1), None

    def backward(
        self, grad: np.ndarray, saved: Saved, want_input: bool, accumulate: bool
    ) -> np.ndarray | None:
        if not want_input:
            return None
        if self.channel_major:
            return np.ascontiguousarray(grad.T).reshape(*self.in_shape, len(grad))
        return grad.reshape(len(grad), *self.in_shape)


def softmax_cross_entropy(
    logits: np.ndarray, labels: np.ndarray, scale: float
) -> tuple[float, np.ndarray]:
    """Mean softmax cross-entropy of ``logits`` ``(B, K)`` against ``labels``, and its gradient.

    The gradient (``(softmax - onehot) / B``) is multiplied by ``scale``, the micro-batch's share
    of the whole batch, so that micro-batch gradients add up to the batch's.
    """
    rows = np.arange(len(labels))
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    total = exp.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, labels]))
    exp /= total
    exp[rows, labels] -= 1
    exp *= _F32(scale / len(labels))
    return loss, exp
