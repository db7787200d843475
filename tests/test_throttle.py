"""TokenBucket: long-run rate, bounded bursts, debt for oversize datagrams, monotonic time."""

from __future__ import annotations

import random

import numpy as np
import pytest

from swarmfl.errors import ConfigError
from swarmfl.radio.throttle import TokenBucket

RATE_BPS = 200_000.0  # 25,000 bytes/s
BURST = 4_000


def _send_back_to_back_polling(
    bucket: TokenBucket, sizes: list[int], horizon_s: float
) -> list[tuple[float, int]]:
    """A real-radio style sender: wait time_until(), then try_consume(), until the horizon."""
    now = 0.0
    sent: list[tuple[float, int]] = []
    for size in sizes:
        wait = bucket.time_until(size, now)
        now += wait
        if now > horizon_s:
            break
        assert bucket.try_consume(size, now), (size, now)
        sent.append((now, size))
    return sent


def _send_back_to_back_scheduled(
    bucket: TokenBucket, sizes: list[int], horizon_s: float
) -> list[tuple[float, int]]:
    """A simulator style sender: consume() everything at t=0, schedule at the returned times."""
    sent: list[tuple[float, int]] = []
    for size in sizes:
        start = bucket.consume(size, 0.0)
        if start > horizon_s:
            break
        sent.append((start, size))
    return sent


def _max_window_excess(sent: list[tuple[float, int]], rate_Bps: float) -> float:
    """max over windows [t_i, t_j] of bytes sent in it minus (rate * length + excess of j).

    The bound to check is ``<= burst``; the last datagram's excess over the burst is the debt an
    oversize datagram may legitimately take.
    """
    times = np.array([t for t, _ in sent])
    sizes = np.array([s for _, s in sent], dtype=np.float64)
    cum = np.concatenate([[0.0], np.cumsum(sizes)])
    excess = np.maximum(sizes - BURST, 0.0)
    worst = -np.inf
    for i in range(len(sent)):
        window_bytes = cum[i + 1 :] - cum[i]
        allowed = rate_Bps * (times[i:] - times[i]) + excess[i:]
        worst = max(worst, float(np.max(window_bytes - allowed)))
    return worst


@pytest.mark.parametrize("driver", [_send_back_to_back_polling, _send_back_to_back_scheduled])
@pytest.mark.parametrize("max_size", [BURST, 3 * BURST])
def test_long_run_rate_and_bounded_bursts(driver, max_size: int) -> None:
    rng = random.Random(1234 + max_size)
    sizes = [rng.randint(1, max_size) for _ in range(20_000)]
    bucket = TokenBucket(RATE_BPS, BURST)
    horizon_s = 60.0
    sent = driver(bucket, sizes, horizon_s)
    rate_Bps = RATE_BPS / 8

    # Back to back means the horizon is reached; the burst is the only credit at t=0.
    elapsed = sent[-1][0]
    assert elapsed > horizon_s - 1.0
    total = sum(size for _, size in sent)
    # The last send may have driven the bucket into debt, which the rate has not repaid yet.
    last_debt = max(sent[-1][1] - BURST, 0)
    achieved = (total - BURST - last_debt) / elapsed
    assert achieved == pytest.approx(rate_Bps, rel=0.02)
    assert total <= BURST + rate_Bps * elapsed + last_debt + 1e-6

    assert _max_window_excess(sent, rate_Bps) <= BURST + 1e-3


def test_small_datagrams_never_exceed_burst_plus_rate() -> None:
    # Windows that start mid-stream: a full bucket is refilled after an idle period.
    rng = random.Random(7)
    bucket = TokenBucket(RATE_BPS, BURST)
    now = 0.0
    sent: list[tuple[float, int]] = []
    for _ in range(3_000):
        now += rng.choice([0.0, 0.0, 0.001, 0.05, 0.5])
        size = rng.randint(1, BURST)
        if bucket.try_consume(size, now):
            sent.append((now, size))
    assert len(sent) > 1_000
    assert _max_window_excess(sent, RATE_BPS / 8) <= BURST + 1e-3


def test_starts_full_and_refills_to_burst_only() -> None:
    bucket = TokenBucket(8_000.0, 1_000)  # 1,000 bytes/s
    assert bucket.try_consume(1_000, 0.0)
    assert not bucket.try_consume(1, 0.0)
    assert bucket.time_until(500, 0.0) == pytest.approx(0.5)
    assert not bucket.try_consume(500, 0.49)
    assert bucket.try_consume(500, 0.5)
    # Idle for a long time: tokens cap at the burst.
    assert bucket.available_bytes(1_000.0) == pytest.approx(1_000.0)
    assert bucket.try_consume(1_000, 1_000.0)
    assert not bucket.try_consume(1, 1_000.0)


def test_oversize_datagram_waits_for_full_bucket_then_takes_debt() -> None:
    bucket = TokenBucket(8_000.0, 1_000)  # 1,000 bytes/s
    assert bucket.try_consume(400, 0.0)
    # 2,500 bytes need a full bucket: 400 bytes of refill, 0.4 s.
    assert bucket.time_until(2_500, 0.0) == pytest.approx(0.4)
    assert not bucket.try_consume(2_500, 0.39)
    assert bucket.try_consume(2_500, 0.4)
    assert bucket.available_bytes(0.4) == pytest.approx(-1_500.0)
    # The debt blocks even one byte until it is repaid.
    assert bucket.time_until(1, 0.4) == pytest.approx(1.501)
    assert not bucket.try_consume(1, 1.9)
    # Another oversize datagram waits for a full bucket again: 2,500 bytes of refill.
    assert bucket.time_until(2_500, 0.4) == pytest.approx(2.5)
    assert bucket.try_consume(2_500, 2.9)


def test_consume_schedules_serially_and_matches_try_consume() -> None:
    bucket = TokenBucket(8_000.0, 1_000)  # 1,000 bytes/s
    assert bucket.consume(1_000, 0.0) == 0.0
    assert bucket.consume(500, 0.0) == pytest.approx(0.5)
    # The 500 bytes above were reserved: the next 500 start after them.
    assert bucket.consume(500, 0.0) == pytest.approx(1.0)
    # Oversize: waits for a full bucket, i.e. 1,000 bytes after the reservations are repaid.
    assert bucket.consume(3_000, 0.0) == pytest.approx(2.0)
    assert bucket.consume(1, 0.0) == pytest.approx(4.001)
    # A caller that asks later than the schedule sends at once.
    fresh = TokenBucket(8_000.0, 1_000)
    assert fresh.consume(700, 10.0) == 10.0


def test_consume_start_times_agree_with_polling() -> None:
    rng = random.Random(99)
    sizes = [rng.randint(0, 2_500) for _ in range(500)]
    scheduled = TokenBucket(RATE_BPS, BURST)
    polled = TokenBucket(RATE_BPS, BURST)
    now = 0.0
    for size in sizes:
        start = scheduled.consume(size, 0.0)
        now += polled.time_until(size, now)
        assert polled.try_consume(size, now)
        assert start == pytest.approx(now, abs=1e-6)


def test_time_going_backwards_is_clamped() -> None:
    bucket = TokenBucket(8_000.0, 1_000)
    assert bucket.try_consume(1_000, 10.0)
    # An earlier now must not refill (nor un-refill) anything.
    assert not bucket.try_consume(1, 5.0)
    assert bucket.available_bytes(5.0) == 0.0
    assert bucket.try_consume(500, 10.5)
    # Waiting from an earlier now counts from that earlier now.
    assert bucket.time_until(100, 10.0) == pytest.approx(0.5 + 0.1)
    assert bucket.consume(100, 10.0) == pytest.approx(10.6)


def test_wall_clock_sized_times_do_not_lose_a_send_to_rounding() -> None:
    bucket = TokenBucket(8e8, 1_500)  # 100 MB/s: tiny waits on a huge timestamp
    now = 1.7e9
    for size in (1_500, 1_500, 700, 1_500, 3_000, 1):
        now += bucket.time_until(size, now)
        assert bucket.try_consume(size, now)


def test_zero_bytes_always_fit() -> None:
    bucket = TokenBucket(8.0, 1)
    assert bucket.try_consume(1, 0.0)
    assert bucket.time_until(0, 0.0) == 0.0
    assert bucket.try_consume(0, 0.0)


@pytest.mark.parametrize(
    ("rate_bps", "burst_bytes", "key"),
    [
        (0.0, 10, "rate_bps"),
        (-1.0, 10, "rate_bps"),
        (float("inf"), 10, "rate_bps"),
        (float("nan"), 10, "rate_bps"),
        (1e6, 0, "burst_bytes"),
        (1e6, -5, "burst_bytes"),
        (1e6, 2.5, "burst_bytes"),
        (1e6, True, "burst_bytes"),
        ("1e6", 10, "rate_bps"),
    ],
)
def test_bad_config_names_the_field(rate_bps: float, burst_bytes: int, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        TokenBucket(rate_bps, burst_bytes)
    assert info.value.key == key


def test_numpy_numbers_are_accepted() -> None:
    bucket = TokenBucket(np.float64(8_000.0), np.int64(1_000))  # type: ignore[arg-type]
    assert (bucket.rate_bps, bucket.burst_bytes) == (8_000.0, 1_000)
    assert type(bucket.burst_bytes) is int


def test_negative_nbytes_is_a_config_error() -> None:
    bucket = TokenBucket(1e6, 100)
    for method in (bucket.try_consume, bucket.time_until, bucket.consume):
        with pytest.raises(ConfigError):
            method(-1, 0.0)
