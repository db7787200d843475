"""swarmfl.learning.datasets, .datafiles and .partition: built-in datasets, .npz/IDX loaders,
partitions."""

from __future__ import annotations

import gzip
import random
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swarmfl.errors import ConfigError
from swarmfl.learning.datafiles import load_idx, load_npz, read_idx
from swarmfl.learning.datasets import BUILTIN_DATASETS, Dataset, load_builtin, stratified_split
from swarmfl.learning.partition import partition_dirichlet, partition_iid, shard

# --------------------------------------------------------------------------------------------------
# Dataset


def _tiny(**overrides: object) -> Dataset:
    fields: dict[str, object] = {
        "name": "tiny",
        "x_train": np.zeros((4, 1, 3), dtype=np.float32),
        "y_train": np.array([0, 1, 0, 1], dtype=np.int64),
        "x_test": np.zeros((2, 1, 3), dtype=np.float32),
        "y_test": np.array([0, 1], dtype=np.int64),
        "num_classes": 2,
        "input_shape": (1, 3),
    }
    fields.update(overrides)
    return Dataset(**fields)  # type: ignore[arg-type]


def test_dataset_accepts_valid_fields() -> None:
    d = _tiny()
    assert d.num_train == 4
    assert d.num_test == 2


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"x_train": np.zeros((4, 1, 3), dtype=np.float64)}, "x_train"),
        ({"x_train": np.zeros((4, 3), dtype=np.float32)}, "x_train"),
        ({"y_train": np.array([0, 1, 0, 1], dtype=np.int32)}, "y_train"),
        ({"y_train": np.array([0, 1, 0], dtype=np.int64)}, "y_train"),
        ({"y_test": np.array([0, 2], dtype=np.int64)}, "y_test"),
        ({"num_classes": 0}, "num_classes"),
        ({"input_shape": (1, 0)}, "input_shape"),
        ({"name": ""}, "name"),
        (
            {
                "x_train": np.zeros((0, 1, 3), dtype=np.float32),
                "y_train": np.zeros(0, dtype=np.int64),
            },
            "x_train",
        ),
    ],
)
def test_dataset_rejects_bad_field_naming_it(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        _tiny(**overrides)
    assert info.value.key == field


# --------------------------------------------------------------------------------------------------
# Built-in datasets


def test_digits_shapes_dtypes_and_split() -> None:
    d = load_builtin("digits", seed=0)
    assert d.name == "digits"
    assert d.input_shape == (1, 8, 8)
    assert d.x_train.shape == (1437, 1, 8, 8)
    assert d.x_test.shape == (360, 1, 8, 8)
    assert d.x_train.dtype == np.float32
    assert d.y_train.dtype == np.int64
    assert d.num_classes == 10
    # Stratified: every class is in the test set in proportion (digits has 174..183 per class).
    test_counts = np.bincount(d.y_test, minlength=10)
    assert test_counts.min() >= 34
    assert test_counts.max() <= 37


def test_digits_standardized_with_train_statistics() -> None:
    d = load_builtin("digits", seed=0)
    flat = d.x_train.reshape(len(d.x_train), -1)
    std = flat.std(axis=0)
    varying = std > 0
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(std[varying], 1.0, atol=1e-4)
    raw = load_builtin("digits", seed=0, standardize=False)
    assert raw.x_train.min() == 0.0
    assert raw.x_train.max() == 16.0


def test_builtin_is_cached_and_read_only() -> None:
    a = load_builtin("digits", seed=0)
    assert load_builtin("digits", seed=0, test_fraction=0.2, standardize=True) is a
    for arr in (a.x_train, a.y_train, a.x_test, a.y_test):
        assert not arr.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a.x_train[0, 0, 0, 0] = 1.0


def test_builtin_seed_changes_split_deterministically() -> None:
    a = load_builtin("digits", seed=1, standardize=False)
    b = load_builtin("digits", seed=2, standardize=False)
    assert not np.array_equal(a.y_test, b.y_test) or not np.array_equal(a.x_test, b.x_test)
    # Same content from a cold cache: the cache is not what makes it deterministic.
    from swarmfl.learning import datasets

    datasets._load_builtin_cached.cache_clear()
    again = load_builtin("digits", seed=1, standardize=False)
    assert again is not a
    np.testing.assert_array_equal(again.x_test, a.x_test)
    np.testing.assert_array_equal(again.y_train, a.y_train)


def test_digits_num_samples_takes_stratified_subset() -> None:
    d = load_builtin("digits", seed=0, num_samples=500)
    assert d.num_train + d.num_test == 500
    counts = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10)
    assert counts.min() >= 48
    assert counts.max() <= 52
    with pytest.raises(ConfigError, match="1797"):
        load_builtin("digits", seed=0, num_samples=5000)


def test_mnist1d_generates_locally_and_keeps_global_rng() -> None:
    random.seed(123)
    np.random.seed(123)
    expected_py = random.random()
    expected_np = np.random.random()
    random.seed(123)
    np.random.seed(123)
    d = load_builtin("mnist1d", seed=5, num_samples=400)
    assert random.random() == expected_py
    assert np.random.random() == expected_np
    assert d.input_shape == (1, 40)
    assert d.num_train + d.num_test == 400
    assert d.num_test == 80
    assert d.num_classes == 10
    assert set(np.unique(d.y_train)) == set(range(10))
    assert np.isfinite(d.x_train).all()


def test_unknown_builtin_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_builtin("cifar", seed=0)
    for name in BUILTIN_DATASETS:
        assert name in str(info.value)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_bad_test_fraction(fraction: float) -> None:
    with pytest.raises(ConfigError, match="test_fraction"):
        load_builtin("digits", seed=0, test_fraction=fraction)


def test_stratified_split_is_disjoint_and_covers() -> None:
    labels = np.repeat(np.arange(3), [50, 30, 20])
    train, test = stratified_split(labels, 0.25, np.random.default_rng(0))
    assert len(test) == 25
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    # 12.5, 7.5 and 5 test samples per class: one of the two halves rounds up.
    assert np.bincount(labels[test]).tolist() in ([13, 7, 5], [12, 8, 5])


# --------------------------------------------------------------------------------------------------
# Partitions


def _check_cover(parts: list[np.ndarray], n: int) -> None:
    everything = np.concatenate(parts)
    assert len(everything) == n, "parts overlap or miss samples"
    assert np.array_equal(np.sort(everything), np.arange(n))
    for part in parts:
        assert part.dtype == np.int64


def test_iid_partition_covers_disjoint_and_balanced() -> None:
    labels = load_builtin("digits", seed=0).y_train
    parts = partition_iid(labels, 7, np.random.default_rng(3))
    _check_cover(parts, len(labels))
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    again = partition_iid(labels, 7, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = partition_iid(labels, 7, np.random.default_rng(4))
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_partition_rejects_more_parts_than_samples() -> None:
    with pytest.raises(ConfigError, match="num_parts"):
        partition_iid(np.zeros(5, dtype=np.int64), 6, np.random.default_rng(0))


def test_dirichlet_partition_is_deterministic_and_covers() -> None:
    labels = load_builtin("digits", seed=0).y_train
    parts = partition_dirichlet(labels, 20, 0.5, np.random.default_rng(11))
    _check_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 2
    again = partition_dirichlet(labels, 20, 0.5, np.random.default_rng(11))
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def _mean_max_class_fraction(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def test_lower_alpha_is_more_skewed() -> None:
    labels = load_builtin("digits", seed=0).y_train
    skew = {
        alpha: np.mean(
            [
                _mean_max_class_fraction(
                    labels, partition_dirichlet(labels, 10, alpha, np.random.default_rng(seed))
                )
                for seed in range(3)
            ]
        )
        for alpha in (0.05, 0.5, 100.0)
    }
    assert skew[0.05] > skew[0.5] > skew[100.0]
    assert skew[0.05] > 0.6  # most of a part is one class
    assert skew[100.0] < 0.2  # near IID: 10 classes, about 0.1 each
    iid = partition_iid(labels, 10, np.random.default_rng(0))
    assert _mean_max_class_fraction(labels, iid) < 0.2


def test_thousand_part_dirichlet_is_fast_and_fills_every_part() -> None:
    labels = load_builtin("digits", seed=0).y_train
    # CPU time of this thread, not wall time: other work on a busy machine does not count.
    start = time.thread_time()
    parts = partition_dirichlet(labels, 1000, 0.1, np.random.default_rng(0), min_size=1)
    assert time.thread_time() - start < 0.5
    assert len(parts) == 1000
    _check_cover(parts, len(labels))
    assert min(len(p) for p in parts) >= 1


def test_dirichlet_infeasible_min_size_raises() -> None:
    labels = np.arange(1437) % 10
    with pytest.raises(ConfigError, match="min_size"):
        partition_dirichlet(labels, 1000, 0.5, np.random.default_rng(0), min_size=2)


@pytest.mark.parametrize("alpha", [0.0, -1.0, float("inf"), float("nan")])
def test_dirichlet_rejects_bad_alpha(alpha: float) -> None:
    with pytest.raises(ConfigError, match="alpha"):
        partition_dirichlet(np.zeros(10, dtype=np.int64), 2, alpha, np.random.default_rng(0))


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 300),
    num_classes=st.integers(1, 12),
    num_parts=st.integers(1, 60),
    alpha=st.floats(0.001, 50.0),
    min_size=st.integers(0, 4),
    seed=st.integers(0, 2**32 - 1),
)
def test_dirichlet_partition_properties(
    n: int, num_classes: int, num_parts: int, alpha: float, min_size: int, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(num_classes, size=n)
    if num_parts * min_size > n:
        with pytest.raises(ConfigError):
            partition_dirichlet(labels, num_parts, alpha, np.random.default_rng(seed), min_size)
        return
    parts = partition_dirichlet(labels, num_parts, alpha, np.random.default_rng(seed), min_size)
    assert len(parts) == num_parts
    _check_cover(parts, n)
    assert min(len(p) for p in parts) >= min_size


def test_shard_returns_the_part() -> None:
    d = load_builtin("digits", seed=0)
    idx = np.array([5, 0, 9])
    x, y = shard(d, idx)
    np.testing.assert_array_equal(x, d.x_train[idx])
    np.testing.assert_array_equal(y, d.y_train[idx])
    x[0] = 0.0  # the shard is the drone's own copy
    with pytest.raises(ConfigError, match="indices"):
        shard(d, np.array([d.num_train]))
    with pytest.raises(ConfigError, match="indices"):
        shard(d, np.array([0.5]))


# --------------------------------------------------------------------------------------------------
# .npz files


def test_npz_round_trip_with_test_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x_train = rng.normal(size=(30, 6)).astype(np.float32)
    y_train = np.arange(30) % 3
    x_test = rng.normal(size=(9, 6)).astype(np.float32)
    y_test = np.arange(9) % 4
    path = tmp_path / "mine.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    d = load_npz(path)
    assert d.name == "mine"
    assert d.input_shape == (1, 6)
    np.testing.assert_array_equal(d.x_train[:, 0], x_train)
    np.testing.assert_array_equal(d.y_test, y_test)
    assert d.num_classes == 4
    assert load_npz(path) is d  # cached while the file is unchanged


def test_npz_without_test_set_is_split(tmp_path: Path) -> None:
    x = np.arange(40 * 4 * 4, dtype=np.uint8).reshape(40, 4, 4)
    y = np.arange(40) % 2
    path = tmp_path / "images.npz"
    np.savez_compressed(path, x_train=x, y_train=y)
    d = load_npz(path, seed=1, test_fraction=0.25)
    assert d.input_shape == (1, 4, 4)
    assert d.num_test == 10
    assert d.x_train.max() <= 1.0  # uint8 scaled to [0, 1]
    together = np.sort(np.concatenate([d.x_train.ravel(), d.x_test.ravel()]))
    np.testing.assert_allclose(together, np.sort(x.ravel().astype(np.float32) / 255), rtol=1e-6)


def test_npz_folder_concatenates_in_sorted_name_order(tmp_path: Path) -> None:
    folder = tmp_path / "drone_data"
    folder.mkdir()
    # Written in reverse order, so only sorting by name puts a.npz's samples first.
    np.savez(
        folder / "b.npz", x=np.arange(100, 120, dtype=np.float32)[:, None], y=np.arange(20) % 2
    )
    np.savez(folder / "a.npz", x=np.arange(0, 20, dtype=np.float32)[:, None], y=np.arange(20) % 2)
    (folder / "notes.txt").write_text("ignored")
    d = load_npz(folder, test_fraction=0.1)
    assert d.name == "drone_data"
    assert d.num_train + d.num_test == 40
    values = d.x_train.ravel()
    # The train split keeps concatenation order: a's values (<20) all precede b's (>=100).
    assert np.all(np.diff(values) > 0)
    assert values[0] < 20
    assert values[-1] >= 100


def test_npz_missing_key_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((4, 2)))
    with pytest.raises(ConfigError, match="y_train") as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_npz_half_test_set_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "half.npz"
    np.savez(
        path, x_train=np.zeros((4, 2)), y_train=np.zeros(4, dtype=int), x_test=np.zeros((2, 2))
    )
    with pytest.raises(ConfigError, match="y_test") as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_npz_folder_file_missing_y_names_that_file(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 2)), y=np.zeros(4, dtype=int))
    np.savez(tmp_path / "b.npz", x=np.zeros((4, 2)))
    with pytest.raises(ConfigError) as info:
        load_npz(tmp_path)
    assert "b.npz" in str(info.value)
    assert "'y'" in str(info.value)


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.zeros((5, 2)), "y": np.zeros(4, dtype=int)}, "labels"),
        ({"x": np.zeros((5, 2)), "y": np.full(5, 0.5)}, "integer"),
        ({"x": np.zeros((5, 2)), "y": np.array([0, 1, -1, 0, 1])}, "negative"),
        ({"x": np.zeros(5), "y": np.zeros(5, dtype=int)}, "rank"),
        ({"x": np.full((5, 2), np.nan), "y": np.zeros(5, dtype=int)}, "NaN"),
    ],
)
def test_npz_bad_arrays_name_the_file(
    tmp_path: Path, arrays: dict[str, np.ndarray], fragment: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=fragment) as info:
        load_npz(path)
    assert str(path) in str(info.value)


def test_npz_not_an_archive(tmp_path: Path) -> None:
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"this is not a zip file at all")
    with pytest.raises(ConfigError) as info:
        load_npz(junk)
    assert str(junk) in str(info.value)
    npy = tmp_path / "single.npz"
    with open(npy, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(ConfigError, match=r"\.npy"):
        load_npz(npy)
    with pytest.raises(ConfigError, match="no such"):
        load_npz(tmp_path / "missing.npz")
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"no \.npz"):
        load_npz(empty)


# --------------------------------------------------------------------------------------------------
# IDX files


def _idx_bytes(arr: np.ndarray) -> bytes:
    assert arr.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.tobytes()


def _write(path: Path, payload: bytes) -> Path:
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 5, 7), dtype=np.uint8)
    images[:, 0, 0] = np.arange(50)  # a sample id, so labels can be checked after the split
    labels = (np.arange(50) % 5).astype(np.uint8)
    img_path = _write(tmp_path / f"train-images-idx3-ubyte{suffix}", _idx_bytes(images))
    lbl_path = _write(tmp_path / f"train-labels-idx1-ubyte{suffix}", _idx_bytes(labels))
    np.testing.assert_array_equal(read_idx(img_path), images)
    np.testing.assert_array_equal(read_idx(lbl_path), labels)
    d = load_idx(img_path, lbl_path, seed=0, test_fraction=0.2)
    assert d.name == "train-images-idx3-ubyte"
    assert d.input_shape == (1, 5, 7)
    assert (d.num_train, d.num_test) == (40, 10)
    assert d.num_classes == 5
    assert d.x_train.dtype == np.float32
    assert d.x_train.min() >= 0.0
    assert d.x_train.max() <= 1.0
    rebuilt = np.rint(np.concatenate([d.x_train, d.x_test]) * 255).astype(np.uint8)[:, 0]
    ids = rebuilt[:, 0, 0].astype(np.int64)
    assert sorted(ids.tolist()) == list(range(50))
    np.testing.assert_array_equal(rebuilt, images[ids])
    np.testing.assert_array_equal(np.concatenate([d.y_train, d.y_test]), labels[ids])


def test_idx_with_separate_test_files(tmp_path: Path) -> None:
    tr_x = np.full((6, 3, 3), 255, dtype=np.uint8)
    tr_y = np.array([0, 1, 2, 0, 1, 2], dtype=np.uint8)
    te_x = np.zeros((2, 3, 3), dtype=np.uint8)
    te_y = np.array([2, 1], dtype=np.uint8)
    paths = [
        _write(tmp_path / name, _idx_bytes(arr))
        for name, arr in [("tx.gz", tr_x), ("ty.gz", tr_y), ("vx", te_x), ("vy", te_y)]
    ]
    d = load_idx(paths[0], paths[1], test_images_path=paths[2], test_labels_path=paths[3])
    assert d.x_train.shape == (6, 1, 3, 3)
    assert d.x_test.shape == (2, 1, 3, 3)
    assert np.all(d.x_train == 1.0)
    assert np.all(d.x_test == 0.0)
    np.testing.assert_array_equal(d.y_test, [2, 1])


def test_idx_bad_magic_names_the_file(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((2, 2, 2), dtype=np.uint8))
    bad = _write(tmp_path / "bad-magic", b"\x01" + good[1:])
    with pytest.raises(ConfigError, match="magic") as info:
        read_idx(bad)
    assert str(bad) in str(info.value)
    unknown_type = _write(tmp_path / "bad-type", good[:2] + b"\x07" + good[3:])
    with pytest.raises(ConfigError, match="magic"):
        read_idx(unknown_type)


def test_idx_truncated_and_too_long(tmp_path: Path) -> None:
    good = _idx_bytes(np.zeros((4, 3, 3), dtype=np.uint8))
    short = _write(tmp_path / "short.gz", good[:-5])
    with pytest.raises(ConfigError, match="truncated") as info:
        read_idx(short)
    assert "short.gz" in str(info.value)
    header_only = _write(tmp_path / "header", good[:6])
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(header_only)
    long = _write(tmp_path / "long", good + b"\x00")
    with pytest.raises(ConfigError, match="too long"):
        read_idx(long)
    tiny = _write(tmp_path / "tiny", b"\x00\x00")
    with pytest.raises(ConfigError, match="truncated"):
        read_idx(tiny)


def test_idx_not_really_gzip(tmp_path: Path) -> None:
    fake = tmp_path / "labels.gz"
    fake.write_bytes(_idx_bytes(np.zeros(3, dtype=np.uint8)))
    with pytest.raises(ConfigError) as info:
        read_idx(fake)
    assert str(fake) in str(info.value)


def test_idx_mismatched_counts_names_the_files(tmp_path: Path) -> None:
    images = _write(tmp_path / "imgs", _idx_bytes(np.zeros((5, 2, 2), dtype=np.uint8)))
    labels = _write(tmp_path / "lbls", _idx_bytes(np.zeros(4, dtype=np.uint8)))
    with pytest.raises(ConfigError, match="4 labels but") as info:
        load_idx(images, labels)
    assert str(labels) in str(info.value)
    assert str(images) in str(info.value)


def test_idx_missing_file_and_half_test_pair(tmp_path: Path) -> None:
    images = _write(tmp_path / "imgs", _idx_bytes(np.zeros((5, 2, 2), dtype=np.uint8)))
    with pytest.raises(ConfigError, match="no such file") as info:
        load_idx(images, tmp_path / "nope")
    assert "nope" in str(info.value)
    with pytest.raises(ConfigError, match="both"):
        load_idx(images, images, test_images_path=images)
