"""Insiders in a simulated swarm: who attacks (the scenario's ``[[attack]]`` tables) and the hook
that makes an attacker's agent publish its attack.

:func:`assign_attackers` resolves the tables into one :class:`InsiderSpec` per attacking drone
(explicit ids, or a seeded share of the drones no table names); :class:`Insider` is the
:class:`~swarmfl.agent.Agent`'s ``publish_values`` hook: before ``start_s`` the drone is honest,
from then on it publishes what its :class:`~swarmfl.sim.attacks.Attack` makes of its model and
the replicas its own node heard, and a label-poisoning attack swaps its training labels once.
Its frames are signed, sequenced and encoded by its own node and cross the simulated radio like
anyone's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from swarmfl.config.scenario_file import Scenario
from swarmfl.core.node import GossipNode
from swarmfl.errors import ConfigError
from swarmfl.sim.attacks import Attack, NeighbourView, make_attack

if TYPE_CHECKING:
    from swarmfl.learning.flatlearner import FlatLearner

__all__ = ["Insider", "InsiderSpec", "assign_attackers", "insider_rng"]

_ATTACK_STREAM = 0xA77AC


@dataclass(frozen=True)
class InsiderSpec:
    """One attacking drone: its attack, when it starts, and which ``[[attack]]`` table said so."""

    drone_id: int
    attack: Attack
    start_s: float
    table: int


def assign_attackers(scenario: Scenario) -> dict[int, InsiderSpec]:
    """Every attacking drone of ``scenario``, by id.

    Tables with ``drones`` take those; tables with ``fraction`` then draw
    ``max(1, round(fraction * drones))`` drones, with the run's seed, among the drones no table
    took yet. Raises :class:`ConfigError` naming ``attack.<index>.<key>`` for a bad parameter of
    the kind, or a fraction that leaves too few drones to draw from.
    """
    n = scenario.swarm.drones
    taken: dict[int, InsiderSpec] = {}

    def attack(index: int) -> Attack:
        # one instance per drone: an attack may keep state (free riding's snapshot)
        table = scenario.attack[index]
        try:
            return make_attack(table.kind, **table.parameters)
        except ConfigError as exc:
            param = (exc.key or "attack").removeprefix("attack.")
            raise ConfigError(exc.problem, key=f"attack.{index}.{param}") from None

    for index, table in enumerate(scenario.attack):
        attack(index)  # a bad parameter is refused even if the table names no drone yet
        for drone in table.drones or []:
            taken[drone] = InsiderSpec(drone, attack(index), table.start_s, index)
    rng = np.random.default_rng([scenario.run.seed, _ATTACK_STREAM])
    for index, table in enumerate(scenario.attack):
        if table.fraction is None:
            continue
        count = max(1, round(table.fraction * n))
        free = [d for d in range(n) if d not in taken]
        if count >= len(free):
            raise ConfigError(
                f"{count} attackers but only {len(free)} drones left to draw from",
                key=f"attack.{index}.fraction",
            )
        for drone in sorted(rng.choice(free, size=count, replace=False).tolist()):
            taken[drone] = InsiderSpec(drone, attack(index), table.start_s, index)
    return dict(sorted(taken.items()))


@dataclass
class Insider:
    """An attacking drone's publish hook (``Agent(publish_values=...)``).

    ``rng`` drives the attack's randomness (noise, the label draw), seeded per drone.
    """

    spec: InsiderSpec
    node: GossipNode
    learner: FlatLearner
    rng: np.random.Generator
    poisoned: bool = field(default=False, init=False)

    def __call__(self, params: np.ndarray, now: float) -> np.ndarray:
        """What the drone publishes at ``now`` instead of ``params`` (``params`` itself before
        the attack starts)."""
        if now < self.spec.start_s:
            return params
        if not self.poisoned:
            self.poisoned = True
            labels = self.learner.labels
            poisoned = self.spec.attack.poison_labels(labels, self.rng)
            if poisoned is not labels:
                self.learner.replace_labels(poisoned)
        view = NeighbourView.from_node(self.node, now)
        return self.spec.attack.publish_values(params, view, self.rng)


def insider_rng(seed: int, drone_id: int) -> np.random.Generator:
    """The random stream of attacker ``drone_id``'s attack."""
    return np.random.default_rng([seed, _ATTACK_STREAM, drone_id])
