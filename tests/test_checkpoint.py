"""Checkpoints: exact round trips, crash safety, corruption detection, rotation, no pickle."""

from __future__ import annotations

import hashlib
import json
import logging
import struct
from pathlib import Path

import numpy as np
import pytest

from swarmfl.core.checkpoint import MAGIC, Checkpoint, decode, encode
from swarmfl.errors import CheckpointError, ConfigError
from swarmfl.field.checkpoint import CheckpointStore


def make_checkpoint(counter: int = 7, *, seed: int = 0) -> Checkpoint:
    rng = np.random.default_rng(seed)
    return Checkpoint(
        drone_id=3,
        counter=counter,
        seq=counter * 2 + 1,
        arrays={
            "params": rng.standard_normal(37).astype(np.float32),
            "replica": rng.standard_normal((4, 5)).astype(np.float32),
            "q": rng.integers(-128, 128, size=11, dtype=np.int8),
            "step": np.array(123456789012345, dtype=np.int64),
            "mask": np.array([True, False, True]),
            "big_endian": np.arange(6, dtype=">u2").reshape(2, 3),
            "half": np.array([1.5, -2.25], dtype=np.float16),
            "empty": np.zeros((0,), dtype=np.float32),
            "empty_2d": np.zeros((3, 0), dtype=np.int64),
        },
        meta={"accuracy": 0.875, "bytes_sent": 123_456, "plan": {"trains": "suffix:2"}},
        created_at=1234.5 + counter,
    )


def assert_same(a: Checkpoint, b: Checkpoint) -> None:
    assert (a.drone_id, a.counter, a.seq, a.meta, a.created_at) == (
        b.drone_id,
        b.counter,
        b.seq,
        b.meta,
        b.created_at,
    )
    assert list(a.arrays) == list(b.arrays)
    for name, array in a.arrays.items():
        other = b.arrays[name]
        assert other.dtype == array.dtype, name
        assert other.shape == array.shape, name
        np.testing.assert_array_equal(other, array, err_msg=name)


def small_checkpoint() -> Checkpoint:
    return Checkpoint(
        drone_id=1,
        counter=2,
        seq=3,
        arrays={"w": np.arange(5, dtype=np.float32), "b": np.array([-1, 2], dtype=np.int8)},
        meta={"acc": 0.5},
        created_at=10.0,
    )


def craft(header: dict[str, object], payload: bytes) -> bytes:
    """A well-formed file (correct lengths and checksum) around an arbitrary header and payload."""
    json_bytes = json.dumps(header).encode()
    prefix_size = struct.calcsize("<8sHHIQ")
    start = prefix_size + 32 + len(json_bytes)
    pad = -start % 64
    body = json_bytes + b"\0" * pad + payload
    prefix = struct.pack("<8sHHIQ", MAGIC, 1, 0, len(json_bytes), len(body))
    digest = hashlib.sha256(prefix + body).digest()
    return prefix + digest + body


def test_round_trip_through_the_store_keeps_every_dtype_and_shape(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    ckpt = make_checkpoint()
    path = store.save(ckpt)
    assert path == tmp_path / "ckpt-000000000007.swfl"
    loaded = store.load_latest()
    assert loaded is not None
    assert_same(ckpt, loaded)
    # Loaded arrays are writable so they can be used as model state directly.
    loaded.arrays["params"][0] = 42.0
    assert loaded.arrays["params"][0] == 42.0


def test_round_trip_of_non_contiguous_and_scalar_arrays() -> None:
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    ckpt = Checkpoint(
        drone_id=0,
        counter=0,
        seq=0,
        arrays={"t": base.T, "slice": base[::2, 1::3], "scalar": np.array(2.5, dtype=np.float32)},
        meta={},
        created_at=0.0,
    )
    assert_same(ckpt, decode(encode(ckpt)))


def test_empty_store_loads_none(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "missing").load_latest() is None
    assert CheckpointStore(tmp_path).load_latest() is None


def test_crash_leftovers_fall_back_to_previous_good_checkpoint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = CheckpointStore(tmp_path)
    store.save(make_checkpoint(5, seed=5))
    newest = store.save(make_checkpoint(6, seed=6))
    # A crash mid-write leaves a temp file; a failing disk can still truncate the newest file.
    leftover = tmp_path / ".ckpt-000000000007.swfl.deadbeef.tmp"
    leftover.write_bytes(encode(make_checkpoint(7))[:100])
    newest.write_bytes(newest.read_bytes()[:-10])

    with caplog.at_level(logging.WARNING, logger="swarmfl.field.checkpoint"):
        loaded = store.load_latest()

    assert loaded is not None
    assert_same(make_checkpoint(5, seed=5), loaded)
    assert not leftover.exists()
    assert any("ckpt-000000000006.swfl" in r.getMessage() for r in caplog.records)


def test_every_truncation_is_detected() -> None:
    data = encode(small_checkpoint())
    for length in range(len(data)):
        with pytest.raises(CheckpointError, match=r"x\.swfl"):
            decode(data[:length], source="x.swfl")


def test_every_flipped_byte_is_detected() -> None:
    data = encode(small_checkpoint())
    for i in range(len(data)):
        corrupt = bytearray(data)
        corrupt[i] ^= 0x01
        with pytest.raises(CheckpointError):
            decode(bytes(corrupt))


def test_trailing_bytes_are_refused() -> None:
    with pytest.raises(CheckpointError, match="truncated"):
        decode(encode(small_checkpoint()) + b"\0")


def test_load_names_the_file_and_the_problem(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    bad = tmp_path / "ckpt-000000000001.swfl"
    bad.write_bytes(b"NOTACKPT" + bytes(100))
    with pytest.raises(CheckpointError, match=r"ckpt-000000000001\.swfl: bad magic"):
        store.load(bad)
    with pytest.raises(CheckpointError, match="cannot read"):
        store.load(tmp_path / "nope.swfl")


def test_keep_n_rotation(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for counter in range(1, 6):
        store.save(make_checkpoint(counter))
    assert [p.name for p in store.checkpoint_paths()] == [
        "ckpt-000000000005.swfl",
        "ckpt-000000000004.swfl",
    ]
    latest = store.load_latest()
    assert latest is not None
    assert latest.counter == 5


def test_save_after_falling_back_supersedes_the_corrupt_newer_file(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=1)
    store.save(make_checkpoint(1))
    corrupt = tmp_path / "ckpt-000000000009.swfl"
    corrupt.write_bytes(b"garbage")
    restored = store.load_latest()
    assert restored is not None
    assert restored.counter == 1

    store.save(make_checkpoint(2))

    assert not corrupt.exists()
    latest = store.load_latest()
    assert latest is not None
    assert latest.counter == 2


def one_array_header(name: str, dtype: str, length: int) -> dict[str, object]:
    """A checkpoint header declaring one array of ``length`` values of ``dtype``."""
    return {
        "drone_id": 1,
        "counter": 1,
        "seq": 1,
        "created_at": 0.0,
        "meta": {},
        "arrays": [{"name": name, "dtype": dtype, "shape": [length]}],
    }


def test_object_array_file_is_refused_even_with_a_valid_checksum() -> None:
    header = one_array_header("evil", "|O", 1)
    with pytest.raises(CheckpointError, match="object dtype"):
        decode(craft(header, b"\0" * 8))


@pytest.mark.parametrize("dtype", ["|V8", "f4,i4", "<U3", "<M8[s]", "(2,)<f4", "not-a-dtype"])
def test_non_numeric_dtypes_are_refused(dtype: str) -> None:
    header = one_array_header("a", dtype, 1)
    with pytest.raises(CheckpointError, match="dtype"):
        decode(craft(header, b"\0" * 12))


def test_sizes_that_do_not_add_up_are_refused() -> None:
    header = one_array_header("a", "<f4", 1_000_000_000_000)
    with pytest.raises(CheckpointError, match="add up"):
        decode(craft(header, b"\0" * 16))


@pytest.mark.parametrize(
    "header",
    [
        [],
        {"drone_id": "1", "counter": 1, "seq": 1, "created_at": 0.0, "meta": {}, "arrays": []},
        {"drone_id": 1, "counter": 1, "seq": 1, "created_at": 0.0, "meta": [], "arrays": []},
        {"drone_id": 1, "counter": 1, "seq": 1, "created_at": 0.0, "meta": {}, "arrays": [{}]},
        {"drone_id": -1, "counter": 1, "seq": 1, "created_at": 0.0, "meta": {}, "arrays": []},
    ],
)
def test_malformed_headers_are_refused(header: object) -> None:
    with pytest.raises(CheckpointError):
        decode(craft(header, b""))  # type: ignore[arg-type]


def test_save_refuses_object_arrays_and_bad_fields() -> None:
    with pytest.raises(ConfigError, match=r"arrays\.x"):
        Checkpoint(1, 1, 1, {"x": np.array([object()])}, {}, 0.0)
    with pytest.raises(ConfigError, match="meta"):
        Checkpoint(1, 1, 1, {}, {"x": object()}, 0.0)
    with pytest.raises(ConfigError, match="seq"):
        Checkpoint(1, 1, -1, {}, {}, 0.0)
    with pytest.raises(ConfigError, match="keep"):
        CheckpointStore(Path("."), keep=0)
