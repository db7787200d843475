"""How a swarm splits a dataset among its drones: IID or Dirichlet non-IID parts, and shards.

Partitions are pure functions of the labels and a ``numpy.random.Generator``: the same seed gives
the same split, bit for bit. :func:`shard` takes one part's training samples out of a
:class:`~swarmfl.learning.datasets.Dataset`.
"""

from __future__ import annotations

import math

import numpy as np

from swarmfl.errors import ConfigError
from swarmfl.learning.datasets import Dataset, _describe

__all__ = ["partition_dirichlet", "partition_iid", "shard"]

# Redraws before a Dirichlet partition with short parts is repaired instead.
_DIRICHLET_ATTEMPTS = 10


def _check_parts(labels: np.ndarray, num_parts: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {labels.shape}", key="labels")
    if not isinstance(num_parts, int) or isinstance(num_parts, bool) or num_parts < 1:
        raise ConfigError(f"must be a positive int, got {num_parts!r}", key="num_parts")
    return labels


def partition_iid(labels: np.ndarray, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Deal sample indices uniformly at random into ``num_parts`` parts of near-equal size.

    The parts are disjoint, cover every index, differ in size by at most one, and are each
    sorted (int64). Deterministic given ``rng``'s state.

    Raises:
        ConfigError: ``num_parts`` is not a positive int or exceeds the number of samples.
    """
    labels = _check_parts(labels, num_parts)
    if num_parts > len(labels):
        raise ConfigError(
            f"{num_parts} parts for {len(labels)} samples would leave parts empty",
            key="num_parts",
        )
    order = rng.permutation(len(labels)).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_parts)]


def partition_dirichlet(
    labels: np.ndarray,
    num_parts: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Split sample indices into ``num_parts`` non-IID parts, the usual federated-learning recipe.

    For each class, proportions over the parts are drawn from Dirichlet(``alpha``) and that class's
    samples are dealt out accordingly: small ``alpha`` gives each part few classes, large ``alpha``
    tends to IID. A draw in which some part has fewer than ``min_size`` samples is redrawn, a few
    times; if that still fails (as it must with many parts and few samples, e.g. 1,000 drones on
    digits' 1,437 training images), the last draw is repaired by moving random samples from the
    parts with the most to spare into the short ones. So the rule is simply: any
    ``num_parts * min_size <= len(labels)`` works, anything more raises. Use ``min_size=1`` for
    very large swarms.

    Returns disjoint, sorted int64 index arrays covering every sample. Deterministic given
    ``rng``'s state.

    Raises:
        ConfigError: ``alpha`` is not a positive finite number, ``min_size`` is negative, or
            ``num_parts * min_size`` exceeds the number of samples.
    """
    labels = _check_parts(labels, num_parts)
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"must be a positive finite number, got {alpha!r}", key="alpha")
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 0:
        raise ConfigError(f"must be a non-negative int, got {min_size!r}", key="min_size")
    n = len(labels)
    if num_parts * min_size > n:
        raise ConfigError(
            f"{num_parts} parts of at least {min_size} samples need {num_parts * min_size} "
            f"samples, only {n} available; lower min_size or num_parts",
            key="min_size",
        )
    _, inverse = np.unique(labels, return_inverse=True)
    class_members = [np.flatnonzero(inverse == k) for k in range(int(inverse.max(initial=-1)) + 1)]

    owner = np.empty(n, dtype=np.int64)
    sizes = np.zeros(num_parts, dtype=np.int64)
    for _attempt in range(_DIRICHLET_ATTEMPTS):
        owner = _dirichlet_owners(class_members, n, num_parts, alpha, rng)
        sizes = np.bincount(owner, minlength=num_parts)
        if sizes.min() >= min_size:
            break
    else:
        _repair_sizes(owner, sizes, min_size, rng)

    order = np.argsort(owner, kind="stable")
    bounds = np.cumsum(sizes)[:-1]
    return [part.astype(np.int64) for part in np.split(order, bounds)]


def _dirichlet_owners(
    class_members: list[np.ndarray],
    n: int,
    num_parts: int,
    alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
    owner = np.empty(n, dtype=np.int64)
    concentration = np.full(num_parts, float(alpha))
    for members in class_members:
        proportions = rng.dirichlet(concentration)
        if not np.isfinite(proportions).all() or proportions.sum() <= 0:
            # Extremely small alpha can underflow every component; the limit puts all on one part.
            proportions = np.zeros(num_parts)
            proportions[rng.integers(num_parts)] = 1.0
        cuts = (np.cumsum(proportions) * len(members)).astype(np.int64)
        cuts[-1] = len(members)
        counts = np.diff(cuts, prepend=0)
        owner[rng.permutation(members)] = np.repeat(np.arange(num_parts), counts)
    return owner


def _repair_sizes(
    owner: np.ndarray, sizes: np.ndarray, min_size: int, rng: np.random.Generator
) -> None:
    """Move samples from the parts with most to spare into parts below ``min_size``, in place."""
    for short in np.flatnonzero(sizes < min_size):
        while sizes[short] < min_size:
            donor = int(np.argmax(sizes))
            candidates = np.flatnonzero(owner == donor)
            moved = candidates[rng.integers(len(candidates))]
            owner[moved] = short
            sizes[donor] -= 1
            sizes[short] += 1


def shard(dataset: Dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training samples and labels of one part: ``(x_train[indices], y_train[indices])``.

    Returns fresh (writable) copies, so a drone may shuffle its own shard.

    Raises:
        ConfigError: an index is not an integer or is out of range of the training set.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "ui"):
        raise ConfigError(f"must be a 1-D integer array, got {_describe(idx)}", key="indices")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= dataset.num_train):
        raise ConfigError(
            f"must lie in [0, {dataset.num_train}), got [{int(idx.min())}, {int(idx.max())}]",
            key="indices",
        )
    idx = idx.astype(np.int64)
    return dataset.x_train[idx], dataset.y_train[idx]
