"""Log-distance path loss turned into a per-datagram loss probability, and links from positions.

The path loss in dB at distance ``d`` is the log-distance model

    PL(d) = PL0 + 10 * n * log10(d / d0),       d >= d0

with ``n`` the path-loss exponent and ``d0`` the reference distance. Measured air-to-air and
air-to-ground links between small UAVs in open field show exponents of roughly 2.0 to 2.6 (for
example Yanmaz et al., "Achieving air-ground communications in 802.11 networks with
three-dimensional aerial mobility", IEEE INFOCOM 2013, and the survey by Khawaja et al., "A survey
of air-to-ground propagation channel modeling for unmanned aerial vehicles", IEEE Communications
Surveys & Tutorials, 2019); the default ``exponent = 2.2`` sits in that range.

``range_m`` is where the received SNR reaches the receiver's threshold, so the SNR margin at
``d`` is ``PL(range_m) - PL(d) = 10 * n * log10(range_m / d)`` dB: the transmit power and ``PL0``
cancel out and the model needs no radio constants. See :class:`LinkModel` for the loss curve.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from swarmfl.errors import ConfigError

__all__ = ["SPEED_OF_LIGHT_MPS", "LinkModel", "links_from_positions"]

SPEED_OF_LIGHT_MPS = 299_792_458.0


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


@dataclass(frozen=True, slots=True)
class LinkModel:
    """A radio link whose per-datagram loss rises with distance (log-distance path loss).

    With margin ``m(d) = 10 * exponent * log10(range_m / d)`` dB (0 at ``range_m``,
    ``M0 = m(reference_distance_m)`` at ``d0``), the loss probability is the logistic

        loss(d) = 1 / (1 + exp(a * m(d) + c))
        c = -logit(edge_loss),   a = (logit(edge_loss) - logit(reference_loss)) / M0

    with ``logit(p) = ln(p / (1 - p))``. So ``loss(d0) = reference_loss`` and
    ``loss(range_m) = edge_loss`` exactly, and loss is a logistic in log-distance in between
    (in dB of margin, the usual shape of a packet-error-vs-SNR curve). For ``d <= d0`` the loss is
    ``reference_loss`` (the model is not used inside the reference distance); beyond ``range_m``
    there is no link and the loss is 1.

    ``rate_bps`` is the link's bit rate and the latency of a datagram over distance ``d`` is
    ``latency_s + d / c`` (c the speed of light) when ``speed_of_light_latency``, else
    ``latency_s``.

    Raises :class:`ConfigError` (naming the field) unless ``range_m > reference_distance_m > 0``,
    ``exponent > 0``, ``0 < reference_loss < edge_loss < 1``, ``rate_bps > 0``, ``latency_s >= 0``
    and all are finite.
    """

    range_m: float
    exponent: float = 2.2
    reference_loss: float = 0.01
    reference_distance_m: float = 1.0
    edge_loss: float = 0.5
    rate_bps: float = 250_000
    latency_s: float = 0.005
    speed_of_light_latency: bool = True

    def __post_init__(self) -> None:
        for name in ("range_m", "exponent", "reference_distance_m", "rate_bps"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"must be a finite number > 0, got {value!r}", key=name)
        if not math.isfinite(self.latency_s) or self.latency_s < 0:
            raise ConfigError(
                f"must be a finite number >= 0, got {self.latency_s!r}", key="latency_s"
            )
        if self.reference_distance_m >= self.range_m:
            raise ConfigError(
                f"must be below range_m ({self.range_m}), got {self.reference_distance_m}",
                key="reference_distance_m",
            )
        if not 0 < self.reference_loss < 1:
            raise ConfigError(
                f"must be strictly between 0 and 1, got {self.reference_loss!r}",
                key="reference_loss",
            )
        if not self.reference_loss < self.edge_loss < 1:
            raise ConfigError(
                f"must be above reference_loss ({self.reference_loss}) and below 1, "
                f"got {self.edge_loss!r}",
                key="edge_loss",
            )

    def margin_db(self, distance_m: np.ndarray | float) -> np.ndarray:
        """SNR margin in dB at each distance: ``10 * exponent * log10(range_m / d)``.

        Distances below ``reference_distance_m`` are taken as ``reference_distance_m``.
        Raises :class:`ConfigError` for negative or non-finite distances.
        """
        d = _distances(distance_m)
        d = np.maximum(d, self.reference_distance_m)
        return 10.0 * self.exponent * np.log10(self.range_m / d)

    def loss_probability(self, distance_m: np.ndarray | float) -> np.ndarray:
        """Per-datagram loss probability at each distance, same shape (1 beyond ``range_m``).

        Raises :class:`ConfigError` for negative or non-finite distances.
        """
        d = _distances(distance_m)
        # Clipping to [d0, range] keeps exp() bounded; beyond range is overwritten with 1 below.
        margin = self.margin_db(np.clip(d, self.reference_distance_m, self.range_m))
        full_margin = 10.0 * self.exponent * math.log10(self.range_m / self.reference_distance_m)
        slope = (_logit(self.edge_loss) - _logit(self.reference_loss)) / full_margin
        loss = 1.0 / (1.0 + np.exp(slope * margin - _logit(self.edge_loss)))
        return np.where(d > self.range_m, 1.0, loss)

    def latency_s_for(self, distance_m: np.ndarray | float) -> np.ndarray:
        """One-way latency in seconds of a datagram over each distance, same shape.

        Raises :class:`ConfigError` for negative or non-finite distances.
        """
        d = _distances(distance_m)
        if self.speed_of_light_latency:
            return self.latency_s + d / SPEED_OF_LIGHT_MPS
        return np.full_like(d, self.latency_s)


def _distances(distance_m: np.ndarray | float) -> np.ndarray:
    d = np.asarray(distance_m, dtype=np.float64)
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise ConfigError("distances must be finite and >= 0", key="distance_m")
    return d


def links_from_positions(
    pos: np.ndarray, model: LinkModel
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every ordered pair of drones within ``model.range_m`` of each other, with its loss.

    ``pos`` is ``(n, 3)`` in metres. Returns ``(src, dst, distance_m, loss)``: int64, int64,
    float64, float64 arrays of equal length, one entry per ordered pair ``src != dst`` with
    distance ``<= range_m`` (so both ``(i, j)`` and ``(j, i)`` appear), sorted by ``src`` then
    ``dst``. Uses a k-d tree, so 1,000 drones take milliseconds.

    Raises :class:`ConfigError` if ``pos`` is not a finite ``(n, 3)`` array.
    """
    positions = np.asarray(pos, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ConfigError(f"must have shape (n, 3), got {positions.shape}", key="pos")
    if not np.all(np.isfinite(positions)):
        raise ConfigError("must contain only finite coordinates", key="pos")
    if positions.shape[0] < 2:
        empty_index = np.empty(0, dtype=np.int64)
        return empty_index, empty_index.copy(), np.empty(0), np.empty(0)
    pairs = cKDTree(positions).query_pairs(model.range_m, output_type="ndarray")
    first = pairs[:, 0].astype(np.int64)
    second = pairs[:, 1].astype(np.int64)
    distance = np.linalg.norm(positions[first] - positions[second], axis=1)
    # The tree's distance test and ours may round differently at exactly range_m; ours decides.
    keep = distance <= model.range_m
    first, second, distance = first[keep], second[keep], distance[keep]
    src = np.concatenate([first, second])
    dst = np.concatenate([second, first])
    distance = np.concatenate([distance, distance])
    order = np.lexsort((dst, src))
    src, dst, distance = src[order], dst[order], distance[order]
    return src, dst, distance, model.loss_probability(distance)
