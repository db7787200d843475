"""Robust merge rules (swarmfl.core.robust) on hand-made inputs, and their composition with
staleness weights, partial-layer replicas and quantised replicas."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmfl.core.ledger import MergeLedger
from swarmfl.core.merge import Contribution, MergeRule, merge_into, staleness_weight
from swarmfl.core.quant import make_quantizer
from swarmfl.core.robust import (
    ReplicaOutcome,
    adaptive_radius,
    clip_merge_into,
    median_into,
    robust_merge_into,
    trimmed_mean_into,
)
from swarmfl.errors import ConfigError


def replica(values, weight=1.0, layers=(0,)):
    array = np.asarray(values, dtype=np.float32)
    array.flags.writeable = False  # replicas are read-only views of a decoder's state
    return Contribution(tuple(layers), array, weight)


def test_adaptive_radius_leaves_at_most_b_distances_beyond_it():
    distances = np.array([3.0, 1.0, 10.0, 2.0])
    assert adaptive_radius(distances, 1) == 3.0  # the second largest (the authors' rule)
    assert adaptive_radius(distances, 2) == 2.0
    assert adaptive_radius(distances, 0) == 10.0  # nothing is clipped
    assert adaptive_radius(distances, 9) == 1.0  # too few: the smallest
    assert adaptive_radius(np.array([4.0]), 1) == 4.0  # one replica alone is never clipped


def test_more_attackers_than_tolerated_are_cut_to_twice_the_median_distance():
    # a clique member next to the bridge: 3 of 7 neighbours attack, tolerate = 2
    distances = np.array([1.0, 1.1, 0.9, 1.2, 50.0, 60.0, 70.0])
    assert adaptive_radius(distances, 2) == pytest.approx(2 * 1.2)  # not 50, an attacker's
    assert adaptive_radius(distances, 0) == 70.0  # tolerate 0: nothing is clipped
    x = np.zeros(2, np.float32)
    honest = [replica([d, 0.0]) for d in distances[:4]]
    attackers = [replica([0.0, -d]) for d in distances[4:]]
    outcomes = clip_merge_into(x, (0, 2), [*honest, *attackers], tolerate=2)
    # each attacker pulls x by at most a_j * 2.4 (a_j = 1/8) straight down: the honest pull wins
    # in x[0] and the three together move x[1] by no more than 3 * 2.4 / 8
    assert x[1] == pytest.approx(-3 * 2.4 / 8, rel=1e-5)
    assert [o.clipped for o in outcomes] == [False] * 4 + [True] * 3
    assert [o.outlier for o in outcomes] == [False] * 4 + [True] * 3


def test_an_outlier_is_judged_against_the_median_distance_ours_included():
    # Three replicas, tolerate = 2: the radius is the nearest one's distance (1). Against it the
    # second (2.2, an honest neighbour on another shard, say) would be named; against the
    # median of 0 (ours), 1, 2.2 and 5, that is 1.6, only the far one is.
    three = [replica([1.0]), replica([-2.2]), replica([5.0])]
    outcomes = clip_merge_into(np.zeros(1, np.float32), (0, 1), three, tolerate=2)
    assert [o.clipped for o in outcomes] == [False, True, True]
    assert [o.outlier for o in outcomes] == [False, False, True]
    # Two replicas: our own model makes the median the nearer one's distance, so a replica 100
    # times farther is still named (the self-centred view: the one closer to us is trusted).
    two = [replica([1.0]), replica([-100.0])]
    outcomes = clip_merge_into(np.zeros(1, np.float32), (0, 1), two, tolerate=1)
    assert [o.outlier for o in outcomes] == [False, True]
    # Two attackers of four (tolerate = 2) are still named: the median is an honest distance.
    four = [replica([1.0]), replica([-1.2]), replica([6.0]), replica([7.0])]
    outcomes = clip_merge_into(np.zeros(1, np.float32), (0, 1), four, tolerate=2)
    assert [o.outlier for o in outcomes] == [False, False, True, True]


def test_clip_cuts_only_the_farthest_replica_to_the_radius():
    x = np.zeros(2, np.float32)
    near, mid, far = replica([1.0, 0.0]), replica([0.0, 2.0]), replica([30.0, 40.0])  # |far|=50
    outcomes = clip_merge_into(x, (0, 2), [near, mid, far])
    # tau = 2 (the second largest distance): far becomes (30, 40) * 2 / 50 = (1.2, 1.6).
    np.testing.assert_allclose(x, [(1.0 + 1.2) / 4, (2.0 + 1.6) / 4], rtol=1e-6)
    assert [o.clipped for o in outcomes] == [False, False, True]
    assert outcomes[2].clip_scale == pytest.approx(2 / 50)
    assert [o.distance for o in outcomes] == pytest.approx([1.0, 2.0, 50.0])
    assert [o.outlier for o in outcomes] == [False, False, True]


def test_clip_with_a_fixed_radius_and_a_tolerance_of_two():
    x = np.zeros(1, np.float32)
    contributions = [replica([1.0]), replica([4.0]), replica([-8.0])]
    outcomes = clip_merge_into(x.copy(), (0, 1), contributions, radius=2.0)
    assert [o.clip_scale for o in outcomes] == pytest.approx([1.0, 0.5, 0.25])
    y = np.zeros(1, np.float32)
    clip_merge_into(y, (0, 1), contributions, tolerate=2)  # tau = 1: all but the nearest cut
    np.testing.assert_allclose(y, [(1.0 + 1.0 - 1.0) / 4])


def test_an_attacker_moves_a_clipped_drone_no_further_than_an_honest_neighbour():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(500).astype(np.float32)
    honest = [x + 0.1 * rng.standard_normal(500).astype(np.float32) for _ in range(4)]
    attacker = -1e6 * x
    merged = x.copy()
    outcomes = clip_merge_into(merged, (0, 500), [*(replica(h) for h in honest), replica(attacker)])
    radius = max(np.linalg.norm(h - x) for h in honest)
    assert np.linalg.norm(merged - x) <= radius * 5 / 6 + 1e-4  # a convex step of length <= tau
    assert [o.outlier for o in outcomes] == [False] * 4 + [True]


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(1, 6),
    weights=st.lists(st.floats(0.05, 1.0), min_size=6, max_size=6),
)
def test_clip_without_clipping_is_the_staleness_weighted_mean(seed, count, weights):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(300).astype(np.float32)
    contributions = [replica(rng.standard_normal(300), w, layers=(0, 1)) for w in weights[:count]]
    expected = x.copy()
    merge_into(expected, (0, 100, 300), contributions)
    clipped = x.copy()
    outcomes = clip_merge_into(clipped, (0, 100, 300), contributions, radius=1e9)
    np.testing.assert_allclose(clipped, expected, rtol=1e-5, atol=1e-6)
    assert not any(o.clipped for o in outcomes)


def test_trimmed_mean_drops_b_values_from_each_side_of_each_coordinate():
    x = np.array([0.0, 5.0], np.float32)
    contributions = [replica([1.0, 6.0]), replica([2.0, 7.0]), replica([100.0, -100.0])]
    outcomes = trimmed_mean_into(x, (0, 2), contributions)
    # Column 0: 0, 1, 2, 100 -> 1, 2. Column 1: -100, 5, 6, 7 -> 5, 6.
    np.testing.assert_allclose(x, [1.5, 5.5])
    assert [o.trimmed_values for o in outcomes] == [0, 1, 2]
    assert outcomes[2].trimmed_fraction == 1.0


def test_trimmed_mean_weighs_what_it_keeps_and_clamps_an_impossible_trim():
    x = np.array([0.0], np.float32)
    trimmed_mean_into(x, (0, 1), [replica([2.0], 0.5), replica([4.0], 1.0), replica([9.0])])
    np.testing.assert_allclose(x, [(0.5 * 2.0 + 1.0 * 4.0) / 1.5])  # 0 and 9 dropped
    y = np.array([0.0], np.float32)
    trimmed_mean_into(y, (0, 1), [replica([3.0]), replica([8.0])], trim=5)  # 3 values: trim 1
    np.testing.assert_allclose(y, [3.0])
    with pytest.raises(ConfigError, match=r"merge\.tolerate"):
        trimmed_mean_into(y, (0, 1), [replica([3.0])], trim=-1)


def test_trimmed_mean_without_trimming_is_the_mean():
    rng = np.random.default_rng(5)
    x = rng.standard_normal(64).astype(np.float32)
    contributions = [replica(rng.standard_normal(64), w) for w in (1.0, 0.6, 0.3)]
    expected = x.copy()
    merge_into(expected, (0, 64), contributions)
    trimmed_mean_into(x, (0, 64), contributions, trim=0)
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), count=st.integers(1, 8))
def test_median_with_equal_weights_is_numpys_median(seed, count):
    rng = np.random.default_rng(seed)
    # Few distinct values, so ties are common.
    x = rng.integers(-3, 4, 50).astype(np.float32)
    rows = [rng.integers(-3, 4, 50).astype(np.float32) for _ in range(count)]
    expected = np.median(np.stack([x, *rows]), axis=0)
    median_into(x, (0, 50), [replica(r) for r in rows])
    np.testing.assert_array_equal(x, expected.astype(np.float32))


def test_weighted_median_follows_the_weights():
    x = np.array([0.0], np.float32)
    # Cumulated weights 1 (own, 0), 1.2 (10), 1.4 (20): half of 1.4 is reached at our own value.
    median_into(x, (0, 1), [replica([10.0], 0.2), replica([20.0], 0.2)])
    assert x[0] == 0.0
    y = np.array([0.0], np.float32)
    median_into(y, (0, 1), [replica([10.0], 1.0), replica([20.0], 1.0), replica([30.0], 0.5)])
    assert y[0] == 10.0  # 0 (1), 10 (2), 20 (3), 30 (3.5): the crossing of 1.75 is at 10
    outcomes = median_into(np.zeros(1, np.float32), (0, 1), [replica([5.0]), replica([9.0])])
    assert [o.trimmed_values for o in outcomes] == [0, 1]


@pytest.mark.parametrize("rule", ["clip", "trimmed_mean", "median"])
def test_replicas_past_the_cutoff_are_left_out_whatever_the_rule(rule):
    weight_rule = MergeRule(cutoff=3.0, rule=rule)
    stale = staleness_weight(5.0, weight_rule)
    assert stale == 0.0
    x = np.array([1.0, 1.0], np.float32)
    contributions = [replica([1.0, 1.0], layers=(0, 1)), replica([1e6, 1e6], stale, (0, 1))]
    outcomes = robust_merge_into(x, (0, 1, 2), contributions, weight_rule)
    np.testing.assert_array_equal(x, [1.0, 1.0])
    assert outcomes[1].weight == 0.0 and math.isnan(outcomes[1].distance)
    assert not outcomes[1].outlier and not outcomes[1].clipped


@pytest.mark.parametrize("rule", ["clip", "trimmed_mean", "median"])
def test_each_layer_is_merged_only_with_the_replicas_that_carry_it(rule):
    offsets = (0, 2, 4, 6)  # three layers of two values
    x = np.zeros(6, np.float32)
    full = replica([1, 1, 1, 1, 1, 1], layers=(0, 1, 2))
    head = replica([3, 3], layers=(2,))
    middle_head = replica([5, 5, 7, 7], layers=(1, 2))
    outcomes = robust_merge_into(x, offsets, [full, head, middle_head], MergeRule(rule=rule))
    # Layer 0 holds own 0 and full's 1; layer 1: 0, 1, 5; layer 2: 0, 1, 3, 7. Under clip,
    # layer 0's single replica is never clipped; in layer 1 the radius is full's distance
    # sqrt(2), so (5, 5) becomes (1, 1); in layer 2 (distances sqrt(2), 3 sqrt(2), 7 sqrt(2))
    # it is 3 sqrt(2), so (7, 7) becomes (3, 3).
    expected = {
        "clip": [0.5, 0.5, 2 / 3, 2 / 3, 7 / 4, 7 / 4],
        "trimmed_mean": [0.5, 0.5, 1.0, 1.0, 2.0, 2.0],
        "median": [0.5, 0.5, 1.0, 1.0, 2.0, 2.0],
    }[rule]
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    assert [o.values for o in outcomes] == [6, 2, 4]


def test_layers_no_replica_carries_are_untouched_and_bad_sizes_refused():
    x = np.arange(4, dtype=np.float32)
    robust_merge_into(x, (0, 2, 4), [replica([9, 9], layers=(1,))], MergeRule(rule="median"))
    np.testing.assert_array_equal(x[:2], [0.0, 1.0])
    with pytest.raises(ConfigError, match="values"):
        clip_merge_into(x, (0, 2, 4), [replica([1, 2, 3], layers=(1,))])


@pytest.mark.parametrize("codec", ["fp32", "int8", "int4"])
@pytest.mark.parametrize("rule", ["clip", "trimmed_mean", "median"])
def test_quantised_replicas_merge_like_any_float32_array(codec, rule):
    rng = np.random.default_rng(11)
    quantizer = make_quantizer(codec, 128)
    x = rng.standard_normal(1000).astype(np.float32)
    sent = [x + 0.05 * rng.standard_normal(1000).astype(np.float32) for _ in range(4)]
    sent.append(x * -50.0)  # a sign-flipping, scaling insider
    decoded = [quantizer.decode(quantizer.encode(v), v.size) for v in sent]
    assert all(d.dtype == np.float32 for d in decoded)
    contributions = [replica(d, layers=(0, 1)) for d in decoded]
    merged = x.copy()
    outcomes = robust_merge_into(merged, (0, 600, 1000), contributions, MergeRule(rule=rule))
    honest = np.stack(decoded[:4])
    margin = 0.05 * np.abs(honest).max()
    assert np.all(merged >= np.minimum(honest.min(axis=0), x) - margin)
    assert np.all(merged <= np.maximum(honest.max(axis=0), x) + margin)
    assert [o.outlier for o in outcomes] == [False] * 4 + [True]


def test_mean_through_robust_merge_into_is_merge_into_bit_for_bit():
    rng = np.random.default_rng(2)
    x = rng.standard_normal(1000).astype(np.float32)
    contributions = [replica(rng.standard_normal(1000), w, (0, 1)) for w in (1.0, 0.5)]
    expected = x.copy()
    merge_into(expected, (0, 500, 1000), contributions)
    outcomes = robust_merge_into(x, (0, 500, 1000), contributions, MergeRule())
    np.testing.assert_array_equal(x, expected)
    assert [o.weight for o in outcomes] == [1.0, 0.5]


@pytest.mark.parametrize("rule", ["mean", "clip", "trimmed_mean", "median"])
def test_excluded_replicas_are_measured_but_not_merged(rule):
    x = np.zeros(2, np.float32)
    contributions = [
        replica([1.0, 1.0], layers=(0, 1)),
        replica([-1.0, -1.0], layers=(0, 1)),
        replica([50.0, 50.0], layers=(0, 1)),
    ]
    outcomes = robust_merge_into(x, (0, 1, 2), contributions, MergeRule(rule=rule), excluded=[2])
    np.testing.assert_allclose(x, [0.0, 0.0], atol=1e-7)  # every rule: 0 with the third left out
    assert outcomes[2].excluded and not outcomes[2].clipped
    if rule != "mean":
        assert outcomes[2].distance == pytest.approx(50 * math.sqrt(2))
        assert outcomes[2].outlier and not outcomes[0].outlier


def outcome(outlier, weight=1.0, clipped=False, trimmed=0):
    return ReplicaOutcome(
        weight, 10, 1.0, 0.5 if clipped else 1.0, trimmed_values=trimmed, outlier=outlier
    )


def test_the_ledger_suspects_a_peer_judged_an_outlier_in_most_recent_merges():
    ledger = MergeLedger(window=5, fraction=0.6)  # 3 of the last 5
    for step in range(5):
        ledger.record([1, 2, 3], [outcome(True, clipped=True), outcome(step < 2), outcome(False)])
        assert ledger.suspects() == ([1] if step >= 2 else [])
    table = ledger.table()
    assert (table[1].merges, table[1].clipped, table[1].outliers) == (5, 5, 5)
    assert table[2].outliers == 2
    for _ in range(3):  # peer 1 behaves again: its old verdicts leave the window
        ledger.record([1], [outcome(False)])
    assert ledger.suspects() == []
    ledger.record([4, 5], [outcome(True, weight=0.0), outcome(False, trimmed=4)])
    assert 4 not in ledger.table()  # a left-out replica is not counted
    assert (ledger.table()[5].trimmed_values, ledger.table()[5].values) == (4, 10)
    ledger.forget(5)
    assert 5 not in ledger.table()


def test_the_ledger_is_bounded():
    ledger = MergeLedger(max_peers=3)
    for peer in range(5):
        ledger.record([peer], [outcome(False)])
    assert sorted(ledger.table()) == [2, 3, 4]
    ledger.record([2], [outcome(False)])  # refreshed: 3 is now the oldest
    ledger.record([9], [outcome(False)])
    assert sorted(ledger.table()) == [2, 4, 9]
    with pytest.raises(ConfigError, match="suspect_window"):
        MergeLedger(window=0)
    with pytest.raises(ConfigError, match="suspect_fraction"):
        MergeLedger(fraction=0.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rule", "krum"),
        ("tolerate", -1),
        ("tolerate", 1.5),
        ("tolerate", True),
        ("clip_radius", -1.0),
        ("clip_radius", float("nan")),
        ("suspect_ratio", 1.0),
        ("suspect_ratio", float("inf")),
        ("suspect_window", 0),
        ("suspect_fraction", 0.0),
        ("suspect_fraction", 1.5),
        ("suspect_fraction", float("nan")),
        ("exclude_suspects", "yes"),
    ],
)
def test_merge_rule_names_the_bad_key(field, value):
    with pytest.raises(ConfigError, match=rf"merge\.{field}"):
        MergeRule(**{field: value})
