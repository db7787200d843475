"""swarmfl.radio: how bytes move between drones.

A radio is an *unreliable, unordered datagram broadcast*: a frame handed to :meth:`Radio.send`
may arrive at any subset of the neighbours, in any order, or not at all. The simulated, UDP and
MQTT radios all honour the :class:`Radio` protocol; the UDP radio, which sends to the peers
discovery finds, is also a :class:`UnicastRadio`.
"""

from swarmfl.radio.base import Radio, ReceivedFrame, UnicastRadio

__all__ = ["Radio", "ReceivedFrame", "UnicastRadio"]
