"""Staleness-weighted merging: pure functions over arrays.

A drone merges the replicas it holds of its neighbours' models into its own::

    x <- x + sum_j a_j (x_hat_j - x)

with ``a_j = w_j / (1 + sum_k w_k)`` and ``w_j = staleness_weight(s_j)``. This is the FedAsync
polynomial weight ``alpha * (1 + s) ** -a`` normalised so the result is always a convex
combination of ``x`` and the replicas: with ``alpha = 1`` and fresh replicas it is the plain
average of self and neighbours (D-PSGD's uniform mixing), and a drone with many neighbours never
over-steps. ``s_j`` is the age of the replica in gossip periods; past ``cutoff`` the replica is
ignored (temporal truncation).

A layer is averaged only over the peers whose frames carry it (heterogeneous fleets train
different layer subsets), so the normalisation is per layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
from scipy.linalg.blas import saxpy, sscal

from swarmfl.errors import ConfigError

MergeRuleName = Literal["mean", "clip", "trimmed_mean", "median"]
MERGE_RULES: tuple[MergeRuleName, ...] = get_args(MergeRuleName)
"""The merge rules a drone can use; ``mean`` (this module) is the default, the robust ones live
in :mod:`swarmfl.core.robust`."""


@dataclass(frozen=True, slots=True)
class MergeRule:
    """How a drone merges its neighbours' replicas.

    ``alpha``, ``exponent`` and ``cutoff`` give the staleness weight
    ``alpha * (1 + s) ** -exponent``, cut off at ``cutoff``; ``s`` and ``cutoff`` are in gossip
    periods (an age in seconds divided by the period). ``rule`` picks the merge
    (:data:`MERGE_RULES`); the robust rules read the other fields:

    * ``tolerate``: how many of a drone's neighbours may be Byzantine (``b`` in the papers).
      ``trimmed_mean`` drops ``b`` values from each side of every coordinate; ``clip``'s adaptive
      radius is the ``(b+1)``-th largest distance, so at most ``b`` replicas lie beyond it
      (and at most twice the median distance, for drones with more attacking neighbours).
    * ``clip_radius``: a fixed clipping radius in parameter-space L2 units; 0 (the default)
      makes it adaptive.
    * ``suspect_ratio``: a replica at least this many times the radius (or the median
      distance, if larger) away from our model is an *outlier* in that merge.
    * ``suspect_window``, ``suspect_fraction``: a peer judged an outlier in at least
      ``suspect_fraction`` of its last ``suspect_window`` merges is a suspected attacker.
    * ``exclude_suspects``: leave suspected peers out of the merge (they are still measured,
      so a peer that behaves again is readmitted).

    Raises :class:`ConfigError` naming the ``merge.*`` key of a bad value.
    """

    alpha: float = 1.0
    exponent: float = 0.5
    cutoff: float = 10.0
    rule: MergeRuleName = "mean"
    tolerate: int = 1
    clip_radius: float = 0.0
    suspect_ratio: float = 2.0
    suspect_window: int = 10
    suspect_fraction: float = 0.6
    exclude_suspects: bool = False

    def __post_init__(self) -> None:
        for name in ("alpha", "exponent", "cutoff", "clip_radius"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ConfigError(
                    f"must be a finite number >= 0, got {value!r}", key=f"merge.{name}"
                )
        if self.rule not in MERGE_RULES:
            raise ConfigError(
                f"must be one of {', '.join(MERGE_RULES)}, got {self.rule!r}", key="merge.rule"
            )
        for name, minimum in (("tolerate", 0), ("suspect_window", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ConfigError(
                    f"must be an integer >= {minimum}, got {value!r}", key=f"merge.{name}"
                )
        if not self.suspect_ratio > 1.0 or not np.isfinite(self.suspect_ratio):
            raise ConfigError(
                f"must be a finite number > 1, got {self.suspect_ratio!r}",
                key="merge.suspect_ratio",
            )
        if not isinstance(self.exclude_suspects, bool):
            raise ConfigError(
                f"must be true or false, got {self.exclude_suspects!r}",
                key="merge.exclude_suspects",
            )
        if not 0.0 < self.suspect_fraction <= 1.0:
            raise ConfigError(
                f"must be in (0, 1], got {self.suspect_fraction!r}", key="merge.suspect_fraction"
            )


def staleness_weight(staleness: float, rule: MergeRule) -> float:
    """The polynomial weight of a replica of age ``staleness`` periods; 0 past the cut-off."""
    if staleness < 0:
        staleness = 0.0
    if staleness > rule.cutoff:
        return 0.0
    return rule.alpha * (1.0 + staleness) ** -rule.exponent


@dataclass(frozen=True, slots=True)
class Contribution:
    """One neighbour's replica restricted to the layers it carries.

    ``values`` is the concatenation of the carried layers (in ``layers`` order) and ``weight``
    its staleness weight.
    """

    layers: tuple[int, ...]
    values: np.ndarray
    weight: float


def merge_into(
    x: np.ndarray,
    offsets: Sequence[int],
    contributions: Sequence[Contribution],
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    """Merge ``contributions`` into the flat parameter vector ``x`` in place and return it.

    ``offsets`` has one more entry than there are layers: layer ``l`` is
    ``x[offsets[l]:offsets[l+1]]``. Each layer becomes ``(x + sum_j w_j r_j) / (1 + sum_j w_j)``
    over the contributions that carry it. ``scratch``, an optional float32 buffer the size of
    ``x``, saves an allocation per call. Raises :class:`ConfigError` if a contribution's size
    does not match its layers.
    """
    live = [c for c in contributions if c.weight > 0.0]
    if not live:
        return x
    num_layers = len(offsets) - 1
    every_layer = tuple(range(num_layers))
    if all(c.layers == every_layer for c in live):
        # Common case (every drone trains everything): whole-vector updates.
        total = 1.0 + sum(c.weight for c in live)
        for c in live:
            _check_size(c, x.size)
        if x.flags.writeable and _blas_ready(x) and all(_blas_ready(c.values) for c in live):
            # BLAS axpy reads each replica once and updates x in place: half the memory passes
            # of numpy's multiply-then-add (the merge is memory bound: a simulated drone's
            # vectors are rarely still in cache when it merges).
            for c in live:
                saxpy(c.values, x, a=c.weight)
            sscal(1.0 / total, x)
            return x
        if scratch is None or scratch.shape != x.shape:
            scratch = np.empty_like(x)
        for c in live:
            np.multiply(c.values, c.weight, out=scratch)
            x += scratch
        x *= 1.0 / total
        return x
    weight_per_layer = np.ones(num_layers, dtype=np.float64)
    for c in live:
        _check_size(c, sum(offsets[layer + 1] - offsets[layer] for layer in c.layers))
        position = 0
        for layer in c.layers:
            start, stop = offsets[layer], offsets[layer + 1]
            size = stop - start
            x[start:stop] += c.weight * c.values[position : position + size]
            position += size
            weight_per_layer[layer] += c.weight
    for layer in range(num_layers):
        if weight_per_layer[layer] != 1.0:
            x[offsets[layer] : offsets[layer + 1]] *= 1.0 / weight_per_layer[layer]
    return x


def _blas_ready(array: np.ndarray) -> bool:
    """True if BLAS can use ``array`` as it is (so that ``x`` is updated in place, not a copy)."""
    flags = array.flags
    return array.dtype == np.float32 and array.ndim == 1 and flags.c_contiguous and flags.aligned


def _check_size(contribution: Contribution, expected: int) -> None:
    if contribution.values.size != expected:
        raise ConfigError(
            f"contribution has {contribution.values.size} values, its layers hold {expected}",
            key="layers",
        )
