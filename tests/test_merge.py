"""Staleness-weighted merging: pure functions over arrays."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmfl.core.merge import Contribution, MergeRule, merge_into, staleness_weight
from swarmfl.errors import ConfigError

RULE = MergeRule(alpha=1.0, exponent=0.5, cutoff=10.0)


def test_weight_is_fedasync_polynomial_with_cutoff():
    assert staleness_weight(0.0, RULE) == 1.0
    assert staleness_weight(3.0, RULE) == pytest.approx(0.5)
    assert staleness_weight(10.0, RULE) == pytest.approx(11**-0.5)
    assert staleness_weight(10.01, RULE) == 0.0
    assert staleness_weight(-2.0, RULE) == 1.0  # clock skew never gives a bonus
    weights = [staleness_weight(s, RULE) for s in np.linspace(0, 10, 50)]
    assert all(a > b for a, b in itertools.pairwise(weights))


@pytest.mark.parametrize("field", ["alpha", "exponent", "cutoff"])
def test_rule_refuses_negative_or_nan(field):
    with pytest.raises(ConfigError, match=field):
        MergeRule(**{field: -1.0})
    with pytest.raises(ConfigError, match=field):
        MergeRule(**{field: float("nan")})


def test_fresh_neighbours_with_alpha_1_give_the_plain_average():
    x = np.array([0.0, 0.0, 3.0], dtype=np.float32)
    peers = [np.array([3.0, 6.0, 0.0], np.float32), np.array([6.0, 3.0, 0.0], np.float32)]
    merge_into(x, (0, 2, 3), [Contribution((0, 1), p, 1.0) for p in peers])
    np.testing.assert_allclose(x, [3.0, 3.0, 1.0])


def test_stale_replica_pulls_less_and_zero_weight_is_ignored():
    fresh = np.zeros(4, np.float32)
    stale = np.zeros(4, np.float32)
    peer = np.ones(4, np.float32)
    merge_into(fresh, (0, 4), [Contribution((0,), peer, staleness_weight(0, RULE))])
    merge_into(stale, (0, 4), [Contribution((0,), peer, staleness_weight(8, RULE))])
    assert fresh[0] > stale[0] > 0
    untouched = np.full(4, 2.0, np.float32)
    merge_into(untouched, (0, 4), [Contribution((0,), peer, 0.0)])
    np.testing.assert_array_equal(untouched, 2.0)


def test_a_layer_is_averaged_only_over_peers_that_carry_it():
    offsets = (0, 2, 4)  # two layers of two values
    x = np.zeros(4, np.float32)
    full = Contribution((0, 1), np.full(4, 4.0, np.float32), 1.0)
    head_only = Contribution((1,), np.full(2, 10.0, np.float32), 1.0)
    merge_into(x, offsets, [full, head_only])
    np.testing.assert_allclose(x[:2], 2.0)  # (0 + 4) / 2: head_only does not dilute layer 0
    np.testing.assert_allclose(x[2:], 14.0 / 3.0)  # (0 + 4 + 10) / 3


def test_size_mismatch_is_refused():
    with pytest.raises(ConfigError, match="values"):
        merge_into(
            np.zeros(4, np.float32), (0, 2, 4), [Contribution((1,), np.zeros(3, np.float32), 1.0)]
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=5),
    st.lists(st.floats(0, 20), min_size=1, max_size=5),
)
def test_merge_is_a_convex_combination(values, ages):
    x = np.array([values[0]], np.float32)
    contributions = [
        Contribution((0,), np.array([v], np.float32), staleness_weight(a, RULE))
        for v, a in zip(values, ages, strict=False)
    ]
    merge_into(x, (0, 1), contributions)
    low, high = min(values), max(values)
    assert low - 1e-3 * (1 + abs(low)) <= x[0] <= high + 1e-3 * (1 + abs(high))


def test_blas_merge_updates_in_place_and_matches_the_numpy_formula():
    rng = np.random.default_rng(7)
    x = rng.standard_normal(1000).astype(np.float32)
    expected = x.astype(np.float64)
    replicas = []
    for weight in (1.0, 0.7, 0.4):
        values = rng.standard_normal(1000).astype(np.float32)
        values.flags.writeable = False  # replicas are shared read-only views
        replicas.append(Contribution((0, 1), values, weight))
        expected += weight * values
    expected /= 1.0 + 1.0 + 0.7 + 0.4
    view = x[:]  # what the learner hands over: a view of the model's flat parameters
    assert merge_into(view, (0, 600, 1000), replicas) is view
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


def test_merge_of_a_float64_or_strided_vector_falls_back_to_numpy():
    peer = Contribution((0,), np.full(4, 4.0, np.float32), 1.0)
    wide = np.zeros(4, np.float64)
    merge_into(wide, (0, 4), [peer])
    np.testing.assert_allclose(wide, 2.0)
    base = np.zeros(8, np.float32)
    strided = base[::2]
    merge_into(strided, (0, 4), [peer])
    np.testing.assert_allclose(base[::2], 2.0)
    np.testing.assert_array_equal(base[1::2], 0.0)
