"""The simulated medium (swarmfl.sim.medium): datagram loss, rate, queue, shared airtime."""

import asyncio
import math

import pytest

from swarmfl.radio.base import Radio, UnicastRadio
from swarmfl.radio.fragment import HEADER_SIZE, fragment_count
from swarmfl.radio.link import LinkConfig
from swarmfl.sim.medium import SimMedium, SimRadioStats
from swarmfl.sim.vtime import run_virtual


class FakeWorld:
    """A fixed link table: sender -> (receivers, per-datagram loss)."""

    def __init__(self, table, *, latency_s=0.001, frame_loss=0.0):
        self.table = table
        self.latency_s = latency_s
        self.frame_loss = frame_loss
        self.queries = 0

    def out_links(self, sender, now):
        self.queries += 1
        return self.table.get(sender, ((), ()))


def star(receivers: int, loss: float) -> FakeWorld:
    return FakeWorld({0: (tuple(range(1, receivers + 1)), (loss,) * receivers)})


def test_a_sim_radio_is_a_radio() -> None:
    assert isinstance(SimMedium(star(1, 0.0), seed=0).radio(0), Radio)


def test_a_sim_radio_broadcasts_and_takes_no_destinations() -> None:
    radio = SimMedium(star(1, 0.0), seed=0).radio(0)
    assert not isinstance(radio, UnicastRadio)
    assert isinstance(radio.stats, SimRadioStats)


@pytest.mark.parametrize("fragments", ["sampled", "exact"])
@pytest.mark.parametrize(("loss", "frame_bytes"), [(0.1, 500), (0.05, 1900), (0.3, 100)])
def test_frame_of_k_datagrams_arrives_with_probability_one_minus_p_to_the_k(
    fragments: str, loss: float, frame_bytes: int
) -> None:
    """Statistical: 200 frames x 60 links = 12,000 trials, fixed seed, 4-sigma tolerance."""
    receivers, frames, mtu = 60, 200, 120
    k = fragment_count(frame_bytes, mtu)
    medium = SimMedium(star(receivers, loss), seed=11, fragments=fragments)  # type: ignore[arg-type]
    config = LinkConfig(rate_bps=1e9, mtu_bytes=mtu, queue_frames=frames)
    sender = medium.radio(0, config)
    radios = [medium.radio(i, config) for i in range(1, receivers + 1)]

    async def main() -> None:
        for i in range(frames):
            # Distinct frames (exact mode reassembles them; equal bytes would be duplicates).
            sender.send(i.to_bytes(4, "little") * (frame_bytes // 4) + bytes(frame_bytes % 4))
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)

    run_virtual(main())
    trials = frames * receivers
    arrived = sum(r.stats.frames_received for r in radios)
    expected = (1 - loss) ** k
    sigma = math.sqrt(expected * (1 - expected) / trials)
    assert arrived / trials == pytest.approx(expected, abs=4 * sigma)
    assert sender.stats.deliveries_attempted == trials
    assert sender.stats.frames_lost == trials - arrived
    assert sender.stats.delivery_ratio == pytest.approx(arrived / trials)
    if fragments == "exact":
        # Lost datagrams leave incomplete frames in the receivers' reassemblers.
        held = sum(r.link.stats().reassembly.buffered_bytes for r in radios)
        assert held > 0 or k == 1


def test_frame_loss_and_datagram_loss_combine() -> None:
    world = star(50, 0.1)
    world.frame_loss = 0.2
    medium = SimMedium(world, seed=3)
    config = LinkConfig(rate_bps=1e9, mtu_bytes=120, queue_frames=300)
    sender = medium.radio(0, config)
    radios = [medium.radio(i, config) for i in range(1, 51)]

    async def main() -> None:
        for _ in range(300):
            sender.send(bytes(300))  # 3 datagrams
            await asyncio.sleep(0.01)
        await asyncio.sleep(1.0)

    run_virtual(main())
    ratio = sum(r.stats.frames_received for r in radios) / (300 * 50)
    assert ratio == pytest.approx(0.8 * 0.9**3, abs=0.02)


def test_a_saturated_sim_radio_holds_its_rate_within_2_percent_over_60_seconds() -> None:
    world = star(3, 0.0)
    medium = SimMedium(world, seed=0)
    config = LinkConfig(rate_bps=64_000, mtu_bytes=252, queue_frames=4)
    sender = medium.radio(0, config)
    for i in range(1, 4):
        medium.radio(i, config)

    async def main() -> None:
        for _ in range(6000):  # 1000-byte frames every 10 ms: eight times what the rate carries
            sender.send(bytes(1000))
            await asyncio.sleep(0.01)

    run_virtual(main())
    # Only whole transmissions that ended within the 60 s count.
    wire = sender.stats.wire_bytes_sent
    per_frame = 1000 + fragment_count(1000, 252) * HEADER_SIZE
    assert wire == sender.stats.frames_sent * per_frame
    assert wire * 8 / 60.0 == pytest.approx(64_000, rel=0.02)
    # The queue dropped what could not be sent (oldest first), and said so.
    assert sender.stats.frames_dropped_queue == 6000 - sender.stats.frames_sent - len(
        sender.link.queue
    )
    # One transmission reaches all three neighbours and is counted once.
    assert sender.stats.deliveries_attempted == 3 * sender.stats.frames_sent


def test_transmissions_serialise_and_arrive_after_airtime_and_latency() -> None:
    world = FakeWorld({0: ((1,), (0.0,))}, latency_s=0.25)
    medium = SimMedium(world, seed=0)
    config = LinkConfig(rate_bps=8_000, mtu_bytes=1019)  # 1000 payload bytes per datagram
    sender, receiver = medium.radio(0, config), medium.radio(1, config)
    heard: list[float] = []

    async def listen() -> None:
        async for frame in receiver.frames():
            heard.append(frame.received_at)

    async def main() -> None:
        task = asyncio.create_task(listen())
        sender.send(bytes(981))  # 1000 wire bytes: 1 s on air at 8 kbps
        sender.send(bytes(981))
        await asyncio.sleep(5.0)
        await receiver.aclose()
        await task

    run_virtual(main())
    assert heard == pytest.approx([1.25, 2.25])


def test_shared_airtime_makes_neighbours_wait_for_the_channel() -> None:
    both = ((1,), (0.0,)), ((0,), (0.0,))
    results = {}
    for airtime in (False, True):
        world = FakeWorld({0: both[0], 1: both[1]}, latency_s=0.0)
        medium = SimMedium(world, seed=0, airtime=airtime)
        config = LinkConfig(rate_bps=8_000, mtu_bytes=1019)
        a, b = medium.radio(0, config), medium.radio(1, config)
        arrivals: dict[int, list[float]] = {0: [], 1: []}

        async def listen(radio, into) -> None:
            async for frame in radio.frames():
                into.append(frame.received_at)

        async def main(a=a, b=b, arrivals=arrivals) -> None:
            tasks = [asyncio.create_task(listen(r, arrivals[r.drone_id])) for r in (a, b)]
            a.send(bytes(981))  # both want the air at t = 0 for 1 s
            await asyncio.sleep(0.1)
            b.send(bytes(981))
            await asyncio.sleep(5.0)
            for radio in (a, b):
                await radio.aclose()
            await asyncio.gather(*tasks)

        run_virtual(main())
        results[airtime] = arrivals
    # Without airtime both transmit at once; with it, b defers until a's transmission ends.
    assert results[False] == {1: [pytest.approx(1.0)], 0: [pytest.approx(1.1)]}
    assert results[True] == {1: [pytest.approx(1.0)], 0: [pytest.approx(2.0)]}


def test_down_radios_neither_send_nor_hear_and_are_not_counted_as_losses() -> None:
    world = star(2, 0.0)
    medium = SimMedium(world, seed=0)
    sender, up, down = (medium.radio(i) for i in range(3))
    down.set_up(False)

    async def main() -> None:
        sender.send(b"hello")
        await asyncio.sleep(1.0)
        sender.set_up(False)
        sender.send(b"lost while down")
        await asyncio.sleep(1.0)

    run_virtual(main())
    assert up.stats.frames_received == 1 and down.stats.frames_received == 0
    assert sender.stats.frames_sent == 1
    assert sender.stats.deliveries_attempted == 1 and sender.stats.frames_lost == 0
    assert sender.stats.frames_dropped_queue == 1


def test_same_seed_same_deliveries() -> None:
    def run(seed: int) -> list[int]:
        medium = SimMedium(star(20, 0.2), seed=seed)
        config = LinkConfig(rate_bps=1e9, mtu_bytes=200)
        sender = medium.radio(0, config)
        radios = [medium.radio(i, config) for i in range(1, 21)]

        async def main() -> None:
            for _ in range(50):
                sender.send(bytes(700))
                await asyncio.sleep(0.01)
            await asyncio.sleep(1.0)

        run_virtual(main())
        return [r.stats.frames_received for r in radios]

    assert run(1) == run(1)
    assert run(1) != run(2)
