"""Mobility models: determinism, bounds, speeds and pauses, formations, scripted tracks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from swarmfl.errors import ConfigError
from swarmfl.sim.mobility import Formation, RandomWaypoint, Scripted, Static

BOUNDS = ((0.0, 0.0, 10.0), (500.0, 300.0, 60.0))


def make_rw(
    seed: int | np.random.Generator = 7, n: int = 20, **overrides: object
) -> RandomWaypoint:
    kwargs: dict[str, object] = {
        "n": n,
        "bounds": BOUNDS,
        "min_speed_mps": 4.0,
        "max_speed_mps": 12.0,
        "min_pause_s": 2.0,
        "max_pause_s": 6.0,
        "seed": seed,
    }
    kwargs.update(overrides)
    return RandomWaypoint(**kwargs)  # type: ignore[arg-type]


def test_static_returns_copies_of_fixed_positions() -> None:
    start = np.array([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]])
    model = Static(start)
    got = model.positions(12.0)
    np.testing.assert_array_equal(got, start)
    got[0, 0] = 99.0
    np.testing.assert_array_equal(model.positions(0.0), start)
    with pytest.raises(ConfigError, match="shape"):
        Static(np.zeros((3, 2)))


def test_random_waypoint_same_seed_same_tracks_whatever_the_query_order() -> None:
    times = np.arange(0.0, 300.0, 7.3)
    forward = make_rw(seed=3)
    a = np.stack([forward.positions(t) for t in times])
    # A fresh model asked far ahead first, then backwards, must agree exactly.
    shuffled = make_rw(seed=3)
    shuffled.positions(299.0)
    b = np.stack([shuffled.positions(t) for t in times[::-1]])[::-1]
    np.testing.assert_array_equal(a, b)
    # Also with a single big jump forward (cursor recount path) and repeated queries.
    jumper = make_rw(seed=3)
    np.testing.assert_array_equal(jumper.positions(times[-1]), a[-1])
    np.testing.assert_array_equal(jumper.positions(times[-1]), a[-1])
    # Small forward steps (the cursor path) agree with the other query orders.
    stepper = make_rw(seed=3)
    fine = {t: stepper.positions(t) for t in sorted({*np.arange(0.0, 300.0, 0.1), *times})}
    for i, t in enumerate(times):
        np.testing.assert_array_equal(fine[t], a[i])
    other = make_rw(seed=4)
    assert not np.allclose(other.positions(100.0), a[times.searchsorted(100.0)])


def test_random_waypoint_generator_seed_is_isolated_from_later_use() -> None:
    a = make_rw(seed=np.random.default_rng(11))
    gen = np.random.default_rng(11)
    b = make_rw(seed=gen)
    gen.random(1000)  # consuming the shared generator later must not change b's tracks
    np.testing.assert_array_equal(a.positions(250.0), b.positions(250.0))


def test_random_waypoint_stays_inside_bounds_for_600_s() -> None:
    model = make_rw(n=50, min_pause_s=0.0, max_pause_s=1.0, max_speed_mps=30.0)
    low, high = np.array(BOUNDS[0]), np.array(BOUNDS[1])
    for t in np.arange(0.0, 600.0 + 1e-9, 0.5):
        pos = model.positions(t)
        assert pos.shape == (50, 3)
        assert np.all(pos >= low) and np.all(pos <= high)


def test_random_waypoint_speeds_within_range_and_pauses_happen() -> None:
    n, dt = 10, 0.05
    model = make_rw(n=n)
    times = np.arange(0.0, 300.0, dt)
    track = np.stack([model.positions(t) for t in times])  # (T, n, 3)
    speed = np.linalg.norm(np.diff(track, axis=0), axis=2) / dt  # (T-1, n)
    # Straight-line displacement never exceeds the path flown, so no sample exceeds max speed.
    assert speed.max() <= 12.0 + 1e-6
    moving = speed > 1e-9
    in_range = (speed >= 4.0 - 1e-6) & (speed <= 12.0 + 1e-6)
    # Only the few samples straddling an arrival can fall below min speed.
    assert np.mean(in_range[moving]) > 0.97
    # The speeds drawn spread over [min, max].
    assert speed[in_range].min() < 6.0 and speed[in_range].max() > 10.0
    # Every drone hovers (pauses of 2 to 6 s) at some point, and the pauses last that long.
    for drone in range(n):
        still = ~moving[:, drone]
        assert still.any()
        runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], still.astype(int), [0]]))))
        pause_lengths = runs[::2] * dt
        assert pause_lengths.max() <= 6.0 + 2 * dt
        assert pause_lengths.max() >= 2.0 - 2 * dt


def test_random_waypoint_starts_at_initial_and_validates() -> None:
    initial = np.tile([[250.0, 150.0, 30.0]], (4, 1))
    model = make_rw(n=4, initial=initial)
    np.testing.assert_array_equal(model.positions(0.0), initial)
    np.testing.assert_array_equal(model.positions(-5.0), initial)
    with pytest.raises(ConfigError, match="min_speed_mps"):
        make_rw(min_speed_mps=0.0)
    with pytest.raises(ConfigError, match="min_speed_mps"):
        make_rw(min_speed_mps=20.0)
    with pytest.raises(ConfigError, match="min_pause_s"):
        make_rw(min_pause_s=10.0)
    with pytest.raises(ConfigError, match="bounds"):
        make_rw(bounds=((0.0, 0.0, 0.0), (-1.0, 5.0, 5.0)))
    with pytest.raises(ConfigError, match="initial"):
        make_rw(n=4, initial=initial + 1000.0)
    with pytest.raises(ConfigError, match="'t'"):
        model.positions(float("nan"))


@pytest.mark.parametrize("shape", ["line", "grid", "v"])
def test_formation_keeps_offsets_and_follows_the_path(shape: str) -> None:
    waypoints = [(0.0, 0.0, 50.0), (100.0, 0.0, 50.0), (100.0, 100.0, 50.0)]
    model = Formation(9, waypoints, speed_mps=10.0, spacing_m=5.0, shape=shape, loop=False)  # type: ignore[arg-type]
    offsets = model.offsets
    np.testing.assert_array_equal(offsets[0], 0.0)
    assert np.all(offsets[:, 2] == 0.0)
    assert len({tuple(o) for o in offsets}) == 9  # nobody shares a slot
    pairwise = np.linalg.norm(offsets[:, None] - offsets[None], axis=2)
    assert pairwise[~np.eye(9, dtype=bool)].min() == pytest.approx(5.0)
    for t in (0.0, 3.0, 10.0, 14.5, 25.0, 100.0):
        pos = model.positions(t)
        np.testing.assert_allclose(pos - pos[0], offsets, atol=1e-9)
    np.testing.assert_allclose(model.positions(5.0)[0], [50.0, 0.0, 50.0])
    np.testing.assert_allclose(model.positions(15.0)[0], [100.0, 50.0, 50.0])
    np.testing.assert_allclose(model.positions(1e4)[0], [100.0, 100.0, 50.0])  # hovers at the end


def test_formation_loop_returns_to_start() -> None:
    waypoints = [(0.0, 0.0, 20.0), (30.0, 0.0, 20.0), (30.0, 40.0, 20.0)]
    model = Formation(3, waypoints, speed_mps=5.0, spacing_m=2.0, shape="line", loop=True)
    assert model.lap_s == pytest.approx((30 + 40 + 50) / 5.0)
    np.testing.assert_allclose(model.positions(model.lap_s)[0], waypoints[0], atol=1e-9)
    np.testing.assert_allclose(model.positions(model.lap_s + 3.0), model.positions(3.0), atol=1e-9)
    np.testing.assert_allclose(model.positions(19.0)[0], [15.0, 20.0, 20.0])
    with pytest.raises(ConfigError, match="shape"):
        Formation(3, waypoints, speed_mps=5.0, spacing_m=2.0, shape="circle", loop=True)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="waypoints"):
        Formation(3, [], speed_mps=5.0, spacing_m=2.0, shape="line", loop=True)


def test_scripted_interpolates_and_clamps() -> None:
    tracks = {
        0: np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 100.0, 0.0, 0.0], [20.0, 100.0, 50.0, 10.0]]),
        1: np.array([[5.0, 1.0, 2.0, 3.0]]),
    }
    model = Scripted(tracks, n=2)
    expected = {
        0.0: [[0, 0, 0], [1, 2, 3]],
        2.5: [[25, 0, 0], [1, 2, 3]],
        15.0: [[100, 25, 5], [1, 2, 3]],
        99.0: [[100, 50, 10], [1, 2, 3]],
    }
    for t in (99.0, 0.0, 15.0, 2.5):  # out of order on purpose
        np.testing.assert_allclose(model.positions(t), expected[t])
    with pytest.raises(ConfigError, match="drone 2"):
        Scripted({**tracks, 2: tracks[1]}, n=2)
    with pytest.raises(ConfigError, match=r"drone\(s\) 1"):
        Scripted({0: tracks[0]}, n=2)
    with pytest.raises(ConfigError, match="strictly increasing"):
        Scripted({0: tracks[0][::-1], 1: tracks[1]}, n=2)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tracks.csv"
    path.write_text(text)
    return path


def test_scripted_from_csv_reads_interleaved_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "time,drone,x,y,z\n0,0,0,0,10\n0,1,5,5,10\n\n4,0,40,0,10\n2,1,5,25,10\n",
    )
    model = Scripted.from_csv(path, n=2)
    np.testing.assert_allclose(model.positions(1.0), [[10, 0, 10], [5, 15, 10]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("t,drone,x,y,z\n0,0,0,0,0\n", "line 1: header"),
        ("time,drone,x,y,z\n0,0,0,0\n", "line 2: expected 5 fields"),
        ("time,drone,x,y,z\n0,0,0,0,0\n1,1,a,0,0\n", "line 3: time, x, y and z must be numbers"),
        ("time,drone,x,y,z\n0,0.5,0,0,0\n", "line 2: drone must be an integer"),
        ("time,drone,x,y,z\n0,0,0,0,0\n0,1,0,0,0\n0,2,0,0,0\n", "line 4: unknown drone 2"),
        ("time,drone,x,y,z\n0,0,0,0,inf\n", "line 2: non-finite"),
        ("time,drone,x,y,z\n0,0,0,0,0\n", r"no rows for drone\(s\) 1"),
        (
            "time,drone,x,y,z\n5,0,0,0,0\n0,1,0,0,0\n3,0,0,0,0\n",
            r"line 4: time 3.0 for drone 0 is not after .* \(line 2\)",
        ),
    ],
)
def test_scripted_from_csv_errors_name_file_and_line(
    tmp_path: Path, text: str, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        Scripted.from_csv(path, n=2)
    assert str(path) in str(info.value)


def test_scripted_from_csv_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        Scripted.from_csv(tmp_path / "absent.csv", n=1)
