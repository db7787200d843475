"""A test swarm's shared settings, and the gossip nodes and frames the sans-IO tests build from it.

Every node of a swarm takes the same swarm id, model signature, key and layer layout; a test
module states them once as a :class:`SwarmSettings` and asks it for nodes, keyframes and
decoded frames.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from swarmfl.core.node import GossipNode, NodeConfig
from swarmfl.core.wire import Frame, FrameKind, decode_frame


@dataclass(frozen=True)
class SwarmSettings:
    """What every node of one test swarm shares."""

    swarm_id: int
    signature: bytes
    key: bytes
    layer_offsets: tuple[int, ...]

    def node(self, drone_id: int, **config: Any) -> GossipNode:
        """A node of this swarm; ``config`` holds the other :class:`NodeConfig` fields."""
        return GossipNode(
            NodeConfig(
                drone_id=drone_id,
                swarm_id=self.swarm_id,
                signature=self.signature,
                key=self.key,
                layer_offsets=self.layer_offsets,
                **config,
            )
        )

    def keyframe(self, sender: int, layers: tuple[int, ...], samples: int, payload: bytes) -> Frame:
        """A sender's first frame: a float32 keyframe (seq 0, counter 1) of ``layers``."""
        return Frame(
            kind=FrameKind.KEY,
            swarm_id=self.swarm_id,
            sender=sender,
            signature=self.signature,
            seq=0,
            counter=1,
            layers=layers,
            samples=samples,
            codec=0,
            block_size=128,
            payload=payload,
        )

    def decode(self, data: bytes | bytearray | memoryview) -> Frame:
        """``data`` decoded and authenticated as a frame of this swarm."""
        return decode_frame(data, self.key, swarm_id=self.swarm_id, signature=self.signature)
