"""The named random streams a seed is split into, in one place.

A swarm's seed (``run.seed``) fixes everything random about it. Each use draws from its own
stream, derived here, so that adding a use never shifts another: the data split, the
evaluation subset, each drone's shuffling, the field's injected radio loss and the simulator's
churn. A field drone and a simulated drone with the same seed and id draw the same numbers.
"""

from __future__ import annotations

import random

import numpy as np

__all__ = ["churn_rng", "eval_rng", "learner_seed", "partition_rng", "radio_seed"]

_PARTITION = 0x5A17
_EVAL = 0xE7A1
_LEARNER_STRIDE = 100_003  # a prime above any swarm's size: (seed, drone) pairs never collide
_RADIO_STRIDE = 7919


def partition_rng(seed: int) -> np.random.Generator:
    """The stream that splits a dataset into the drones' shards."""
    return np.random.default_rng([seed, _PARTITION])


def eval_rng(seed: int) -> np.random.Generator:
    """The stream that picks the evaluation subset (``run.eval_samples``)."""
    return np.random.default_rng([seed, _EVAL])


def learner_seed(seed: int, drone_id: int) -> int:
    """The seed of drone ``drone_id``'s learner (its shuffling)."""
    return seed * _LEARNER_STRIDE + drone_id


def radio_seed(seed: int, drone_id: int) -> int:
    """The seed of drone ``drone_id``'s injected radio loss (field tests)."""
    return seed * _RADIO_STRIDE + drone_id


def churn_rng(seed: int, drone_id: int) -> random.Random:
    """The stream of drone ``drone_id``'s up and down times in a simulation with churn."""
    return random.Random(f"{seed}/churn/{drone_id}")
