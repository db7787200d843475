"""The MQTT radio's retry line tells the delay it actually waits (the jittered one)."""

from __future__ import annotations

import asyncio
import logging
import random
import re
from pathlib import Path

import pytest
from _field_helpers import free_port

from swarmfl.radio.discovery import PeerInfo
from swarmfl.radio.mqtt import MqttRadio, MqttSettings

pytestmark = [pytest.mark.network]


@pytest.mark.asyncio
async def test_the_retry_line_tells_the_jittered_delay(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    port = free_port(socket.SOCK_STREAM)  # nothing listens there
    seed = 11
    settings = MqttSettings(
        url=f"mqtt://127.0.0.1:{port}", backoff_initial_s=0.4, backoff_max_s=1.6
    )
    me = PeerInfo(1, 7, b"\0" * 8, "127.0.0.1", 0, "full", "mqtt")
    caplog.set_level(logging.WARNING, logger="swarmfl.radio.mqtt")
    async with MqttRadio(swarm_key=b"k" * 32, me=me, settings=settings, seed=seed) as radio:
        async with asyncio.timeout(20):
            while radio.connect_failures < 3:
                await asyncio.sleep(0.05)
    logged = [
        float(m.group(1))
        for r in caplog.records
        if (m := re.search(r"retrying in ([0-9.]+) s", r.getMessage()))
    ]
    # The waits the radio draws: full jitter over a doubling backoff, from its seeded rng.
    rng = random.Random(seed)
    nominal = [0.4, 0.8, 1.6]
    waited = [b * (0.5 + 0.5 * rng.random()) for b in nominal]
    assert logged[:3] == [round(w, 1) for w in waited]
    assert [round(w, 1) for w in waited] != nominal  # the nominal backoff is not what is logged
