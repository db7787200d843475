"""SendQueue: FIFO order, snapshot supersede, overflow of droppable frames, refusal."""

from __future__ import annotations

import random
from collections.abc import Hashable
from dataclasses import dataclass

import pytest

from swarmfl.errors import ConfigError
from swarmfl.radio.sendqueue import SendQueue, SendQueueStats


def _drain(queue: SendQueue) -> list[bytes]:
    out = []
    while (frame := queue.pop()) is not None:
        out.append(frame)
    return out


def test_fifo_order_sizes_and_empty() -> None:
    queue = SendQueue(max_frames=10, max_bytes=1_000)
    assert queue.pop() is None
    assert queue.peek_size() is None
    for frame in (b"a", b"bb", b"ccc"):
        assert queue.push(frame) == []
    assert len(queue) == 3
    assert queue.queued_bytes == 6
    assert queue.peek_size() == 1
    assert queue.pop() == b"a"
    assert queue.peek_size() == 2
    assert _drain(queue) == [b"bb", b"ccc"]
    assert (len(queue), queue.queued_bytes) == (0, 0)


def test_snapshot_supersedes_older_frames_of_its_stream_including_deltas() -> None:
    queue = SendQueue(max_frames=100, max_bytes=100_000)
    queue.push(b"m1-delta1", stream="model1")
    queue.push(b"m2-delta1", stream="model2")
    queue.push(b"hello")
    assert queue.push(b"m1-snap", stream="model1", snapshot=True) == [b"m1-delta1"]
    queue.push(b"m1-delta2", stream="model1")
    queue.push(b"m1-delta3", stream="model1", droppable=False)
    dropped = queue.push(b"m1-snap2", stream="model1", snapshot=True)
    assert dropped == [b"m1-snap", b"m1-delta2", b"m1-delta3"]
    assert queue.stats().superseded == 4
    assert _drain(queue) == [b"m2-delta1", b"hello", b"m1-snap2"]


def test_delta_never_supersedes_delta() -> None:
    queue = SendQueue(max_frames=100, max_bytes=100_000)
    for i in range(5):
        assert queue.push(f"d{i}".encode(), stream="model") == []
    assert _drain(queue) == [b"d0", b"d1", b"d2", b"d3", b"d4"]
    assert queue.stats().superseded == 0


def test_snapshot_of_an_empty_stream_drops_nothing() -> None:
    queue = SendQueue(max_frames=2, max_bytes=100)
    queue.push(b"other", stream="b")
    assert queue.push(b"snap", stream="a", snapshot=True) == []
    assert _drain(queue) == [b"other", b"snap"]


def test_overflow_drops_oldest_droppable_first_by_frame_count() -> None:
    queue = SendQueue(max_frames=3, max_bytes=10_000)
    queue.push(b"keep", droppable=False)
    queue.push(b"old")
    queue.push(b"mid")
    assert queue.push(b"new") == [b"old"]
    assert queue.push(b"newer") == [b"mid"]
    assert queue.stats().overflow == 2
    assert _drain(queue) == [b"keep", b"new", b"newer"]


def test_overflow_by_bytes_drops_as_many_as_needed() -> None:
    queue = SendQueue(max_frames=100, max_bytes=10)
    queue.push(b"aaa")
    queue.push(b"bbb")
    queue.push(b"ccc")
    assert queue.push(b"dddddd") == [b"aaa", b"bbb"]
    assert queue.queued_bytes == 9
    assert _drain(queue) == [b"ccc", b"dddddd"]


def test_refused_when_only_non_droppable_frames_are_left() -> None:
    queue = SendQueue(max_frames=2, max_bytes=100)
    queue.push(b"k1", droppable=False)
    queue.push(b"k2", droppable=False)
    assert queue.push(b"x") == [b"x"]
    stats = queue.stats()
    assert (stats.refused, stats.overflow, stats.queued_frames) == (1, 0, 2)
    assert _drain(queue) == [b"k1", b"k2"]


def test_refusal_has_no_side_effects() -> None:
    queue = SendQueue(max_frames=10, max_bytes=10)
    queue.push(b"aaaa")
    queue.push(b"bb", stream="s")
    # Bigger than the whole queue: nothing is dropped to make room for it, nothing superseded.
    assert queue.push(b"x" * 11, stream="s", snapshot=True) == [b"x" * 11]
    assert _drain(queue) == [b"aaaa", b"bb"]
    assert queue.stats().superseded == queue.stats().overflow == 0


def test_superseded_non_droppable_frames_make_room_for_the_snapshot() -> None:
    queue = SendQueue(max_frames=2, max_bytes=100)
    queue.push(b"d1", stream="s", droppable=False)
    queue.push(b"d2", stream="s", droppable=False)
    assert queue.push(b"snap", stream="s", snapshot=True, droppable=False) == [b"d1", b"d2"]
    assert _drain(queue) == [b"snap"]


def test_supersede_then_overflow_are_both_reported() -> None:
    queue = SendQueue(max_frames=3, max_bytes=100)
    queue.push(b"t1", stream="t")
    queue.push(b"s1", stream="s")
    queue.push(b"t2", stream="t")
    dropped = queue.push(b"s-snap" * 20, stream="s", snapshot=True)  # 120 bytes: too big
    assert dropped == [b"s-snap" * 20]
    dropped = queue.push(b"S" * 99, stream="s", snapshot=True)
    assert dropped == [b"s1", b"t1", b"t2"]
    stats = queue.stats()
    assert (stats.superseded, stats.overflow, stats.refused) == (1, 2, 1)
    assert _drain(queue) == [b"S" * 99]


def test_snapshot_needs_a_stream() -> None:
    queue = SendQueue(max_frames=2, max_bytes=100)
    with pytest.raises(ConfigError) as info:
        queue.push(b"x", snapshot=True)
    assert info.value.key == "stream"


@pytest.mark.parametrize(
    ("max_frames", "max_bytes", "key"),
    [(0, 10, "max_frames"), (-1, 10, "max_frames"), (10, 0, "max_bytes"), (True, 10, "max_frames")],
)
def test_config_errors(max_frames: int, max_bytes: int, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        SendQueue(max_frames, max_bytes)
    assert info.value.key == key


def test_clear_returns_everything_and_resets() -> None:
    queue = SendQueue(max_frames=10, max_bytes=100)
    queue.push(b"a", stream="s")
    queue.push(b"b", droppable=False)
    assert queue.clear() == [b"a", b"b"]
    assert (len(queue), queue.queued_bytes) == (0, 0)
    assert queue.push(b"c", stream="s", snapshot=True) == []
    assert _drain(queue) == [b"c"]


# ---- against a plain list reference implementation of the documented policy -----------------


@dataclass
class _Item:
    frame: bytes
    stream: Hashable | None
    droppable: bool


class _ReferenceQueue:
    def __init__(self, max_frames: int, max_bytes: int) -> None:
        self.max_frames, self.max_bytes = max_frames, max_bytes
        self.items: list[_Item] = []
        self.superseded = self.overflow = self.refused = 0

    def push(self, frame: bytes, stream: Hashable | None, snapshot: bool, droppable: bool):
        kept = [i for i in self.items if not (snapshot and i.stream == stream)]
        fixed = [i for i in kept if not i.droppable]
        if len(fixed) + 1 > self.max_frames or sum(len(i.frame) for i in fixed) + len(frame) > (
            self.max_bytes
        ):
            self.refused += 1
            return [frame]
        dropped = [i.frame for i in self.items if i not in kept]
        self.superseded += len(dropped)
        while len(kept) + 1 > self.max_frames or sum(len(i.frame) for i in kept) + len(frame) > (
            self.max_bytes
        ):
            victim = next(i for i in kept if i.droppable)
            kept.remove(victim)
            dropped.append(victim.frame)
            self.overflow += 1
        self.items = [*kept, _Item(frame, stream, droppable)]
        return dropped

    def pop(self) -> bytes | None:
        return self.items.pop(0).frame if self.items else None


@pytest.mark.parametrize("seed", range(8))
def test_matches_reference_policy_on_random_operations(seed: int) -> None:
    rng = random.Random(seed)
    max_frames, max_bytes = rng.randint(1, 12), rng.randint(20, 200)
    queue = SendQueue(max_frames, max_bytes)
    reference = _ReferenceQueue(max_frames, max_bytes)
    counter = 0
    for _ in range(3_000):
        if rng.random() < 0.35:
            assert queue.pop() == reference.pop()
            continue
        counter += 1
        stream = rng.choice([None, "a", "b", ("model", 3)])
        snapshot = stream is not None and rng.random() < 0.2
        droppable = rng.random() < 0.8
        frame = counter.to_bytes(4, "little") + bytes(rng.randint(0, 40))
        got = queue.push(frame, stream=stream, snapshot=snapshot, droppable=droppable)
        assert got == reference.push(frame, stream, snapshot, droppable)
        assert len(queue) == len(reference.items)
        assert queue.queued_bytes == sum(len(i.frame) for i in reference.items)
        assert len(queue) <= max_frames
        assert queue.queued_bytes <= max_bytes
    stats = queue.stats()
    assert (stats.superseded, stats.overflow, stats.refused) == (
        reference.superseded,
        reference.overflow,
        reference.refused,
    )
    assert stats.superseded > 0 and stats.overflow > 0
    assert _drain(queue) == [i.frame for i in reference.items]


def test_stats_snapshot() -> None:
    queue = SendQueue(max_frames=1, max_bytes=100)
    queue.push(b"a")
    queue.push(b"b")
    queue.pop()
    assert queue.stats() == SendQueueStats(
        pushed=2, popped=1, superseded=0, overflow=1, refused=0, queued_frames=0, queued_bytes=0
    )
