"""Which learner trains a drone's model: the torch backend or the lean (numpy) one.

A drone's ``training.backend`` picks how its gradients are computed; everything else (the flat
float32 parameter vector, its layout, the SGD update, the frames) is the same, so drones of both
backends gossip in one swarm. :func:`build_learner` builds either from a
:class:`~swarmfl.learning.spec.ModelSpec` and one initial weight vector; only the torch branch
imports torch, so a lean drone's process never loads it.

What exists on one backend only is refused on the other by :func:`refuse_unsupported`, with one
line naming the key: the lean backend cannot read torch checkpoints (``model.checkpoint``). Its
memory plans come from its own planner (:mod:`swarmfl.learning.lean_plan`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, get_args

import numpy as np

from swarmfl.errors import ConfigError
from swarmfl.learning.flatlearner import FlatLearner
from swarmfl.learning.seam import TrainingConfig
from swarmfl.learning.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn

    from swarmfl.learning.privacy import DPConfig
    from swarmfl.learning.trainplan import TrainPlan

__all__ = ["BACKENDS", "Backend", "build_learner", "build_torch_model", "refuse_unsupported"]

Backend = Literal["torch", "lean"]
BACKENDS: tuple[str, ...] = get_args(Backend)
"""The values ``training.backend`` takes."""


def refuse_unsupported(
    backend: str,
    *,
    checkpoint: str | None,
    backend_key: str = "training.backend",
    dp: bool = False,
) -> None:
    """Refuse a setting ``backend`` cannot honour, naming its key in one line.

    Raises:
        ConfigError: an unknown backend (key ``backend_key``); with the lean backend, a
            pretrained checkpoint (``model.checkpoint``: a torch file) or DP-SGD
            (``training.dp``: it needs torch's per-sample gradients).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"must be one of {BACKENDS}, got {backend!r}", key=backend_key)
    if backend == "lean" and checkpoint is not None:
        raise ConfigError(
            f'a pretrained checkpoint is a torch file: it needs {backend_key} = "torch"',
            key="model.checkpoint",
        )
    if backend == "lean" and dp:
        raise ConfigError(
            f'DP-SGD needs per-sample gradients, which only {backend_key} = "torch" has',
            key="training.dp.enabled",
        )


def build_torch_model(spec: ModelSpec, parameters: np.ndarray | None = None) -> nn.Sequential:
    """The torch model ``spec`` describes, holding ``parameters`` (None: torch's own seeded
    initialisation). Imports torch."""
    import torch

    from swarmfl.learning.models import model_from_spec

    model = model_from_spec(spec)
    if parameters is not None:
        with torch.no_grad():
            for param, start, stop in zip(
                model.parameters(), spec.layer_offsets[:-1], spec.layer_offsets[1:], strict=True
            ):
                param.copy_(torch.tensor(parameters[start:stop]).view_as(param))
    return model


def build_learner(
    backend: str,
    spec: ModelSpec,
    parameters: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    config: TrainingConfig,
    *,
    flops_per_sample: float,
    seed: int,
    plan: TrainPlan | None = None,
    dp: DPConfig | None = None,
) -> FlatLearner:
    """A learner of ``backend`` for ``spec``, starting from (a copy of) ``parameters``.

    ``x``/``y`` are the local shard, ``seed`` seeds the shuffling, ``plan`` is what to train
    (None: everything). Raises :class:`ConfigError` for an unknown backend (key
    ``training.backend``) and what the learners raise.
    """
    if backend == "torch":
        from swarmfl.learning.learner import TorchLearner

        return TorchLearner(
            build_torch_model(spec, parameters),
            x,
            y,
            config,
            flops_per_sample=flops_per_sample,
            seed=seed,
            plan=plan,
            dp=dp,
        )
    if dp is not None:
        raise ConfigError(
            "DP-SGD needs per-sample gradients, which only the torch backend has",
            key="training.dp",
        )
    if backend == "lean":
        from swarmfl.learning.lean import LeanLearner

        return LeanLearner(
            spec,
            x,
            y,
            config,
            flops_per_sample=flops_per_sample,
            seed=seed,
            plan=plan,
            parameters=np.array(parameters, dtype=np.float32),  # its own, writable copy
        )
    raise ConfigError(f"must be one of {BACKENDS}, got {backend!r}", key="training.backend")
