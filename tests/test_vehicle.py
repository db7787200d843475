"""The autopilot feed: MAVLink decoding, link loss, the train/transmit policy, real UDP.

The tracker and the policy are sans-IO and tested with packets built by pymavlink and explicit
times. The reader is tested against :class:`SimulatedAutopilot` over real UDP on 127.0.0.1;
where a link must time out, the reader runs on a clock the test moves by hand, so nothing
waits for wall time to pass.
"""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Callable
from typing import Any

import pytest
from _manual_clock import ManualClock
from hypothesis import given, settings
from hypothesis import strategies as st
from pymavlink.dialects.v20 import common as mavlink

from swarmfl.errors import ConfigError, RadioError
from swarmfl.field.vehicle import (
    MavlinkEndpoint,
    VehicleLinkSettings,
    VehicleReader,
    VehicleState,
    VehicleTracker,
    parse_connection,
)
from swarmfl.field.vehicle_policy import (
    VehicleDecision,
    VehiclePolicy,
    VehiclePolicySettings,
    decide,
)
from swarmfl.testing_autopilot import SimulatedAutopilot

WAIT_S = 20.0  # generous: the machine is shared; nothing here waits that long when it works


def packet(
    build: Callable[[Any], Any], system: int = 1, component: int = 1, v1: bool = False
) -> bytes:
    """One MAVLink packet from ``build(encoder)`` (an ``*_encode`` call), as a router sends it."""
    encoder = mavlink.MAVLink(None, srcSystem=system, srcComponent=component)
    return bytes(build(encoder).pack(encoder, force_mavlink1=v1))


def heartbeat(
    armed: bool = False,
    autopilot: int = mavlink.MAV_AUTOPILOT_PX4,
    status: int = mavlink.MAV_STATE_STANDBY,
    **kw: Any,
) -> bytes:
    mode = mavlink.MAV_MODE_FLAG_SAFETY_ARMED if armed else 0
    return packet(
        lambda m: m.heartbeat_encode(mavlink.MAV_TYPE_QUADROTOR, autopilot, mode, 0, status), **kw
    )


def position(lat_deg: float, lon_deg: float, msl_m: float, rel_m: float, **kw: Any) -> bytes:
    return packet(
        lambda m: m.global_position_int_encode(
            0, round(lat_deg * 1e7), round(lon_deg * 1e7), round(msl_m * 1e3), round(rel_m * 1e3),
            0, 0, 0, 0,
        ),
        **kw,
    )  # fmt: skip


def sys_status(remaining_pct: int, voltage_mv: int, **kw: Any) -> bytes:
    return packet(
        lambda m: m.sys_status_encode(0, 0, 0, 0, voltage_mv, -1, remaining_pct, 0, 0, 0, 0, 0, 0),
        **kw,
    )


def battery_status(
    remaining_pct: int,
    cells_mv: list[int],
    battery_id: int = 0,
    ext_mv: tuple[int, int, int, int] = (0, 0, 0, 0),
) -> bytes:
    voltages = cells_mv + [0xFFFF] * (10 - len(cells_mv))
    return packet(
        lambda m: m.battery_status_encode(
            battery_id, 0, 0, 0x7FFF, voltages, -1, -1, -1, remaining_pct, voltages_ext=ext_mv
        )
    )


def landed(code: int) -> bytes:
    return packet(lambda m: m.extended_sys_state_encode(0, code))


def live(tracker: VehicleTracker, now: float) -> VehicleState:
    state = tracker.state(now)
    assert state is not None
    return state


# --- the tracker (sans-IO) ------------------------------------------------------------------


def test_nothing_is_known_before_an_autopilot_heartbeat() -> None:
    tracker = VehicleTracker()
    tracker.receive_datagram(position(47.0, 8.0, 500.0, 10.0), 1.0)
    assert tracker.state(1.0) is None
    assert tracker.stats.foreign_messages == 1
    assert tracker.link_deadline() is None


def test_heartbeat_position_battery_and_landed_state_are_decoded() -> None:
    tracker = VehicleTracker(heartbeat_timeout_s=3.0)
    events = tracker.receive_datagram(heartbeat(armed=True), 10.0)
    assert [e.kind for e in events] == ["autopilot_found", "armed"]
    assert events[0].line() == "autopilot found: px4 quadrotor, system 1 component 1"
    tracker.receive_datagram(position(47.3977421, 8.5455938, 488.25, 12.5), 10.1)
    tracker.receive_datagram(sys_status(73, 15_120), 10.2)
    events = tracker.receive_datagram(landed(mavlink.MAV_LANDED_STATE_IN_AIR), 10.3)
    assert [(e.kind, e.detail) for e in events] == [("landed_state", "unknown -> in_air")]

    state = live(tracker, 10.5)
    assert (state.autopilot, state.vehicle_type, state.system_status) == (
        "px4",
        "quadrotor",
        "standby",
    )
    assert state.armed and state.landed == "in_air"
    assert state.lat_deg == pytest.approx(47.3977421) and state.lon_deg == pytest.approx(8.5455938)
    assert state.alt_msl_m == pytest.approx(488.25) and state.alt_rel_m == pytest.approx(12.5)
    assert state.battery_fraction == pytest.approx(0.73)
    assert state.battery_voltage_v == pytest.approx(15.12)
    assert (state.last_heartbeat_s, state.last_message_s, state.link_lost) == (10.0, 10.3, False)
    assert tracker.stats.messages == 4 and tracker.stats.parse_errors == 0
    record = state.status_record()
    assert record["battery_fraction"] == pytest.approx(0.73)
    assert record["heartbeat_age_s"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (mavlink.MAV_LANDED_STATE_UNDEFINED, "unknown"),
        (mavlink.MAV_LANDED_STATE_ON_GROUND, "on_ground"),
        (mavlink.MAV_LANDED_STATE_IN_AIR, "in_air"),
        (mavlink.MAV_LANDED_STATE_TAKEOFF, "taking_off"),
        (mavlink.MAV_LANDED_STATE_LANDING, "landing"),
        (77, "unknown"),
    ],
)
def test_landed_states(code: int, expected: str) -> None:
    tracker = VehicleTracker()
    tracker.receive_datagram(heartbeat(), 0.0)
    tracker.receive_datagram(landed(code), 0.0)
    assert live(tracker, 0.0).landed == expected


def test_ardupilot_and_mavlink1_packets_are_understood() -> None:
    tracker = VehicleTracker()
    tracker.receive_datagram(heartbeat(autopilot=mavlink.MAV_AUTOPILOT_ARDUPILOTMEGA, v1=True), 0)
    tracker.receive_datagram(sys_status(50, 12_000, v1=True), 0.0)
    state = live(tracker, 0.0)
    assert state.autopilot == "ardupilot" and state.battery_fraction == pytest.approx(0.5)


def test_unknown_battery_values_and_no_position_stay_unknown() -> None:
    tracker = VehicleTracker()
    tracker.receive_datagram(heartbeat(), 0.0)
    tracker.receive_datagram(sys_status(-1, 0xFFFF), 0.0)
    # ArduPilot's GLOBAL_POSITION_INT before it has a position estimate
    tracker.receive_datagram(position(0.0, 0.0, 0.0, 0.0), 0.0)
    state = live(tracker, 0.0)
    assert state.battery_fraction is None and state.battery_voltage_v is None
    assert state.lat_deg is None and state.alt_msl_m is None


def test_battery_status_is_preferred_and_the_emptiest_battery_counts() -> None:
    tracker = VehicleTracker()
    tracker.receive_datagram(heartbeat(), 0.0)
    tracker.receive_datagram(sys_status(90, 16_000), 0.0)
    tracker.receive_datagram(battery_status(80, [4_000, 4_010, 3_990, 4_000]), 0.0)
    assert live(tracker, 0.0).battery_fraction == pytest.approx(0.80)
    assert live(tracker, 0.0).battery_voltage_v == pytest.approx(16.0)
    # a second pack, emptier, with 12 cells (two in voltages_ext)
    tracker.receive_datagram(
        battery_status(40, [3_700] * 10, battery_id=1, ext_mv=(3_700, 3_700, 0, 0)), 0.0
    )
    state = live(tracker, 0.0)
    assert state.battery_fraction == pytest.approx(0.40)
    assert state.battery_voltage_v == pytest.approx(12 * 3.7)


def test_battery_status_voltage_fills_in_when_sys_status_has_none() -> None:
    tracker = VehicleTracker()
    tracker.receive_datagram(heartbeat(), 0.0)
    tracker.receive_datagram(sys_status(66, 0xFFFF), 0.0)
    tracker.receive_datagram(battery_status(-1, [22_200]), 0.0)  # whole pack in cell 0
    state = live(tracker, 0.0)
    assert state.battery_fraction == pytest.approx(0.66)
    assert state.battery_voltage_v == pytest.approx(22.2)


def test_ground_stations_companions_and_other_systems_are_ignored() -> None:
    tracker = VehicleTracker()
    gcs = packet(
        lambda m: m.heartbeat_encode(mavlink.MAV_TYPE_GCS, mavlink.MAV_AUTOPILOT_INVALID, 0, 0, 0),
        system=255,
        component=190,
    )
    tracker.receive_datagram(gcs, 0.0)
    assert tracker.state(0.0) is None
    tracker.receive_datagram(heartbeat(system=7), 0.0)
    assert tracker.system_id == 7
    tracker.receive_datagram(heartbeat(system=8, armed=True), 0.0)  # another vehicle
    tracker.receive_datagram(sys_status(5, 10_000, system=8), 0.0)
    state = live(tracker, 0.0)
    assert not state.armed and state.battery_fraction is None
    assert tracker.stats.foreign_messages == 3


def test_system_id_setting_picks_the_vehicle() -> None:
    tracker = VehicleTracker(system_id=8)
    tracker.receive_datagram(heartbeat(system=7), 0.0)
    tracker.receive_datagram(heartbeat(system=8, armed=True), 0.0)
    state = live(tracker, 0.0)
    assert state.system_id == 8 and state.armed


def test_link_is_lost_after_the_heartbeat_timeout_and_regained() -> None:
    tracker = VehicleTracker(heartbeat_timeout_s=2.0)
    tracker.receive_datagram(heartbeat(armed=True), 100.0)
    tracker.receive_datagram(sys_status(60, 15_000), 101.0)  # telemetry is not a heartbeat
    assert tracker.link_deadline() == 102.0
    assert tracker.poll(101.99) == [] and not live(tracker, 101.99).link_lost
    assert live(tracker, 102.0).link_lost  # the snapshot is honest even before a poll
    events = tracker.poll(102.5)
    assert [(e.kind, e.detail) for e in events] == [("link_lost", "no HEARTBEAT for 2.5 s")]
    assert tracker.poll(200.0) == [] and tracker.link_deadline() is None
    lost = live(tracker, 150.0)
    assert lost.link_lost and lost.armed and lost.battery_fraction == pytest.approx(0.6)

    events = tracker.receive_datagram(heartbeat(armed=True), 160.0)
    assert [(e.kind, e.detail) for e in events] == [("link_regained", "after 60.0 s")]
    assert not live(tracker, 160.0).link_lost
    assert (tracker.stats.link_losses, tracker.stats.link_recoveries) == (1, 1)


def test_garbage_is_counted_and_valid_packets_around_it_still_count() -> None:
    tracker = VehicleTracker()
    tracker.receive_datagram(heartbeat(), 0.0)
    good = sys_status(42, 15_000)
    bad_crc = bytearray(good)
    bad_crc[-1] ^= 0xFF
    cases = [
        b"",
        b"\x00" * 64,
        b"hello autopilot",
        good[:10],  # truncated
        bytes(bad_crc),
        b"\x7f" + bytes(range(40)),
        b"x" * 5000,  # oversized
    ]
    for data in cases:
        errors = tracker.stats.parse_errors
        assert tracker.receive_datagram(data, 0.0) == []
        assert tracker.stats.parse_errors == errors + 1, data
    assert tracker.stats.messages == 1
    # a well-formed packet of a message outside the common dialect is not an error
    unknown = bytearray(heartbeat())
    unknown[7] = 238  # the message id's low byte
    tracker.receive_datagram(bytes(unknown), 0.0)
    assert tracker.stats.unknown_messages == 1 and tracker.stats.parse_errors == len(cases)
    errors = tracker.stats.parse_errors
    tracker.receive_datagram(b"junk" + good, 0.0)  # garbage prefix, then a real packet
    assert tracker.stats.parse_errors == errors + 1
    assert live(tracker, 0.0).battery_fraction == pytest.approx(0.42)
    tracker.receive_datagram(heartbeat() + good, 0.0)  # two packets in one datagram
    assert tracker.stats.messages == 4


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.integers(0, 2**32 - 1))
def test_no_datagram_raises(data: bytes, seed: int) -> None:
    tracker = VehicleTracker()
    tracker.receive_datagram(heartbeat(), 0.0)
    valid = heartbeat() + sys_status(50, 12_000) + landed(1)
    rng = random.Random(seed)
    mutated = bytearray(valid)
    for _ in range(rng.randint(1, 6)):
        mutated[rng.randrange(len(mutated))] = rng.randrange(256)
    for datagram in (data, bytes(mutated), valid[: rng.randrange(len(valid))] + data):
        tracker.receive_datagram(datagram, 0.0)
    stats = tracker.stats
    assert stats.datagrams == 4 and stats.messages + stats.parse_errors >= 1
    assert tracker.state(0.0) is not None


@pytest.mark.parametrize(
    ("text", "endpoint"),
    [
        ("udpin:0.0.0.0:14550", MavlinkEndpoint("udpin", "0.0.0.0", 14550)),
        ("udp:127.0.0.1:14551", MavlinkEndpoint("udpin", "127.0.0.1", 14551)),
        ("udpout:192.168.2.1:14550", MavlinkEndpoint("udpout", "192.168.2.1", 14550)),
        ("udpin:[::]:14550", MavlinkEndpoint("udpin", "::", 14550)),
        ("udpin:localhost:0", MavlinkEndpoint("udpin", "localhost", 0)),
    ],
)
def test_connection_strings(text: str, endpoint: MavlinkEndpoint) -> None:
    assert parse_connection(text) == endpoint


@pytest.mark.parametrize(
    "text",
    [
        "/dev/ttyAMA0",
        "tcp:127.0.0.1:5760",
        "udpin:14550",
        "udpin::14550",
        "udpin:0.0.0.0:port",
        "udpin:0.0.0.0:70000",
        "udpout:10.0.0.1:0",
        "",
    ],
)
def test_bad_connection_strings_name_the_key(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_connection(text)
    assert info.value.key == "connection"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"heartbeat_timeout_s": 0.0}, "heartbeat_timeout_s"),
        ({"heartbeat_timeout_s": float("nan")}, "heartbeat_timeout_s"),
        ({"system_id": 0}, "system_id"),
        ({"system_id": 256}, "system_id"),
        ({"heartbeat_period_s": -1.0}, "heartbeat_period_s"),
        ({"connection": "serial:/dev/ttyS0"}, "connection"),
    ],
)
def test_link_settings_are_validated(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        VehicleLinkSettings(**kwargs)
    assert info.value.key == key


# --- the policy (pure) ----------------------------------------------------------------------


def vehicle(
    battery: float | None = 0.9,
    landed: str = "on_ground",
    armed: bool = False,
    status: str = "standby",
    lost: bool = False,
) -> VehicleState:
    return VehicleState(
        system_id=1,
        component_id=1,
        autopilot="px4",
        vehicle_type="quadrotor",
        system_status=status,
        armed=armed,
        landed=landed,  # type: ignore[arg-type]
        lat_deg=47.0,
        lon_deg=8.0,
        alt_msl_m=500.0,
        alt_rel_m=0.0,
        battery_fraction=battery,
        battery_voltage_v=None,
        last_heartbeat_s=90.0,
        last_message_s=90.0,
        link_lost=lost,
        at_s=100.0,
    )


ALWAYS = VehiclePolicySettings()
LANDED = VehiclePolicySettings(train_when="landed_only")
ABOVE = VehiclePolicySettings(train_when="battery_above", train_battery_above_fraction=0.5)
BOTH = VehiclePolicySettings(train_when="landed_and_battery_above")


@pytest.mark.parametrize(
    ("state", "policy", "train", "transmit", "reason"),
    [
        (None, ALWAYS, True, True, "no autopilot heard yet: training"),
        (None, LANDED, False, True, "not training until landed_only can be checked"),
        (vehicle(), ALWAYS, True, True, "training: always"),
        (vehicle(landed="in_air", armed=True), ALWAYS, True, True, "training: always"),
        (vehicle(landed="on_ground", armed=True), LANDED, True, True, "on_ground, armed"),
        (vehicle(landed="in_air", armed=True), LANDED, False, True, "not training: in_air, armed"),
        (vehicle(landed="taking_off", armed=True), LANDED, False, True, "taking_off"),
        (vehicle(landed="landing", armed=True), LANDED, False, True, "landing"),
        (vehicle(landed="unknown", armed=False), LANDED, True, True, "landed state unknown"),
        (vehicle(landed="unknown", armed=True), LANDED, False, True, "landed state unknown, armed"),
        (vehicle(battery=0.6), ABOVE, True, True, "battery 60% at or above 50%"),
        (vehicle(battery=0.5), ABOVE, True, True, "battery 50% at or above 50%"),
        (vehicle(battery=0.49), ABOVE, False, True, "not training: battery 49% below 50%"),
        (vehicle(battery=None), ABOVE, False, True, "battery level unknown"),
        (vehicle(battery=None), ALWAYS, True, True, "training: always"),
        (vehicle(battery=0.9, landed="in_air"), BOTH, False, True, "in_air"),
        (vehicle(battery=0.4, landed="on_ground"), BOTH, False, True, "battery 40% below 50%"),
        (vehicle(battery=0.9, landed="on_ground"), BOTH, True, True, "battery 90% at or above"),
        (vehicle(battery=0.15), ALWAYS, False, False, "critical (at or below 15%)"),
        (vehicle(battery=0.05, landed="in_air"), LANDED, False, False, "radio silent until 30%"),
        (vehicle(status="critical", landed="in_air"), ALWAYS, False, False, "failsafe (critical)"),
        (vehicle(status="emergency"), ALWAYS, False, False, "failsafe (emergency)"),
        (
            vehicle(status="emergency"),
            VehiclePolicySettings(quiet_in_failsafe=False),
            True,
            True,
            "training: always",
        ),
    ],
)
def test_policy_table(
    state: VehicleState | None,
    policy: VehiclePolicySettings,
    train: bool,
    transmit: bool,
    reason: str,
) -> None:
    decision = decide(state, policy, 100.0)
    assert (decision.train, decision.transmit) == (train, transmit)
    assert reason in decision.reason


def run_policy(
    policy: VehiclePolicySettings, states: list[VehicleState | None]
) -> list[VehicleDecision]:
    previous: VehicleDecision | None = None
    decisions = []
    for state in states:
        previous = decide(state, policy, 100.0, previous)
        decisions.append(previous)
    return decisions


def test_critical_battery_holds_until_the_resume_level() -> None:
    levels = [0.5, 0.16, 0.15, 0.2, 0.29, None, 0.3, 0.2]
    decisions = run_policy(ALWAYS, [vehicle(battery=b) for b in levels])
    assert [d.transmit for d in decisions] == [True, True, False, False, False, False, True, True]
    assert [d.train for d in decisions] == [d.transmit for d in decisions]


def test_training_threshold_has_hysteresis() -> None:
    levels = [0.6, 0.49, 0.5, 0.515, 0.52, 0.5, 0.49]
    decisions = run_policy(ABOVE, [vehicle(battery=b) for b in levels])
    assert [d.train for d in decisions] == [True, False, False, False, True, True, False]
    assert all(d.transmit for d in decisions)


def test_a_lost_link_keeps_the_last_decision_and_says_so() -> None:
    flying = vehicle(landed="in_air", armed=True)
    before, during, still = run_policy(
        LANDED, [flying, vehicle(landed="in_air", armed=True, lost=True), flying]
    )
    assert (during.train, during.transmit, during.link_lost) == (False, True, True)
    assert during.reason == (
        "autopilot link lost 10 s ago, keeping the last decision: not training: in_air, armed"
    )
    assert during.cause == before.cause and not still.link_lost
    # it does not nest the reason when the link stays lost
    again = decide(vehicle(lost=True), LANDED, 130.0, during)
    assert again.reason.count("link lost") == 1 and "40 s ago" in again.reason
    assert (again.train, again.transmit) == (False, True)
    # a link lost before any decision keeps what the last known state implied
    fresh = decide(vehicle(battery=0.1, lost=True), ALWAYS, 100.0)
    assert (fresh.train, fresh.transmit, fresh.link_lost) == (False, False, True)
    assert decide(None, ALWAYS, 100.0, during) is during


def test_vehicle_policy_remembers_and_logs_changes(caplog: pytest.LogCaptureFixture) -> None:
    policy = VehiclePolicy(ABOVE)
    caplog.set_level("INFO", logger="swarmfl.field.vehicle_policy")
    for battery in (0.9, 0.8, 0.3, 0.51, 0.6):
        policy.update(vehicle(battery=battery), 100.0)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "vehicle policy: training: battery 90% at or above 50%",
        "vehicle policy: not training: battery 30% below 50%",
        "vehicle policy: training: battery 60% at or above 52%",
    ]
    assert policy.decision is not None and policy.decision.train


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"train_when": "sometimes"}, "train_when"),
        ({"critical_battery_fraction": 1.5}, "critical_battery_fraction"),
        ({"resume_battery_fraction": -0.1}, "resume_battery_fraction"),
        (
            {"critical_battery_fraction": 0.3, "resume_battery_fraction": 0.3},
            "resume_battery_fraction",
        ),
        (
            {"train_battery_above_fraction": 0.99, "hysteresis_fraction": 0.05},
            "hysteresis_fraction",
        ),
        ({"hysteresis_fraction": float("nan")}, "hysteresis_fraction"),
    ],
)
def test_policy_settings_are_validated(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        VehiclePolicySettings(**kwargs)
    assert info.value.key == key


# --- the reader against a simulated autopilot over real UDP ---------------------------------


async def until(reader: VehicleReader, predicate: Callable[[VehicleState | None], bool]) -> Any:
    async with asyncio.timeout(WAIT_S):
        return await reader.wait_for(predicate)


def listening(**kwargs: Any) -> VehicleLinkSettings:
    return VehicleLinkSettings("udpin:127.0.0.1:0", **kwargs)


@pytest.mark.network
@pytest.mark.timeout(60)
@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("firmware", "battery_messages", "extended"),
    [("px4", "both", True), ("ardupilot", "sys_status", True), ("px4", "battery_status", False)],
)
async def test_reader_reads_position_battery_and_state(
    firmware: Any, battery_messages: Any, extended: bool
) -> None:
    autopilot = SimulatedAutopilot(
        None,  # set below, once the reader's port is known
        autopilot=firmware,
        battery_messages=battery_messages,
        extended_sys_state=extended,
        battery_fraction=0.8,
        lat_deg=-33.8688,
        lon_deg=151.2093,
        home_alt_msl_m=58.0,
    )
    async with VehicleReader(listening()) as reader:
        autopilot.target = reader.local_address
        async with autopilot:
            state = await until(reader, lambda s: s is not None and s.battery_fraction is not None)
            assert state.autopilot == firmware and state.vehicle_type == "quadrotor"
            assert (state.lat_deg, state.lon_deg) == pytest.approx((-33.8688, 151.2093))
            assert (state.alt_msl_m, state.alt_rel_m) == pytest.approx((58.0, 0.0))
            assert state.battery_fraction == pytest.approx(0.8)
            assert state.battery_voltage_v == pytest.approx(4 * 4.02, abs=0.01)
            assert not state.armed and not state.link_lost
            if extended:
                await until(reader, lambda s: s is not None and s.landed == "on_ground")

            autopilot.move_to(-33.87, 151.21)
            state = await until(reader, lambda s: s is not None and s.lat_deg == -33.87)
            assert state.lon_deg == pytest.approx(151.21)
    assert reader.stats.parse_errors == 0 and reader.stats.foreign_messages == 0


@pytest.mark.network
@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_arming_take_off_and_landing_are_followed() -> None:
    policy = VehiclePolicy(VehiclePolicySettings(train_when="landed_only"))
    async with (
        VehicleReader(listening()) as reader,
        SimulatedAutopilot(reader.local_address, climb_mps=20.0) as autopilot,
    ):
        state = await until(reader, lambda s: s is not None and s.landed == "on_ground")
        assert policy.update(state, 0.0).train
        with pytest.raises(ConfigError):
            autopilot.take_off(10.0)
        autopilot.arm()
        state = await until(reader, lambda s: s is not None and s.armed)
        assert state.system_status == "active"
        autopilot.take_off(10.0)
        await until(reader, lambda s: s is not None and s.landed in ("taking_off", "in_air"))
        state = await until(reader, lambda s: s is not None and s.landed == "in_air")
        assert state.alt_rel_m == pytest.approx(10.0)
        assert state.alt_msl_m == pytest.approx(498.0)
        decision = policy.update(state, 0.0)
        assert not decision.train and decision.transmit
        autopilot.land()
        state = await until(reader, lambda s: s is not None and s.landed == "on_ground")
        assert state.alt_rel_m == pytest.approx(0.0) and state.armed
        assert policy.update(state, 0.0).train
        autopilot.disarm()
        await until(reader, lambda s: s is not None and not s.armed)


@pytest.mark.network
@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_low_battery_switches_the_policy() -> None:
    policy = VehiclePolicy(VehiclePolicySettings(critical_battery_fraction=0.15))
    async with (
        VehicleReader(listening()) as reader,
        SimulatedAutopilot(reader.local_address, battery_fraction=0.6) as autopilot,
    ):
        await until(reader, lambda s: s is not None and s.battery_fraction == pytest.approx(0.6))
        assert policy.update(reader.state(), 0.0).transmit
        autopilot.set_battery(0.12)
        state = await until(reader, lambda s: s is not None and s.battery_fraction < 0.13)
        decision = policy.update(state, 0.0)
        assert not decision.transmit and not decision.train and "critical" in decision.reason
        autopilot.set_battery(0.2)  # sags back up: still below the resume level
        state = await until(reader, lambda s: s is not None and s.battery_fraction > 0.19)
        assert not policy.update(state, 0.0).transmit
        autopilot.set_battery(1.0)  # a fresh pack
        state = await until(reader, lambda s: s is not None and s.battery_fraction == 1.0)
        decision = policy.update(state, 0.0)
        assert decision.transmit and decision.train


@pytest.mark.network
@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_a_dropped_link_is_reported_and_recovered(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="swarmfl.field.vehicle")
    clock = ManualClock()
    policy = VehiclePolicy(VehiclePolicySettings(train_when="landed_only"))
    reader = VehicleReader(listening(heartbeat_timeout_s=3.0), clock=clock)
    async with reader, SimulatedAutopilot(reader.local_address) as autopilot:
        autopilot.arm()
        autopilot.take_off(5.0)
        state = await until(reader, lambda s: s is not None and s.landed == "in_air")
        flying = policy.update(state, clock.now())
        assert (flying.train, flying.transmit) == (False, True)

        autopilot.drop_link()
        # every datagram sent before the drop is in our socket: let the reader take them all
        await until(reader, lambda _: reader.stats.datagrams >= autopilot.sent_datagrams)
        clock.advance(2.9)
        assert not reader.state().link_lost  # type: ignore[union-attr]
        clock.advance(0.2)
        await until(reader, lambda _: reader.stats.link_losses == 1)
        state = reader.state()
        assert state is not None and state.link_lost and state.landed == "in_air"
        kept = policy.update(state, clock.now())
        assert (kept.train, kept.transmit, kept.link_lost) == (False, True, True)
        assert "autopilot link lost 3 s ago, keeping the last decision" in kept.reason

        clock.advance(60.0)  # long silence: still lost, nothing raised, nothing flapped
        assert reader.stats.link_losses == 1

        autopilot.land()
        autopilot.restore_link()
        state = await until(reader, lambda s: s is not None and not s.link_lost)
        assert reader.stats.link_recoveries == 1
        state = await until(reader, lambda s: s is not None and s.landed == "on_ground")
        back = policy.update(state, clock.now())
        assert back.train and not back.link_lost
    lines = [r.getMessage() for r in caplog.records if r.name == "swarmfl.field.vehicle"]
    assert "autopilot link lost: no HEARTBEAT for 3.1 s" in lines
    assert "autopilot link regained: after 63.1 s" in lines


@pytest.mark.network
@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_garbage_datagrams_are_counted_and_dropped() -> None:
    async with (
        VehicleReader(listening()) as reader,
        SimulatedAutopilot(reader.local_address, battery_fraction=0.7) as autopilot,
    ):
        await until(reader, lambda s: s is not None)
        garbage = [b"\xfe\x05\x00garbage", b"\x00" * 300, b"\xfd" * 4097, bytes(range(256))]
        for data in garbage:
            autopilot.send_raw(data)
        await until(reader, lambda _: reader.stats.parse_errors >= len(garbage))
        autopilot.set_battery(0.33)
        state = await until(reader, lambda s: s is not None and s.battery_fraction == 0.33)
        assert not state.link_lost and reader.stats.parse_errors == len(garbage)
        # a stranger on the port: not an autopilot, and another vehicle
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
            stranger.sendto(heartbeat(system=9, armed=True), reader.local_address)
        await until(reader, lambda _: reader.stats.foreign_messages >= 1)
        state = reader.state()
        assert state is not None and state.system_id == 1 and not state.armed


@pytest.mark.network
@pytest.mark.timeout(60)
@pytest.mark.asyncio
async def test_udpout_announces_itself_and_hears_the_answer() -> None:
    async with SimulatedAutopilot(None, autopilot="ardupilot") as autopilot:
        port = autopilot.address[1]
        settings_out = VehicleLinkSettings(f"udpout:127.0.0.1:{port}", heartbeat_period_s=0.2)
        async with VehicleReader(settings_out) as reader:
            state = await until(reader, lambda s: s is not None)
            assert state.autopilot == "ardupilot"
            assert autopilot.companion_heartbeats >= 1


@pytest.mark.network
@pytest.mark.asyncio
async def test_a_port_in_use_is_a_radio_error_naming_the_connection() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        connection = f"udpin:127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(RadioError, match=connection):
            async with VehicleReader(VehicleLinkSettings(connection)):
                pass
