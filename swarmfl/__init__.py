"""swarmfl: peer-to-peer, decentralised gossip learning for drone swarms.

Every drone runs the same asyncio :class:`~swarmfl.agent.Agent`: it trains the part of a shared
PyTorch model that fits its memory on data that never leaves it, gossips compressed model
updates over an unreliable radio, and merges what it hears with staleness-weighted averaging.
There is no coordinator. The simulator (:mod:`swarmfl.sim`) runs whole swarms in virtual time;
radios live in :mod:`swarmfl.radio`; :mod:`swarmfl.testing` helps users write swarm tests.
"""

from swarmfl.errors import (
    ConfigError,
    FrameDecodeError,
    PeerError,
    RadioError,
    SwarmError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FrameDecodeError",
    "PeerError",
    "RadioError",
    "SwarmError",
    "__version__",
]
