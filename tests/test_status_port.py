"""The status port: authenticated queries, rate limits, answers no larger than queries, counters.

Pure tests drive :class:`StatusResponder` with the time passed in; the attack tests run against
a real ``swarmfl agent`` process over real UDP on loopback (many source addresses come from the
127.0.0.0/8 block, which is all local on Linux).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import pytest
from _field_helpers import (
    SECRET,
    AgentProcess,
    agent_tables,
    agents,
    unique_swarm_id,
    wait_until,
    write_config,
)

from swarmfl.core.wire import derive_swarm_key
from swarmfl.radio.status_port import (
    MAX_REQUEST_BYTES,
    MIN_REQUEST_BYTES,
    StatusResponder,
    compact_status,
    parse_status_reply,
    query_status,
    status_key,
    status_request,
)
from swarmfl.radio.udp import UdpRadio

KEY = status_key(derive_swarm_key(SECRET, 7))
OTHER_KEY = status_key(derive_swarm_key(SECRET, 8))
LOOPBACK = "127.0.0.1"

BIG_RECORD: dict[str, Any] = {
    "v": 1,
    "t": 1.8e9,
    "drone": 3,
    "swarm": 7,
    "state": "running",
    "accuracy": 0.9,
    "peers_announced": list(range(1000)),
    "peers_heard": {str(i): 0.25 for i in range(1000)},
    **{f"counter_{i}": i for i in range(100)},
}


def responder(**kw: Any) -> StatusResponder:
    return StatusResponder(KEY, lambda: BIG_RECORD, **kw)


def query(size: int = 1400, key: bytes = KEY) -> tuple[bytes, bytes]:
    nonce = secrets.token_bytes(16)
    return nonce, status_request(key, nonce, size)


@pytest.mark.parametrize("size", [MIN_REQUEST_BYTES, 512, 1400, MAX_REQUEST_BYTES])
def test_an_answer_is_never_larger_than_its_query_and_says_when_it_is_compacted(
    size: int,
) -> None:
    nonce, request = query(size)
    answer = responder().answer(request, "10.0.0.1", 0.0)
    assert answer is not None and len(answer) <= len(request)
    record = parse_status_reply(KEY, answer, nonce)
    assert record is not None and record["drone"] == 3 and record["state"] == "running"
    assert record["truncated"] is True  # BIG_RECORD never fits whole


def test_a_record_that_fits_is_answered_whole() -> None:
    small = {"drone": 1, "swarm": 7, "peers_heard": {"2": 0.1}}
    nonce, request = query()
    answer = StatusResponder(KEY, lambda: small).answer(request, "10.0.0.1", 0.0)
    assert answer is not None and parse_status_reply(KEY, answer, nonce) == small
    assert compact_status(small, 10) is None  # not even the id fits in 10 bytes


def test_forged_malformed_and_replayed_queries_are_refused_and_counted() -> None:
    port = responder()
    _, good = query()
    _, foreign = query(key=OTHER_KEY)
    tampered = bytearray(good)
    tampered[8] ^= 1
    bad = [
        foreign,  # another swarm's key (or a guess)
        bytes(tampered),
        good[: MIN_REQUEST_BYTES - 1],  # too short to be worth an answer
        good + bytes(MAX_REQUEST_BYTES),  # too long
        b"SWFL?" + bytes(1395),  # an old, unauthenticated query
    ]
    for i, datagram in enumerate(bad):
        assert port.answer(datagram, f"10.0.0.{i}", float(i)) is None
    assert port.answer(good, "10.0.1.1", 10.0) is not None
    assert port.answer(good, "10.0.1.2", 11.0) is None  # the same query, replayed
    assert port.counters() == {"status_answered": 1, "status_refused": 6, "status_rate_limited": 0}


def test_answers_to_another_nonce_or_key_are_not_believed() -> None:
    nonce, request = query()
    answer = responder().answer(request, "10.0.0.1", 0.0)
    assert answer is not None
    assert parse_status_reply(OTHER_KEY, answer, nonce) is None
    assert parse_status_reply(KEY, answer, secrets.token_bytes(16)) is None
    assert parse_status_reply(KEY, answer[:-1] + b"x", nonce) is None


def test_one_source_is_rate_limited_and_the_others_still_answered() -> None:
    port = responder(source_rate_per_s=2.0, source_burst=4)
    answered = sum(port.answer(query()[1], "10.0.0.66", 0.0) is not None for _ in range(50))
    assert answered == 4
    assert port.answer(query()[1], "10.0.0.7", 0.0) is not None  # another source
    assert port.answer(query()[1], "10.0.0.66", 1.0) is not None  # refilled after a second
    assert port.counters()["status_rate_limited"] == 46


def test_many_spoofed_sources_hit_the_overall_limit_and_the_source_table_stays_bounded() -> None:
    port = responder(overall_rate_per_s=10.0, overall_burst=20, max_sources=100)
    answered = sum(
        port.answer(query()[1], f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", 0.0) is not None
        for i in range(1000)
    )
    assert answered == 20
    assert port.counters()["status_rate_limited"] == 980
    assert len(port._sources) == 100


@pytest.mark.asyncio
@pytest.mark.network
@pytest.mark.timeout(30)
async def test_the_udp_radio_answers_authenticated_queries_only() -> None:
    record = {"drone": 1, "swarm": 7, "accuracy": 0.5}
    port = StatusResponder(KEY, lambda: record)
    async with UdpRadio(drone_id=1, host=LOOPBACK, status=port) as radio:
        address = (LOOPBACK, radio.local_port)
        assert await query_status(KEY, [address], timeout_s=10.0) == {address: record}
        assert await query_status(OTHER_KEY, [address], timeout_s=0.5) == {}
        assert radio.counters()["status_answered"] == 1
        assert radio.counters()["status_refused"] == 1


# -- attacks on a real agent process ---------------------------------------------------------


class Listener:
    """A UDP socket bound to ``host`` that sends queries and keeps what comes back."""

    def __init__(self, host: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.setblocking(False)

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.sock.recv(65536))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.sock.close()


def ask(key: bytes, address: tuple[str, int], size: int = 1400) -> dict[str, Any] | None:
    """One authenticated query from a fresh socket (source 127.0.0.1); the record, or None."""
    return asyncio.run(query_status(key, [address], timeout_s=3.0, size=size)).get(address)


def poll(condition: Any, what: str) -> Any:
    # Slower than the per-source rate (4 queries/s from 127.0.0.1), with a generous deadline.
    return wait_until(condition, 60, what, poll_s=0.5)


@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_attacks_on_an_agent_status_port_get_nothing_and_are_counted(tmp_path: Path) -> None:
    swarm_id = unique_swarm_id()
    key = status_key(derive_swarm_key(SECRET, swarm_id))
    tables = agent_tables(tmp_path, 0, swarm_id, shards=1, port=0)
    tables["discovery"] = {"kind": "static", "peers": [{"id": 1, "host": LOOPBACK, "port": 9}]}
    agent = AgentProcess(tmp_path, 0, write_config(tmp_path, 0, tables))
    with agents([agent]):
        agent.start()
        line = wait_until(
            lambda: (last := agent.last()) and last.get("state") == "running" and last,
            120,
            "the agent to run",
        )
        address = (LOOPBACK, line["port"])
        first = poll(lambda: ask(key, address), "an answer to a good query")
        assert first["drone"] == 0 and first["swarm"] == swarm_id

        # Unauthenticated: the old query format, another swarm's key, garbage.
        attacker = Listener("127.0.0.2")
        try:
            wrong = status_key(derive_swarm_key(SECRET, swarm_id + 1))
            bad = [b"SWFL?" + os.urandom(8) + bytes(499), status_request(wrong, os.urandom(16))]
            bad += [b"SWFL?" + os.urandom(1395) for _ in range(3)]
            for datagram in bad:
                attacker.sock.sendto(datagram, address)

            def refused() -> dict[str, Any] | None:
                record = ask(key, address)
                return record if record and record["status_refused"] >= len(bad) else None

            counted = poll(refused, "the refused queries to be counted")
            assert counted["status_refused"] == len(bad)
            assert attacker.received() == []  # not one byte came back

            # Flooding from one source: a few answers (the burst), each no larger than its query.
            sizes: dict[bytes, int] = {}
            for i in range(200):
                nonce = os.urandom(16)
                sizes[nonce] = (MIN_REQUEST_BYTES, 1400)[i % 2]
                attacker.sock.sendto(status_request(key, nonce, sizes[nonce]), address)

            def limited() -> dict[str, Any] | None:
                record = ask(key, address)
                return record if record and record["status_rate_limited"] >= 180 else None

            poll(limited, "the flood to be rate limited and counted")
            answers = attacker.received()
            assert 1 <= len(answers) <= 20  # the source's burst, and what refilled meanwhile
            for answer in answers:
                nonce = answer[6:22]
                assert len(answer) <= sizes[nonce]
                assert parse_status_reply(key, answer, nonce) is not None
        finally:
            attacker.close()

        # Spoofed sources across 127.0.0.0/8: the overall limit holds.
        before = poll(lambda: ask(key, address), "an answer before the spoofed flood")
        spoofers = [Listener(f"127.0.{i}.3") for i in range(1, 101)]
        try:
            for spoofer in spoofers:
                for _ in range(3):
                    request = status_request(key, os.urandom(16), MIN_REQUEST_BYTES)
                    spoofer.sock.sendto(request, address)

            def all_counted() -> dict[str, Any] | None:
                record = ask(key, address)
                if record is None:
                    return None
                handled = sum(
                    record[k] - before[k] for k in ("status_answered", "status_rate_limited")
                )
                return record if handled >= 300 else None

            poll(all_counted, "the spoofed flood to be counted")
            replies = [answer for spoofer in spoofers for answer in spoofer.received()]
            assert 1 <= len(replies) < 300 // 2  # the overall limit, not 3 answers per source
            assert all(len(answer) <= MIN_REQUEST_BYTES for answer in replies)
        finally:
            for spoofer in spoofers:
                spoofer.close()
        whole = ask(key, address, size=MAX_REQUEST_BYTES)
        assert whole is not None and "truncated" not in whole
        assert json.dumps(whole)  # the whole record, every counter in it
