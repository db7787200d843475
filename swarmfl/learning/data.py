"""Datasets and how a swarm splits them among its drones.

Everything here runs offline: the built-in datasets come from scikit-learn's bundled ``digits``
images and from ``mnist1d``, which generates its signals locally. A user's own data comes in as
``.npz`` files or IDX files (the MNIST file format).

Every loader returns a frozen :class:`Dataset` whose arrays are read-only, and caches it, because a
simulation of 1,000 drones asks for the same dataset once per drone.

Partitions are pure functions of the labels and a ``numpy.random.Generator``: the same seed gives
the same split, bit for bit.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from swarmfl.errors import ConfigError

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "mnist1d")
"""Names :func:`load_builtin` accepts."""

MNIST1D_DEFAULT_SAMPLES = 4000
"""Samples mnist1d generates when ``num_samples`` is not given."""

_STD_FLOOR = 1e-6
_CACHE_SIZE = 16
# Redraws before a Dirichlet partition with short parts is repaired instead.
_DIRICHLET_ATTEMPTS = 10

# IDX type codes (third magic byte) -> big-endian element dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


# eq=False: arrays have no total equality, and identity is what the cache hands out anyway.
@dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled train/test dataset, ready to be partitioned among drones.

    ``x_train``/``x_test`` are float32 arrays of shape ``(N, *input_shape)``; ``y_train``/``y_test``
    are int64 label vectors with values in ``[0, num_classes)``. The test set may be empty.

    Raises:
        ConfigError: a field has the wrong dtype, shape or range (the message names the field).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("must be a non-empty string", key="name")
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ConfigError(
                f"must be a positive int, got {self.num_classes!r}", key="num_classes"
            )
        shape = self.input_shape
        if (
            not isinstance(shape, tuple)
            or not shape
            or not all(isinstance(d, int) and d > 0 for d in shape)
        ):
            raise ConfigError(
                f"must be a non-empty tuple of positive ints, got {shape!r}", key="input_shape"
            )
        for split in ("train", "test"):
            x = getattr(self, f"x_{split}")
            y = getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32:
                raise ConfigError(
                    f"must be a float32 ndarray, got {_describe(x)}", key=f"x_{split}"
                )
            if x.shape[1:] != shape:
                raise ConfigError(
                    f"shape {x.shape} does not match (N, *input_shape) with input_shape {shape}",
                    key=f"x_{split}",
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.ndim != 1:
                raise ConfigError(
                    f"must be a 1-D int64 ndarray, got {_describe(y)}", key=f"y_{split}"
                )
            if len(y) != len(x):
                raise ConfigError(
                    f"has {len(y)} labels for {len(x)} samples in x_{split}", key=f"y_{split}"
                )
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= self.num_classes):
                raise ConfigError(
                    f"labels must lie in [0, {self.num_classes}), "
                    f"got [{int(y.min())}, {int(y.max())}]",
                    key=f"y_{split}",
                )
        if len(self.x_train) == 0:
            raise ConfigError("the training set is empty", key="x_train")

    @property
    def num_train(self) -> int:
        """Number of training samples."""
        return len(self.y_train)

    @property
    def num_test(self) -> int:
        """Number of test samples."""
        return len(self.y_test)


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray of dtype {value.dtype} and shape {value.shape}"
    return type(value).__name__


# --------------------------------------------------------------------------------------------------
# Splits and scaling shared by the loaders


def stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into (train, test), keeping class proportions.

    The test set has ``ceil(len(labels) * test_fraction)`` samples (as scikit-learn does), shared
    among classes by largest remainder, so the split never fails on rare classes. Both index arrays
    are sorted.

    Raises:
        ConfigError: ``test_fraction`` is not in (0, 1), or leaves the train or test set empty.
    """
    _check_fraction(test_fraction)
    labels = np.asarray(labels)
    n = len(labels)
    n_test = math.ceil(n * test_fraction)
    if n_test >= n or n_test == 0:
        raise ConfigError(
            f"{test_fraction} of {n} samples leaves the train or test set empty",
            key="test_fraction",
        )
    test_idx = _stratified_sample(labels, n_test, rng)
    mask = np.ones(n, dtype=bool)
    mask[test_idx] = False
    return np.flatnonzero(mask).astype(np.int64), test_idx


def _stratified_sample(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` sorted indices drawn without replacement, each class in proportion to its count."""
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    exact = counts * (size / len(labels))
    quota = np.minimum(np.floor(exact).astype(np.int64), counts)
    remainder = size - int(quota.sum())
    if remainder:
        # Random tie-breaking keeps the choice of which class rounds up from depending on order.
        order = np.lexsort((rng.random(len(classes)), -(exact - quota)))
        quota[order[:remainder]] += 1
    picked = [
        rng.choice(np.flatnonzero(inverse == k), size=int(quota[k]), replace=False)
        for k in range(len(classes))
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _check_fraction(test_fraction: float) -> None:
    if not (isinstance(test_fraction, int | float) and 0.0 < test_fraction < 1.0):
        raise ConfigError(f"must be in (0, 1), got {test_fraction!r}", key="test_fraction")


def _standardize(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scale each feature by the train set's mean and std only, so the test set leaks nothing.

    A feature that is constant on the train set (digits has always-blank border pixels) keeps
    scale 1 instead of being divided by ~0, which would blow up any test value that differs.
    """
    mean = x_train.mean(axis=0, dtype=np.float64)
    std = x_train.std(axis=0, dtype=np.float64)
    std = np.where(std < _STD_FLOOR, 1.0, std)
    return (
        ((x_train - mean) / std).astype(np.float32),
        ((x_test - mean) / std).astype(np.float32),
    )


def _finish(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    standardize: bool,
    num_classes: int | None = None,
) -> Dataset:
    x_train = np.ascontiguousarray(x_train, dtype=np.float32)
    x_test = np.ascontiguousarray(x_test, dtype=np.float32)
    if standardize:
        x_train, x_test = _standardize(x_train, x_test)
    y_train = np.ascontiguousarray(y_train, dtype=np.int64)
    y_test = np.ascontiguousarray(y_test, dtype=np.int64)
    if num_classes is None:
        num_classes = int(max(y_train.max(initial=0), y_test.max(initial=0))) + 1
    for arr in (x_train, y_train, x_test, y_test):
        # The dataset is shared by every drone of a simulation: nobody may mutate it in place.
        arr.flags.writeable = False
    return Dataset(
        name=name,
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        input_shape=tuple(int(d) for d in x_train.shape[1:]),
    )


def _split_and_finish(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    test_fraction: float,
    standardize: bool,
    num_classes: int | None = None,
) -> Dataset:
    train_idx, test_idx = stratified_split(y, test_fraction, np.random.default_rng(seed))
    return _finish(
        name,
        x[train_idx],
        y[train_idx],
        x[test_idx],
        y[test_idx],
        standardize=standardize,
        num_classes=num_classes,
    )


# --------------------------------------------------------------------------------------------------
# Built-in datasets


def load_builtin(
    name: str,
    *,
    seed: int,
    test_fraction: float = 0.2,
    standardize: bool = True,
    num_samples: int | None = None,
) -> Dataset:
    """Load a dataset that needs no download: ``"digits"`` or ``"mnist1d"``.

    * ``digits``: scikit-learn's 1,797 8x8 digit images, input shape ``(1, 8, 8)``. With
      ``num_samples`` set, a stratified subset of that many images is used.
    * ``mnist1d``: generated locally by the ``mnist1d`` package (``num_samples`` signals, default
      4,000), input shape ``(1, 40)``.

    Train and test are split stratified by class with ``seed``; with ``standardize`` each feature
    is scaled by train-set statistics. The result is cached: equal arguments return the same
    (read-only) :class:`Dataset` object.

    Raises:
        ConfigError: unknown ``name`` (the message lists the valid ones), or a bad
            ``test_fraction``, ``seed`` or ``num_samples``.
    """
    if name not in BUILTIN_DATASETS:
        raise ConfigError(
            f"unknown dataset {name!r}; valid names: {', '.join(BUILTIN_DATASETS)}", key="name"
        )
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"must be a non-negative int, got {seed!r}", key="seed")
    _check_fraction(test_fraction)
    if num_samples is None and name == "mnist1d":
        num_samples = MNIST1D_DEFAULT_SAMPLES
    if num_samples is not None and (
        not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 2
    ):
        raise ConfigError(f"must be an int >= 2, got {num_samples!r}", key="num_samples")
    # Normalised positional arguments, so spelling a default out still hits the cache.
    return _load_builtin_cached(name, seed, float(test_fraction), bool(standardize), num_samples)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_builtin_cached(
    name: str, seed: int, test_fraction: float, standardize: bool, num_samples: int | None
) -> Dataset:
    if name == "digits":
        x, y = _digits_arrays(seed, num_samples)
    else:
        assert num_samples is not None
        x, y = _mnist1d_arrays(seed, num_samples)
    return _split_and_finish(
        name, x, y, seed=seed, test_fraction=test_fraction, standardize=standardize, num_classes=10
    )


def _digits_arrays(seed: int, num_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = np.asarray(bunch.images, dtype=np.float32).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    if num_samples is not None and num_samples != len(y):
        if num_samples > len(y):
            raise ConfigError(
                f"digits has only {len(y)} samples, asked for {num_samples}", key="num_samples"
            )
        # A separate stream from the train/test split's, derived from the same seed.
        keep = _stratified_sample(y, num_samples, np.random.default_rng([seed, 1]))
        x, y = x[keep], y[keep]
    return x, y


def _mnist1d_arrays(seed: int, num_samples: int) -> tuple[np.ndarray, np.ndarray]:
    import random

    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # make_dataset reseeds the global `random` and numpy RNGs; put them back so that loading data
    # does not change anyone else's random stream.
    py_state = random.getstate()
    np_state = np.random.get_state()
    try:
        raw = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = np.concatenate([raw["x"], raw["x_test"]]).astype(np.float32)
    y = np.concatenate([raw["y"], raw["y_test"]]).astype(np.int64)
    if len(y) < 2:
        raise ConfigError(f"mnist1d generated only {len(y)} samples", key="num_samples")
    return x.reshape(len(x), 1, -1), y


# --------------------------------------------------------------------------------------------------
# The user's own data: .npz and IDX


def _as_samples(x: np.ndarray, source: str, key: str) -> np.ndarray:
    """Bring per-sample arrays to (N, C, ...) float32 with a channel axis.

    Rank-2 data ``(N, F)`` becomes ``(N, 1, F)`` and rank-3 ``(N, H, W)`` becomes ``(N, 1, H, W)``
    (single-channel signals and images); rank 4 is taken as ``(N, C, H, W)`` already. uint8 data
    is taken as pixels and scaled to [0, 1].
    """
    if x.dtype.kind not in "uif" or x.ndim not in (2, 3, 4):
        raise ConfigError(
            f"must be a numeric array of rank 2, 3 or 4 (N, ...), got {_describe(x)}",
            source=source,
            key=key,
        )
    out = x.astype(np.float32)
    if x.dtype == np.uint8:
        out /= np.float32(255.0)
    if not np.isfinite(out).all():
        raise ConfigError("contains NaN or infinite values", source=source, key=key)
    if x.ndim < 4:
        out = out[:, None]
    return out


def _as_labels(y: np.ndarray, source: str, key: str) -> np.ndarray:
    if y.ndim != 1 or y.dtype.kind not in "ui":
        raise ConfigError(
            f"must be a 1-D integer array of labels, got {_describe(y)}", source=source, key=key
        )
    if len(y) and int(y.min()) < 0:
        raise ConfigError(f"has a negative label {int(y.min())}", source=source, key=key)
    return y.astype(np.int64)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ConfigError("is a single .npy array, not an .npz archive", source=str(path))
        with archive:
            return {key: archive[key] for key in archive.files}
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise ConfigError(f"cannot read as .npz: {exc}", source=str(path)) from exc


def _require(arrays: dict[str, np.ndarray], key: str, source: str) -> np.ndarray:
    if key not in arrays:
        raise ConfigError(
            f"missing array {key!r} (has: {', '.join(sorted(arrays)) or 'nothing'})", source=source
        )
    return arrays[key]


def _check_pair(x: np.ndarray, y: np.ndarray, source: str, xkey: str, ykey: str) -> None:
    if len(x) != len(y):
        raise ConfigError(
            f"{xkey!r} has {len(x)} samples but {ykey!r} has {len(y)} labels", source=source
        )


def _fingerprint(path: Path) -> tuple[tuple[str, int, int], ...]:
    """What identifies a file's or folder's content for the cache: names, sizes, mtimes."""
    try:
        files = sorted(path.glob("*.npz")) if path.is_dir() else [path]
        return tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", source=str(path)) from exc


def load_npz(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = False,
) -> Dataset:
    """Load the user's own data from one ``.npz`` file or a folder of them.

    * A file with ``x_train``, ``y_train`` and optionally ``x_test``, ``y_test`` (both or neither).
      A file with just ``x`` and ``y`` is accepted too.
    * A folder: every ``*.npz`` in it holds ``x`` and ``y``; they are concatenated in sorted file
      name order.

    Without an explicit test set, ``test_fraction`` of the samples is split off, stratified, with
    ``seed``. ``x`` arrays of rank 2 ``(N, F)`` or 3 ``(N, H, W)`` get a channel axis; uint8 data is
    scaled to [0, 1]. Labels must be non-negative integers; ``num_classes`` is the largest label
    plus one. Results are cached per file content (path, size, modification time).

    Raises:
        ConfigError: the path is missing or unreadable, is not an .npz, lacks a key, or holds
            arrays of the wrong type or mismatched lengths; the message names the file.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError("no such file or folder", source=str(p))
    _check_fraction(test_fraction)
    return _load_npz_cached(
        str(p), _fingerprint(p), int(seed), float(test_fraction), bool(standardize)
    )


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_npz_cached(
    path_str: str,
    fingerprint: tuple[tuple[str, int, int], ...],
    seed: int,
    test_fraction: float,
    standardize: bool,
) -> Dataset:
    path = Path(path_str)
    name = path.stem or path.name
    if path.is_dir():
        files = [Path(f[0]) for f in fingerprint]
        if not files:
            raise ConfigError("folder holds no .npz files", source=path_str)
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        for f in files:
            arrays = _read_npz(f)
            x = _as_samples(_require(arrays, "x", str(f)), str(f), "x")
            y = _as_labels(_require(arrays, "y", str(f)), str(f), "y")
            _check_pair(x, y, str(f), "x", "y")
            if xs and x.shape[1:] != xs[0].shape[1:]:
                raise ConfigError(
                    f"samples of shape {x.shape[1:]} differ from {xs[0].shape[1:]} in {files[0]}",
                    source=str(f),
                    key="x",
                )
            xs.append(x)
            ys.append(y)
        return _split_checked(
            name, np.concatenate(xs), np.concatenate(ys), path_str, seed, test_fraction, standardize
        )

    arrays = _read_npz(path)
    if "x_train" not in arrays and "x" in arrays:
        x = _as_samples(arrays["x"], path_str, "x")
        y = _as_labels(_require(arrays, "y", path_str), path_str, "y")
        _check_pair(x, y, path_str, "x", "y")
        return _split_checked(name, x, y, path_str, seed, test_fraction, standardize)
    x_train = _as_samples(_require(arrays, "x_train", path_str), path_str, "x_train")
    y_train = _as_labels(_require(arrays, "y_train", path_str), path_str, "y_train")
    _check_pair(x_train, y_train, path_str, "x_train", "y_train")
    has_x_test, has_y_test = "x_test" in arrays, "y_test" in arrays
    if has_x_test != has_y_test:
        missing = "y_test" if has_x_test else "x_test"
        raise ConfigError(
            f"missing array {missing!r}: give both x_test and y_test, or neither", source=path_str
        )
    if not has_x_test:
        return _split_checked(name, x_train, y_train, path_str, seed, test_fraction, standardize)
    x_test = _as_samples(arrays["x_test"], path_str, "x_test")
    y_test = _as_labels(arrays["y_test"], path_str, "y_test")
    _check_pair(x_test, y_test, path_str, "x_test", "y_test")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ConfigError(
            f"test samples of shape {x_test.shape[1:]} differ from train samples "
            f"{x_train.shape[1:]}",
            source=path_str,
            key="x_test",
        )
    return _finish_checked(name, x_train, y_train, x_test, y_test, path_str, standardize)


def _split_checked(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    source: str,
    seed: int,
    test_fraction: float,
    standardize: bool,
) -> Dataset:
    try:
        return _split_and_finish(
            name, x, y, seed=seed, test_fraction=test_fraction, standardize=standardize
        )
    except ConfigError as exc:
        raise ConfigError(exc.problem, source=source, key=exc.key) from exc


def _finish_checked(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    source: str,
    standardize: bool,
) -> Dataset:
    try:
        return _finish(name, x_train, y_train, x_test, y_test, standardize=standardize)
    except ConfigError as exc:
        raise ConfigError(exc.problem, source=source, key=exc.key) from exc


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse one IDX file (the MNIST format), gzip-compressed if its name ends with ``.gz``.

    The header is two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions, then each dimension as a big-endian
    uint32; the data follows, big-endian, and must fill the file exactly. Returns the array in
    native byte order.

    Raises:
        ConfigError: the file is missing, unreadable, not gzip when named ``.gz``, has a bad
            magic number, or is truncated or too long; the message names the file.
    """
    p = Path(path)
    source = str(p)
    try:
        if p.name.endswith(".gz"):
            with gzip.open(p, "rb") as f:
                raw = f.read()
        else:
            raw = p.read_bytes()
    except FileNotFoundError as exc:
        raise ConfigError("no such file", source=source) from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise ConfigError(f"cannot read: {exc}", source=source) from exc
    if len(raw) < 4:
        raise ConfigError(
            f"truncated: {len(raw)} bytes, shorter than the IDX header", source=source
        )
    zero0, zero1, type_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_DTYPES or ndim == 0:
        raise ConfigError(
            f"bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000 + type code + ndim)",
            source=source,
        )
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ConfigError(f"truncated IDX header: {ndim} dimensions declared", source=source)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(raw) - header_len
    if actual < expected:
        raise ConfigError(
            f"truncated IDX data: dimensions {dims} need {expected} bytes, file has {actual}",
            source=source,
        )
    if actual > expected:
        raise ConfigError(
            f"IDX data too long: dimensions {dims} need {expected} bytes, file has {actual}",
            source=source,
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header_len)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def load_idx(
    images_path: str | os.PathLike[str],
    labels_path: str | os.PathLike[str],
    *,
    test_images_path: str | os.PathLike[str] | None = None,
    test_labels_path: str | os.PathLike[str] | None = None,
    seed: int = 0,
    test_fraction: float = 0.2,
    standardize: bool = False,
) -> Dataset:
    """Load images and labels from IDX files (e.g. MNIST's ``train-images-idx3-ubyte.gz``).

    uint8 images are scaled to [0, 1] float32 and given a channel axis: ``(N, 1, H, W)``. With
    ``test_images_path`` and ``test_labels_path`` the test set comes from those files; without
    them ``test_fraction`` of the samples is split off, stratified, with ``seed``. Results are
    cached per file content (path, size, modification time).

    Raises:
        ConfigError: a file is missing or malformed (see :func:`read_idx`), images and labels
            counts differ, labels are not a 1-D integer vector, or only one test path is given;
            the message names the file.
    """
    _check_fraction(test_fraction)
    if (test_images_path is None) != (test_labels_path is None):
        raise ConfigError(
            "give both test_images_path and test_labels_path, or neither", key="test_labels_path"
        )
    paths = [Path(images_path), Path(labels_path)]
    if test_images_path is not None and test_labels_path is not None:
        paths += [Path(test_images_path), Path(test_labels_path)]
    fingerprints = []
    for p in paths:
        if not p.is_file():
            raise ConfigError("no such file", source=str(p))
        fingerprints.append(_fingerprint(p))
    return _load_idx_cached(
        tuple(str(p) for p in paths),
        tuple(fingerprints),
        int(seed),
        float(test_fraction),
        bool(standardize),
    )


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _load_idx_cached(
    paths: tuple[str, ...],
    fingerprints: tuple[object, ...],
    seed: int,
    test_fraction: float,
    standardize: bool,
) -> Dataset:
    def pair(images: str, labels: str) -> tuple[np.ndarray, np.ndarray]:
        x = _as_samples(read_idx(images), images, "images")
        y = _as_labels(read_idx(labels), labels, "labels")
        if len(x) != len(y):
            raise ConfigError(
                f"holds {len(y)} labels but {images} holds {len(x)} images", source=labels
            )
        return x, y

    name = Path(paths[0]).name.removesuffix(".gz")
    x, y = pair(paths[0], paths[1])
    if len(paths) == 2:
        return _split_checked(name, x, y, paths[0], seed, test_fraction, standardize)
    x_test, y_test = pair(paths[2], paths[3])
    if x_test.shape[1:] != x.shape[1:]:
        raise ConfigError(
            f"images of shape {x_test.shape[1:]} differ from {x.shape[1:]} in {paths[0]}",
            source=paths[2],
        )
    return _finish_checked(name, x, y, x_test, y_test, paths[0], standardize)


# --------------------------------------------------------------------------------------------------
# Partitions among drones


def _check_parts(labels: np.ndarray, num_parts: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {labels.shape}", key="labels")
    if not isinstance(num_parts, int) or isinstance(num_parts, bool) or num_parts < 1:
        raise ConfigError(f"must be a positive int, got {num_parts!r}", key="num_parts")
    return labels


def partition_iid(labels: np.ndarray, num_parts: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Deal sample indices uniformly at random into ``num_parts`` parts of near-equal size.

    The parts are disjoint, cover every index, differ in size by at most one, and are each
    sorted (int64). Deterministic given ``rng``'s state.

    Raises:
        ConfigError: ``num_parts`` is not a positive int or exceeds the number of samples.
    """
    labels = _check_parts(labels, num_parts)
    if num_parts > len(labels):
        raise ConfigError(
            f"{num_parts} parts for {len(labels)} samples would leave parts empty",
            key="num_parts",
        )
    order = rng.permutation(len(labels)).astype(np.int64)
    return [np.sort(part) for part in np.array_split(order, num_parts)]


def partition_dirichlet(
    labels: np.ndarray,
    num_parts: int,
    alpha: float,
    rng: np.random.Generator,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Split sample indices into ``num_parts`` non-IID parts, the usual federated-learning recipe.

    For each class, proportions over the parts are drawn from Dirichlet(``alpha``) and that class's
    samples are dealt out accordingly: small ``alpha`` gives each part few classes, large ``alpha``
    tends to IID. A draw in which some part has fewer than ``min_size`` samples is redrawn, a few
    times; if that still fails (as it must with many parts and few samples, e.g. 1,000 drones on
    digits' 1,437 training images), the last draw is repaired by moving random samples from the
    parts with the most to spare into the short ones. So the rule is simply: any
    ``num_parts * min_size <= len(labels)`` works, anything more raises. Use ``min_size=1`` for
    very large swarms.

    Returns disjoint, sorted int64 index arrays covering every sample. Deterministic given
    ``rng``'s state.

    Raises:
        ConfigError: ``alpha`` is not a positive finite number, ``min_size`` is negative, or
            ``num_parts * min_size`` exceeds the number of samples.
    """
    labels = _check_parts(labels, num_parts)
    if not (isinstance(alpha, int | float) and math.isfinite(alpha) and alpha > 0):
        raise ConfigError(f"must be a positive finite number, got {alpha!r}", key="alpha")
    if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 0:
        raise ConfigError(f"must be a non-negative int, got {min_size!r}", key="min_size")
    n = len(labels)
    if num_parts * min_size > n:
        raise ConfigError(
            f"{num_parts} parts of at least {min_size} samples need {num_parts * min_size} "
            f"samples, only {n} available; lower min_size or num_parts",
            key="min_size",
        )
    _, inverse = np.unique(labels, return_inverse=True)
    class_members = [np.flatnonzero(inverse == k) for k in range(int(inverse.max(initial=-1)) + 1)]

    owner = np.empty(n, dtype=np.int64)
    sizes = np.zeros(num_parts, dtype=np.int64)
    for _attempt in range(_DIRICHLET_ATTEMPTS):
        owner = _dirichlet_owners(class_members, n, num_parts, alpha, rng)
        sizes = np.bincount(owner, minlength=num_parts)
        if sizes.min() >= min_size:
            break
    else:
        _repair_sizes(owner, sizes, min_size, rng)

    order = np.argsort(owner, kind="stable")
    bounds = np.cumsum(sizes)[:-1]
    return [part.astype(np.int64) for part in np.split(order, bounds)]


def _dirichlet_owners(
    class_members: list[np.ndarray],
    n: int,
    num_parts: int,
    alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
    owner = np.empty(n, dtype=np.int64)
    concentration = np.full(num_parts, float(alpha))
    for members in class_members:
        proportions = rng.dirichlet(concentration)
        if not np.isfinite(proportions).all() or proportions.sum() <= 0:
            # Extremely small alpha can underflow every component; the limit puts all on one part.
            proportions = np.zeros(num_parts)
            proportions[rng.integers(num_parts)] = 1.0
        cuts = (np.cumsum(proportions) * len(members)).astype(np.int64)
        cuts[-1] = len(members)
        counts = np.diff(cuts, prepend=0)
        owner[rng.permutation(members)] = np.repeat(np.arange(num_parts), counts)
    return owner


def _repair_sizes(
    owner: np.ndarray, sizes: np.ndarray, min_size: int, rng: np.random.Generator
) -> None:
    """Move samples from the parts with most to spare into parts below ``min_size``, in place."""
    for short in np.flatnonzero(sizes < min_size):
        while sizes[short] < min_size:
            donor = int(np.argmax(sizes))
            candidates = np.flatnonzero(owner == donor)
            moved = candidates[rng.integers(len(candidates))]
            owner[moved] = short
            sizes[donor] -= 1
            sizes[short] += 1


def shard(dataset: Dataset, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The training samples and labels of one part: ``(x_train[indices], y_train[indices])``.

    Returns fresh (writable) copies, so a drone may shuffle its own shard.

    Raises:
        ConfigError: an index is not an integer or is out of range of the training set.
    """
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "ui"):
        raise ConfigError(f"must be a 1-D integer array, got {_describe(idx)}", key="indices")
    if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= dataset.num_train):
        raise ConfigError(
            f"must lie in [0, {dataset.num_train}), got [{int(idx.min())}, {int(idx.max())}]",
            key="indices",
        )
    idx = idx.astype(np.int64)
    return dataset.x_train[idx], dataset.y_train[idx]
