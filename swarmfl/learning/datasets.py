"""Datasets: the labelled arrays a swarm learns from, and the built-in ones that need no download.

A :class:`Dataset` is frozen and its arrays are read-only. :func:`load_builtin` gives
the ``digits`` images (scikit-learn's, shipped with swarmfl as a small npz: see
:data:`DIGITS_FILE`) or ``mnist1d`` signals (generated locally), split into
train and test stratified by class (:func:`stratified_split`) and standardised by train-set
statistics. Loaders cache what they return, because a simulation of 1,000 drones asks for the
same dataset once per drone. The user's own files are read by :mod:`~swarmfl.learning.datafiles`;
how a swarm splits a dataset among its drones is :mod:`~swarmfl.learning.partition`.
"""

from __future__ import annotations

import functools
import importlib.resources
import math
from dataclasses import dataclass

import numpy as np

from swarmfl.errors import ConfigError

__all__ = [
    "BUILTIN_DATASETS",
    "MNIST1D_DEFAULT_SAMPLES",
    "Dataset",
    "load_builtin",
    "stratified_split",
]

BUILTIN_DATASETS: tuple[str, ...] = ("digits", "mnist1d")
"""Names :func:`load_builtin` accepts."""

MNIST1D_DEFAULT_SAMPLES = 4000
"""Samples mnist1d generates when ``num_samples`` is not given."""

_STD_FLOOR = 1e-6
# Shared with the file loaders of swarmfl.learning.datafiles.
_CACHE_SIZE = 16


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
    x, y = digits_images()
    x = x.astype(np.float32).reshape(-1, 1, 8, 8)
    y = y.astype(np.int64)
    if num_samples is not None and num_samples != len(y):
        if num_samples > len(y):
            raise ConfigError(
                f"digits has only {len(y)} samples, asked for {num_samples}", key="num_samples"
            )
        # A separate stream from the train/test split's, derived from the same seed.
        keep = _stratified_sample(y, num_samples, np.random.default_rng([seed, 1]))
        x, y = x[keep], y[keep]
    return x, y


DIGITS_FILE = "digits.npz"
"""The digits shipped with the package (next to this module): scikit-learn's ``load_digits()``
images (uint8, 0..16) and labels, which are the test set of the UCI "Optical Recognition of
Handwritten Digits" data (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0). Shipping them (45 KB) spares
a drone scikit-learn, which costs a field agent about 78 MB of memory to import."""


def digits_images() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as uint8 ``(N, 8, 8)`` images (values 0..16) and uint8 labels, read
    from the package's :data:`DIGITS_FILE` with numpy alone."""
    resource = importlib.resources.files("swarmfl.learning") / DIGITS_FILE
    with resource.open("rb") as stream, np.load(stream) as arrays:
        return arrays["images"], arrays["labels"]


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
