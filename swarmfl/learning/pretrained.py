"""Starting from a pretrained model: load saved weights into a freshly built model.

Fine-tuning a pretrained perception model is the usual case on a drone: a backbone trained on
other data (a large generic set, or other flights), then adapted by the swarm to its own task.
With a memory plan that freezes the first blocks, the backbone is what makes training only the
last blocks worthwhile.

Accepted files:

* a torch file (``torch.save``) holding a ``state_dict``, or a dict with the state dict under
  ``"state_dict"``, ``"model_state_dict"`` or ``"model"`` (the usual checkpoint layouts). It is
  read with ``torch.load(weights_only=True)``: tensors and plain containers only, never code.
* a ``.npz`` file of arrays named like the model's ``state_dict`` keys (``allow_pickle=False``).
* a swarmfl checkpoint (:mod:`swarmfl.core.checkpoint`) whose arrays are named like the
  ``state_dict`` keys, or that holds the whole flat parameter vector as ``"params"`` (what a
  field drone checkpoints) or ``"parameters"`` (the layout of
  :meth:`~swarmfl.learning.learner.TorchLearner.flat_parameters`).

The file may hold only part of the model, typically the backbone: every tensor it holds must
exist in the model with the same shape, and the parameters it lacks keep their seeded
initialisation (a new task head, for instance). :func:`save_pretrained` writes such a file.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from swarmfl.core.checkpoint import MAGIC, decode
from swarmfl.errors import CheckpointError, ConfigError

__all__ = ["load_pretrained", "save_pretrained"]

_STATE_KEYS = ("state_dict", "model_state_dict", "model")
_FLAT_NAMES = ("params", "parameters")
_KEY = "model.checkpoint"


def load_pretrained(model: nn.Module, path: str | Path) -> list[str]:
    """Copy the tensors saved in ``path`` into ``model`` in place; return the names loaded.

    See the module docstring for the formats. Values are copied into the existing tensors, so
    a model whose parameters are views into a flat buffer stays so.

    Raises :class:`ConfigError` naming the file: missing or unreadable, not a checkpoint of an
    accepted format, a tensor the model does not have or of another shape, a non-floating
    value for a floating tensor, or nothing of the model in it.
    """
    source = str(path)
    state = _read_state(Path(path), model)
    targets = model.state_dict(keep_vars=True)
    unknown = sorted(set(state) - set(targets))
    if unknown:
        raise ConfigError(
            f"holds tensors the model does not have: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''} (a checkpoint of another architecture?)",
            source=source,
            key=_KEY,
        )
    if not state:
        raise ConfigError("holds no tensor of the model", source=source, key=_KEY)
    for name, value in state.items():
        target = targets[name]
        if tuple(value.shape) != tuple(target.shape):
            raise ConfigError(
                f"tensor {name!r} has shape {tuple(value.shape)}, the model's has "
                f"{tuple(target.shape)} (save only the layers that match, e.g. the backbone)",
                source=source,
                key=_KEY,
            )
        if target.dtype.is_floating_point and not value.dtype.is_floating_point:
            raise ConfigError(
                f"tensor {name!r} is {value.dtype}, the model's is {target.dtype}",
                source=source,
                key=_KEY,
            )
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value.to(targets[name].dtype))
    return list(state)


def save_pretrained(model: nn.Module, path: str | Path, *, first_blocks: int | None = None) -> None:
    """Save ``model``'s state dict with ``torch.save``, for :func:`load_pretrained`.

    With ``first_blocks``, only the tensors of the first ``first_blocks`` children of the model
    (an ``nn.Sequential`` of blocks) are saved: a backbone without its task head.
    Raises :class:`ConfigError` if ``first_blocks`` is not within the model's children.
    """
    state = model.state_dict()
    if first_blocks is not None:
        children = [name for name, _ in model.named_children()]
        if not 1 <= first_blocks <= len(children):
            raise ConfigError(
                f"must be in 1..{len(children)}, got {first_blocks!r}", key="first_blocks"
            )
        kept = set(children[:first_blocks])
        state = {k: v for k, v in state.items() if k.split(".", 1)[0] in kept}
    torch.save({k: v.detach().clone() for k, v in state.items()}, Path(path))


def _read_state(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    source = str(path)
    try:
        with path.open("rb") as file:
            head = file.read(len(MAGIC))
    except FileNotFoundError:
        raise ConfigError("file not found", source=source, key=_KEY) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", source=source, key=_KEY) from None
    if head == MAGIC:
        return _read_swarmfl(path, model)
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {name: torch.from_numpy(np.array(arrays[name])) for name in arrays.files}
        except (OSError, ValueError, zipfile.BadZipFile) as exc:
            raise ConfigError(f"not a readable .npz file: {exc}", source=source, key=_KEY) from exc
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    # torch.load reports a foreign or damaged file with many exception types (pickle, zip,
    # runtime errors): translate them all at this edge
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"not a torch checkpoint (torch.load: {first})", source=source, key=_KEY
        ) from exc
    return _state_from_torch(loaded, source)


def _state_from_torch(loaded: object, source: str) -> dict[str, torch.Tensor]:
    if isinstance(loaded, Mapping):
        for key in _STATE_KEYS:
            inner = loaded.get(key)
            if isinstance(inner, Mapping):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in loaded.items()
    ):
        raise ConfigError(
            "holds no state dict (expected a mapping of names to tensors, or one under "
            f"{', '.join(repr(k) for k in _STATE_KEYS)})",
            source=source,
            key=_KEY,
        )
    return dict(loaded)


def _read_swarmfl(path: Path, model: nn.Module) -> dict[str, torch.Tensor]:
    source = str(path)
    try:
        checkpoint = decode(path.read_bytes(), source=source)
    except CheckpointError as exc:
        raise ConfigError(f"damaged swarmfl checkpoint: {exc}", source=source, key=_KEY) from exc
    arrays = dict(checkpoint.arrays)
    flats = [(name, arrays.pop(name)) for name in _FLAT_NAMES if name in arrays]
    state = {name: torch.from_numpy(np.array(value)) for name, value in arrays.items()}
    for flat_name, flat in flats:
        params = list(model.named_parameters())
        total = sum(p.numel() for _, p in params)
        if flat.ndim != 1 or flat.size != total:
            raise ConfigError(
                f"array {flat_name!r} holds {flat.size} values, the model has {total}",
                source=source,
                key=_KEY,
            )
        values = torch.from_numpy(np.array(flat, dtype=np.float32))
        start = 0
        for name, param in params:
            stop = start + math.prod(param.shape)
            state[name] = values[start:stop].reshape(param.shape)
            start = stop
    return state
