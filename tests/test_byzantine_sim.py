"""Insiders in the real simulator: ``[merge] rule`` and ``[[attack]]`` from a scenario, through
the agents, the simulated radio, the codec and the staleness weights.

12 drones (MLP 64-32-10 on digits, Dirichlet 0.5) on a random 4-regular graph, drones 0 and 6
attacking from the start, 30 virtual seconds (a few wall seconds per run), the robust rules
with the bench's settings (``tolerate = 2``, ``exclude_suspects``). Honest mean accuracy
measured when the thresholds were set (seed 3), plain mean / clip: no attack 0.938 / 0.931;
under each attack, see the comment above ``SHIFTS``. The thresholds are issue 12's: clip
within a point of the mean with no attack, within 5 points of it under every attack.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import pytest

from swarmfl.config.scenario_file import ATTACK_KIND_NAMES, validate_scenario
from swarmfl.errors import ConfigError
from swarmfl.sim.attacks import ATTACK_KINDS, Dissensus, FreeRiding
from swarmfl.sim.insiders import assign_attackers
from swarmfl.sim.runner import run_scenario
from swarmfl.sim.swarm import Swarm
from swarmfl.sim.vtime import run_virtual

ATTACKERS = [0, 6]


def raw_scenario(rule: str = "mean", **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "run": {"seed": 3, "duration_s": 30.0, "eval_interval_s": 10.0},
        "swarm": {"drones": 12},
        "model": {"hidden": [32]},
        "topology": {"kind": "random_regular", "degree": 4},
        # the bench's settings (bench_byzantine.py): two neighbours may be attackers, and a
        # suspect is left out until it behaves
        "merge": {"rule": rule, "tolerate": 2, "exclude_suspects": True},
    }
    raw.update(extra)
    return raw


@functools.cache
def honest_accuracy(rule: str, kind: str | None, params: str = "{}") -> float:
    attack = [{"kind": kind, "drones": ATTACKERS, **json.loads(params)}] if kind else []
    summary = run_scenario(validate_scenario(raw_scenario(rule, attack=attack), source="t"), None)
    if kind is None:
        return float(summary["accuracy"]["mean"])
    assert summary["attackers"] == ATTACKERS
    return float(summary["honest_accuracy"]["mean"])


@pytest.fixture(autouse=True)
def _quiet_divergence(caplog: pytest.LogCaptureFixture) -> None:
    # a poisoned plain-mean drone diverges and says so every round
    caplog.set_level(logging.ERROR, logger="swarmfl.agent")


# -- config -------------------------------------------------------------------------------------


def test_the_config_lists_every_attack_kind() -> None:
    assert set(ATTACK_KIND_NAMES) == set(ATTACK_KINDS)


def test_merge_section_reaches_every_drones_node() -> None:
    raw = raw_scenario("trimmed_mean")
    raw["merge"].update(tolerate=2, clip_radius=0.5, suspect_ratio=3.0, exclude_suspects=True)
    swarm = run_virtual(_build(validate_scenario(raw, source="t")))
    rule = swarm.drones[5].parts.node_config.merge
    assert (rule.rule, rule.tolerate, rule.clip_radius) == ("trimmed_mean", 2, 0.5)
    assert (rule.suspect_ratio, rule.exclude_suspects) == (3.0, True)


async def _build(scenario: Any) -> Swarm:
    return Swarm(scenario)


@pytest.mark.parametrize(
    ("attack", "problem"),
    [
        ({"kind": "scaling"}, "give drones = [ids] or fraction"),
        ({"kind": "scaling", "drones": [1], "fraction": 0.2}, "not both"),
        ({"kind": "teleport", "drones": [1]}, "attack.0.kind"),
        ({"kind": "scaling", "drones": [12]}, "no drone 12 in 12"),
        ({"kind": "scaling", "fraction": 1.5}, "attack.0.fraction"),
        ({"kind": "scaling", "drones": [1], "factor": [1, 2]}, "must be a number or a string"),
    ],
)
def test_bad_attack_tables_are_refused_with_one_line(attack: dict, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        validate_scenario(raw_scenario(attack=[attack]), source="s.toml")
    message = caught.value.one_line()
    assert problem in message and message.startswith("s.toml") and "\n" not in message


def test_a_drone_named_by_two_tables_is_refused() -> None:
    attack = [{"kind": "scaling", "drones": [1]}, {"kind": "sign_flip", "drones": [2, 1]}]
    with pytest.raises(ConfigError, match=r"attack\.1\.drones.*listed twice"):
        validate_scenario(raw_scenario(attack=attack), source="s.toml")


def test_kind_parameters_are_checked_against_the_attack() -> None:
    scenario = validate_scenario(
        raw_scenario(attack=[{"kind": "scaling", "drones": [1], "epsilon": 2.0}]), source="t"
    )
    with pytest.raises(ConfigError, match=r"attack\.0\.epsilon.*scaling takes no parameter"):
        assign_attackers(scenario)


def test_fractions_draw_distinct_drones_deterministically_and_stateful_attacks_per_drone() -> None:
    attack = [
        {"kind": "free_riding", "fraction": 0.25},
        {"kind": "dissensus", "drones": [3], "epsilon": 2.0},
        {"kind": "free_riding", "fraction": 0.1},
    ]
    scenario = validate_scenario(raw_scenario(attack=attack), source="t")
    first, again = assign_attackers(scenario), assign_attackers(scenario)
    assert list(first) == list(again) and len(first) == 3 + 1 + 1
    assert isinstance(first[3].attack, Dissensus) and first[3].attack.epsilon == 2.0
    riders = [spec.attack for spec in first.values() if isinstance(spec.attack, FreeRiding)]
    assert len({id(a) for a in riders}) == 4  # a snapshot each
    too_many = [{"kind": "ipm", "fraction": 0.5}, {"kind": "ipm", "fraction": 0.6}]
    with pytest.raises(ConfigError, match=r"attack\.1\.fraction.*only 6 drones left"):
        assign_attackers(validate_scenario(raw_scenario(attack=too_many), source="t"))


# -- through the simulator ----------------------------------------------------------------------

# Honest mean accuracy (seed 3), plain mean / clip, when the thresholds were set (no attack:
# 0.938 / 0.931): sign flip 0.18 / 0.92, scaling 0.24 / 0.93, gaussian 0.68 / 0.92, ALIE (z = 4)
# 0.77 / 0.92, IPM 0.49 / 0.92, dissensus 0.78 / 0.93, label flip 0.907 / 0.908, free riding
# 0.69 / 0.92.
SHIFTS: dict[str, tuple[dict[str, float], float]] = {
    # kind: (parameters, the least the plain mean loses)
    "sign_flip": ({}, 0.3),
    "scaling": ({}, 0.3),
    "gaussian": ({}, 0.05),
    "alie": ({"z": 4.0}, 0.03),
    "ipm": ({}, 0.1),
    "dissensus": ({}, 0.1),
    "label_flip": ({}, 0.02),
    "free_riding": ({}, 0.05),
}


def test_with_no_attacker_clip_learns_as_well_as_the_mean() -> None:
    mean, clip = honest_accuracy("mean", None), honest_accuracy("clip", None)
    assert mean > 0.9
    assert abs(clip - mean) <= 0.01


@pytest.mark.parametrize("kind", list(SHIFTS))
def test_each_attack_shifts_the_plain_mean_and_not_clipping(kind: str) -> None:
    params, least_loss = SHIFTS[kind]
    baseline = honest_accuracy("mean", None)
    mean = honest_accuracy("mean", kind, json.dumps(params))
    clip = honest_accuracy("clip", kind, json.dumps(params))
    assert baseline - mean >= least_loss, (baseline, mean)
    assert clip >= baseline - 0.05, (baseline, clip)
    # label flip is the weakest attack here: the poison is in the training, and a flipped
    # model is not far from the others (plain mean and clip both lose 3 points)
    assert clip > mean, (mean, clip)


def partial_fleet(rule: str, attack: list[dict[str, Any]], out: Any = None) -> dict[str, Any]:
    """Half the fleet trains a suffix of the model (a small budget); the summary of 30 s."""
    raw = raw_scenario(rule, attack=attack)
    raw["swarm"]["devices"] = [
        {"name": "big", "count": 6},
        {"name": "small", "count": 6, "budget_bytes": "64KiB"},
    ]
    return run_scenario(validate_scenario(raw, source="t"), out)


def test_partial_layer_drones_merge_robustly_in_the_simulator(tmp_path) -> None:
    flips = [{"kind": "sign_flip", "drones": ATTACKERS}]
    clean = partial_fleet("clip", [])["accuracy"]["mean"]
    mean = partial_fleet("mean", flips)["honest_accuracy"]["mean"]
    summary = partial_fleet("clip", flips, tmp_path)
    clip = summary["honest_accuracy"]["mean"]
    # Measured: clean 0.877, plain mean 0.14, clip 0.844 (honest min 0.79). With one of two
    # replicas an attacker (a suffix-training drone's first layer), the one nearer to us is
    # trusted and the other named and left out.
    assert clip - mean >= 0.3 and clip >= clean - 0.05, (clean, mean, clip)
    assert summary["replicas_clipped"] > 0
    assert set(ATTACKERS) <= {int(s) for s in summary["suspects"]}
    with (tmp_path / "metrics.jsonl").open() as lines:
        last = [r for r in map(json.loads, lines) if r["t"] == 30.0]
    assert {r["drone"] for r in last if r["attacker"]} == set(ATTACKERS)
    assert sum(r["replicas_clipped"] for r in last) == summary["replicas_clipped"]
    assert (tmp_path / "accuracy.png").stat().st_size > 0
    raw = raw_scenario("clip")
    raw["swarm"]["devices"] = [
        {"name": "big", "count": 6},
        {"name": "small", "count": 6, "budget_bytes": "64KiB"},
    ]
    swarm = run_virtual(_build(validate_scenario(raw, source="t")))
    assert sum(d.parts.trains != "full" for d in swarm.drones) == 6
