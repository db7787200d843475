"""The whole field agent's memory: a prediction of its peak RSS, and the budget that refuses a
drone too small to hold it.

The training planner (:mod:`swarmfl.learning.plan`) counts the training working set; a companion
computer must also hold the Python runtime with the libraries the agent imports, the data, the
model's copies, the peers' replicas and the radio's buffers. :func:`process_plan` adds them up
for an assembled drone (:class:`ProcessPlan`), and :func:`check_process_budget` refuses a
``training.process_budget_bytes`` below that total with one line naming the smallest budget that
fits.

The runtime is not computed but measured: :data:`RUNTIME_BASELINE_BYTES` per backend (see its
docstring for how). Everything else is counted from the arrays the agent allocates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from swarmfl.config.drone_file import LoadedDroneConfig
from swarmfl.drone import AssembledDrone, DroneAssembly
from swarmfl.errors import ConfigError
from swarmfl.learning.lean import EVALUATION_CHUNK
from swarmfl.learning.trainplan import codec_buffer_bytes
from swarmfl.radio.link import LinkConfig
from swarmfl.sizes import format_bytes

__all__ = [
    "RUNTIME_BASELINE_BYTES",
    "ProcessPlan",
    "check_process_budget",
    "drone_process_plan",
    "process_plan",
]

_F32 = 4
_I64 = 8

RUNTIME_BASELINE_BYTES: dict[str, int] = {
    "lean": 81_600 * 1024,
    "torch": 325_300 * 1024,
}
"""Peak RSS of a field agent beyond what :func:`process_plan` counts, per backend.

Measured (``benchmarks/bench_lean_agent.py --calibrate``, x86-64 Linux, CPython 3.11, numpy 2,
torch 2 CPU build) as the peak RSS (``VmHWM``) of four real ``swarmfl agent`` processes on the
smallest model (a 64-8-10 MLP, a quarter of digits each, UDP radio, zeroconf on loopback)
trained for 20 rounds, minus each drone's own :class:`ProcessPlan` components; two runs gave
325,279 and 326,206 KiB (torch), 81,628 and 81,491 KiB (lean). What it holds: the
interpreter, the imported libraries (numpy, scipy's BLAS, pydantic, zeroconf, aiomqtt,
cryptography; plus torch for ``"torch"``), the event loop, the worker thread and allocator
slack. Re-measure on the target board: another libc or wheel moves it by megabytes.
"""


@dataclass(frozen=True)
class ProcessPlan:
    """The predicted peak RSS of one field agent, by component, in bytes.

    ``runtime``: the interpreter and imported libraries (:data:`RUNTIME_BASELINE_BYTES`);
    ``data``: the loaded dataset, this drone's shard and its evaluation subset; ``model``: the
    swarm's initial weights and the learner's live copy; ``training``: gradients, momentum
    and the activations one batch keeps; ``replicas``: peers' replicas and the codec's
    buffers; ``radio``: the send queue and the reassembly buffers, bounded by the largest
    frame this model makes.
    """

    backend: str
    runtime: int
    data: int
    model: int
    training: int
    replicas: int
    radio: int

    @property
    def total(self) -> int:
        """The predicted peak RSS of the whole agent."""
        return self.runtime + self.data + self.model + self.training + self.replicas + self.radio

    def as_dict(self) -> dict[str, int]:
        """Each component and the total, in bytes."""
        return {
            "runtime": self.runtime,
            "data": self.data,
            "model": self.model,
            "training": self.training,
            "replicas": self.replicas,
            "radio": self.radio,
            "total": self.total,
        }

    def describe(self) -> str:
        """One line: the total and its parts, e.g. ``"83.1 MiB peak RSS (runtime 75.8 MiB +
        data 1.2 MiB + ...)"``."""
        parts = " + ".join(
            f"{name} {format_bytes(value)}"
            for name, value in self.as_dict().items()
            if name != "total"
        )
        return f"{format_bytes(self.total)} peak RSS ({self.backend}: {parts})"


def _activation_elements(assembly: DroneAssembly) -> int:
    """Values one sample's forward pass produces, layer after layer (what backward keeps)."""
    return sum(math.prod(layer.out_shape) for layer in assembly.spec.layers)


def process_plan(
    assembly: DroneAssembly, drone: AssembledDrone, *, neighbour_replicas: int
) -> ProcessPlan:
    """The predicted peak RSS of a field agent flying ``drone`` (assembled by ``assembly``)
    holding ``neighbour_replicas`` peers' replicas."""
    settings = assembly.settings
    dataset = assembly.dataset
    learner = drone.learner
    shard = len(drone.indices)
    sample_values = math.prod(dataset.input_shape)
    data = (
        dataset.x_train.nbytes
        + dataset.y_train.nbytes
        + dataset.x_test.nbytes
        + dataset.y_test.nbytes
        + shard * (sample_values * _F32 + _I64)  # the learner's own shard
        + assembly.x_eval.nbytes
        + assembly.y_eval.nbytes
    )
    numel = assembly.spec.numel
    model = 2 * numel * _F32  # the shared initial vector and the learner's live copy
    offsets = learner.layer_offsets
    trained = [offsets[i + 1] - offsets[i] for i in learner.trained_layers]
    trained_bytes = sum(trained) * _F32
    momentum = trained_bytes if settings.training.momentum > 0 else 0
    batch = min(settings.training.batch_size, shard)
    if drone.plan is not None:
        activations = drone.plan.predicted.activations
    else:
        # what backward keeps, the gradient flowing back, and the batch's gathered inputs
        activations = batch * (2 * _activation_elements(assembly) + sample_values) * _F32
    # evaluation runs between rounds, never during one: the larger of the two forward passes
    evaluated = len(assembly.y_eval)
    if drone.backend == "lean":
        evaluated = min(evaluated, EVALUATION_CHUNK)
    evaluation = evaluated * _activation_elements(assembly) * _F32
    training = trained_bytes + momentum + max(activations, evaluation)
    gossip = settings.gossip
    replicas = neighbour_replicas * numel * _F32 + codec_buffer_bytes(
        trained, gossip.codec, gossip.block_size
    )
    link: LinkConfig = drone.link_config
    largest_frame = 4 * sum(trained) + 256  # an fp32 keyframe of what it trains, with headers
    peer_frame = 4 * numel + 256  # peers may send every layer
    radio = min(link.queue_bytes, link.queue_frames * largest_frame) + min(
        link.reassembly_buffer_bytes, max(1, neighbour_replicas) * peer_frame
    )
    return ProcessPlan(
        backend=drone.backend,
        runtime=RUNTIME_BASELINE_BYTES[drone.backend],
        data=data,
        model=model,
        training=training,
        replicas=replicas,
        radio=radio,
    )


def check_process_budget(
    plan: ProcessPlan, budget_bytes: int | None, key: str = "training.process_budget_bytes"
) -> None:
    """Refuse a whole-process budget below ``plan.total``.

    Raises:
        ConfigError: naming ``key``, the budget, the prediction and the smallest budget that
            fits (the prediction, in bytes).
    """
    if budget_bytes is None or plan.total <= budget_bytes:
        return
    raise ConfigError(
        f"budget {format_bytes(budget_bytes)} is below this drone's predicted "
        f"{plan.describe()}; the smallest budget that fits is {plan.total} bytes",
        key=key,
    )


def drone_process_plan(loaded: LoadedDroneConfig) -> tuple[ProcessPlan, int | None]:
    """The process plan of the drone a ``drone.toml`` describes (assembled as the agent would,
    without opening a radio), and its ``training.process_budget_bytes``.

    Raises :class:`ConfigError` naming the config file for what the agent would refuse.
    """
    from swarmfl.field.agent import drone_settings, field_device

    config = loaded.config
    try:
        assembly = DroneAssembly(drone_settings(loaded))
        drone = assembly.build(config.drone.id, config.data.shard, field_device(loaded))
    except ConfigError as exc:
        if exc.source is not None:
            raise
        raise ConfigError(exc.problem, source=str(loaded.source), key=exc.key) from None
    plan = process_plan(assembly, drone, neighbour_replicas=config.training.neighbour_replicas)
    return plan, config.training.process_budget_bytes
