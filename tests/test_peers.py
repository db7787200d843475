"""The unicast peer table: hints, authenticated confirmation, bounds and probes (sans-IO)."""

from __future__ import annotations

import pytest

from swarmfl.errors import ConfigError
from swarmfl.radio.peers import PeerTable

REAL = ("10.0.0.2", 47200)
FAKE = ("10.6.6.6", 666)


def test_a_hint_gets_probes_not_traffic_until_an_authenticated_frame_confirms_it() -> None:
    table = PeerTable(silence_s=5.0, probe_interval_s=1.0)
    table.hint(2, REAL, 0.0)
    assert table.destinations(0.0) == []
    assert table.due_probes(0.0) == [(2, REAL)]
    assert table.due_probes(0.5) == []  # once a second at most, then less and less often
    table.confirm(2, REAL, 1.0)
    assert table.destinations(1.0) == [REAL]
    assert table.due_probes(3.0) == []  # confirmed: no probes (until silent)


def test_a_goodbye_or_a_hijacking_announcement_changes_no_destination() -> None:
    table = PeerTable(silence_s=5.0)
    table.hint(2, REAL, 0.0)
    table.confirm(2, REAL, 0.0)
    table.withdraw(2)  # a forged goodbye
    table.hint(2, FAKE, 0.5)  # another address announced under the same drone id
    assert table.confirmed(1.0) == {2: REAL}
    assert table.due_probes(1.0) == []  # drone 2 is confirmed: its other addresses are not tried
    # The drone really moved: its authenticated frames from the new address win.
    table.confirm(2, ("10.0.0.9", 47200), 2.0)
    assert table.destinations(2.0) == [("10.0.0.9", 47200)]
    assert table.stats.address_changes == 1


def test_a_confirmed_peer_leaves_by_silence_and_is_probed_again() -> None:
    table = PeerTable(silence_s=5.0, probe_interval_s=1.0)
    table.hint(2, REAL, 0.0)
    table.confirm(2, REAL, 0.0)
    assert table.destinations(4.9) == [REAL]
    assert table.destinations(5.1) == []
    assert table.stats.silent_expired == 1
    assert table.due_probes(5.1) == [(2, REAL)]


def test_thousands_of_fake_records_cost_a_few_probes_a_round_and_stay_bounded() -> None:
    table = PeerTable(max_candidates=256, probes_per_round=2, probe_interval_s=1.0)
    table.hint(2, REAL, 0.0)
    table.confirm(2, REAL, 0.0)
    for fake in range(2000):
        table.hint(1000 + fake, ("10.6.6.6", 10000 + fake), 0.1)
    assert table.candidate_count == 256
    assert table.destinations(0.2) == [REAL]  # model traffic: the real peer only
    # Called every 0.1 s for 10 s: two probes a second at most, whatever the number of records.
    probed = sum(len(table.due_probes(0.2 + t / 10)) for t in range(100))
    assert probed <= 20
    # A real drone announced after the flood is probed first (never probed before).
    table.hint(3, ("10.0.0.3", 47200), 10.5)
    assert table.due_probes(10.5)[0] == (3, ("10.0.0.3", 47200))


def test_confirmed_peers_are_never_evicted_by_hints_and_are_bounded() -> None:
    table = PeerTable(max_candidates=2, max_peers=2)
    table.confirm(1, ("a", 1), 0.0)
    table.confirm(2, ("b", 1), 1.0)
    for fake in range(10):
        table.hint(100 + fake, ("x", fake), 2.0)
    assert table.confirmed(2.0) == {1: ("a", 1), 2: ("b", 1)}
    table.confirm(3, ("c", 1), 3.0)  # full: the longest silent goes
    assert table.confirmed(3.0) == {2: ("b", 1), 3: ("c", 1)}


@pytest.mark.parametrize("key", ["silence_s", "probe_interval_s", "max_candidates"])
def test_bad_settings_are_refused(key: str) -> None:
    with pytest.raises(ConfigError) as info:
        PeerTable(**{key: 0})
    assert info.value.key == key
