"""A captured drone for the field tests: valid keys, the real node and UDP radio, poison models.

Run as ``python tests/_field_attacker.py CONFIG FACTOR PERIOD_S PEER_ID:PORT ...``: it builds
drone CONFIG's gossip node exactly as a field agent does (same keys, signature and shard), and
every PERIOD_S publishes FACTOR times its (untrained) model to the listed peers over UDP on
127.0.0.1, through the real wire encoding and link layer. It never trains nor merges. It stops
on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time

import numpy as np

from swarmfl.config.drone_file import load_drone_config
from swarmfl.drone import DroneAssembly
from swarmfl.field.agent import drone_settings, field_device
from swarmfl.field.identity import load_identity
from swarmfl.radio.udp import UdpRadio


async def main(config: str, factor: float, period_s: float, peers: list[str]) -> None:
    loaded = load_drone_config(config)
    drone_id = loaded.config.drone.id
    identity = load_identity(loaded.config, source=config)  # its own key, as a captured drone's
    parts = DroneAssembly(drone_settings(loaded)).build(
        drone_id, loaded.config.data.shard, field_device(loaded), identity=identity
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    async with UdpRadio(drone_id=drone_id, host="127.0.0.1", link=parts.link_config) as radio:
        for peer in peers:
            peer_id, port = peer.split(":")
            # An insider need not wait to be confirmed: it sends to the honest drones directly.
            now = asyncio.get_running_loop().time()
            radio.confirm_peer(int(peer_id), ("127.0.0.1", int(port)), now)
        model = parts.learner.flat_parameters()
        rng = np.random.default_rng(drone_id)
        while not stop.is_set():
            # a model that drifts a little each period, scaled: a "bug that multiplies a model"
            model += rng.normal(0.0, 0.01, model.size).astype(np.float32)
            poison = (model * factor).astype(np.float32)
            for frame in parts.node.publish(poison, parts.learner.sample_count, time.monotonic()):
                radio.send(frame)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period_s)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4:]))
