"""Log-distance loss curve and links computed from positions."""

from __future__ import annotations

import numpy as np
import pytest

from swarmfl.errors import ConfigError
from swarmfl.sim.pathloss import SPEED_OF_LIGHT_MPS, LinkModel, links_from_positions


def test_loss_hits_reference_and_edge_and_is_one_beyond_range() -> None:
    model = LinkModel(range_m=300.0)
    loss = model.loss_probability(np.array([0.0, 0.5, 1.0, 300.0, 300.0001, 1e4]))
    assert loss[0] == pytest.approx(0.01)  # inside d0 the reference loss holds
    assert loss[1] == pytest.approx(0.01)
    assert loss[2] == pytest.approx(0.01, rel=1e-9)
    assert loss[3] == pytest.approx(0.5, rel=1e-9)
    assert loss[4] == 1.0 and loss[5] == 1.0


def test_loss_is_monotone_in_distance_and_in_zero_one() -> None:
    model = LinkModel(range_m=250.0, exponent=2.6, reference_loss=0.02, edge_loss=0.7)
    d = np.linspace(0.0, 400.0, 4001)
    loss = model.loss_probability(d)
    assert np.all(np.diff(loss) >= 0)
    assert np.all((loss > 0) & (loss <= 1))
    # Strictly rising in between the reference distance and the range.
    inside = (d > 1.0) & (d <= 250.0)
    assert np.all(np.diff(loss[inside]) > 0)


def test_loss_shape_follows_input_and_margin_is_log_distance() -> None:
    model = LinkModel(range_m=100.0, exponent=2.0)
    assert model.loss_probability(50.0).shape == ()
    assert model.loss_probability(np.ones((2, 3))).shape == (2, 3)
    assert float(model.margin_db(10.0)) == pytest.approx(20.0)  # 10 * 2 * log10(100 / 10)
    with pytest.raises(ConfigError, match="distance"):
        model.loss_probability(np.array([-1.0]))


def test_latency_adds_speed_of_light_delay() -> None:
    model = LinkModel(range_m=300.0, latency_s=0.004)
    d = np.array([0.0, 299.792458])
    np.testing.assert_allclose(
        model.latency_s_for(d), [0.004, 0.004 + 299.792458 / SPEED_OF_LIGHT_MPS]
    )
    flat = LinkModel(range_m=300.0, latency_s=0.004, speed_of_light_latency=False)
    np.testing.assert_array_equal(flat.latency_s_for(d), [0.004, 0.004])


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"range_m": 0.0}, "range_m"),
        ({"range_m": 100.0, "exponent": -1.0}, "exponent"),
        ({"range_m": 100.0, "reference_distance_m": 100.0}, "reference_distance_m"),
        ({"range_m": 100.0, "reference_loss": 0.0}, "reference_loss"),
        ({"range_m": 100.0, "edge_loss": 0.005}, "edge_loss"),
        ({"range_m": 100.0, "edge_loss": 1.0}, "edge_loss"),
        ({"range_m": 100.0, "rate_bps": 0.0}, "rate_bps"),
        ({"range_m": 100.0, "latency_s": -0.1}, "latency_s"),
    ],
)
def test_link_model_validation_names_the_field(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        LinkModel(**kwargs)
    assert info.value.key == field


def test_links_are_symmetric_within_range_and_sorted() -> None:
    rng = np.random.default_rng(5)
    pos = rng.uniform([0, 0, 20], [800, 800, 80], size=(120, 3))
    model = LinkModel(range_m=150.0)
    src, dst, dist, loss = links_from_positions(pos, model)
    assert src.dtype == np.int64 and dst.dtype == np.int64
    assert len(src) == len(dst) == len(dist) == len(loss) > 0
    assert np.all(src != dst)
    assert np.all(dist <= 150.0)
    np.testing.assert_allclose(dist, np.linalg.norm(pos[src] - pos[dst], axis=1))
    np.testing.assert_array_equal(loss, model.loss_probability(dist))
    assert np.all(loss < 1.0)
    # Symmetric: (i, j) is there exactly when (j, i) is, with the same distance.
    forward = {(int(s), int(d)): x for s, d, x in zip(src, dst, dist, strict=True)}
    assert all(forward[(d, s)] == x for (s, d), x in forward.items())
    # Complete: matches brute force over all pairs.
    full = np.linalg.norm(pos[:, None] - pos[None], axis=2)
    expected = np.argwhere((full <= 150.0) & ~np.eye(120, dtype=bool))
    np.testing.assert_array_equal(np.column_stack([src, dst]), expected)  # argwhere is row-major


def test_links_for_tiny_swarms_and_bad_input() -> None:
    model = LinkModel(range_m=10.0)
    for pos in (np.zeros((0, 3)), np.zeros((1, 3))):
        src, dst, dist, loss = links_from_positions(pos, model)
        assert len(src) == len(dst) == len(dist) == len(loss) == 0
    src, _, _, _ = links_from_positions(np.array([[0, 0, 0], [20, 0, 0]], dtype=float), model)
    assert len(src) == 0
    with pytest.raises(ConfigError, match="shape"):
        links_from_positions(np.zeros((4, 2)), model)
