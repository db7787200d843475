"""Attack models for insiders: what a captured drone publishes, or the labels it trains on.

An attacker holds valid keys and follows the wire protocol: its node signs, sequences and
streams its frames like everyone's, and those frames cross the same codec, radio and staleness
machinery. What it controls is the model it hands to :meth:`GossipNode.publish
<swarmfl.core.node.GossipNode.publish>` (:meth:`Attack.publish_values`) and, for data poisoning,
the labels its learner trains on (:meth:`Attack.poison_labels`). The drone otherwise runs
normally: it receives, merges and (unless the caller skips it) trains.

The hook, called by the agent or the simulator each period::

    view = NeighbourView.from_node(node, now)          # what the attacker heard
    sent = attack.publish_values(params, view, rng)     # instead of params
    frames = node.publish(sent, samples, now)
    y_train = attack.poison_labels(y_train, rng)        # once, before training

What an attacker may know: its own model and the replicas its own node decoded from the frames
it heard (``NeighbourView``), nothing else -- no other drone's data, no replica it did not
hear, no knowledge of who else is an attacker beyond the ``colluders`` count it is configured
with. This is weaker than the omniscient adversary of the papers (which knows every model), and
it is what a captured drone really has. ALIE, IPM and dissensus estimate the honest models from
the attacker's own model and the replicas it hears.

Kinds (:data:`ATTACK_KINDS`, built by :func:`make_attack`):

* ``sign_flip``: ``-scale * x``.
* ``scaling``: ``factor * x`` (a bug that multiplies a model, or a deliberate blow-up).
* ``gaussian``: ``x + N(0, std^2)`` per value.
* ``alie`` ("a little is enough", Baruch et al. 2019): per coordinate ``mu - z * sigma`` of the
  models it knows; small enough to pass as honest, consistent enough to drag.
* ``ipm`` (inner-product manipulation, Xie et al. 2020, in model space as in ClippedGossip's
  code): ``-epsilon * mu``.
* ``dissensus`` (He, Karimireddy & Jaggi 2022): aims at one neighbour ``t`` and sends
  ``x_t - epsilon * sum_j (x_j - x_t) / colluders`` over the other replicas it hears (its
  estimate of ``t``'s honest neighbours): with ``epsilon`` = 1 it cancels the pull of ``t``'s
  neighbours under plain averaging, above 1 it pushes ``t`` away, so drones stop agreeing.
* ``label_flip``: trains on ``num_classes - 1 - y`` and publishes what that gives.
* ``free_riding``: sends its initial model, or a snapshot refreshed only every ``lag_rounds``
  periods, instead of what it learned.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import TYPE_CHECKING, ClassVar, Protocol

import numpy as np

from swarmfl.core.merge import Contribution
from swarmfl.errors import ConfigError

if TYPE_CHECKING:
    from swarmfl.core.node import GossipNode


@dataclass(frozen=True, slots=True)
class NeighbourView:
    """The replicas an attacker's node holds, by peer id, and the model's layer offsets."""

    offsets: tuple[int, ...]
    replicas: Mapping[int, Contribution]

    @classmethod
    def from_node(cls, node: GossipNode, now: float) -> NeighbourView:
        """What ``node`` would merge at ``now``: its live replicas."""
        return cls(tuple(node.config.layer_offsets), node.live_replicas(now))

    def layer(self, layer: int) -> dict[int, np.ndarray]:
        """The values of ``layer`` in each replica that carries it, by peer id."""
        size = self.offsets[layer + 1] - self.offsets[layer]
        found = {}
        for peer_id, replica in self.replicas.items():
            position = 0
            for carried in replica.layers:
                if carried == layer:
                    found[peer_id] = replica.values[position : position + size]
                    break
                position += self.offsets[carried + 1] - self.offsets[carried]
        return found


class Attack(Protocol):
    """What an insider does differently from an honest drone."""

    @property
    def kind(self) -> str:
        """The attack's name in :data:`ATTACK_KINDS`."""
        ...

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """The flat model to publish instead of ``own`` (a new array; ``own`` is not changed)."""
        ...

    def poison_labels(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The labels to train on instead of ``labels`` (``labels`` itself if unchanged)."""
        ...


class _PublishOnly:
    """Mixin for attacks that leave the training labels alone."""

    __slots__ = ()

    def poison_labels(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``labels`` unchanged."""
        return labels


def _check(condition: bool, key: str, problem: str) -> None:
    if not condition:
        raise ConfigError(problem, key=f"attack.{key}")


def _saturate(values: np.ndarray) -> np.ndarray:
    """``values`` as float32, with what would overflow held at the largest finite float32: an
    insider's frames must still encode (the codec refuses infinity)."""
    limit = float(np.finfo(np.float32).max)
    return np.clip(values, -limit, limit).astype(np.float32)


def _finite(value: float) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True, slots=True)
class SignFlip(_PublishOnly):
    """Publishes ``-scale * own``. Raises :class:`ConfigError` unless ``scale`` > 0."""

    kind: ClassVar[str] = "sign_flip"
    scale: float = 1.0

    def __post_init__(self) -> None:
        _check(_finite(self.scale) and self.scale > 0, "scale", f"must be > 0, got {self.scale!r}")

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """``-scale * own``, saturated at the largest finite float32."""
        return _saturate(own.astype(np.float64) * -self.scale)


@dataclass(frozen=True, slots=True)
class Scaling(_PublishOnly):
    """Publishes ``factor * own``. Raises :class:`ConfigError` for a non-finite factor."""

    kind: ClassVar[str] = "scaling"
    factor: float = 100.0

    def __post_init__(self) -> None:
        _check(_finite(self.factor), "factor", f"must be a finite number, got {self.factor!r}")

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """``factor * own``, saturated at the largest finite float32 (the codec refuses inf)."""
        return _saturate(own.astype(np.float64) * self.factor)


@dataclass(frozen=True, slots=True)
class GaussianNoise(_PublishOnly):
    """Publishes ``own`` plus Gaussian noise of standard deviation ``std`` per value.

    Raises :class:`ConfigError` unless ``std`` > 0.
    """

    kind: ClassVar[str] = "gaussian"
    std: float = 1.0

    def __post_init__(self) -> None:
        _check(_finite(self.std) and self.std > 0, "std", f"must be > 0, got {self.std!r}")

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """``own + N(0, std^2)``."""
        return _saturate(own + rng.standard_normal(own.size) * self.std)


def _per_layer(
    own: np.ndarray, view: NeighbourView, combine: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply ``combine`` to the stacked (own, heard replicas) rows of each layer."""
    out = np.array(own, dtype=np.float32, copy=True)
    offsets = view.offsets
    for layer in range(len(offsets) - 1):
        start, stop = offsets[layer], offsets[layer + 1]
        rows = [own[start:stop], *view.layer(layer).values()]
        out[start:stop] = _saturate(combine(np.stack(rows).astype(np.float64)))
    return out


def alie_z(drones: int, attackers: int) -> float:
    """Baruch et al.'s ``z_max`` for ``drones`` in all, ``attackers`` of them colluding.

    It is the largest shift (in standard deviations) for which the attackers plus the honest
    drones that lie closer to them than the mean still make a majority. Raises
    :class:`ConfigError` when there are too many attackers for the formula (it needs at least
    one honest supporter to recruit).
    """
    supporters = math.floor(drones / 2 + 1) - attackers
    honest = drones - attackers
    share = (honest - supporters) / honest if honest > 0 else 0.0
    _check(
        0.0 < share < 1.0,
        "z",
        f"no z for {attackers} attackers among {drones} drones; give attack.z",
    )
    return NormalDist().inv_cdf(share)


@dataclass(frozen=True, slots=True)
class ALittleIsEnough(_PublishOnly):
    """Publishes ``mu - z * sigma``, per coordinate over its own model and the replicas heard.

    ``sigma`` is the sample standard deviation (0 with one model). :func:`alie_z` gives the
    paper's ``z`` for a swarm's size. Raises :class:`ConfigError` for a non-finite ``z``.
    """

    kind: ClassVar[str] = "alie"
    z: float = 1.0

    def __post_init__(self) -> None:
        _check(_finite(self.z), "z", f"must be a finite number, got {self.z!r}")

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """``mu - z * sigma`` of the known models."""

        def shift(rows: np.ndarray) -> np.ndarray:
            sigma = rows.std(axis=0, ddof=1) if rows.shape[0] > 1 else 0.0
            return np.asarray(rows.mean(axis=0) - self.z * sigma)

        return _per_layer(own, view, shift)


@dataclass(frozen=True, slots=True)
class InnerProductManipulation(_PublishOnly):
    """Publishes ``-epsilon * mu``, ``mu`` the mean of its own model and the replicas heard.

    Raises :class:`ConfigError` unless ``epsilon`` > 0.
    """

    kind: ClassVar[str] = "ipm"
    epsilon: float = 0.1

    def __post_init__(self) -> None:
        _check(
            _finite(self.epsilon) and self.epsilon > 0,
            "epsilon",
            f"must be > 0, got {self.epsilon!r}",
        )

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """``-epsilon`` times the mean of the known models."""
        return _per_layer(own, view, lambda rows: -self.epsilon * rows.mean(axis=0))


@dataclass(frozen=True, slots=True)
class Dissensus(_PublishOnly):
    """Pushes one neighbour away from its other neighbours (see the module docstring).

    ``target`` is the drone aimed at; None aims at the lowest id heard. ``colluders`` is how
    many attackers share the target (the push is split between them). A layer the target does
    not carry, or a period where it is not heard, publishes the attacker's own values. Raises
    :class:`ConfigError` for ``epsilon`` <= 0 or ``colluders`` < 1.
    """

    kind: ClassVar[str] = "dissensus"
    epsilon: float = 1.5
    colluders: int = 1
    target: int | None = None

    def __post_init__(self) -> None:
        _check(
            _finite(self.epsilon) and self.epsilon > 0,
            "epsilon",
            f"must be > 0, got {self.epsilon!r}",
        )
        _check(
            isinstance(self.colluders, int)
            and not isinstance(self.colluders, bool)
            and self.colluders >= 1,
            "colluders",
            f"must be an integer >= 1, got {self.colluders!r}",
        )

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """``x_t - epsilon * sum_j (x_j - x_t) / colluders`` per layer the target carries."""
        target = self.target if self.target is not None else min(view.replicas, default=None)
        out = np.array(own, dtype=np.float32, copy=True)
        if target is None or target not in view.replicas:
            return out
        for layer in range(len(view.offsets) - 1):
            rows = view.layer(layer)
            aimed = rows.pop(target, None)
            if aimed is None:
                continue
            start, stop = view.offsets[layer], view.offsets[layer + 1]
            pull = np.zeros(stop - start, dtype=np.float64)
            for values in rows.values():
                pull += values - aimed.astype(np.float64)
            out[start:stop] = _saturate(aimed - self.epsilon * pull / self.colluders)
        return out


@dataclass(frozen=True, slots=True)
class LabelFlip:
    """Trains on ``num_classes - 1 - y`` and publishes its (poisoned) model as it is.

    Raises :class:`ConfigError` unless ``num_classes`` >= 2.
    """

    kind: ClassVar[str] = "label_flip"
    num_classes: int = 10

    def __post_init__(self) -> None:
        _check(
            isinstance(self.num_classes, int)
            and not isinstance(self.num_classes, bool)
            and self.num_classes >= 2,
            "num_classes",
            f"must be an integer >= 2, got {self.num_classes!r}",
        )

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """A copy of ``own``: the poison is in the training, not in the frames."""
        return np.array(own, dtype=np.float32, copy=True)

    def poison_labels(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``num_classes - 1 - labels``."""
        return (self.num_classes - 1 - labels).astype(labels.dtype)


class FreeRiding(_PublishOnly):
    """Publishes its first model (``mode="initial"``) or a snapshot refreshed every
    ``lag_rounds`` publications (``mode="stale"``), never what it currently holds.

    It keeps one model's worth of memory. Raises :class:`ConfigError` for an unknown mode or
    ``lag_rounds`` < 1.
    """

    kind: ClassVar[str] = "free_riding"

    def __init__(self, mode: str = "initial", lag_rounds: int = 10) -> None:
        _check(mode in ("initial", "stale"), "mode", f"must be initial or stale, got {mode!r}")
        _check(
            isinstance(lag_rounds, int) and not isinstance(lag_rounds, bool) and lag_rounds >= 1,
            "lag_rounds",
            f"must be an integer >= 1, got {lag_rounds!r}",
        )
        self.mode = mode
        self.lag_rounds = lag_rounds
        self._snapshot: np.ndarray | None = None
        self._published = 0

    def publish_values(
        self, own: np.ndarray, view: NeighbourView, rng: np.random.Generator
    ) -> np.ndarray:
        """The initial model, or the snapshot of ``lag_rounds`` publications ago at most."""
        refresh = self.mode == "stale" and self._published % self.lag_rounds == 0
        if self._snapshot is None or refresh:
            self._snapshot = np.array(own, dtype=np.float32, copy=True)
        self._published += 1
        return self._snapshot.copy()


ATTACK_KINDS: dict[str, Callable[..., Attack]] = {
    SignFlip.kind: SignFlip,
    Scaling.kind: Scaling,
    GaussianNoise.kind: GaussianNoise,
    ALittleIsEnough.kind: ALittleIsEnough,
    InnerProductManipulation.kind: InnerProductManipulation,
    Dissensus.kind: Dissensus,
    LabelFlip.kind: LabelFlip,
    FreeRiding.kind: FreeRiding,
}
"""Every attack by kind; the keyword arguments of each are its parameters."""


def make_attack(kind: str, **params: object) -> Attack:
    """The attack ``kind`` with ``params`` (e.g. ``make_attack("scaling", factor=1e6)``).

    Raises :class:`ConfigError` naming ``attack.kind`` for an unknown kind, or the
    ``attack.<param>`` of an unknown or bad parameter.
    """
    factory = ATTACK_KINDS.get(kind)
    if factory is None:
        raise ConfigError(
            f"must be one of {', '.join(ATTACK_KINDS)}, got {kind!r}", key="attack.kind"
        )
    accepted = inspect.signature(factory).parameters
    for name in params:
        if name not in accepted:
            raise ConfigError(
                f"{kind} takes no parameter {name!r} (it takes: {', '.join(accepted) or 'none'})",
                key=f"attack.{name}",
            )
    return factory(**params)
