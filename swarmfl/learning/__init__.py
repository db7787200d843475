"""swarmfl.learning: what a drone trains, on what data, within what memory.

Models (:mod:`~swarmfl.learning.models`, and :mod:`~swarmfl.learning.spec` describing them without
torch), the learner seam (:mod:`~swarmfl.learning.seam`) with its torch implementation
(:mod:`~swarmfl.learning.learner`) and its numpy one (:mod:`~swarmfl.learning.lean`), memory
planning and measurement, datasets and partitions, and pretrained starts. No I/O beyond reading
data and weight files, no asyncio, no config files: values come in already validated.
"""
