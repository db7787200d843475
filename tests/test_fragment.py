"""Fragmenter and Reassembler: round trips, hostile datagram streams, memory and time bounds."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmfl.errors import ConfigError
from swarmfl.radio.fragment import (
    HEADER_SIZE,
    MAGIC,
    MAX_FRAGMENTS,
    VERSION,
    Fragmenter,
    FragmentError,
    fragment_count,
)
from swarmfl.radio.reassembly import Reassembler, ReassemblyStats

MTU = 64
CHUNK = MTU - HEADER_SIZE
HEADER = struct.Struct("<2sBIIHHI")


def _reassembler(**overrides: float) -> Reassembler:
    args = {"timeout_s": 5.0, "max_buffer_bytes": 1_000_000, "max_frame_bytes": 100_000}
    args.update(overrides)
    return Reassembler(**args)  # type: ignore[arg-type]


def _random_frame(rng: random.Random, size: int) -> bytes:
    return rng.randbytes(size)


def test_header_layout() -> None:
    assert HEADER_SIZE == 19
    [datagram] = Fragmenter(sender=0xA1B2C3D4, mtu_bytes=MTU, first_frame_id=7).split(b"xyz")
    assert datagram == HEADER.pack(b"SF", 1, 0xA1B2C3D4, 7, 0, 1, 3) + b"xyz"
    assert datagram[:2] == MAGIC
    assert datagram[2] == VERSION


@pytest.mark.parametrize(
    "size",
    [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 1, 7 * CHUNK, 7 * CHUNK - 1, 5_000],
)
def test_round_trip_sizes_in_order(size: int) -> None:
    rng = random.Random(size)
    frame = _random_frame(rng, size)
    datagrams = Fragmenter(sender=3, mtu_bytes=MTU).split(frame)
    assert len(datagrams) == fragment_count(size, MTU) == max(1, -(-size // CHUNK))
    assert all(len(d) <= MTU for d in datagrams)
    assert sum(len(d) - HEADER_SIZE for d in datagrams) == size
    reassembler = _reassembler()
    results = [reassembler.push(d, "link", 0.0) for d in datagrams]
    assert results[:-1] == [None] * (len(datagrams) - 1)
    assert results[-1] == frame
    stats = reassembler.stats()
    assert stats.complete == 1
    assert stats.buffered_bytes == 0
    assert len(reassembler) == 0


def test_round_trip_many_sizes_and_mtus() -> None:
    rng = random.Random(5)
    reassembler = _reassembler()
    for mtu in (HEADER_SIZE + 1, HEADER_SIZE + 2, 100, 576, 1_400):
        fragmenter = Fragmenter(sender=mtu, mtu_bytes=mtu)
        for size in [0, 1, 2, 3, *(rng.randint(0, 4_000) for _ in range(20))]:
            frame = _random_frame(rng, size)
            datagrams = fragmenter.split(frame)
            rng.shuffle(datagrams)
            out = [reassembler.push(d, None, 0.0) for d in datagrams]
            assert [r for r in out if r is not None] == [frame]
            assert out[-1] == frame
    assert reassembler.stats().buffered_bytes == 0


def test_frame_ids_count_up_and_wrap() -> None:
    fragmenter = Fragmenter(sender=1, mtu_bytes=MTU, first_frame_id=0xFFFFFFFF)
    ids = [HEADER.unpack_from(fragmenter.split(b"a")[0])[3] for _ in range(3)]
    assert ids == [0xFFFFFFFF, 0, 1]
    assert fragmenter.next_frame_id == 2


def test_fragmenter_limits() -> None:
    with pytest.raises(ConfigError) as info:
        Fragmenter(sender=1, mtu_bytes=HEADER_SIZE)
    assert info.value.key == "mtu_bytes"
    with pytest.raises(ConfigError):
        Fragmenter(sender=2**32, mtu_bytes=MTU)
    with pytest.raises(ConfigError):
        Fragmenter(sender=-1, mtu_bytes=MTU)

    tiny = Fragmenter(sender=1, mtu_bytes=HEADER_SIZE + 1)  # one payload byte per datagram
    assert tiny.max_frame_bytes == MAX_FRAGMENTS
    assert len(tiny.split(bytes(MAX_FRAGMENTS))) == MAX_FRAGMENTS
    next_id = tiny.next_frame_id
    with pytest.raises(FragmentError):
        tiny.split(bytes(MAX_FRAGMENTS + 1))
    assert tiny.next_frame_id == next_id  # a refused frame does not use up an id

    capped = Fragmenter(sender=1, mtu_bytes=MTU, max_frame_bytes=1_000)
    assert len(capped.split(bytes(1_000))) == fragment_count(1_000, MTU)
    with pytest.raises(FragmentError):
        capped.split(bytes(1_001))


def test_fragment_count_validates() -> None:
    assert fragment_count(0, MTU) == 1
    assert fragment_count(CHUNK * 3, MTU) == 3
    assert fragment_count(CHUNK * 3 + 1, MTU) == 4
    with pytest.raises(ConfigError):
        fragment_count(10, HEADER_SIZE)
    with pytest.raises(ConfigError):
        fragment_count(-1, MTU)


def _traffic(rng: random.Random, n_links: int = 3, frames_per_link: int = 15):
    """Frames from several links, two header senders per link; returns (sent, datagrams)."""
    sent: dict[tuple[str, int, int], bytes] = {}
    datagrams: list[tuple[bytes, str]] = []
    for link in range(n_links):
        for sender in (0, 1000 + link):  # 0: a UDP radio that relies on the address
            fragmenter = Fragmenter(sender=sender, mtu_bytes=MTU)
            for _ in range(frames_per_link):
                frame_id = fragmenter.next_frame_id
                frame = _random_frame(
                    rng, rng.choice([0, 5, CHUNK, 3 * CHUNK, rng.randint(0, 900)])
                )
                sent[(f"link{link}", sender, frame_id)] = frame
                datagrams.extend((d, f"link{link}") for d in fragmenter.split(frame))
    return sent, datagrams


@pytest.mark.parametrize("seed", range(5))
def test_interleaved_reordered_duplicated_from_several_senders(seed: int) -> None:
    rng = random.Random(seed)
    sent, datagrams = _traffic(rng)
    duplicates = rng.sample(datagrams, len(datagrams) // 4)
    # Duplicates of single-datagram frames are delivered again by design; only count the rest.
    multi_dups = [d for d in duplicates if HEADER.unpack_from(d[0])[5] != 1]
    stream = datagrams + multi_dups
    rng.shuffle(stream)

    # Fully shuffled, a link has all its 30 frames in flight at once (far more than an honest
    # sender, which sends frames whole one after the other): give it the slots.
    reassembler = _reassembler(max_source_frames=64)
    received: list[bytes] = []
    for datagram, link in stream:
        frame = reassembler.push(datagram, link, 0.0)
        if frame is not None:
            received.append(frame)
    assert sorted(received) == sorted(sent.values())
    stats = reassembler.stats()
    assert stats.complete == len(sent)
    assert stats.duplicates == len(multi_dups)
    assert stats.malformed == stats.inconsistent == stats.evicted == stats.expired == 0
    assert stats.buffered_bytes == 0


def test_same_frame_id_on_different_links_does_not_mix() -> None:
    frame_a, frame_b = bytes(range(100)), bytes(reversed(range(100)))
    a = Fragmenter(sender=0, mtu_bytes=MTU).split(frame_a)
    b = Fragmenter(sender=0, mtu_bytes=MTU).split(frame_b)
    reassembler = _reassembler()
    out = [
        reassembler.push(d, link, 0.0)
        for pair in zip(a, b, strict=True)
        for d, link in zip(pair, ("A", "B"), strict=True)
    ]
    assert [f for f in out if f is not None] == [frame_a, frame_b]


@pytest.mark.parametrize("seed", range(5))
def test_truncated_datagrams_never_corrupt_a_frame(seed: int) -> None:
    rng = random.Random(100 + seed)
    sent, datagrams = _traffic(rng)
    truncated = [
        (d[: rng.randint(0, len(d) - 1)], link)
        for d, link in rng.sample(datagrams, len(datagrams) // 5)
    ]
    # Truncated copies arrive after the real ones of their frame have been seen (a bad copy of a
    # fragment that is already in must be refused and must not spoil the frame)...
    reassembler = _reassembler()
    received: list[bytes] = []
    for datagram, link in datagrams + truncated:
        frame = reassembler.push(datagram, link, 0.0)
        if frame is not None:
            received.append(frame)
    assert sorted(received) == sorted(sent.values())
    cut_into_header = sum(1 for d, _ in truncated if len(d) < HEADER_SIZE)
    stats = reassembler.stats()
    assert stats.malformed >= cut_into_header
    # Each bad copy is refused as garbage, or (if still self-consistent) as a duplicate.
    assert stats.malformed + stats.duplicates == len(truncated)
    assert stats.complete == len(sent)

    # ... and shuffled in anywhere, they may cost a frame (like loss) but never corrupt one.
    stream = datagrams + truncated
    rng.shuffle(stream)
    reassembler = _reassembler()
    received = []
    for datagram, link in stream:
        frame = reassembler.push(datagram, link, 0.0)
        if frame is not None:
            received.append(frame)
    sent_frames = list(sent.values())
    for frame in received:
        assert frame in sent_frames
    assert len(received) >= len(sent) * 0.6
    assert reassembler.stats().malformed >= cut_into_header


def test_truncated_fragment_of_a_known_frame_is_malformed_and_frame_survives() -> None:
    frame = bytes(range(200))
    datagrams = Fragmenter(sender=9, mtu_bytes=MTU).split(frame)
    reassembler = _reassembler()
    assert reassembler.push(datagrams[0], "L", 0.0) is None
    assert reassembler.push(datagrams[1][:-3], "L", 0.0) is None
    assert reassembler.stats().malformed == 1
    out = [reassembler.push(d, "L", 0.0) for d in datagrams[1:]]
    assert out[-1] == frame
    assert reassembler.stats().inconsistent == 0


def test_inconsistent_header_drops_the_buffer_and_newest_wins() -> None:
    old = Fragmenter(sender=4, mtu_bytes=MTU).split(bytes(200))
    restarted = Fragmenter(sender=4, mtu_bytes=MTU).split(b"\x01" * 120)  # same frame id 0
    reassembler = _reassembler()
    assert reassembler.push(old[0], "L", 0.0) is None
    assert reassembler.stats().buffered_bytes == 256  # max(200, minimum charge)
    out = [reassembler.push(d, "L", 0.0) for d in restarted]
    assert out[-1] == b"\x01" * 120
    stats = reassembler.stats()
    assert stats.inconsistent == 1
    assert stats.buffered_bytes == 0
    # The old frame's remaining fragments now open a fresh buffer that cannot complete.
    assert reassembler.push(old[1], "L", 0.0) is None
    assert len(reassembler) == 1

    # A single-datagram frame that reuses the key also replaces the stale buffer.
    assert reassembler.push(Fragmenter(sender=4, mtu_bytes=MTU).split(b"hi")[0], "L", 0.0) == b"hi"
    assert reassembler.stats().inconsistent == 2
    assert len(reassembler) == 0


def _forge(index: int, count: int, total: int, payload: bytes, *, frame_id: int = 1) -> bytes:
    return HEADER.pack(MAGIC, VERSION, 5, frame_id, index, count, total) + payload


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"SF",
        b"SF\x01" + bytes(15),  # one byte short of a header
        b"XX" + bytes(17),  # bad magic
        HEADER.pack(MAGIC, 2, 5, 1, 0, 1, 0),  # unknown version
        _forge(0, 0, 0, b""),  # zero fragments
        _forge(3, 3, 30, b"x" * 10),  # index out of range
        _forge(0, 1, 5, b"abc"),  # single fragment shorter than total
        _forge(0, 1, 2, b"abc"),  # single fragment longer than total
        _forge(0, 2, 10, b""),  # empty payload in a multi-fragment frame
        _forge(0, 3, 2, b"a"),  # fewer bytes than fragments
        _forge(0, 3, 30, b"x" * 5),  # non-final chunk too small for total
        _forge(0, 3, 30, b"x" * 16),  # non-final chunk so big the last would be empty
        _forge(2, 3, 30, b"x" * 9),  # final: 21 left for 2 chunks, not a multiple
        _forge(2, 3, 30, b"x" * 14),  # final larger than the implied chunk (8)
    ],
)
def test_malformed_datagrams_are_counted(datagram: bytes) -> None:
    reassembler = _reassembler()
    assert reassembler.push(datagram, "L", 0.0) is None
    stats = reassembler.stats()
    assert stats.malformed == 1
    assert stats.buffered_bytes == 0
    assert len(reassembler) == 0


def test_oversize_total_is_refused_before_allocating() -> None:
    reassembler = _reassembler(max_frame_bytes=1_000, max_buffer_bytes=10_000)
    huge = _forge(0, 2**16 - 1, 2**32 - 1, b"x" * 45)
    assert reassembler.push(huge, "L", 0.0) is None
    stats = reassembler.stats()
    assert stats.oversize == 1
    assert stats.buffered_bytes == 0
    assert stats.malformed == 0


def test_memory_cap_under_a_flood_of_first_fragments() -> None:
    cap = 100_000
    reassembler = Reassembler(timeout_s=60.0, max_buffer_bytes=cap, max_frame_bytes=50_000)
    rng = random.Random(11)
    now = 0.0
    for i in range(2_000):
        now += 0.001
        total = rng.randint(CHUNK * 2, 50_000)
        assert (
            reassembler.push(
                _forge(0, -(-total // CHUNK), total, b"y" * CHUNK, frame_id=i),
                f"attacker{i % 7}",
                now,
            )
            is None
        )
        assert reassembler.stats().buffered_bytes <= cap
    stats = reassembler.stats()
    assert stats.evicted >= 2_000 - cap // (CHUNK * 2)
    assert stats.evicted + len(reassembler) == 2_000
    # A real frame still gets through the flood (evicting the oldest junk for room).
    frame = _random_frame(rng, 40_000)
    out = [
        reassembler.push(d, "friend", now) for d in Fragmenter(sender=1, mtu_bytes=MTU).split(frame)
    ]
    assert out[-1] == frame
    assert reassembler.stats().buffered_bytes <= cap


def test_flood_of_tiny_frames_is_charged_a_minimum() -> None:
    reassembler = Reassembler(timeout_s=60.0, max_buffer_bytes=10_000, max_frame_bytes=10_000)
    for i in range(1_000):
        reassembler.push(_forge(0, 2, 2, b"a", frame_id=i), "L", 0.0)
    assert len(reassembler) <= 10_000 // 256
    assert reassembler.stats().buffered_bytes <= 10_000


def test_stale_buffers_expire() -> None:
    reassembler = _reassembler(timeout_s=2.0)
    a = Fragmenter(sender=1, mtu_bytes=MTU).split(bytes(300))
    b = Fragmenter(sender=2, mtu_bytes=MTU).split(bytes(300))
    reassembler.push(a[0], "L", 0.0)
    reassembler.push(b[0], "L", 1.0)
    assert reassembler.expire(2.0) == 0  # exactly timeout_s old is not older than it
    assert reassembler.expire(2.5) == 1
    stats = reassembler.stats()
    # Frame b holds one 45-byte fragment, charged the 256-byte minimum (not its 300 declared).
    assert (stats.expired, len(reassembler), stats.buffered_bytes) == (1, 1, 256)
    # Frame b completes in time.
    out_b = [reassembler.push(d, "L", 2.9) for d in b[1:]]
    assert out_b[-1] == bytes(300)
    assert reassembler.expire(100.0) == 0
    assert reassembler.stats().buffered_bytes == 0


def test_push_expires_lazily_without_expire_calls() -> None:
    reassembler = _reassembler(timeout_s=1.0)
    for i in range(100):
        now = i * 0.5
        datagrams = Fragmenter(sender=i, mtu_bytes=MTU).split(bytes(500))
        reassembler.push(datagrams[0], "L", now)  # never completed
        assert len(reassembler) <= 3
    assert reassembler.stats().expired >= 97


def test_time_going_backwards_is_clamped() -> None:
    reassembler = _reassembler(timeout_s=1.0)
    datagrams = Fragmenter(sender=1, mtu_bytes=MTU).split(bytes(100))
    reassembler.push(datagrams[0], "L", 10.0)
    assert reassembler.expire(0.0) == 0
    reassembler.push(datagrams[1], "L", 5.0)  # treated as t=10
    assert reassembler.expire(10.9) == 0
    assert reassembler.expire(11.5) == 1


def test_late_duplicate_after_completion_is_a_duplicate_not_a_buffer() -> None:
    reassembler = _reassembler(timeout_s=1.0)
    datagrams = Fragmenter(sender=1, mtu_bytes=MTU).split(bytes(100))
    assert [reassembler.push(d, "L", 0.0) for d in datagrams][-1] == bytes(100)
    assert reassembler.push(datagrams[0], "L", 0.5) is None
    stats = reassembler.stats()
    assert (stats.duplicates, len(reassembler), stats.buffered_bytes) == (1, 0, 0)
    # Long after, the same key is a new frame again (the record is kept only timeout_s).
    assert reassembler.push(datagrams[0], "L", 5.0) is None
    assert len(reassembler) == 1


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_garbage_never_raises(garbage: bytes, sender: int) -> None:
    reassembler = _reassembler(max_frame_bytes=1_000, max_buffer_bytes=5_000)
    headed = HEADER.pack(MAGIC, VERSION, sender, 0, 0, 2, 30) + garbage
    for datagram in (garbage, MAGIC + garbage, b"SF\x01" + garbage, headed):
        result = reassembler.push(datagram, "L", 0.0)
        # Only a datagram that happens to be a well-formed single-fragment frame yields bytes.
        assert result is None or (len(datagram) >= HEADER_SIZE and datagram.endswith(result))
    stats = reassembler.stats()
    assert stats.buffered_bytes <= 5_000


def test_bit_flipped_datagrams_never_raise_and_stay_bounded() -> None:
    rng = random.Random(3)
    reassembler = _reassembler(max_frame_bytes=2_000, max_buffer_bytes=8_000)
    fragmenter = Fragmenter(sender=77, mtu_bytes=MTU)
    for _ in range(300):
        for datagram in fragmenter.split(_random_frame(rng, rng.randint(0, 1_500))):
            flipped = bytearray(datagram)
            for _ in range(rng.randint(1, 3)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            reassembler.push(bytes(flipped), "L", 0.0)
            assert reassembler.stats().buffered_bytes <= 8_000


@settings(max_examples=200, deadline=None, derandomize=True)
@given(
    frame=st.binary(max_size=3_000),
    mtu=st.integers(HEADER_SIZE + 1, 300),
    data=st.data(),
)
def test_round_trip_any_permutation(frame: bytes, mtu: int, data: st.DataObject) -> None:
    datagrams = Fragmenter(sender=12, mtu_bytes=mtu).split(frame)
    order = data.draw(st.permutations(range(len(datagrams))))
    reassembler = _reassembler()
    out = [reassembler.push(datagrams[i], ("10.0.0.1", 5000), 1.0) for i in order]
    assert out[-1] == frame
    assert all(r is None for r in out[:-1])


def test_stats_is_a_frozen_snapshot() -> None:
    reassembler = _reassembler()
    before = reassembler.stats()
    reassembler.push(b"junk", "L", 0.0)
    assert before.malformed == 0
    assert reassembler.stats().malformed == 1
    with pytest.raises(AttributeError):
        before.malformed = 5  # type: ignore[misc]
    assert isinstance(before, ReassemblyStats)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"timeout_s": 0.0, "max_buffer_bytes": 10, "max_frame_bytes": 10}, "timeout_s"),
        ({"timeout_s": float("inf"), "max_buffer_bytes": 10, "max_frame_bytes": 10}, "timeout_s"),
        ({"timeout_s": 1.0, "max_buffer_bytes": 10, "max_frame_bytes": -1}, "max_frame_bytes"),
        ({"timeout_s": 1.0, "max_buffer_bytes": 9, "max_frame_bytes": 10}, "max_buffer_bytes"),
        ({"timeout_s": 1.0, "max_buffer_bytes": 0, "max_frame_bytes": 0}, "max_buffer_bytes"),
    ],
)
def test_reassembler_config_errors(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Reassembler(**kwargs)  # type: ignore[arg-type]
    assert info.value.key == key


def _bogus_first_fragment(frame_id: int, total: int = 4 * 1024 * 1024, plen: int = 65) -> bytes:
    """A first fragment (index 0) of ``plen`` bytes that claims a ``total``-byte frame."""
    count = -(-total // plen)
    assert count <= MAX_FRAGMENTS
    return _forge(0, count, total, b"z" * plen, frame_id=frame_id)


def test_bogus_first_fragments_neither_allocate_nor_evict_a_real_partial_frame() -> None:
    import tracemalloc

    cap = 16 * 1024 * 1024
    reassembler = Reassembler(timeout_s=5.0, max_buffer_bytes=cap, max_frame_bytes=4 * 1024**2)
    frame = random.Random(1).randbytes(200_000)
    real = Fragmenter(sender=1, mtu_bytes=1472).split(frame)
    half = len(real) // 2
    for datagram in real[:half]:
        assert reassembler.push(datagram, ("10.0.0.1", 9000), 0.0) is None

    tracemalloc.start()
    try:
        for i in range(5_000):
            assert reassembler.push(_bogus_first_fragment(i), ("10.0.0.66", 6666), 0.001) is None
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # 5,000 claims of 4 MiB each: the old reassembler allocated 4 MiB for every one of them.
    # Now the attacker holds a few small buffers (its slot budget) and nothing more.
    assert peak < 1024 * 1024
    stats = reassembler.stats()
    assert len(reassembler) <= 1 + 8
    assert stats.buffered_bytes < half * 1472 + 8 * 1024
    assert stats.evicted == 5_000 - 8  # all the attacker's own

    out = [reassembler.push(d, ("10.0.0.1", 9000), 0.002) for d in real[half:]]
    assert out[-1] == frame


def test_many_sources_over_the_total_evict_the_heaviest_not_the_honest_sender() -> None:
    reassembler = Reassembler(
        timeout_s=60.0, max_buffer_bytes=20_000, max_frame_bytes=5_000, max_source_bytes=5_000
    )
    frame = random.Random(2).randbytes(3_000)
    real = Fragmenter(sender=1, mtu_bytes=MTU).split(frame)
    for datagram in real[:10]:  # 450 bytes held by the honest sender
        reassembler.push(datagram, "honest", 0.0)
    # Attackers on many links each fill a big partial frame (the real frame's size).
    for attacker in range(20):
        for datagram in Fragmenter(sender=7, mtu_bytes=MTU).split(bytes(4_900))[:-1]:
            reassembler.push(datagram, f"attacker{attacker}", 0.0)
            assert reassembler.stats().buffered_bytes <= 20_000
    assert reassembler.stats().evicted > 0
    out = [reassembler.push(d, "honest", 0.0) for d in real[10:]]
    assert out[-1] == frame


def test_one_source_is_held_to_its_own_slots_and_bytes() -> None:
    reassembler = Reassembler(
        timeout_s=60.0,
        max_buffer_bytes=100_000,
        max_frame_bytes=2_000,
        max_source_bytes=3_000,
        max_source_frames=4,
    )
    for i in range(50):
        datagrams = Fragmenter(sender=1, mtu_bytes=MTU, first_frame_id=i).split(bytes(1_900))
        for datagram in datagrams[:-1]:
            reassembler.push(datagram, "flooder", 0.0)
        assert len(reassembler) <= 4
        assert reassembler.stats().buffered_bytes <= 3_000
    assert reassembler.stats().sources == 1


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"max_source_bytes": 99}, "max_source_bytes"),
        ({"max_source_bytes": 2_000_000}, "max_source_bytes"),
        ({"max_source_frames": 0}, "max_source_frames"),
    ],
)
def test_source_budget_config_errors(kwargs: dict[str, int], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Reassembler(timeout_s=1.0, max_buffer_bytes=1_000_000, max_frame_bytes=100, **kwargs)
    assert info.value.key == key
