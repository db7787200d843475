"""swarmfl.learning: what a drone trains, on what data, within what memory.

Models (:mod:`~swarmfl.learning.models`, and :mod:`~swarmfl.learning.spec` describing them
without torch), the learner seam (:mod:`~swarmfl.learning.seam`) with its torch implementation
(:mod:`~swarmfl.learning.learner`) and its numpy one (:mod:`~swarmfl.learning.lean`), both
stepping through :mod:`~swarmfl.learning.sgd`; memory plans (:mod:`~swarmfl.learning.trainplan`,
torch-free value objects), the planner (:mod:`~swarmfl.learning.plan`) and the measurement of the
learner's real working set (:mod:`~swarmfl.learning.measure`); datasets
(:mod:`~swarmfl.learning.datasets`, :mod:`~swarmfl.learning.datafiles`) and how a swarm splits
them (:mod:`~swarmfl.learning.partition`); pretrained starts (:mod:`~swarmfl.learning.pretrained`).
No I/O beyond reading data and weight files, no asyncio, no config files: values come in already
validated.
"""
