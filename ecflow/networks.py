"""Multi-layer perceptrons: parameters, forward pass, flattening, and the HDF5 file format.

A network is a tuple of :class:`Layer` ``(weight, bias, activation)``; the forward pass is

    h_0 = x,   h_{i+1} = σ_i(h_i W_i^T + b_i),

with ``W_i`` of shape ``(n_out, n_in)``. The flat parameter vector (used by the engines) is the
concatenation, layer by layer, of ``W_i`` in row-major order followed by ``b_i``.

File layout (``docs/formats.md``, spec version 1)::

    /                 attrs ecflow_format = "mlp" | "pairs", version = 1
    /layers/<i>       attrs activation;  datasets weight (n_out, n_in), bias (n_out,)
    /queries/x, /y    optional (n, d_in), (n, d_out)

All HDF5 I/O of the package lives here. Readers validate everything the spec lists and raise
``ValueError``/``TypeError`` naming the file and the offending item; writers are atomic
(temporary file in the destination folder, then ``os.replace``) and check the free space first.

Files may come from anyone, so readers also refuse what would read outside the file or beyond
memory (``docs/safety.md``): external and soft links, external storage, virtual datasets,
declared shapes over :func:`ecflow.safety.max_array_bytes` (compressed data at its decompressed
size, checked before reading) and attributes over 1 MiB.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecflow.activations import Activation, get_activation
from ecflow.errors import InputError, InputTypeError
from ecflow.safety import check_array_bytes, check_free_space

__all__ = [
    "FORMAT_VERSION",
    "Layer",
    "MLP",
    "NetworkFile",
    "PairsFile",
    "read_network",
    "read_network_file",
    "read_pairs",
    "read_queries",
    "write_network",
    "write_pairs",
    "atomic_path",
    "check_destination",
    "check_array",
    "check_xy",
    "describe_file",
    "JobFile",
    "write_job",
    "read_job",
    "glorot_normal",
    "standardise_inputs",
    "parameter_mask",
]

FORMAT_VERSION = 1


def check_array(a: Any, name: str, *, ndim: int | None = None) -> np.ndarray:
    """Validate a float array: real floating dtype, finite, optional ndim; returns float64.

    Integer, boolean or complex input is rejected rather than silently cast, as the spec asks.
    """
    arr = np.asarray(a)
    if arr.dtype.kind != "f":
        raise InputTypeError(f"{name} must be a floating-point array, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise InputError(f"{name} must be {ndim}-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or Inf")
    return arr.astype(np.float64, copy=False)


def check_xy(x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate input-output pairs: float, finite, 2-D, same number of rows, at least one row.

    Returns
    -------
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    """
    x = check_array(x, "x", ndim=2)
    y = check_array(y, "y", ndim=2)
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0 or y.shape[1] == 0:
        raise InputError(f"x and y must be non-empty, got shapes {x.shape} and {y.shape}")
    return x, y


@dataclass(frozen=True, eq=False)
class Layer:
    """One dense layer ``h -> σ(h W^T + b)``.

    Parameters
    ----------
    weight : ndarray of shape (n_out, n_in), float64
    bias : ndarray of shape (n_out,), float64
    activation : Activation
    """

    weight: np.ndarray
    bias: np.ndarray
    activation: Activation

    def __post_init__(self):
        w = check_array(self.weight, "weight", ndim=2)
        b = check_array(self.bias, "bias", ndim=1)
        if b.shape[0] != w.shape[0]:
            raise InputError(
                f"bias must have n_out = {w.shape[0]} entries (weight {w.shape}), got {b.shape[0]}"
            )
        if w.shape[0] == 0 or w.shape[1] == 0:
            raise InputError(f"layer sizes must be positive, got weight of shape {w.shape}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "activation", get_activation(self.activation))

    @property
    def n_in(self) -> int:
        return self.weight.shape[1]

    @property
    def n_out(self) -> int:
        return self.weight.shape[0]


@dataclass(frozen=True, eq=False)
class MLP:
    """A multi-layer perceptron: a non-empty tuple of chained :class:`Layer`.

    Build one from arrays with :meth:`from_arrays`; evaluate with :meth:`forward`.
    """

    layers: tuple[Layer, ...]

    def __post_init__(self):
        layers = tuple(self.layers)
        if not layers:
            raise InputError("a network needs at least one layer")
        for i in range(1, len(layers)):
            if layers[i].n_in != layers[i - 1].n_out:
                raise InputError(
                    f"layer {i} has n_in = {layers[i].n_in} but layer {i - 1} has "
                    f"n_out = {layers[i - 1].n_out}"
                )
        object.__setattr__(self, "layers", layers)

    @classmethod
    def from_arrays(
        cls,
        weights: Sequence[np.ndarray],
        biases: Sequence[np.ndarray],
        activations: Sequence[str | Activation],
    ) -> MLP:
        """Build from per-layer weights ``(n_out, n_in)``, biases ``(n_out,)`` and activations."""
        if not (len(weights) == len(biases) == len(activations)):
            raise InputError(
                f"need one weight, bias and activation per layer, got {len(weights)}, "
                f"{len(biases)} and {len(activations)}"
            )
        return cls(tuple(Layer(w, b, a) for w, b, a in zip(weights, biases, activations)))

    # --- shape ---------------------------------------------------------------------------------
    @property
    def d_in(self) -> int:
        return self.layers[0].n_in

    @property
    def d_out(self) -> int:
        return self.layers[-1].n_out

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """Sizes of the hidden layers (every layer but the last)."""
        return tuple(layer.n_out for layer in self.layers[:-1])

    @property
    def sizes(self) -> tuple[int, ...]:
        """``(d_in, n_hidden_1, ..., d_out)``."""
        return (self.d_in,) + tuple(layer.n_out for layer in self.layers)

    @property
    def activations(self) -> tuple[Activation, ...]:
        return tuple(layer.activation for layer in self.layers)

    @property
    def n_params(self) -> int:
        return sum(layer.weight.size + layer.bias.size for layer in self.layers)

    # --- evaluation ----------------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        """Evaluate the network.

        Parameters
        ----------
        x : ndarray of shape (n_samples, d_in), float64

        Returns
        -------
        y : ndarray of shape (n_samples, d_out), float64
        """
        h = check_array(x, "x", ndim=2)
        if h.shape[1] != self.d_in:
            raise InputError(f"x must have d_in = {self.d_in} columns, got shape {h.shape}")
        for layer in self.layers:
            h = layer.activation(h @ layer.weight.T + layer.bias)
        return h

    __call__ = forward

    def hidden(self, x: np.ndarray, layer: int = 0) -> np.ndarray:
        """Activations of hidden layer ``layer``, shape ``(n_samples, n_out of that layer)``."""
        h = check_array(x, "x", ndim=2)
        for lyr in self.layers[: layer + 1]:
            h = lyr.activation(h @ lyr.weight.T + lyr.bias)
        return h

    # --- flat parameters -----------------------------------------------------------------------
    def flatten(self) -> np.ndarray:
        """Flat parameter vector ``[vec(W_0), b_0, vec(W_1), b_1, ...]``, shape ``(n_params,)``."""
        return np.concatenate([np.concatenate([l.weight.ravel(), l.bias]) for l in self.layers])

    def unflatten(self, theta: np.ndarray) -> MLP:
        """A network of the same structure holding the parameters ``theta`` (see :meth:`flatten`)."""
        theta = check_array(theta, "theta", ndim=1)
        if theta.size != self.n_params:
            raise InputError(f"theta must have {self.n_params} entries, got {theta.size}")
        layers, k = [], 0
        for l in self.layers:
            nw = l.weight.size
            w = theta[k : k + nw].reshape(l.weight.shape).copy()
            b = theta[k + nw : k + nw + l.n_out].copy()
            k += nw + l.n_out
            layers.append(Layer(w, b, l.activation))
        return MLP(tuple(layers))

    def replace_layer(self, i: int, layer: Layer) -> MLP:
        """A copy with layer ``i`` replaced."""
        layers = list(self.layers)
        layers[i] = layer
        return MLP(tuple(layers))

    def describe(self) -> str:
        """Short text such as ``4-16-1 (g, identity), 97 parameters``."""
        acts = ", ".join(a.name for a in self.activations)
        return f"{'-'.join(map(str, self.sizes))} ({acts}), {self.n_params} parameters"


# --- HDF5 ----------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class NetworkFile:
    """Contents of a network file: the network, optional queries and the extra root attributes."""

    network: MLP
    x: np.ndarray | None = None
    y: np.ndarray | None = None
    attrs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class PairsFile:
    """Contents of a pairs file: inputs ``(n, d_in)`` and outputs ``(n, d_out)``, float64."""

    x: np.ndarray
    y: np.ndarray
    attrs: Mapping[str, Any] = field(default_factory=dict)


def _h5py():
    import h5py

    return h5py


@contextlib.contextmanager
def open_for_reading(path: str | os.PathLike) -> Iterator[Any]:
    """An HDF5 file open for reading; a missing, empty, foreign or corrupt file is bad input
    naming the file, also when the damage shows only while it is read."""
    h5py = _h5py()
    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: file not found")
    if p.is_dir():
        raise InputError(f"{p}: is a directory, expected an HDF5 file")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file, expected an HDF5 file")
    if p.stat().st_size == 0:
        raise InputError(f"{p}: file is empty")
    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise InputError(f"{p}: not a readable HDF5 file ({_first_line(exc)})") from None
    try:
        yield f
    except (KeyError, OSError, RuntimeError, TypeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{p}: corrupt or truncated HDF5 file ({_first_line(exc)})") from None
    finally:
        f.close()


def _member(group: Any, name: str, p: Path, where: str) -> Any:
    """``group[name]``, refusing anything but a plain (hard) link.

    An external link reads another file and a soft link can lead to one; neither is part of
    the spec, and following them would let a model file pull in any file of the machine.
    """
    h5py = _h5py()
    link = group.get(name, getlink=True)
    if link is None:
        raise InputError(f"{p}: missing {where}")
    if not isinstance(link, h5py.HardLink):
        kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a link"
        raise InputError(f"{p}: {where} is {kind}; ecflow reads only objects stored in the file")
    return group[name]


def _check_storage(ds: Any, p: Path, where: str) -> None:
    """Refuse data kept outside the file, and declared shapes too large to read."""
    if ds.external:
        raise InputError(
            f"{p}: {where} keeps its data in an external file; ecflow reads only data stored "
            "in the model file"
        )
    if ds.is_virtual:
        raise InputError(
            f"{p}: {where} is a virtual dataset (data mapped from other files); ecflow reads "
            "only data stored in the model file"
        )
    if ds.shape is None:
        raise InputError(f"{p}: {where} holds no data (empty dataspace)")
    # compressed data counts at its decompressed float64 size: a few kB of gzip can declare GBs
    check_array_bytes(ds.shape, f"{p}: {where}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _decode(v: Any) -> Any:
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, np.ndarray) and v.dtype.kind in "SO":
        return [_decode(e) for e in v.tolist()]
    if isinstance(v, np.ndarray) and v.shape == ():
        return _decode(v[()])
    if isinstance(v, np.generic):
        return v.item()
    return v


_MAX_ATTR_BYTES = 1 << 20
"""Largest attribute read (1 MiB): the spec's attributes are names, numbers and short reports."""


def _attr(obj: Any, key: str, p: Path, where: str) -> Any:
    """Attribute ``key`` of ``obj`` (None when absent), size-checked before it is read."""
    if key not in obj.attrs:
        return None
    aid = obj.attrs.get_id(key)
    shape = aid.shape or ()
    n = 1
    for d in shape:
        n *= int(d)
    try:  # HDF5 reports an error, not 0, for the storage of an empty attribute
        stored = aid.get_storage_size() if n else 0
    except (OSError, RuntimeError, ValueError):
        stored = 0
    if max(n * aid.dtype.itemsize, stored) > _MAX_ATTR_BYTES:
        raise InputError(f"{p}: attribute {key!r} of {where} is larger than 1 MiB")
    try:
        return _decode(obj.attrs[key])
    except (OSError, TypeError, ValueError) as exc:
        raise InputError(
            f"{p}: attribute {key!r} of {where} cannot be read ({_first_line(exc)})"
        ) from None


def _string_attr(obj: Any, key: str, p: Path, where: str) -> str | None:
    v = _attr(obj, key, p, where)
    if v is not None and not isinstance(v, str):
        raise InputError(f"{p}: attribute {key!r} of {where} must be a string, got {v!r:.60}")
    return v


def _check_header(f: Any, p: Path, expected: str) -> None:
    fmt = _string_attr(f, "ecflow_format", p, "/")
    if fmt is None:
        raise InputError(f"{p}: missing root attribute 'ecflow_format' (expected {expected!r})")
    if fmt != expected:
        raise InputError(f"{p}: ecflow_format is {fmt!r:.60}, expected {expected!r}")
    version = _attr(f, "version", p, "/")
    if version is None:
        raise InputError(f"{p}: missing root attribute 'version'")
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if not isinstance(version, int) or isinstance(version, bool):
        raise InputError(f"{p}: version must be an integer, got {version!r:.60}")
    if version != FORMAT_VERSION:
        raise InputError(f"{p}: unsupported version {version}, this ecflow reads {FORMAT_VERSION}")


def _group(parent: Any, name: str, p: Path, where: str) -> Any:
    g = _member(parent, name, p, f"group {where}")
    if not isinstance(g, _h5py().Group):
        raise InputError(f"{p}: {where} must be a group, got a dataset")
    return g


def _read_dataset(group: Any, name: str, p: Path, ndim: int) -> np.ndarray:
    h5py = _h5py()
    where = f"{group.name.rstrip('/')}/{name}"
    if name not in group:
        raise InputError(f"{p}: missing dataset {where}")
    ds = _member(group, name, p, f"dataset {where}")
    if not isinstance(ds, h5py.Dataset):
        raise InputError(f"{p}: {where} must be a dataset")
    if ds.dtype.kind != "f":
        raise InputError(f"{p}: {where} must be a float dataset, got dtype {ds.dtype}")
    _check_storage(ds, p, where)
    if len(ds.shape) != ndim:
        raise InputError(f"{p}: {where} must be {ndim}-dimensional, got shape {ds.shape}")
    arr = np.asarray(ds[()], dtype=np.float64)
    if arr.ndim != ndim:
        raise InputError(f"{p}: {where} must be {ndim}-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{p}: {where} contains NaN or Inf")
    return arr


def _read_queries(f: Any, p: Path, required: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    if "queries" not in f:
        if required:
            raise InputError(f"{p}: missing group /queries (a pairs file needs /queries/x and /y)")
        return None, None
    g = _group(f, "queries", p, "/queries")
    x = _read_dataset(g, "x", p, 2)
    y = _read_dataset(g, "y", p, 2)
    if x.shape[0] != y.shape[0]:
        raise InputError(
            f"{p}: /queries/x has {x.shape[0]} rows but /queries/y has {y.shape[0]}"
        )
    if x.shape[0] == 0 or x.shape[1] == 0 or y.shape[1] == 0:
        raise InputError(f"{p}: /queries is empty (x {x.shape}, y {y.shape})")
    return x, y


def _extra_attrs(f: Any, p: Path) -> dict[str, Any]:
    return {
        k: _attr(f, k, p, "/") for k in f.attrs.keys() if k not in ("ecflow_format", "version")
    }


_LAYER_NAME = re.compile("0|[1-9][0-9]{0,5}")
"""Layer group names: ASCII decimal without leading zeros (``str.isdigit`` also takes ``²``)."""


def _read_layers(f: Any, p: Path, prefix: str = "") -> MLP:
    where = f"{prefix}/layers"
    if "layers" not in f:
        raise InputError(f"{p}: missing group {where} (a network needs at least one layer)")
    g = _group(f, "layers", p, where)
    names = list(g.keys())
    if not names:
        raise InputError(f"{p}: {where} is empty (a network needs at least one layer)")
    if not all(_LAYER_NAME.fullmatch(n) for n in names):
        shown = ", ".join(repr(n) for n in sorted(names)[:8])
        raise InputError(f"{p}: {where} must hold groups named 0, 1, 2, ..., got {shown}")
    idx = sorted(int(n) for n in names)
    if idx != list(range(len(idx))):
        missing = sorted(set(range(idx[-1] + 1)) - set(idx))
        raise InputError(f"{p}: gap in layer numbering, {where}/{missing[0]} is missing")
    layers: list[Layer] = []
    for i in idx:
        lg = _group(g, str(i), p, f"{where}/{i}")
        act = _attr(lg, "activation", p, f"{where}/{i}")
        if act is None:
            raise InputError(f"{p}: {where}/{i} has no 'activation' attribute")
        if not isinstance(act, str):
            raise InputError(f"{p}: {where}/{i} activation must be a string, got {act!r:.60}")
        try:
            activation = get_activation(act)
        except ValueError as exc:
            raise InputError(f"{p}: {where}/{i}: {exc}") from None
        w = _read_dataset(lg, "weight", p, 2)
        b = _read_dataset(lg, "bias", p, 1)
        if b.shape[0] != w.shape[0]:
            raise InputError(
                f"{p}: {where}/{i}/bias has {b.shape[0]} entries but weight has {w.shape[0]} rows"
            )
        if w.size == 0:
            raise InputError(f"{p}: {where}/{i}/weight is empty (shape {w.shape})")
        if layers and w.shape[1] != layers[-1].n_out:
            raise InputError(
                f"{p}: {where}/{i}/weight has n_in = {w.shape[1]} but layer {i - 1} has "
                f"n_out = {layers[-1].n_out}"
            )
        layers.append(Layer(w, b, activation))
    return MLP(tuple(layers))


def read_network_file(path: str | os.PathLike) -> NetworkFile:
    """Read and validate a network file (``ecflow_format = "mlp"``).

    Raises
    ------
    ValueError
        Missing, empty, truncated or non-HDF5 file; wrong or missing ``ecflow_format`` or
        ``version``; missing layers or a gap in their numbering; unknown activation; mismatched
        shapes; non-float datasets; NaN or Inf.
    """
    p = Path(path)
    with open_for_reading(p) as f:
        _check_header(f, p, "mlp")
        net = _read_layers(f, p)
        x, y = _read_queries(f, p, required=False)
        if x is not None and (x.shape[1] != net.d_in or y.shape[1] != net.d_out):
            raise InputError(
                f"{p}: /queries has x {x.shape} and y {y.shape} but the network is "
                f"{net.d_in} -> {net.d_out}"
            )
        return NetworkFile(net, x, y, _extra_attrs(f, p))


def read_network(path: str | os.PathLike) -> MLP:
    """Read and validate the network of a network file (see :func:`read_network_file`)."""
    return read_network_file(path).network


def read_pairs(path: str | os.PathLike) -> PairsFile:
    """Read and validate a pairs file (``ecflow_format = "pairs"``, ``/queries/x`` and ``/y``)."""
    p = Path(path)
    with open_for_reading(p) as f:
        _check_header(f, p, "pairs")
        x, y = _read_queries(f, p, required=True)
        return PairsFile(x, y, _extra_attrs(f, p))


def read_queries(path: str | os.PathLike) -> PairsFile:
    """Read ``/queries/x`` and ``/y`` of a pairs file or of a network file that holds them.

    A trained teacher keeps its training inputs there, so either kind of file can name queries.
    """
    p = Path(path)
    with open_for_reading(p) as f:
        fmt = _string_attr(f, "ecflow_format", p, "/")
    if fmt != "mlp":
        return read_pairs(p)
    nf = read_network_file(p)
    if nf.x is None:
        raise InputError(f"{p}: the network file has no /queries to take inputs from")
    return PairsFile(nf.x, nf.y, nf.attrs)


def check_destination(path: str | os.PathLike) -> Path:
    """Check that a file can be written at ``path`` (its folder exists, it is not a folder).

    Commands call it before long work, so that a bad ``--out`` fails at once, not at the end.
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise InputError(f"{dest}: cannot write, folder {folder} does not exist")
    if dest.is_dir():
        raise InputError(f"{dest}: cannot write, it is a directory")
    return dest


_FILE_MODE = 0o666


def _umask() -> int:
    """The process's umask, read without changing it where the system says it (Linux)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    # Elsewhere the only way to read it is to set it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``, else delete it.

    A reader never sees a half-written file, and a killed writer leaves at most a stray
    ``.*.tmp`` file, never a truncated destination.
    """
    dest = check_destination(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=folder)
    except OSError as exc:
        raise InputError(f"{dest}: cannot write ({exc.strerror or exc})") from None
    tmp_path = Path(tmp)
    try:
        # mkstemp makes the file 0600; a written file gets the mode open() gives (0644 under
        # the usual umask 022), as any other program's output does.
        os.fchmod(fd, _FILE_MODE & ~_umask())
    finally:
        os.close(fd)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _check_space(
    path: str | os.PathLike, *arrays: Any, attrs: Mapping[str, Any] | None = None
) -> None:
    """Refuse to start a write that cannot fit on the destination's file system.

    The HDF5 library does not fail cleanly when the disk fills up mid-write: measured, a
    ``query`` into a full tmpfs ended in a segmentation fault (rc 139). Checking the free space
    first turns that into one line; the estimate is the arrays' bytes plus 10 % and the
    attributes' text.
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    n = sum(int(np.asarray(a).nbytes) for a in arrays if a is not None)
    n += sum(len(str(v)) for v in (attrs or {}).values())
    check_free_space(folder, n + n // 10, str(dest))


def _write_attr(f: Any, key: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        value = np.array(value, dtype=_h5py().string_dtype())
    elif isinstance(value, (dict,)):
        import json

        value = json.dumps(value)
    f.attrs[key] = value


def _write_layers(parent: Any, network: MLP) -> None:
    g = parent.create_group("layers")
    for i, layer in enumerate(network.layers):
        lg = g.create_group(str(i))
        lg.attrs["activation"] = layer.activation.name
        lg.create_dataset("weight", data=np.asarray(layer.weight, dtype=np.float64))
        lg.create_dataset("bias", data=np.asarray(layer.bias, dtype=np.float64))


def write_network(
    path: str | os.PathLike,
    network: MLP,
    *,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a network file atomically, optionally with its queries and extra root attributes.

    Parameters
    ----------
    path : path-like
    network : MLP
    x : ndarray of shape (n, d_in), float64, optional
    y : ndarray of shape (n, d_out), float64, optional
    attrs : mapping, optional
        Extra root attributes (numbers, strings, arrays; dicts are stored as JSON strings).
    """
    if (x is None) != (y is None):
        raise InputError("queries need both x and y")
    if x is not None:
        x, y = check_xy(x, y)
        if x.shape[1] != network.d_in or y.shape[1] != network.d_out:
            raise InputError(
                f"queries x {x.shape}, y {y.shape} do not match the network "
                f"{network.d_in} -> {network.d_out}"
            )
    h5py = _h5py()
    _check_space(path, x, y, *(a for l in network.layers for a in (l.weight, l.bias)), attrs=attrs)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["ecflow_format"] = "mlp"
            f.attrs["version"] = np.int64(FORMAT_VERSION)
            for k, v in (attrs or {}).items():
                _write_attr(f, k, v)
            _write_layers(f, network)
            if x is not None:
                q = f.create_group("queries")
                q.create_dataset("x", data=x)
                q.create_dataset("y", data=y)
    return Path(path)


def write_pairs(
    path: str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    *,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write a pairs file atomically: ``/queries/x`` ``(n, d_in)`` and ``/queries/y`` ``(n, d_out)``."""
    x, y = check_xy(x, y)
    h5py = _h5py()
    _check_space(path, x, y, attrs=attrs)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["ecflow_format"] = "pairs"
            f.attrs["version"] = np.int64(FORMAT_VERSION)
            for k, v in (attrs or {}).items():
                _write_attr(f, k, v)
            q = f.create_group("queries")
            q.create_dataset("x", data=x)
            q.create_dataset("y", data=y)
    return Path(path)


def describe_file(path: str | os.PathLike) -> dict[str, Any]:
    """Validate a network, pairs or job file and summarise it (format, version, sizes, queries,
    settings or attributes)."""
    p = Path(path)
    with open_for_reading(p) as f:
        fmt = _string_attr(f, "ecflow_format", p, "/")
    if fmt == "job":
        job = read_job(p)
        out = {
            "format": "job",
            "version": FORMAT_VERSION,
            "queries": f"{job.x.shape[0]} pairs, d_in {job.x.shape[1]}, d_out {job.y.shape[1]}",
            "student sizes": "-".join(map(str, job.init.sizes)),
            "activations": ", ".join(a.name for a in job.init.activations),
            "parameters": job.init.n_params,
        }
        attrs = job.settings
    elif fmt == "pairs":
        pf = read_pairs(p)
        out: dict[str, Any] = {
            "format": "pairs",
            "version": FORMAT_VERSION,
            "queries": f"{pf.x.shape[0]} pairs, d_in {pf.x.shape[1]}, d_out {pf.y.shape[1]}",
        }
        attrs = pf.attrs
    else:
        nf = read_network_file(p)
        net = nf.network
        out = {
            "format": "mlp",
            "version": FORMAT_VERSION,
            "sizes": "-".join(map(str, net.sizes)),
            "hidden layers": ", ".join(map(str, net.hidden_sizes)) or "none",
            "activations": ", ".join(a.name for a in net.activations),
            "parameters": net.n_params,
            "queries": (
                f"{nf.x.shape[0]} pairs" if nf.x is not None else "none"
            ),
        }
        attrs = nf.attrs
    for k, v in attrs.items():
        out[f"attr {k}"] = v
    return out


# --- job files (engine protocol) -----------------------------------------------------------------
# The layout is generic here (pairs + initial network + a flat dict of settings); the engines
# package turns the settings into a TrainConfig and the result attributes into a TrainResult.


@dataclass(frozen=True, eq=False)
class JobFile:
    """Contents of a training job file: pairs, the initial network and the settings."""

    x: np.ndarray
    y: np.ndarray
    init: MLP
    settings: Mapping[str, Any]


def write_job(
    path: str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    init: MLP,
    settings: Mapping[str, Any],
) -> Path:
    """Write a job file atomically: ``ecflow_format = "job"``, settings as root attributes,
    ``/queries/x`` ``(n, d_in)``, ``/queries/y`` ``(n, d_out)`` and the initial network under
    ``/init/layers/<i>`` (same layout as a network file)."""
    x, y = check_xy(x, y)
    if x.shape[1] != init.d_in or y.shape[1] != init.d_out:
        raise InputError(
            f"pairs x {x.shape}, y {y.shape} do not match the network {init.d_in} -> {init.d_out}"
        )
    h5py = _h5py()
    _check_space(path, x, y, *(a for l in init.layers for a in (l.weight, l.bias)), attrs=settings)
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["ecflow_format"] = "job"
            f.attrs["version"] = np.int64(FORMAT_VERSION)
            for k, v in settings.items():
                _write_attr(f, k, v)
            q = f.create_group("queries")
            q.create_dataset("x", data=x)
            q.create_dataset("y", data=y)
            _write_layers(f.create_group("init"), init)
    return Path(path)


def read_job(path: str | os.PathLike) -> JobFile:
    """Read and validate a job file written by :func:`write_job`."""
    p = Path(path)
    with open_for_reading(p) as f:
        _check_header(f, p, "job")
        x, y = _read_queries(f, p, required=True)
        if "init" not in f:
            raise InputError(f"{p}: missing group /init (the initial network)")
        init = _read_layers(_group(f, "init", p, "/init"), p, prefix="/init")
        if x.shape[1] != init.d_in or y.shape[1] != init.d_out:
            raise InputError(
                f"{p}: /queries x {x.shape}, y {y.shape} do not match /init "
                f"{init.d_in} -> {init.d_out}"
            )
        return JobFile(x, y, init, _extra_attrs(f, p))


def glorot_normal(
    sizes: Sequence[int],
    activations: Sequence[str | Activation],
    seed: int | np.random.Generator,
) -> MLP:
    """Glorot-normal initialisation (the paper's, appendix A.6.1), zero biases.

    Weights of layer ``i`` are drawn from N(0, 2 / (fan_in + fan_out)).

    Parameters
    ----------
    sizes : sequence of int
        ``(d_in, n_hidden_1, ..., d_out)``.
    activations : sequence of str or Activation
        One per layer (``len(sizes) - 1``).
    seed : int or Generator
    """
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or any(s < 1 for s in sizes):
        raise InputError(f"sizes must be at least two positive integers, got {sizes}")
    if len(activations) != len(sizes) - 1:
        raise InputError(
            f"need {len(sizes) - 1} activations for sizes {sizes}, got {len(activations)}"
        )
    rng = np.random.default_rng(seed)
    weights, biases = [], []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        std = np.sqrt(2.0 / (n_in + n_out))
        weights.append(rng.normal(0.0, std, size=(n_out, n_in)))
        biases.append(np.zeros(n_out))
    return MLP.from_arrays(weights, biases, activations)


def standardise_inputs(layer: Layer, h: np.ndarray) -> Layer:
    """``layer`` acting on its inputs standardised over the sample ``h``, folded into it.

    ``σ(W (h - μ)/s + b) = σ((W/s) h + b - (W/s) μ)`` with ``μ, s`` the per-column mean and
    standard deviation of ``h`` (a column with ``s = 0`` is left unscaled): what a full-batch
    batch-norm in front of the layer would do. The deep synthetic teachers are built this way
    (appendix A.4) and deep students start this way.

    Parameters
    ----------
    layer : Layer
    h : ndarray of shape (n_samples, layer.n_in), float64
        The layer's inputs.

    Returns
    -------
    Layer
    """
    h = check_array(h, "h", ndim=2)
    if h.shape[1] != layer.n_in:
        raise InputError(f"h has {h.shape[1]} columns, the layer takes {layer.n_in} inputs")
    mu = h.mean(axis=0)
    sd = h.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    weight = layer.weight / sd
    return Layer(weight, layer.bias - weight @ mu, layer.activation)


_PARTS = {"weight": ("weight",), "bias": ("bias",), "all": ("weight", "bias")}
"""Names of a layer's parts accepted by :func:`parameter_mask`."""


def parameter_mask(network: MLP, frozen: Mapping[int, str | Sequence[str]]) -> np.ndarray:
    """Which entries of ``network.flatten()`` train when the given layer parts are frozen.

    Parameters
    ----------
    network : MLP
    frozen : mapping of int to {"weight", "bias", "all"} or a sequence of them
        Layer index (negative counts from the output layer) -> the parts held fixed, e.g.
        ``{0: "weight"}`` freezes the first layer's weights and leaves its biases free.

    Returns
    -------
    free : ndarray of shape (n_params,), bool
        True where a parameter trains, in :meth:`MLP.flatten` order (the ``free`` argument of
        the engines' ``train``).
    """
    if not isinstance(network, MLP):
        raise InputTypeError(f"network must be an MLP, got {type(network).__name__}")
    if not isinstance(frozen, Mapping):
        raise InputTypeError(
            f"frozen must map layer indices to parts, got {type(frozen).__name__}"
        )
    n_layers = len(network.layers)
    free = np.ones(network.n_params, dtype=bool)
    offsets = np.cumsum([0] + [l.weight.size + l.bias.size for l in network.layers])
    for index, parts in frozen.items():
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not (
            -n_layers <= index < n_layers
        ):
            raise InputError(
                f"frozen layer indices must be integers in [-{n_layers}, {n_layers}), got {index!r}"
            )
        names = (parts,) if isinstance(parts, str) else tuple(parts)
        unknown = [p for p in names if p not in _PARTS]
        if unknown or not names:
            raise InputError(
                f"frozen parts must be among {', '.join(_PARTS)}, got {parts!r} for layer {index}"
            )
        layer = network.layers[index]
        start = offsets[index % n_layers]
        for name in {n for p in names for n in _PARTS[p]}:
            if name == "weight":
                free[start : start + layer.weight.size] = False
            else:
                free[start + layer.weight.size : start + layer.weight.size + layer.n_out] = False
    return free
