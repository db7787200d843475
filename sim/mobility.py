"""Mobility models: where every drone is at virtual time ``t``.

Every model has ``positions(t) -> ndarray`` of shape ``(n, 3)``, float64, in metres. It is a pure
function of ``t`` for a given construction: calling it for increasing, decreasing or arbitrary
``t`` gives the same answer. Times before 0 are clamped to 0 (the start positions).

Random waypoint and scripted tracks are stored as per-drone piecewise-linear tracks (knot times
and knot points, see :class:`_KnotTracks`). A per-drone cursor caches the segment each drone was
in at the last query, so the common simulator pattern -- one query per tick at increasing ``t`` --
costs O(n) vectorised numpy per call with no Python loop over drones. Random waypoint legs are
drawn lazily, one leg for every drone at a time and always in the same order, so the random draws
(and therefore the tracks) do not depend on which times were asked for.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from swarmfl.errors import ConfigError

__all__ = ["FormationShape", "RandomWaypoint", "Scripted", "Static"]

FormationShape = Literal["line", "grid", "v"]

# A jump forward of more than this many knots for some drone is answered by a full recount
# (O(n * knots)) instead of stepping the cursor one knot at a time.
_MAX_CURSOR_STEPS = 8


def _check_time(t: float) -> float:
    t = float(t)
    if not math.isfinite(t):
        raise ConfigError(f"must be a finite number of seconds, got {t!r}", key="t")
    return max(t, 0.0)


def _as_positions(array: object, n: int | None, key: str) -> np.ndarray:
    pos = np.array(array, dtype=np.float64)
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise ConfigError(f"must have shape (n, 3), got {pos.shape}", key=key)
    if n is not None and pos.shape[0] != n:
        raise ConfigError(f"must have {n} rows (one per drone), got {pos.shape[0]}", key=key)
    if not np.all(np.isfinite(pos)):
        raise ConfigError("must contain only finite coordinates", key=key)
    return pos


def _check_count(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ConfigError(f"must be an integer >= 1, got {n!r}", key="n")
    return int(n)


def _check_nonnegative(value: float, key: str, *, strict: bool = False) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0 or (strict and value == 0):
        bound = "> 0" if strict else ">= 0"
        raise ConfigError(f"must be a finite number {bound}, got {value!r}", key=key)
    return value


class _KnotTracks:
    """Per-drone piecewise-linear tracks: knot times ``(n, K)`` and knot points ``(n, K, 3)``.

    Each row's times are non-decreasing. A drone is at its first point before its first knot, at
    its last point after its last one, and moves linearly in between. Rows with fewer real knots
    are padded with ``+inf`` times and their last point, which keeps them clamped. Knots can be
    appended as a column (random waypoint extends its tracks lazily); storage grows by doubling.
    """

    def __init__(self, times: np.ndarray, points: np.ndarray) -> None:
        n, k = times.shape
        self._n = n
        self._k = k
        self._times = np.array(times, dtype=np.float64)
        self._points = np.array(points, dtype=np.float64)
        self._rows = np.arange(n)
        self._cursor = np.zeros(n, dtype=np.intp)
        self._cursor_t = -math.inf

    @property
    def knot_count(self) -> int:
        """The number of knot columns."""
        return self._k

    def last_times(self) -> np.ndarray:
        """Each drone's last knot time, shape ``(n,)`` (a view: do not modify)."""
        return self._times[:, self._k - 1]

    def last_points(self) -> np.ndarray:
        """Each drone's last knot point, shape ``(n, 3)`` (a view: do not modify)."""
        return self._points[:, self._k - 1]

    def append(self, times: np.ndarray, points: np.ndarray) -> None:
        """Append one knot per drone; ``times`` must not precede each drone's last knot."""
        if self._k == self._times.shape[1]:
            capacity = max(2 * self._k, 4)
            new_times = np.empty((self._n, capacity), dtype=np.float64)
            new_points = np.empty((self._n, capacity, 3), dtype=np.float64)
            new_times[:, : self._k] = self._times[:, : self._k]
            new_points[:, : self._k] = self._points[:, : self._k]
            self._times, self._points = new_times, new_points
        self._times[:, self._k] = times
        self._points[:, self._k] = points
        self._k += 1

    def _recount(self, t: float) -> np.ndarray:
        # The rows are sorted, so counting the knots at or before t finds the segment start.
        count = np.count_nonzero(self._times[:, : self._k] <= t, axis=1)
        return np.clip(count - 1, 0, max(self._k - 2, 0)).astype(np.intp)

    def _segment_starts(self, t: float) -> np.ndarray:
        last_segment = self._k - 2
        if t < self._cursor_t:
            cursor = self._recount(t)
        else:
            cursor = self._cursor
            for _ in range(_MAX_CURSOR_STEPS):
                following = np.minimum(cursor + 1, last_segment)
                step = (cursor < last_segment) & (self._times[self._rows, following] <= t)
                if not step.any():
                    break
                cursor = cursor + step
            else:
                cursor = self._recount(t)
        self._cursor = cursor
        self._cursor_t = t
        return cursor

    def evaluate(self, t: float) -> np.ndarray:
        """Every drone's position at ``t``, shape ``(n, 3)`` (a new array)."""
        if self._k == 1:
            return self._points[:, 0].copy()
        start = self._segment_starts(t)
        end = start + 1
        t0 = self._times[self._rows, start]
        t1 = self._times[self._rows, end]
        p0 = self._points[self._rows, start]
        p1 = self._points[self._rows, end]
        span = t1 - t0
        # Zero-length segments (a pause of 0 s, a clamped end) take their end point.
        frac = np.divide(t - t0, span, out=np.ones_like(span), where=span > 0)
        np.clip(frac, 0.0, 1.0, out=frac)
        frac = frac[:, None]
        return (1.0 - frac) * p0 + frac * p1


class Static:
    """Drones that never move.

    Raises :class:`ConfigError` if ``positions`` is not a finite ``(n, 3)`` array.
    """

    def __init__(self, positions: np.ndarray) -> None:
        self._positions = _as_positions(positions, None, "positions")
        self.n = self._positions.shape[0]

    def positions(self, t: float) -> np.ndarray:
        """The fixed positions, shape ``(n, 3)`` (a new array); raises ConfigError for a bad t."""
        _check_time(t)
        return self._positions.copy()


class RandomWaypoint:
    """ns-3's RandomWaypointMobilityModel, for ``n`` drones in an axis-aligned box.

    Each drone starts at a uniform random point of ``bounds`` (or at ``initial``), then repeats:
    pick a uniform random destination in ``bounds`` and a uniform random speed in
    ``[min_speed_mps, max_speed_mps]``, fly straight there at that speed, hover for a uniform
    random pause in ``[min_pause_s, max_pause_s]``. As in ns-3, the first thing a drone does is
    move (there is no initial pause). ``bounds`` is ``((xmin, ymin, zmin), (xmax, ymax, zmax))``;
    an axis with ``min == max`` keeps the drones at that coordinate (a fixed altitude, say).

    ``seed`` is an int or a ``numpy.random.Generator``; a generator is used once, at construction,
    to seed a private one, so sharing it with other models cannot change this model's tracks.
    Legs are drawn lazily for all drones at once, in a fixed order, and cached.

    Raises :class:`ConfigError` for ``n < 1``, ``min_speed_mps <= 0``, ``min > max`` for a speed
    or a pause, a negative pause, unordered or non-finite bounds, or an ``initial`` array that is
    not ``(n, 3)`` inside the bounds.
    """

    def __init__(
        self,
        n: int,
        bounds: tuple[tuple[float, float, float], tuple[float, float, float]],
        min_speed_mps: float,
        max_speed_mps: float,
        min_pause_s: float,
        max_pause_s: float,
        seed: int | np.random.Generator,
        initial: np.ndarray | None = None,
    ) -> None:
        self.n = _check_count(n)
        try:
            box = np.array(bounds, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"must be two (x, y, z) corners: {exc}", key="bounds") from exc
        if box.shape != (2, 3) or not np.all(np.isfinite(box)):
            raise ConfigError("must be two finite (x, y, z) corners (min, max)", key="bounds")
        if np.any(box[0] > box[1]):
            raise ConfigError(
                f"min corner {tuple(box[0])} must not exceed max corner {tuple(box[1])}",
                key="bounds",
            )
        self._low, self._high = box[0], box[1]
        self.min_speed_mps = _check_nonnegative(min_speed_mps, "min_speed_mps", strict=True)
        self.max_speed_mps = _check_nonnegative(max_speed_mps, "max_speed_mps", strict=True)
        if self.min_speed_mps > self.max_speed_mps:
            raise ConfigError(
                f"must be <= max_speed_mps ({self.max_speed_mps}), got {self.min_speed_mps}",
                key="min_speed_mps",
            )
        self.min_pause_s = _check_nonnegative(min_pause_s, "min_pause_s")
        self.max_pause_s = _check_nonnegative(max_pause_s, "max_pause_s")
        if self.min_pause_s > self.max_pause_s:
            raise ConfigError(
                f"must be <= max_pause_s ({self.max_pause_s}), got {self.min_pause_s}",
                key="min_pause_s",
            )
        if isinstance(seed, np.random.Generator):
            self._rng = np.random.default_rng(int(seed.integers(0, 2**63 - 1)))
        else:
            self._rng = np.random.default_rng(seed)
        if initial is None:
            start = self._rng.uniform(self._low, self._high, size=(self.n, 3))
        else:
            start = _as_positions(initial, self.n, "initial")
            if np.any(start < self._low) or np.any(start > self._high):
                raise ConfigError("every initial position must lie inside bounds", key="initial")
        self._tracks = _KnotTracks(np.zeros((self.n, 1)), start[:, None, :])

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """The (min corner, max corner) of the box, as copies."""
        return self._low.copy(), self._high.copy()

    def _add_leg(self) -> None:
        destination = self._rng.uniform(self._low, self._high, size=(self.n, 3))
        speed = self._rng.uniform(self.min_speed_mps, self.max_speed_mps, size=self.n)
        pause = self._rng.uniform(self.min_pause_s, self.max_pause_s, size=self.n)
        origin = self._tracks.last_points()
        depart = self._tracks.last_times()
        arrive = depart + np.linalg.norm(destination - origin, axis=1) / speed
        self._tracks.append(arrive, destination)
        self._tracks.append(arrive + pause, destination)

    def positions(self, t: float) -> np.ndarray:
        """Every drone's position at ``t`` seconds, shape ``(n, 3)``; ConfigError for a bad t."""
        t = _check_time(t)
        while self._tracks.last_times().min() <= t:
            self._add_leg()
        pos = self._tracks.evaluate(t)
        # Interpolation can overshoot a face of the box by an ulp; the box is a hard invariant.
        return np.clip(pos, self._low, self._high, out=pos)


def _formation_offsets(n: int, shape: FormationShape, spacing_m: float) -> np.ndarray:
    index = np.arange(n, dtype=np.float64)
    offsets = np.zeros((n, 3), dtype=np.float64)
    if shape == "line":
        offsets[:, 0] = -index * spacing_m
    elif shape == "grid":
        columns = math.ceil(math.sqrt(n))
        offsets[:, 0] = -(index // columns) * spacing_m
        offsets[:, 1] = (index % columns) * spacing_m
    else:
        rank = np.ceil(index / 2.0)
        side = np.where(index % 2 == 1, 1.0, -1.0)
        arm = spacing_m / math.sqrt(2.0)
        offsets[:, 0] = -rank * arm
        offsets[:, 1] = side * rank * arm
        offsets[0, 1] = 0.0
    return offsets


class Formation:
    """Leader-follower flight: drone 0 flies a waypoint path, the others hold fixed offsets.

    The leader starts at ``waypoints[0]`` and flies straight from waypoint to waypoint at
    ``speed_mps``. With ``loop`` it flies back to the first waypoint and round again forever;
    without, it hovers at the last waypoint. Follower ``i`` is always at ``leader + offset[i]``.

    Offsets lie in the x/y plane (same altitude as the leader) and are **axis-aligned**: they do
    not turn with the leader's heading. This keeps followers' motion continuous at waypoint turns
    (a heading-aligned formation would swing them instantly) at the cost of realism; "behind" is
    always the ``-x`` direction. Shapes, with ``s = spacing_m``:

    * ``"line"``: in trail, drone ``i`` at ``(-i*s, 0)``.
    * ``"grid"``: ``ceil(sqrt(n))`` columns; drone ``i`` at ``(-row*s, col*s)`` with
      ``row, col = divmod(i, columns)`` (the leader is a corner).
    * ``"v"``: leader at the apex, odd drones on the ``+y`` arm and even ones on the ``-y`` arm,
      rank ``k = ceil(i/2)`` at ``(-k*s/sqrt(2), +-k*s/sqrt(2))``: neighbours on an arm are
      ``s`` apart and the arms are at 45 degrees to the ``-x`` axis.

    Raises :class:`ConfigError` for ``n < 1``, no or non-finite waypoints, ``speed_mps <= 0``,
    ``spacing_m <= 0`` or an unknown shape.
    """

    def __init__(
        self,
        n: int,
        waypoints: Sequence[tuple[float, float, float]],
        speed_mps: float,
        spacing_m: float,
        shape: FormationShape,
        loop: bool,
    ) -> None:
        self.n = _check_count(n)
        try:
            path = np.array(waypoints, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"must be a list of (x, y, z) points: {exc}", key="waypoints"
            ) from exc
        if path.ndim != 2 or path.shape[1] != 3 or path.shape[0] < 1:
            raise ConfigError("must be a non-empty list of (x, y, z) points", key="waypoints")
        if not np.all(np.isfinite(path)):
            raise ConfigError("must contain only finite coordinates", key="waypoints")
        self.speed_mps = _check_nonnegative(speed_mps, "speed_mps", strict=True)
        self.spacing_m = _check_nonnegative(spacing_m, "spacing_m", strict=True)
        if shape not in ("line", "grid", "v"):
            raise ConfigError(f"must be 'line', 'grid' or 'v', got {shape!r}", key="shape")
        self.shape: FormationShape = shape
        self.loop = bool(loop)
        if self.loop and path.shape[0] > 1:
            path = np.vstack([path, path[:1]])
        self._path = path
        legs = np.linalg.norm(np.diff(path, axis=0), axis=1)
        self._arrive_s = np.concatenate([[0.0], np.cumsum(legs / self.speed_mps)])
        self._offsets = _formation_offsets(self.n, shape, self.spacing_m)

    @property
    def offsets(self) -> np.ndarray:
        """Each drone's offset from the leader, shape ``(n, 3)`` (a copy; row 0 is zero)."""
        return self._offsets.copy()

    @property
    def lap_s(self) -> float:
        """Time to fly the whole path once (one lap if looping)."""
        return float(self._arrive_s[-1])

    def leader_position(self, t: float) -> np.ndarray:
        """The leader's position at ``t``, shape ``(3,)``; ConfigError for a bad t."""
        t = _check_time(t)
        total = self._arrive_s[-1]
        if total == 0.0:
            return self._path[0].copy()
        tau = math.fmod(t, total) if self.loop else min(t, total)
        leg = int(np.searchsorted(self._arrive_s, tau, side="right")) - 1
        leg = min(max(leg, 0), len(self._arrive_s) - 2)
        t0, t1 = self._arrive_s[leg], self._arrive_s[leg + 1]
        frac = (tau - t0) / (t1 - t0) if t1 > t0 else 1.0
        frac = min(max(frac, 0.0), 1.0)
        return (1.0 - frac) * self._path[leg] + frac * self._path[leg + 1]

    def positions(self, t: float) -> np.ndarray:
        """Every drone's position at ``t``, shape ``(n, 3)``; ConfigError for a bad t."""
        return self.leader_position(t)[None, :] + self._offsets


class Scripted:
    """Tracks given as timed samples, linearly interpolated and clamped at both ends.

    ``tracks`` maps every drone ``0..n-1`` to a ``(k, 4)`` array of ``(t, x, y, z)`` rows with
    strictly increasing ``t`` (``k >= 1``). Before its first sample a drone is at that sample;
    after its last, at the last one.

    Raises :class:`ConfigError` for a drone outside ``0..n-1``, a missing drone, a track that is
    not a finite ``(k, 4)`` array, or times that are not strictly increasing.
    """

    def __init__(self, tracks: Mapping[int, np.ndarray], n: int) -> None:
        self.n = _check_count(n)
        arrays: dict[int, np.ndarray] = {}
        for drone, samples in tracks.items():
            if isinstance(drone, bool) or not isinstance(drone, int | np.integer):
                raise ConfigError(f"drone ids must be integers, got {drone!r}", key="tracks")
            if not 0 <= drone < self.n:
                raise ConfigError(f"drone {drone} is outside 0..{self.n - 1}", key="tracks")
            key = f"tracks[{drone}]"
            array = np.array(samples, dtype=np.float64)
            if array.ndim != 2 or array.shape[1] != 4 or array.shape[0] < 1:
                raise ConfigError(f"must have shape (k, 4) with k >= 1, got {array.shape}", key=key)
            if not np.all(np.isfinite(array)):
                raise ConfigError("must contain only finite numbers", key=key)
            if np.any(np.diff(array[:, 0]) <= 0):
                raise ConfigError("sample times must be strictly increasing", key=key)
            arrays[int(drone)] = array
        missing = sorted(set(range(self.n)) - set(arrays))
        if missing:
            raise ConfigError(f"no track for drone(s) {_id_list(missing)}", key="tracks")
        width = max(a.shape[0] for a in arrays.values())
        times = np.full((self.n, width), np.inf)
        points = np.empty((self.n, width, 3))
        for drone, array in arrays.items():
            k = array.shape[0]
            times[drone, :k] = array[:, 0]
            points[drone, :k] = array[:, 1:]
            points[drone, k:] = array[-1, 1:]
        self._tracks = _KnotTracks(times, points)

    @classmethod
    def from_csv(cls, path: Path | str, n: int) -> Scripted:
        """Read tracks from a CSV file with the header ``time,drone,x,y,z`` (any column order).

        Blank lines are skipped. Rows of one drone may be interleaved with other drones' rows
        but must be in strictly increasing time. Raises :class:`ConfigError` naming the file
        (and the line, where there is one) for an unreadable file, a bad header, a row with the
        wrong number of fields or a non-numeric/non-finite value, a drone id that is not an
        integer in ``0..n-1``, a time not after that drone's previous one, or a missing drone.
        """
        n = _check_count(n)
        source = str(path)
        columns = ("time", "drone", "x", "y", "z")
        samples: dict[int, list[tuple[float, float, float, float]]] = {}
        last_line: dict[int, int] = {}
        try:
            with open(path, newline="", encoding="utf-8") as handle:
                reader = csv.reader(handle)
                header = next(reader, None)
                names = [name.strip().lower() for name in header or []]
                if sorted(names) != sorted(columns):
                    raise ConfigError(
                        f"line 1: header must be time,drone,x,y,z, got {','.join(header or [])!r}",
                        source=source,
                    )
                where = [names.index(c) for c in columns]
                for row in reader:
                    line = reader.line_num
                    if not row or all(not cell.strip() for cell in row):
                        continue
                    if len(row) != len(columns):
                        raise ConfigError(
                            f"line {line}: expected 5 fields, got {len(row)}", source=source
                        )
                    cells = [row[i].strip() for i in where]
                    try:
                        t, x, y, z = (float(cells[i]) for i in (0, 2, 3, 4))
                    except ValueError:
                        raise ConfigError(
                            f"line {line}: time, x, y and z must be numbers, got {row!r}",
                            source=source,
                        ) from None
                    if not all(math.isfinite(v) for v in (t, x, y, z)):
                        raise ConfigError(f"line {line}: non-finite value", source=source)
                    try:
                        drone = int(cells[1])
                    except ValueError:
                        raise ConfigError(
                            f"line {line}: drone must be an integer, got {cells[1]!r}",
                            source=source,
                        ) from None
                    if not 0 <= drone < n:
                        raise ConfigError(
                            f"line {line}: unknown drone {drone} (drones are 0..{n - 1})",
                            source=source,
                        )
                    track = samples.setdefault(drone, [])
                    if track and t <= track[-1][0]:
                        raise ConfigError(
                            f"line {line}: time {t} for drone {drone} is not after its previous "
                            f"sample at {track[-1][0]} (line {last_line[drone]})",
                            source=source,
                        )
                    track.append((t, x, y, z))
                    last_line[drone] = line
        except OSError as exc:
            raise ConfigError(f"cannot read: {exc.strerror or exc}", source=source) from exc
        except (UnicodeDecodeError, csv.Error) as exc:
            raise ConfigError(f"not a readable CSV file: {exc}", source=source) from exc
        missing = sorted(set(range(n)) - set(samples))
        if missing:
            raise ConfigError(f"no rows for drone(s) {_id_list(missing)}", source=source)
        return cls({d: np.array(rows) for d, rows in samples.items()}, n)

    def positions(self, t: float) -> np.ndarray:
        """Every drone's position at ``t``, shape ``(n, 3)``; ConfigError for a bad t."""
        return self._tracks.evaluate(_check_time(t))


def _id_list(ids: Sequence[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in ids[:limit])
    return shown + (f" and {len(ids) - limit} more" if len(ids) > limit else "")
