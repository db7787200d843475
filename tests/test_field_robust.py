"""A captured drone in a real field swarm: two ``swarmfl agent`` processes over UDP merge with
``merge.rule = "clip"``; a third process holds valid keys and sends them its model scaled by
100 each period through the real node and UDP radio (tests/_field_attacker.py). Both honest
agents' status names it a suspected attacker, counts the replicas they clipped, and the one
training with DP-SGD reports the privacy it spent.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from _field_helpers import (
    SECRET,
    AgentProcess,
    agent_tables,
    agents,
    free_port,
    unique_swarm_id,
    wait_until,
    write_config,
)

from swarmfl.field.status_table import COLUMNS, table_rows

pytestmark = [pytest.mark.network]

LOOPBACK = "127.0.0.1"
ATTACKER = 2


@pytest.mark.timeout(180)
def test_honest_field_agents_name_an_insider_sending_scaled_models(tmp_path: Path) -> None:
    swarm_id = unique_swarm_id()
    ports = [free_port() for _ in range(3)]
    configs = []
    for drone in range(3):
        peers = [
            {"id": other, "host": LOOPBACK, "port": ports[other]}
            for other in (0, 1)
            if other != drone
        ]
        extra = {
            "discovery": {"kind": "static", "peers": peers},
            "merge": {"rule": "clip", "tolerate": 1},
            "gossip": {"codec": "fp32"},
        }
        if drone == 0:
            extra["training.dp"] = {"enabled": True, "noise_multiplier": 1.0, "clip_norm": 1.0}
        tables = agent_tables(tmp_path, drone, swarm_id, shards=3, port=ports[drone], extra=extra)
        configs.append(write_config(tmp_path, drone, tables))
    honest = [AgentProcess(tmp_path, drone, configs[drone]) for drone in (0, 1)]
    env = dict(os.environ, SWARMFL_SECRET=SECRET, OMP_NUM_THREADS="1")
    script = Path(__file__).with_name("_field_attacker.py")
    with agents(honest):
        for agent in honest:
            agent.start()
        with open(tmp_path / "attacker.err", "wb") as err:
            attacker = subprocess.Popen(
                [sys.executable, str(script), str(configs[ATTACKER]), "100", "0.3"]
                + [f"{d}:{ports[d]}" for d in (0, 1)],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
            try:
                records = [
                    wait_until(
                        lambda agent=agent: _naming(agent),
                        90,
                        f"drone {agent.drone}'s status to name drone {ATTACKER}",
                    )
                    for agent in honest
                ]
            finally:
                attacker.send_signal(signal.SIGTERM)
                attacker.wait(20)
    for record in records:
        conduct = record["merge_conduct"]
        assert record["merge_rule"] == "clip"
        assert conduct[str(ATTACKER)]["clipped"] >= 5
        assert conduct[str(ATTACKER)]["outliers"] >= 5
        assert record["replicas_clipped"] >= conduct[str(ATTACKER)]["clipped"]
        assert record["suspects"] == [ATTACKER]  # the honest peer is not suspected
        assert record["accuracy"] is not None
    private, plain = records
    assert private["epsilon"] > 0 and private["delta"] == 1e-5
    assert plain["epsilon"] is None
    headers = [header for header, _, _ in COLUMNS]
    rows = [
        dict(zip(headers, row, strict=True))
        for row in table_rows({0: private, 1: plain}, private["mono"])
    ]
    assert (rows[0]["suspects"], rows[0]["eps"]) == (str(ATTACKER), f"{private['epsilon']:.2f}")
    assert (rows[1]["suspects"], rows[1]["eps"]) == (str(ATTACKER), "-")


def _naming(agent: AgentProcess) -> dict | None:
    """The agent's last status if it names the attacker, with the honest peer merged too."""
    last = agent.last()
    if last is None or ATTACKER not in (last.get("suspects") or []):
        return None
    other = str(1 - agent.drone)
    return last if last["merge_conduct"].get(other, {}).get("merges", 0) >= 3 else None
