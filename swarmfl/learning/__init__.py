"""swarmfl.learning: what a drone trains, on what data, within what memory.

Models (:mod:`~swarmfl.learning.models`), the learner seam and its torch implementation
(:mod:`~swarmfl.learning.learner`), memory planning and measurement, datasets
(:mod:`~swarmfl.learning.datasets`, :mod:`~swarmfl.learning.datafiles`), partitions
(:mod:`~swarmfl.learning.partition`) and pretrained starts. No I/O beyond reading data and weight
files, no asyncio, no config files: values come in already validated.
"""
