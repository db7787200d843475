"""A disk that fills up while a drone flies, with real agent processes and a real file size limit.

No root needed: a file size limit (``RLIMIT_FSIZE``) makes every write past it fail with EFBIG,
as a full disk fails with ENOSPC. The test lowers the running agent's limit with ``prlimit``
(the disk fills), raises it again (space freed), and lowers it once more before a SIGKILL. The
agent's stderr is a pipe (a pipe has no size limit) and its status log rotates below the limit.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _field_helpers import (
    SECRET,
    AgentProcess,
    agent_tables,
    free_port,
    read_status,
    static_discovery,
    terminate,
    unique_swarm_id,
    wait_until,
    write_config,
)

from swarmfl.core.checkpoint import Checkpoint
from swarmfl.errors import CheckpointError
from swarmfl.field.checkpoint import CheckpointStore, CheckpointWriteError, SaveFailures
from swarmfl.field.epoch import BootEpochFile

LOOPBACK = "127.0.0.1"
UNLIMITED = resource.RLIM_INFINITY
# The "disk" once full: below a checkpoint of the test's model (about 19 KB), above the largest
# status log (rotated past 4,000 bytes, so at most one line, about 1.5 KB, more than that).
FULL_BYTES = 8192
STATUS_LOG_MAX_BYTES = 4000

needs_prlimit = pytest.mark.skipif(
    not hasattr(resource, "prlimit") or not hasattr(signal, "SIGXFSZ"),
    reason="needs Linux prlimit and SIGXFSZ",
)


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """This process may not grow a file past ``limit`` bytes inside the block (EFBIG)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def checkpoint(counter: int, size: int) -> Checkpoint:
    return Checkpoint(
        drone_id=1,
        counter=counter,
        seq=counter,
        arrays={"params": np.full(size // 4, counter, dtype=np.float32)},
        meta={"rounds": counter},
        created_at=0.0,
    )


# -- the store and the failure log, in-process ---------------------------------------------------


@needs_prlimit
def test_a_save_past_the_limit_keeps_the_previous_checkpoint_and_leaves_no_temp_file(
    tmp_path: Path,
) -> None:
    store = CheckpointStore(tmp_path / "ckpt")
    store.save(checkpoint(3, 20_000))
    with file_size_limit(FULL_BYTES), pytest.raises(CheckpointWriteError) as info:
        store.save(checkpoint(6, 20_000))  # 8,192 bytes written, then EFBIG
    assert info.value.reason == os.strerror(errno.EFBIG)  # "File too large"
    assert str(info.value).startswith(f"{store.path_for(6)}: cannot write checkpoint: ")
    assert sorted(p.name for p in store.directory.iterdir()) == ["ckpt-000000000003.swfl"]
    latest = store.load_latest()
    assert latest is not None and latest.counter == 3
    # Space again: the next save goes through.
    store.save(checkpoint(9, 20_000))
    assert store.checkpoint_paths()[0].name == "ckpt-000000000009.swfl"


@needs_prlimit
def test_a_boot_epoch_past_the_limit_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    epoch = BootEpochFile(tmp_path)
    epoch.write(4)
    with file_size_limit(1), pytest.raises(CheckpointError, match="File too large"):
        epoch.write(5)  # "5\n": one byte fits, the second does not
    assert epoch.read() == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch"]


def test_failures_are_one_line_per_kind_and_the_recovery_one_line() -> None:
    failures = SaveFailures()
    assert failures.succeeded() is None  # nothing failed: no recovery line
    full = CheckpointWriteError(Path("/d/ckpt-000000000003.swfl"), "No space left on device")
    first = failures.failed(full)
    assert first is not None and "No space left on device" in first
    assert "/d/ckpt-000000000003.swfl" in first
    later = CheckpointWriteError(Path("/d/ckpt-000000000006.swfl"), "No space left on device")
    assert failures.failed(later) is None  # the same failure again: counted, not logged
    assert (failures.count, failures.reason) == (2, "No space left on device")
    other = CheckpointWriteError(Path("/d/ckpt-000000000009.swfl"), "Read-only file system")
    changed = failures.failed(other)
    assert changed is not None and "Read-only file system" in changed
    assert failures.succeeded() == "checkpoints are written again, after 3 failed"
    assert (failures.count, failures.reason) == (3, None)
    assert failures.succeeded() is None
    # A new episode of the same kind is news again.
    assert failures.failed(later) is not None
    assert failures.succeeded() == "checkpoints are written again, after 1 failed"


# -- a real agent whose disk fills up ---------------------------------------------------------


def _ignore_sigxfsz(limit: int | None) -> Any:
    def preexec() -> None:  # runs in the child between fork and exec
        # Past the limit the kernel sends SIGXFSZ, whose default action kills the process; an
        # ignored signal stays ignored across exec (and Python ignores it too), so writes fail
        # with EFBIG instead, as writes to a full disk fail with ENOSPC.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        if limit is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, UNLIMITED))

    return preexec


class PipedAgent:
    """A ``swarmfl agent`` whose file size limit the test sets; its stderr read from a pipe."""

    def __init__(self, folder: Path, drone: int, config: Path) -> None:
        self.folder = folder
        self.status_path = folder / f"status-{drone}.jsonl"
        self.config = config
        self.process: subprocess.Popen[bytes] | None = None
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader: threading.Thread | None = None

    def start(self, limit: int | None = None) -> PipedAgent:
        env = dict(os.environ, SWARMFL_SECRET=SECRET, OMP_NUM_THREADS="1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "swarmfl.cli", "agent", "--config", str(self.config)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            preexec_fn=_ignore_sigxfsz(limit),
        )
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        return self

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            with self._lock:
                self._lines.append(raw.decode(errors="replace").rstrip("\n"))

    def stderr_lines(self) -> list[str]:
        with self._lock:
            return list(self._lines)

    def set_limit(self, limit: int) -> None:
        """The disk is full past ``limit`` bytes per file (``UNLIMITED``: space again)."""
        assert self.process is not None
        resource.prlimit(self.process.pid, resource.RLIMIT_FSIZE, (limit, UNLIMITED))

    def lines(self) -> list[dict[str, Any]]:
        """The status lines still on disk, rotated ones first."""
        rotated = read_status(self.status_path.with_name(self.status_path.name + ".1"))
        return rotated + read_status(self.status_path)

    def last(self) -> dict[str, Any]:
        current = read_status(self.status_path)
        return current[-1] if current else (self.lines() or [{}])[-1]

    def last_if(self, condition: Callable[[dict[str, Any]], bool]) -> dict[str, Any] | None:
        """The last status line if it meets ``condition``, else None."""
        last = self.last()
        return last if last and condition(last) else None

    def stop(self) -> None:
        process = self.process
        terminate(process)
        if self._reader is not None:
            self._reader.join(10)  # the pipe ends with the process
            self._reader = None
        if process is not None and process.stdout is not None:
            process.stdout.close()


def _config(folder: Path, drone: int, swarm_id: int, ports: dict[int, int]) -> Path:
    peer = 1 - drone
    tables = agent_tables(
        folder,
        drone,
        swarm_id,
        shards=2,
        port=ports[drone],
        extra={
            # lean: no torch to import, so a restart is quick; 64 hidden units: a checkpoint of
            # about 19 KB, over the "full disk" limit
            "training": {"backend": "lean"},
            "model": {"hidden": [64]},
            "run": {"eval_interval_s": 1.0},
            "discovery": static_discovery({peer: ports[peer]}),
            "status": {"log_max_bytes": STATUS_LOG_MAX_BYTES},
        },
    )
    del tables["training"]["threads"]  # a torch setting
    return write_config(folder, drone, tables)


def _failure_lines(agent: PipedAgent) -> list[str]:
    return [line for line in agent.stderr_lines() if "cannot write checkpoint" in line]


def _recovery_lines(agent: PipedAgent) -> list[str]:
    return [line for line in agent.stderr_lines() if "checkpoints are written again" in line]


def _temp_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def _newest_on_disk(store: CheckpointStore) -> tuple[Checkpoint, bytes]:
    """The newest checkpoint file, verified, and its bytes."""
    # Not load_latest(): it removes temp files, and the test checks the agent does.
    path = store.checkpoint_paths()[0]
    return store.load(path), path.read_bytes()


@needs_prlimit
@pytest.mark.network
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_disk_that_fills_while_flying_is_one_line_and_a_status_field_and_resume_still_works(
    tmp_path: Path,
) -> None:
    swarm_id = unique_swarm_id()
    ports = {0: free_port(), 1: free_port()}
    drone = PipedAgent(tmp_path, 0, _config(tmp_path, 0, swarm_id, ports))
    peer = AgentProcess(tmp_path, 1, _config(tmp_path, 1, swarm_id, ports))
    store = CheckpointStore(tmp_path / "ckpt-0")
    try:
        drone.start()
        peer.start()
        wait_until(
            lambda: (
                drone.last().get("frames_accepted", 0) >= 3 and len(store.checkpoint_paths()) >= 2
            ),
            120,
            "drone 0 to merge its peer's frames and write two checkpoints",
        )

        # 1. The disk fills up: every checkpoint fails, the drone flies on.
        drone.set_limit(FULL_BYTES)
        failing = wait_until(
            lambda: next((s for s in drone.lines() if s.get("checkpoint_failures")), None),
            60,
            "a checkpoint to fail",
        )
        assert failing["checkpoint_error"] == "File too large"
        # No save can succeed after a failure while the disk is full: this stays the newest.
        kept, kept_bytes = _newest_on_disk(store)
        # Three failures (six rounds, one save every three) while it trains and merges on.
        during = wait_until(
            lambda: drone.last_if(
                lambda s: (
                    s.get("checkpoint_failures", 0) >= 3
                    and s["frames_accepted"] > failing["frames_accepted"]
                )
            ),
            60,
            "three failed checkpoints, and frames of the peer merged meanwhile",
        )
        assert drone.process is not None and drone.process.poll() is None
        assert during["state"] == "running" and during["checkpoint_error"] == "File too large"
        assert during["rounds"] > failing["rounds"] and during["counter"] > kept.counter
        # The checkpoint from before is the newest on disk, whole; no temp file is left behind.
        assert _newest_on_disk(store)[1] == kept_bytes
        assert wait_until(lambda: not _temp_files(store.directory), 30, "no temp files") is True
        # One line for the whole episode, with the reason, and no traceback.
        failures = _failure_lines(drone)
        assert len(failures) == 1, failures
        assert "WARNING" in failures[0] and "File too large" in failures[0]
        assert not any("Traceback" in line for line in drone.stderr_lines())

        # 2. Space again: the next checkpoint is written, the error clears, one line says so.
        drone.set_limit(UNLIMITED)
        recovered = wait_until(
            lambda: drone.last_if(
                lambda s: "checkpoint_error" in s and s["checkpoint_error"] is None
            ),
            60,
            "a checkpoint to succeed again",
        )
        assert recovered["checkpoint_failures"] >= 3
        assert _newest_on_disk(store)[0].counter > kept.counter
        (line,) = _recovery_lines(drone)
        match = re.search(r"written again, after (\d+) failed", line)
        assert match is not None and int(match.group(1)) == recovered["checkpoint_failures"]
        assert len(_failure_lines(drone)) == 1

        # 3. Full again, then killed: the restart resumes from the last checkpoint that was
        # written, not from anything half-written after it.
        before = recovered["checkpoint_failures"]
        drone.set_limit(FULL_BYTES)
        wait_until(
            lambda: drone.last().get("checkpoint_failures", 0) > before,
            60,
            "a checkpoint to fail again",
        )
        last_good, last_good_bytes = _newest_on_disk(store)
        flown_on = wait_until(
            lambda: drone.last_if(lambda s: s["counter"] > last_good.counter),
            60,
            "the drone to train past its last checkpoint",
        )
        assert len(_failure_lines(drone)) == 2  # a new episode: one line again
        drone.process.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        drone.process.wait(30)  # type: ignore[union-attr]
        drone.stop()
        killed_at = time.time()
        assert _newest_on_disk(store)[1] == last_good_bytes

        drone.start()  # a new life, with space on the disk
        resumed = wait_until(
            lambda: next(
                (s for s in drone.lines() if s["state"] == "resumed" and s["t"] > killed_at),
                None,
            ),
            120,
            "the restarted drone's first status line",
        )
        assert resumed["resumed_from"] == last_good.counter < flown_on["counter"]
        assert resumed["rounds"] == last_good.meta["rounds"]
        assert resumed["checkpoint_failures"] == 0 and resumed["checkpoint_error"] is None
        assert any(f"resumed at update {last_good.counter}" in s for s in drone.stderr_lines())
        assert not any("Traceback" in line for line in drone.stderr_lines())
    except BaseException:
        sys.stderr.write("--- drone 0 ---\n" + "\n".join(drone.stderr_lines()[-60:]) + "\n")
        raise
    finally:
        drone.stop()
        peer.stop()


@needs_prlimit
@pytest.mark.network
@pytest.mark.timeout(180)
def test_a_drone_whose_disk_is_full_at_start_refuses_to_fly_in_one_line(tmp_path: Path) -> None:
    ports = {0: free_port(), 1: free_port()}
    config = _config(tmp_path, 0, unique_swarm_id(), ports)
    env = dict(os.environ, SWARMFL_SECRET=SECRET, OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "swarmfl.cli", "agent", "--config", str(config)],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        preexec_fn=_ignore_sigxfsz(1),  # not even the boot epoch ("1\n") fits
        timeout=150,
        check=False,
    )
    # Flying without its epoch on disk could make a later life reuse this one's frame numbers.
    assert done.returncode == 2
    assert done.stdout == b""
    lines = done.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    assert "key 'checkpoint.dir'" in lines[0]
    assert "cannot write the boot epoch: File too large" in lines[0]
    # Nothing left behind: no epoch, no temp file, no status line.
    assert list((tmp_path / "ckpt-0").iterdir()) == []
    assert read_status(tmp_path / "status-0.jsonl") == []
