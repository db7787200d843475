"""The user's own data: ``.npz`` files (or a folder of them) and IDX files (the MNIST format).

:func:`load_npz` and :func:`load_idx` read, check and convert the arrays (a channel axis, uint8
pixels scaled to [0, 1]) and return a read-only :class:`~swarmfl.learning.datasets.Dataset`,
split into train and test like the built-in datasets when the files hold no test set. Results are
cached per file content (path, size, modification time). Every error names the file.
"""

from __future__ import annotations

import functools
import gzip
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from swarmfl.errors import ConfigError
from swarmfl.learning.datasets import (
    _CACHE_SIZE,
    Dataset,
    _check_fraction,
    _describe,
    _finish,
    _split_and_finish,
)

__all__ = ["load_idx", "load_npz", "read_idx"]

# IDX type codes (third magic byte) -> big-endian element dtype.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


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
