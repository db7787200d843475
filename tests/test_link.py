"""The link layer every radio shares (swarmfl.radio.link): throttle, queue, reassembly."""

import random

import numpy as np
import pytest

from swarmfl.errors import ConfigError
from swarmfl.radio.fragment import HEADER_SIZE, fragment_count
from swarmfl.radio.link import DatagramLink, LinkConfig, wire_frame_class


def wire_like(kind: int, body: bytes = b"") -> bytes:
    """Bytes whose header reads as a swarmfl wire frame of ``kind`` (1 key, 2 delta, 4 nack)."""
    return b"SWFL" + bytes([1, kind]) + body


def drive(link: DatagramLink, until_s: float, feed) -> list[tuple[float, int]]:
    """Run the link's sender on a virtual clock; return (time, size) of every datagram sent."""
    sent: list[tuple[float, int]] = []
    now = 0.0
    while now <= until_s:
        feed(link, now)
        while (datagram := link.next_datagram(now)) is not None:
            sent.append((now, len(datagram)))
        at = link.ready_at(now)
        if at is None:
            break
        now = max(at, now + 1e-9)
    return sent


def test_token_bucket_holds_its_rate_within_2_percent_over_60_virtual_seconds() -> None:
    config = LinkConfig(rate_bps=64_000, mtu_bytes=252, burst_bytes=4 * 252, queue_frames=4)
    link = DatagramLink(config, sender=7)

    def keep_queue_full(link: DatagramLink, now: float) -> None:
        while len(link.queue) < 3:
            link.send(bytes(1000), now)

    sent = drive(link, 60.0, keep_queue_full)
    times = np.array([t for t, _ in sent if t <= 60.0])
    sizes = np.array([n for t, n in sent if t <= 60.0], dtype=np.float64)
    rate_Bps = config.rate_bps / 8
    # Long run: what left in 60 s is the rate's worth, plus the bucket's initial burst.
    long_run = (sizes.sum() - config.burst) / (rate_Bps * 60.0)
    assert long_run == pytest.approx(1.0, abs=0.02)
    # Bursts bounded: over every window [t_i, t_j] at most burst + rate * (t_j - t_i) bytes.
    cumulative = np.cumsum(sizes)
    before = cumulative - sizes  # bytes sent before datagram i
    worst = np.max(
        (cumulative - rate_Bps * times) - np.minimum.accumulate(before - rate_Bps * times)
    )
    assert worst <= config.burst + 1e-6
    # Every datagram fits the MTU and frames go out whole, one after the other.
    assert sizes.max() <= config.mtu_bytes
    assert link.stats().datagrams_sent == len(sent)


def test_next_frame_charges_the_bucket_like_its_datagrams() -> None:
    config = LinkConfig(rate_bps=80_000, mtu_bytes=120)
    by_frame, by_datagram = DatagramLink(config), DatagramLink(config)
    frame = bytes(1000)
    for link in (by_frame, by_datagram):
        link.send(frame, 0.0)
    item = by_frame.next_frame(0.0)
    assert item is not None
    _, count, wire = item
    assert count == fragment_count(len(frame), 120) == 10
    assert wire == len(frame) + count * HEADER_SIZE
    datagrams = drive(by_datagram, 10.0, lambda link, now: None)
    assert sum(size for _, size in datagrams) == wire
    # The next frame may go when the bucket has refilled, the same for both drivers.
    for link in (by_frame, by_datagram):
        link.send(frame, 0.0)
    assert by_frame.frame_ready_at(0.0) == pytest.approx(by_datagram.ready_at(datagrams[-1][0]))


def test_a_keyframe_supersedes_queued_deltas_and_nacks_are_in_no_stream() -> None:
    link = DatagramLink(LinkConfig(rate_bps=1000, mtu_bytes=100, queue_frames=8))
    assert wire_frame_class(wire_like(1)) == ("model", True)
    assert wire_frame_class(wire_like(2)) == ("model", False)
    assert wire_frame_class(wire_like(4)) == (None, False)
    assert wire_frame_class(b"not a frame") == (None, False)
    deltas = [wire_like(2, bytes([i])) for i in range(3)]
    for delta in deltas:
        assert link.send(delta, 0.0) == []
    nack = wire_like(4)
    link.send(nack, 0.0)
    key = wire_like(1, b"k")
    assert link.send(key, 0.0) == deltas  # the deltas are worthless once a keyframe follows
    stats = link.stats()
    assert stats.queue.superseded == 3
    assert stats.frames_dropped_sending == 3
    assert [link.next_frame(0.0)[0] for _ in range(2)] == [nack, key]  # type: ignore[index]


def test_a_full_queue_drops_the_oldest_and_an_oversize_frame_is_refused() -> None:
    link = DatagramLink(LinkConfig(rate_bps=1000, mtu_bytes=100, queue_frames=2))
    frames = [bytes([i]) * 10 for i in range(3)]
    link.send(frames[0], 0.0)
    link.send(frames[1], 0.0)
    assert link.send(frames[2], 0.0) == [frames[0]]
    small = DatagramLink(
        LinkConfig(mtu_bytes=100, max_frame_bytes=1000, reassembly_buffer_bytes=1000)
    )
    huge = bytes(1001)
    assert small.send(huge, 0.0) == [huge]
    assert small.stats().frames_oversize == 1
    assert small.idle


def test_reassembly_of_interleaved_duplicated_reordered_truncated_datagrams() -> None:
    rng = random.Random(5)
    config = LinkConfig(rate_bps=1e12, mtu_bytes=64, reassembly_timeout_s=5.0)
    senders = [DatagramLink(config, sender=s) for s in range(4)]
    receiver = DatagramLink(config)
    frames = {(s, i): rng.randbytes(rng.randrange(1, 400)) for s in range(4) for i in range(5)}
    traffic = []
    for (s, _), frame in frames.items():
        senders[s].send(frame, 0.0)
        while (datagram := senders[s].next_datagram(0.0)) is not None:
            traffic.append((s, datagram))
    traffic += rng.sample(traffic, len(traffic) // 3)  # duplicates
    traffic += [(s, d[: rng.randrange(1, len(d))]) for s, d in rng.sample(traffic, 20)]  # cut
    rng.shuffle(traffic)
    heard = [receiver.receive(d, ("addr", s), 1.0) for s, d in traffic]
    complete = [f for f in heard if f is not None]
    # Nothing corrupt ever comes out: every frame is one that was sent. A multi-datagram frame
    # comes out at most once (a late duplicate fragment is recognised); a one-datagram frame
    # comes out again with each duplicate (the protocol's sequence numbers drop those). A
    # truncated copy that arrives first can cost its frame (fragment headers are not
    # authenticated), never corrupt it.
    sent = set(frames.values())
    assert set(complete) <= sent
    multi = [f for f in complete if fragment_count(len(f), 64) > 1]
    assert len(multi) == len(set(multi))
    assert len(set(complete)) >= 0.9 * len(sent)
    stats = receiver.stats().reassembly
    assert stats.duplicates > 0 and stats.malformed > 0


def test_reassembly_memory_cap_and_stale_frames_expire() -> None:
    config = LinkConfig(
        rate_bps=1e12,
        mtu_bytes=64,
        max_frame_bytes=1000,
        reassembly_buffer_bytes=2000,
        reassembly_timeout_s=2.0,
    )
    sender, receiver = DatagramLink(config, sender=1), DatagramLink(config)
    firsts = []
    for _ in range(10):  # ten 900-byte frames of which only the first datagram ever arrives
        sender.send(bytes(900), 0.0)
        firsts.append(sender.next_datagram(0.0))
        while sender.next_datagram(0.0) is not None:
            pass
    for datagram in firsts:
        assert receiver.receive(datagram, "peer", 0.0) is None  # type: ignore[arg-type]
        assert receiver.stats().reassembly.buffered_bytes <= 2000
    # Each holds one 45-byte fragment, charged the 256-byte minimum: 7 fit the source's budget
    # (2 * max_frame_bytes, capped by the total), the 3 oldest are evicted.
    assert receiver.stats().reassembly.evicted == 3
    assert receiver.expire(1.0) == 0
    assert receiver.expire(2.5) == 7
    assert receiver.stats().frames_incomplete == 10
    assert receiver.stats().reassembly.buffered_bytes == 0


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"rate_bps": 0}, "rate_bps"),
        ({"rate_bps": float("inf")}, "rate_bps"),
        ({"mtu_bytes": 19}, "mtu_bytes"),
        ({"mtu_bytes": 100, "burst_bytes": 99}, "burst_bytes"),
        ({"queue_frames": 0}, "queue_frames"),
        ({"max_frame_bytes": 100, "reassembly_buffer_bytes": 99}, "reassembly_buffer_bytes"),
        ({"reassembly_timeout_s": 0}, "reassembly_timeout_s"),
    ],
)
def test_link_config_errors_name_the_field(kwargs: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        LinkConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.key == key


def test_send_now_is_send_then_next_frame_when_nothing_waits() -> None:
    config = LinkConfig(rate_bps=80_000, mtu_bytes=120)
    fast, queued = DatagramLink(config), DatagramLink(config)
    frame = bytes(1000)
    assert fast.send_now(frame, 0.0) == (10, 1190)
    queued.send(frame, 0.0)
    assert queued.next_frame(0.0) == (frame, 10, 1190)
    assert fast.stats().wire_bytes_sent == queued.stats().wire_bytes_sent == 1190
    # The bucket is in debt now: the next frame may not go at once, and nothing changed.
    assert fast.send_now(frame, 0.0) is None
    assert fast.stats().frames_sent == 1 and fast.idle
    assert fast.frame_ready_at(0.0) is None
    fast.send(frame, 0.0)
    assert fast.send_now(frame, 100.0) is None  # a frame already waits: keep the order
    queued.send(frame, 0.0)
    assert fast.frame_ready_at(0.0) == pytest.approx(queued.frame_ready_at(0.0))
