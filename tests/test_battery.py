"""Battery: drains, lands at the threshold, stops draining, returns after recharge."""

from __future__ import annotations

import math

import pytest

from swarmfl.errors import ConfigError
from swarmfl.sim.battery import Battery, BatteryModel

# 1000 J, 10 W flight: 20% threshold is reached after 80 s of flight.
MODEL = BatteryModel(
    capacity_j=1000.0,
    flight_w=10.0,
    train_j_per_gflop=2.0,
    radio_j_per_byte=0.001,
    land_threshold=0.2,
    recharge_s=60.0,
    return_level=0.9,
)


def test_flight_drains_linearly() -> None:
    battery = Battery(MODEL)
    battery.drain_flight(10.0)
    assert battery.charge_j == pytest.approx(900.0)
    assert battery.fraction == pytest.approx(0.9)
    assert battery.poll(30.0) == "flying"
    assert battery.charge_j == pytest.approx(700.0)
    assert battery.flight_used_j == pytest.approx(300.0)


def test_lands_at_threshold_stops_draining_and_returns_after_recharge() -> None:
    battery = Battery(MODEL)
    assert battery.next_event_time(0.0) == pytest.approx(80.0)
    assert battery.poll(100.0) == "landed"
    assert battery.landed_at == pytest.approx(80.0)
    assert battery.fraction == pytest.approx(0.2)
    assert battery.landings == 1
    # On the ground: no flight drain, training and radio run off the charger.
    battery.drain_flight(120.0)
    battery.drain_training(1e9)
    battery.drain_radio(10_000)
    assert battery.charge_j == pytest.approx(200.0)
    assert battery.next_event_time(120.0) == pytest.approx(140.0)
    assert battery.poll(139.9) == "landed"
    assert battery.poll(140.0) == "flying"
    assert battery.landed_at is None
    assert battery.fraction == pytest.approx(0.9)
    # Back at 90%: (900 - 200) / 10 W = 70 s more of flight.
    assert battery.next_event_time(140.0) == pytest.approx(210.0)


def test_several_cycles_in_one_step() -> None:
    battery = Battery(MODEL)
    # Land 80, up 140, land 210, up 270, land 340, up 400; at 405 it has flown 5 s.
    assert battery.poll(405.0) == "flying"
    assert battery.landings == 3
    assert battery.charge_j == pytest.approx(850.0)


def test_training_and_radio_drain_and_can_trigger_landing() -> None:
    battery = Battery(MODEL)
    battery.drain_training(5e9, now=10.0)  # 10 J on top of 100 J of flight
    battery.drain_radio(20_000)  # 20 J
    assert battery.charge_j == pytest.approx(870.0)
    assert battery.training_used_j == pytest.approx(10.0)
    assert battery.radio_used_j == pytest.approx(20.0)
    battery.drain_training(400e9, now=20.0)  # 800 J: past the threshold
    assert battery.state == "landed"
    assert battery.landed_at == pytest.approx(20.0)
    assert battery.charge_j == pytest.approx(0.0)  # never below empty
    assert battery.poll(80.0) == "flying"
    assert battery.fraction == pytest.approx(0.9)


def test_no_flight_power_never_lands() -> None:
    model = BatteryModel(1000.0, 0.0, 1.0, 0.0, 0.1, 10.0)
    battery = Battery(model)
    assert battery.next_event_time(1e6) == math.inf
    assert battery.poll(1e6) == "flying"
    assert battery.fraction == 1.0


def test_time_cannot_go_backwards() -> None:
    battery = Battery(MODEL, now=50.0, initial_fraction=0.5)
    assert battery.next_event_time(50.0) == pytest.approx(80.0)
    with pytest.raises(ConfigError, match="backwards"):
        battery.poll(49.0)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"capacity_j": 0.0}, "capacity_j"),
        ({"flight_w": -1.0}, "flight_w"),
        ({"train_j_per_gflop": float("nan")}, "train_j_per_gflop"),
        ({"radio_j_per_byte": -0.1}, "radio_j_per_byte"),
        ({"recharge_s": -1.0}, "recharge_s"),
        ({"land_threshold": 1.0}, "land_threshold"),
        ({"return_level": 0.2}, "return_level"),
        ({"return_level": 1.5}, "return_level"),
    ],
)
def test_model_validation_names_the_field(change: dict[str, float], field: str) -> None:
    fields = {
        "capacity_j": 1000.0,
        "flight_w": 10.0,
        "train_j_per_gflop": 2.0,
        "radio_j_per_byte": 0.001,
        "land_threshold": 0.2,
        "recharge_s": 60.0,
        "return_level": 0.9,
    }
    with pytest.raises(ConfigError) as info:
        BatteryModel(**{**fields, **change})
    assert info.value.key == field
