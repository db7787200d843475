"""swarmfl.field: one drone in the field, on a companion computer (``swarmfl agent``).

The field harness around the shared :class:`~swarmfl.agent.Agent`: a real clock, training in a
worker thread, the UDP or MQTT radio, discovery, checkpoints on disk and the live status.
"""
