"""Insider attack models (swarmfl.sim.attacks): what each publishes, from what it knows."""

import numpy as np
import pytest

from swarmfl.core.merge import Contribution, merge_into
from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.wire import derive_swarm_key
from swarmfl.errors import ConfigError
from swarmfl.sim.attacks import (
    ATTACK_KINDS,
    ALittleIsEnough,
    Dissensus,
    FreeRiding,
    NeighbourView,
    alie_z,
    make_attack,
)

OFFSETS = (0, 3, 4)  # a layer of three values and one of one


def heard(**replicas):
    """A view holding ``replicas`` (peer id -> full-model values, or (layers, values))."""
    held = {}
    for name, spec in replicas.items():
        layers, values = spec if isinstance(spec, tuple) else ((0, 1), spec)
        array = np.asarray(values, dtype=np.float32)
        array.flags.writeable = False
        held[int(name[1:])] = Contribution(layers, array, 1.0)
    return NeighbourView(OFFSETS, held)


RNG = np.random.default_rng(0)
OWN = np.array([1.0, -2.0, 3.0, 0.5], np.float32)


def test_every_kind_publishes_a_new_finite_float32_model_of_the_same_size():
    view = heard(p1=[1, 1, 1, 1], p2=[3, 3, 3, 3])
    for kind in ATTACK_KINDS:
        own = OWN.copy()
        sent = make_attack(kind).publish_values(own, view, np.random.default_rng(1))
        assert sent.dtype == np.float32 and sent.shape == own.shape
        assert np.isfinite(sent).all()
        assert sent is not own
        np.testing.assert_array_equal(own, OWN)  # the attacker's own model is untouched


def test_sign_flip_scaling_and_noise():
    view = heard()
    np.testing.assert_array_equal(make_attack("sign_flip").publish_values(OWN, view, RNG), -OWN)
    scaled = make_attack("scaling", factor=1e6).publish_values(OWN, view, RNG)
    np.testing.assert_allclose(scaled, OWN * 1e6)
    huge = np.full(4, 1e38, np.float32)
    saturated = make_attack("scaling", factor=100.0).publish_values(huge, view, RNG)
    assert np.all(saturated == np.finfo(np.float32).max)  # the codec must accept it
    noisy = make_attack("gaussian", std=0.5).publish_values(
        np.zeros(20000, np.float32), NeighbourView((0, 20000), {}), np.random.default_rng(4)
    )
    assert noisy.std() == pytest.approx(0.5, rel=0.02)


def test_alie_sends_the_mean_minus_z_standard_deviations_of_the_models_it_knows():
    view = heard(p1=[3, 0, 3, 1], p2=([1], [8]))  # p2 carries only the second layer
    sent = ALittleIsEnough(z=1.0).publish_values(np.array([0, 0, 0, 2], np.float32), view, RNG)
    # Layer 0 from own and p1: mean 1.5, 0, 1.5; sample std 2.12, 0, 2.12.
    np.testing.assert_allclose(sent[:3], [1.5 - 4.5**0.5, 0.0, 1.5 - 4.5**0.5], rtol=1e-6)
    # Layer 1 from own, p1 and p2: 2, 1, 8 -> mean 11/3, std 3.79.
    np.testing.assert_allclose(sent[3], 11 / 3 - np.std([2, 1, 8], ddof=1), rtol=1e-6)
    alone = ALittleIsEnough(z=3.0).publish_values(OWN, heard(), RNG)
    np.testing.assert_array_equal(alone, OWN)  # hearing nobody, it can only send its own


def test_alie_z_follows_baruch_et_al():
    assert alie_z(32, 6) == pytest.approx(0.1940, abs=1e-4)
    assert alie_z(100, 20) == pytest.approx(0.2858, abs=1e-4)
    assert alie_z(5, 1) == 0.0  # in a small neighbourhood "a little" is nothing at all
    with pytest.raises(ConfigError, match=r"attack\.z"):
        alie_z(10, 6)  # no honest supporter left to recruit


def test_ipm_sends_minus_epsilon_times_the_mean_it_knows():
    view = heard(p1=[1, 1, 1, 1], p2=[3, 3, 3, 3])
    sent = make_attack("ipm", epsilon=0.5).publish_values(np.zeros(4, np.float32), view, RNG)
    np.testing.assert_allclose(sent, [-2 / 3] * 4)


def test_dissensus_with_epsilon_one_freezes_its_target_under_plain_averaging():
    rng = np.random.default_rng(8)
    target, left, right = (rng.standard_normal(4).astype(np.float32) for _ in range(3))
    view = heard(p3=target, p5=left, p7=right)
    sent = Dissensus(epsilon=1.0).publish_values(OWN, view, RNG)  # aims at the lowest id, 3
    np.testing.assert_allclose(sent, target - ((left - target) + (right - target)), rtol=1e-5)
    # The target, hearing its two honest neighbours and the attacker, does not move at all.
    x = target.copy()
    merge_into(x, OFFSETS, [Contribution((0, 1), v, 1.0) for v in (left, right, sent)])
    np.testing.assert_allclose(x, target, atol=1e-5)
    # Above 1 it is pushed away from its neighbours.
    pushed = target.copy()
    away = Dissensus(epsilon=2.0).publish_values(OWN, view, RNG)
    merge_into(pushed, OFFSETS, [Contribution((0, 1), v, 1.0) for v in (left, right, away)])
    middle = (left + right) / 2
    assert np.linalg.norm(pushed - middle) > np.linalg.norm(target - middle)


def test_dissensus_splits_its_push_between_colluders_and_needs_its_target():
    view = heard(p1=[0, 0, 0, 0], p2=[4, 4, 4, 4])
    sent = Dissensus(epsilon=1.0, colluders=2).publish_values(OWN, view, RNG)
    np.testing.assert_allclose(sent, [-2.0] * 4)
    absent = Dissensus(target=9).publish_values(OWN, view, RNG)
    np.testing.assert_array_equal(absent, OWN)
    head_only = Dissensus(target=5).publish_values(OWN, heard(p5=([1], [7]), p6=[1, 1, 1, 1]), RNG)
    np.testing.assert_allclose(head_only, [1, -2, 3, 7 - 1.5 * (1 - 7)])


def test_label_flip_poisons_labels_and_publishes_its_own_model():
    attack = make_attack("label_flip", num_classes=10)
    labels = np.array([0, 3, 9], np.int64)
    np.testing.assert_array_equal(attack.poison_labels(labels, RNG), [9, 6, 0])
    np.testing.assert_array_equal(attack.publish_values(OWN, heard(), RNG), OWN)
    untouched = make_attack("sign_flip").poison_labels(labels, RNG)
    assert untouched is labels


def test_free_riding_replays_its_first_or_a_stale_model():
    initial, stale = FreeRiding(), FreeRiding(mode="stale", lag_rounds=2)
    sent_initial, sent_stale = [], []
    for step in range(5):
        own = np.full(4, float(step), np.float32)
        sent_initial.append(initial.publish_values(own, heard(), RNG)[0])
        sent_stale.append(stale.publish_values(own, heard(), RNG)[0])
    assert sent_initial == [0.0] * 5
    assert sent_stale == [0.0, 0.0, 2.0, 2.0, 4.0]


@pytest.mark.parametrize(
    ("kind", "params", "key"),
    [
        ("krum", {}, "attack.kind"),
        ("scaling", {"scale": 2.0}, "attack.scale"),
        ("sign_flip", {"scale": 0.0}, "attack.scale"),
        ("scaling", {"factor": float("inf")}, "attack.factor"),
        ("gaussian", {"std": -1.0}, "attack.std"),
        ("alie", {"z": float("nan")}, "attack.z"),
        ("ipm", {"epsilon": 0}, "attack.epsilon"),
        ("dissensus", {"colluders": 0}, "attack.colluders"),
        ("label_flip", {"num_classes": 1}, "attack.num_classes"),
        ("free_riding", {"mode": "lazy"}, "attack.mode"),
        ("free_riding", {"lag_rounds": 0}, "attack.lag_rounds"),
    ],
)
def test_bad_attack_settings_name_their_key(kind, params, key):
    with pytest.raises(ConfigError) as error:
        make_attack(kind, **params)
    assert error.value.key == key


def test_an_insiders_frames_authenticate_and_its_view_is_what_its_node_heard():
    key = derive_swarm_key("insiders", 5)

    def node(drone_id, trained=(0, 1)):
        config = NodeConfig(drone_id, 5, b"attack01", key, OFFSETS, trained)
        return GossipNode(config)

    honest, head, attacker = node(1), node(2, trained=(1,)), node(9)
    for sender, values in ((honest, [1, 2, 3, 4]), (head, [7, 7, 7, 7])):
        for frame in sender.publish(np.asarray(values, np.float32), 10, 0.0):
            attacker.receive(frame, 0.0)
    view = NeighbourView.from_node(attacker, 0.5)
    assert sorted(view.replicas) == [1, 2]
    assert {p: v.tolist() for p, v in view.layer(1).items()} == {1: [4.0], 2: [7.0]}
    assert list(view.layer(0)) == [1]
    assert not view.replicas[1].values.flags.writeable
    sent = make_attack("scaling").publish_values(np.ones(4, np.float32), view, RNG)
    for frame in attacker.publish(sent, 10, 1.0):
        honest.receive(frame, 1.0)
    assert honest.stats.frames_accepted == 1 and honest.stats.frames_rejected == 0
    np.testing.assert_allclose(honest.live_replicas(1.0)[9].values, sent)
