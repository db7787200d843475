"""Differential privacy per drone: DP-SGD's clipped, noised gradient and the privacy spent.

A drone that trains with DP-SGD (Abadi et al. 2016) computes the gradient of every sample of a
batch separately (``torch.func``: ``vmap`` of ``grad`` over a functional call of the model),
over the parameter tensors it trains only (frozen layers are neither clipped nor noised: they
are not released by this drone), clips each sample's gradient to L2 norm ``clip_norm`` over all
those tensors jointly, sums them, adds Gaussian noise of standard deviation
``noise_multiplier * clip_norm`` per value, and divides by the batch size.
:class:`DPSGDGradient` does this, a micro-batch of samples at a time so that at most
``micro_batch`` per-sample gradients are alive at once (the memory plan counts them:
:func:`per_sample_gradient_bytes`).

The privacy spent is counted by Opacus's RDP accountant (:class:`PrivacyLedger`), one step per
batch at the sampling rate ``q = batch_size / shard_size``. Batches are drawn by shuffling,
not by Poisson sampling; the accountant's analysis assumes Poisson sampling, as Opacus's own
default training loop does when it reports epsilon for shuffled batches. A drone's epsilon
covers what its own published models reveal about its shard; gossip relays are
post-processing.

Opacus is an optional dependency (``pip install 'swarmfl[dp]'``); without it, enabling DP is
refused with one line naming the key.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from swarmfl.errors import ConfigError
from swarmfl.learning.trainplan import per_sample_gradient_bytes

__all__ = ["DPConfig", "DPSGDGradient", "PrivacyLedger", "per_sample_gradient_bytes"]


@dataclass(frozen=True, slots=True)
class DPConfig:
    """DP-SGD settings: per-sample clip norm ``C``, noise multiplier ``sigma``, and the ``delta``
    epsilon is reported at. Raises :class:`ConfigError` naming ``training.dp.*`` for bad values."""

    clip_norm: float = 1.0
    noise_multiplier: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("clip_norm", "noise_multiplier"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"must be > 0, got {value!r}", key=f"training.dp.{name}")
        if not 0 < self.delta < 1:
            raise ConfigError(f"must be in (0, 1), got {self.delta!r}", key="training.dp.delta")


def _rdp_accountant() -> Any:
    try:
        from opacus.accountants import RDPAccountant
    except ImportError:
        raise ConfigError(
            "differential privacy needs opacus: pip install 'swarmfl[dp]'",
            key="training.dp.enabled",
        ) from None
    return RDPAccountant()


class PrivacyLedger:
    """The privacy a drone has spent: Opacus's RDP accountant over its DP-SGD steps.

    Raises :class:`ConfigError` naming ``training.dp.enabled`` if Opacus is not installed.
    """

    def __init__(self, config: DPConfig, sample_rate: float) -> None:
        if not 0 < sample_rate <= 1:
            raise ConfigError(f"sampling rate {sample_rate!r} not in (0, 1]", key="training.dp")
        self.config = config
        self.sample_rate = sample_rate
        self._accountant = _rdp_accountant()
        self.steps = 0
        self._cached: tuple[int, float] | None = None

    def step(self, count: int = 1) -> None:
        """Count ``count`` DP-SGD steps at this ledger's noise and sampling rate."""
        history = self._accountant.history
        sigma, q = self.config.noise_multiplier, self.sample_rate
        if history and history[-1][:2] == (sigma, q):
            history[-1] = (sigma, q, history[-1][2] + count)
        else:
            history.append((sigma, q, count))
        self.steps += count

    def epsilon(self) -> float:
        """Epsilon spent so far at the configured delta (0.0 before the first step)."""
        if self.steps == 0:
            return 0.0
        if self._cached is None or self._cached[0] != self.steps:
            value = float(self._accountant.get_epsilon(delta=self.config.delta))
            self._cached = (self.steps, value)
        return self._cached[1]


class DPSGDGradient:
    """The clipped, noised mean gradient of a batch, for the trained tensors of ``model``.

    ``trained`` are the indexes (``named_parameters`` order) of the trained tensors; ``forward``
    is the model's forward (its frozen prefix may run without autograd); ``micro_batch`` bounds
    the per-sample gradients alive at once; ``generator`` draws the noise.
    """

    def __init__(
        self,
        model: nn.Module,
        trained: Sequence[int],
        config: DPConfig,
        *,
        micro_batch: int,
        generator: torch.Generator,
    ) -> None:
        from torch.func import functional_call, grad, vmap

        self.config = config
        self._micro_batch = max(1, micro_batch)
        self._generator = generator
        named = list(model.named_parameters())
        self._names = [named[i][0] for i in trained]
        self._frozen = {name: p for k, (name, p) in enumerate(named) if k not in set(trained)}
        self._trained = [named[i][1] for i in trained]
        loss = nn.CrossEntropyLoss()

        def sample_loss(
            params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> torch.Tensor:
            out = functional_call(model, {**self._frozen, **params}, (x.unsqueeze(0),))
            return loss(out, y.unsqueeze(0))

        self._per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))

    def __call__(self, x: torch.Tensor, y: torch.Tensor, out: torch.Tensor) -> None:
        """Write the batch's DP-SGD gradient into ``out`` (flat, the trained tensors back to
        back): ``(sum_i clip(g_i, C) + N(0, (sigma C)^2)) / len(y)``."""
        clip = self.config.clip_norm
        params = {name: p.detach() for name, p in zip(self._names, self._trained, strict=True)}
        out.zero_()
        for start in range(0, len(y), self._micro_batch):
            grads = self._per_sample(
                params, x[start : start + self._micro_batch], y[start : start + self._micro_batch]
            )
            flat = torch.cat([grads[name].flatten(1) for name in self._names], dim=1)
            norms = flat.norm(dim=1, keepdim=True)
            flat *= torch.clamp(clip / (norms + 1e-12), max=1.0)
            out += flat.sum(dim=0)
        noise = torch.randn(out.shape, generator=self._generator, dtype=out.dtype)
        out += noise * (self.config.noise_multiplier * clip)
        out /= len(y)
