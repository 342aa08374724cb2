"""ONNX in and out: export an :class:`~ecflow.networks.MLP`, import a plain-MLP graph, describe
any model.

**Export** writes the forward pass ``h_{i+1} = σ_i(h_i W_i^T + b_i)`` as one ``Gemm``
(``transB = 1``) per layer followed by the activation, in float64 (the default) or float32.
onnxruntime's CPU provider has no float64 kernel for ``Erf``, ``Gelu`` or several others, and an
exported network must run everywhere, so every activation is written from operators that have
one, in a form that neither overflows nor cancels:

* ``softplus(z) = relu(z) + log(1 + exp(-|z|))`` (``exp`` of a non-positive number only);
* ``g(z) = softplus(z) + sigmoid(4 z)`` (paper appendix A.2);
* ``selu(z) = λ relu(z) + λ α (exp(min(z, 0)) - 1)``; ``leaky_relu(z) = max(z, 0.01 z)``;
* ``silu(z) = z sigmoid(z)``; ``mish(z) = z tanh(softplus(z))``;
* ``gelu(z) = z (1 + erf(z / √2)) / 2``, with ``erf`` in float64 from the everywhere-positive
  series ``erf(u) = 2/√π e^{-u²} Σ_n 2^n u^{2n+1} / (2n+1)!!`` evaluated by Horner on
  ``u = min(|x|, 6)`` (``erf(6) = 1`` in float64; 110 terms reach 2e-15), and the native ``Erf``
  in float32.

**Import** reads a graph that is a chain of dense layers: ``Gemm``, or ``MatMul`` with an
optional ``Add`` of a constant bias, each followed by elementwise nodes whose only non-constant
input is the layer's output. Those nodes are evaluated in float64 on a grid of ``z`` and matched
to the activations of the spec (:mod:`ecflow.activations`), which recognises both the native
operators (``Tanh``, ``Softplus``, ...) and decompositions (PyTorch's ``x * Sigmoid(x)``, this
module's own). Weights are copied exactly (float32 weights are exact in float64). Anything else
raises :class:`~ecflow.errors.InputError` naming the first unsupported node.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import special

from ecflow._extras import require
from ecflow.activations import ACTIVATIONS, Activation
from ecflow.errors import InputError
from ecflow.networks import MLP, Layer, atomic_path, check_destination
from ecflow.safety import check_array_bytes, printable

__all__ = [
    "OPSET",
    "ONNX_MIN_VERSION",
    "OnnxTensorInfo",
    "OnnxInfo",
    "load_onnx",
    "describe_onnx",
    "guess_activation",
    "network_to_onnx",
    "write_onnx",
    "onnx_to_network",
    "read_onnx_network",
]

OPSET = 17
"""ONNX opset of exported models: PyTorch's default export opset, read by every current runtime."""

_ERF_CUTOFF = 6.0
_ERF_TERMS = 110

_ELEM_TYPES = {1: "float32", 11: "float64", 10: "float16", 16: "bfloat16", 6: "int32", 7: "int64"}

# Operators that name one activation of the spec on their own (paper's activations by op type).
_NAMED_OPS = {
    "Tanh": "tanh",
    "Sigmoid": "sigmoid",
    "Relu": "relu",
    "LeakyRelu": "leaky_relu",
    "Softplus": "softplus",
    "Selu": "selu",
    "Gelu": "gelu",
    "Mish": "mish",
}
_DENSE_OPS = {"Gemm", "MatMul"}
_AFFINE_OPS = {"Gemm", "MatMul", "Add", "Sub", "Identity", "Cast", "Constant", "Flatten", "Reshape"}


ONNX_MIN_VERSION = (1, 21)
"""Oldest onnx read with: 1.16 fixed the external-data path traversal (CVE-2024-27318), 1.21
the symlink and hard-link escapes. :func:`load_onnx` checks external data itself as well."""


def _onnx():
    onnx = require("onnx", "onnx", "ONNX support")
    found = tuple(int(part) for part in re.findall(r"\d+", onnx.__version__)[:2])
    if found < ONNX_MIN_VERSION:
        raise InputError(
            f"onnx {onnx.__version__} is installed, ecflow reads ONNX files with onnx >= "
            f"{'.'.join(map(str, ONNX_MIN_VERSION))} (older ones follow external-data paths "
            "out of the model's folder): pip install -U onnx"
        )
    return onnx


_MAX_ONNX_BYTES = 2 << 30
"""Protobuf cannot hold a message over 2 GiB: a larger file is not a model."""


def _node_tensors(nodes) -> Iterator[Any]:
    """The tensors held by the attributes of ``nodes``, subgraphs included."""
    for node in nodes:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            for sparse in ([a.sparse_tensor] if a.HasField("sparse_tensor") else []) + list(
                a.sparse_tensors
            ):
                yield sparse.values
                yield sparse.indices
            if a.HasField("g"):
                yield from _tensors(a.g)
            for sub in a.graphs:
                yield from _tensors(sub)


def _tensors(graph) -> Iterator[Any]:
    """Every tensor of a graph and its subgraphs: initializers and node attributes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _model_tensors(model) -> Iterator[Any]:
    """Every tensor of a model: its graph's and those of its functions' nodes."""
    yield from _tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _external_file(tensor, folder: Path, p: Path) -> None:
    """Check that an external-data tensor reads a regular file inside the model's folder.

    What onnx >= 1.21 refuses, refused again here (a model from someone else must not read
    ``/etc/passwd`` into ecflow's outputs): an absolute or ``..`` location, a symlink, a file
    with several hard links, and an offset or length past the end of the file.
    """
    info = {e.key: e.value for e in tensor.external_data}
    location = info.get("location", "")
    where = f"{p}: tensor {tensor.name!r:.60} keeps its data in {location!r:.80}"
    rel = Path(location)
    if not location or rel.is_absolute() or ".." in rel.parts or "\0" in location:
        raise InputError(f"{where}, outside the model's folder; ecflow refuses it")
    target = folder / rel
    parent = target.parent
    while parent != folder:
        if parent.is_symlink():
            raise InputError(f"{where}, behind a symbolic link; ecflow refuses it")
        parent = parent.parent
    try:
        st = os.lstat(target)
    except OSError:
        raise InputError(f"{where}, which does not exist") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{where}, which is not a regular file (a symbolic link?)")
    if st.st_nlink > 1:
        raise InputError(f"{where}, a file with several hard links; ecflow refuses it")
    try:
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else st.st_size - offset
    except ValueError:
        raise InputError(f"{where} with a non-integer offset or length") from None
    if offset < 0 or length < 0 or offset + length > st.st_size:
        raise InputError(f"{where} at bytes {offset}..{offset + length}, past its end")
    if length > _MAX_ONNX_BYTES:
        raise InputError(f"{where}: {length} bytes, more than a model holds")


def load_onnx(path: str | os.PathLike):
    """Read an ONNX model, raising :class:`InputError` for a missing, corrupt or non-ONNX file.

    External data (tensors kept in files beside the model) is read only from regular files
    inside the model's folder (:func:`_external_file`); declared tensor shapes are checked
    against :func:`ecflow.safety.max_array_bytes`.

    Returns
    -------
    onnx.ModelProto
    """
    onnx = _onnx()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    size = p.stat().st_size
    if size > _MAX_ONNX_BYTES:
        raise InputError(f"{p}: {size} bytes, more than an ONNX model (protobuf) can hold")
    try:
        model = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # protobuf errors have no common base class
        raise InputError(f"{p}: not a valid ONNX model ({_first_line(exc)})") from None
    folder = p.resolve().parent
    external = False
    for tensor in _model_tensors(model):
        check_array_bytes(tensor.dims, f"{p}: tensor {printable(tensor.name)!r:.60}")
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            _external_file(tensor, folder, p)
            external = True
    try:
        if external:
            from onnx.external_data_helper import load_external_data_for_model

            load_external_data_for_model(model, str(folder))
        onnx.checker.check_model(model)
    except InputError:
        raise
    except Exception as exc:  # protobuf and checker errors have no common base class
        raise InputError(f"{p}: not a valid ONNX model ({_first_line(exc)})") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{p}: not a valid ONNX model (empty graph)")
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return printable(text.splitlines()[0]) if text else type(exc).__name__


@dataclass(frozen=True)
class OnnxTensorInfo:
    """One graph input or output: name, shape (``None`` for a symbolic dimension) and dtype."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str

    def describe(self) -> str:
        if self.shape is None:
            return f"{self.name}: {self.dtype}, shape unknown"
        dims = ", ".join("N" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.dtype}[{dims}]"


@dataclass(frozen=True)
class OnnxInfo:
    """What :func:`describe_onnx` reads from a model without running it.

    Attributes
    ----------
    inputs, outputs : tuple of OnnxTensorInfo
        Graph inputs (initializers excluded) and outputs.
    precision : str
        ``"float64"`` when every float input and output is float64, else the lowest float type.
    opset : int
    op_counts : mapping of str to int
        Nodes per operator type.
    activation : str or None
        :func:`guess_activation`'s answer; ``activation_reason`` says why.
    activation_reason : str
    mlp_sizes : tuple of int or None
        ``(d_in, n_hidden..., d_out)`` when the graph is a plain MLP that
        :func:`onnx_to_network` imports, else None; ``mlp_reason`` says why not.
    mlp_reason : str
    mlp_activation : str or None
        The hidden activation of the imported plain MLP when all its hidden layers share one:
        the activation a block of several operators computes (``g`` or ``softplus`` as
        :func:`write_onnx` writes them), which the operators alone do not name.
    """

    inputs: tuple[OnnxTensorInfo, ...]
    outputs: tuple[OnnxTensorInfo, ...]
    precision: str
    opset: int
    op_counts: Mapping[str, int]
    activation: str | None
    activation_reason: str
    mlp_sizes: tuple[int, ...] | None
    mlp_reason: str
    mlp_activation: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Rows for ``ecflow info``."""
        return {
            "format": "onnx",
            "opset": self.opset,
            "inputs": "; ".join(t.describe() for t in self.inputs),
            "outputs": "; ".join(t.describe() for t in self.outputs),
            "precision": self.precision,
            "operators": ", ".join(f"{k} x{v}" for k, v in sorted(self.op_counts.items())),
            "activation": (
                f"{self.activation} ({self.activation_reason})" if self.activation
                else f"{self.mlp_activation} (what each activation block of the plain MLP "
                "computes; the operators alone name none)" if self.mlp_activation
                else f"unknown ({self.activation_reason})"
            ),
            "plain MLP": (
                " -> ".join(map(str, self.mlp_sizes))
                if self.mlp_sizes
                else f"no ({self.mlp_reason})"
            ),
        }


def _tensor_info(value_info) -> OnnxTensorInfo:
    t = value_info.type
    if not t.HasField("tensor_type"):
        return OnnxTensorInfo(value_info.name, None, "non-tensor")
    tt = t.tensor_type
    dtype = _ELEM_TYPES.get(tt.elem_type, f"elem_type {tt.elem_type}")
    if not tt.HasField("shape"):
        return OnnxTensorInfo(value_info.name, None, dtype)
    dims = tuple(d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim)
    if any(d is not None and d < 0 for d in dims):
        shown = ", ".join("N" if d is None else str(d) for d in dims)
        raise InputError(f"{value_info.name!r:.60} declares a negative dimension [{shown}]")
    return OnnxTensorInfo(value_info.name, dims, dtype)


def _graph_inputs(model) -> list:
    init = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in init]


def _lowest_precision(tensors) -> str:
    floats = [t.dtype for t in tensors if t.dtype in ("float64", "float32", "float16", "bfloat16")]
    for dtype in ("float16", "bfloat16", "float32"):
        if dtype in floats:
            return dtype
    return "float64" if floats else "none"


def guess_activation(model) -> tuple[str | None, str]:
    """The hidden activation, when the graph's operators name one of the spec unambiguously.

    Unambiguous means: the only non-affine operator type in the graph names an activation of
    the spec (``Tanh`` -> tanh, ``Softplus`` -> softplus, ...). A graph that also holds ``Exp``,
    ``Mul`` or a second named operator (``x * Sigmoid(x)`` is silu, not sigmoid; ``g`` written as
    ``Softplus + Sigmoid``) is ambiguous.

    Returns
    -------
    activation : str or None
    reason : str
        One phrase for the report.
    """
    ops = {n.op_type for n in model.graph.node} - _AFFINE_OPS
    named = sorted(ops & set(_NAMED_OPS))
    others = sorted(ops - set(_NAMED_OPS))
    if len(named) == 1 and not others:
        return _NAMED_OPS[named[0]], f"the graph's only nonlinear operator is {named[0]}"
    if not ops:
        return "identity", "the graph has no nonlinear operator"
    return None, "the graph's operators " + ", ".join(sorted(ops)) + " name no single activation"


def describe_onnx(path: str | os.PathLike) -> OnnxInfo:
    """Read inputs, outputs, precision, operators, activation and MLP shape of an ONNX file."""
    model = load_onnx(path)
    try:
        inputs = tuple(_tensor_info(v) for v in _graph_inputs(model))
        outputs = tuple(_tensor_info(v) for v in model.graph.output)
    except InputError as exc:
        raise InputError(f"{Path(path)}: {exc}") from None
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    activation, reason = guess_activation(model)
    try:
        imported = onnx_to_network(model)
    except InputError as exc:
        sizes, mlp_reason = None, str(exc)
    else:
        sizes, mlp_reason = imported.sizes, ""
    hidden = {a.name for a in imported.activations[:-1]} if sizes else set()
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return OnnxInfo(
        inputs=inputs,
        outputs=outputs,
        precision=_lowest_precision(inputs + outputs),
        opset=int(opset),
        op_counts=counts,
        activation=activation,
        activation_reason=reason,
        mlp_sizes=sizes,
        mlp_reason=mlp_reason,
        mlp_activation=hidden.pop() if len(hidden) == 1 else None,
    )


# --- export --------------------------------------------------------------------------------------


class _GraphBuilder:
    """Accumulates nodes and scalar/array initializers of one graph in one float dtype."""

    def __init__(self, dtype: np.dtype):
        self.dtype = np.dtype(dtype)
        self.nodes: list = []
        self.initializers: list = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, value, stem: str = "c") -> str:
        arr = np.asarray(value, dtype=self.dtype)
        key = (arr.shape, arr.tobytes()) if arr.ndim == 0 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        from onnx import numpy_helper

        name = self.name(stem)
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._consts[key] = name
        return name

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        from onnx import helper

        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out


def _softplus_nodes(b: _GraphBuilder, z: str) -> str:
    tail = b.op("Log", b.op("Add", b.const(1.0), b.op("Exp", b.op("Neg", b.op("Abs", z)))))
    return b.op("Add", b.op("Relu", z), tail)


def _erf_nodes(b: _GraphBuilder, x: str) -> str:
    if b.dtype == np.float32:
        return b.op("Erf", x)
    u = b.op("Min", b.op("Abs", x), b.const(_ERF_CUTOFF))
    u2 = b.op("Mul", u, u)
    acc = b.const(1.0)
    for n in range(_ERF_TERMS, 0, -1):
        term = b.op("Mul", b.op("Mul", u2, acc), b.const(2.0 / (2 * n + 1)))
        acc = b.op("Add", b.const(1.0), term)
    scale = b.op("Mul", b.op("Exp", b.op("Neg", u2)), b.const(2.0 / np.sqrt(np.pi)))
    return b.op("Mul", b.op("Sign", x), b.op("Mul", b.op("Mul", scale, u), acc))


def _selu_nodes(b: _GraphBuilder, z: str) -> str:
    from ecflow.activations import _SELU_ALPHA, _SELU_LAMBDA

    neg = b.op("Sub", b.op("Exp", b.op("Min", z, b.const(0.0))), b.const(1.0))
    return b.op(
        "Add",
        b.op("Mul", b.op("Relu", z), b.const(_SELU_LAMBDA)),
        b.op("Mul", neg, b.const(_SELU_LAMBDA * _SELU_ALPHA)),
    )


def _leaky_relu_nodes(b: _GraphBuilder, z: str) -> str:
    from ecflow.activations import _LEAKY_SLOPE

    return b.op("Max", z, b.op("Mul", z, b.const(_LEAKY_SLOPE)))


def _gelu_nodes(b: _GraphBuilder, z: str) -> str:
    erf = _erf_nodes(b, b.op("Mul", z, b.const(1.0 / np.sqrt(2.0))))
    return b.op("Mul", b.op("Mul", z, b.const(0.5)), b.op("Add", b.const(1.0), erf))


_EXPORTERS: dict[str, Callable[[_GraphBuilder, str], str]] = {
    "identity": lambda b, z: z,
    "tanh": lambda b, z: b.op("Tanh", z),
    "sigmoid": lambda b, z: b.op("Sigmoid", z),
    "relu": lambda b, z: b.op("Relu", z),
    "leaky_relu": _leaky_relu_nodes,
    "softplus": _softplus_nodes,
    "g": lambda b, z: b.op(
        "Add", _softplus_nodes(b, z), b.op("Sigmoid", b.op("Mul", z, b.const(4.0)))
    ),
    "silu": lambda b, z: b.op("Mul", z, b.op("Sigmoid", z)),
    "mish": lambda b, z: b.op("Mul", z, b.op("Tanh", _softplus_nodes(b, z))),
    "selu": _selu_nodes,
    "gelu": _gelu_nodes,
}


def network_to_onnx(network: MLP, *, float32: bool = False, softmax: bool = False,
                    name: str = "ecflow_mlp"):
    """Write a network as an ONNX model: ``Gemm`` per layer, activations from standard operators.

    Parameters
    ----------
    network : MLP
    float32 : bool, default=False
        Store weights and compute in float32 (rounds every weight; the output then differs from
        the float64 forward pass at the float32 level). Default float64: the model's output
        equals :meth:`MLP.forward` to about 1e-14.
    softmax : bool, default=False
        Answer probabilities: a ``Softmax`` over the outputs (a ``Sigmoid`` for one output),
        so that a network recovered from a classifier's probabilities, which writes its
        centred logits, answers as the classifier did (:mod:`ecflow.oracle`).
    name : str
        Graph name.

    Returns
    -------
    onnx.ModelProto
        One input ``input`` of shape ``(N, d_in)`` and one output ``output`` of shape
        ``(N, d_out)``, ``N`` symbolic.
    """
    onnx = _onnx()
    from onnx import TensorProto, helper

    if not isinstance(network, MLP):
        raise TypeError(f"network must be an MLP, got {type(network).__name__}")
    dtype = np.float32 if float32 else np.float64
    elem = TensorProto.FLOAT if float32 else TensorProto.DOUBLE
    b = _GraphBuilder(dtype)
    h = "input"
    for i, layer in enumerate(network.layers):
        w = b.const(layer.weight, f"layer{i}_weight")
        bias = b.const(layer.bias, f"layer{i}_bias")
        h = b.op("Gemm", h, w, bias, transB=1)
        h = _EXPORTERS[layer.activation.name](b, h)
    if softmax:
        h = b.op("Sigmoid", h) if network.d_out == 1 else b.op("Softmax", h, axis=1)
    b.nodes.append(helper.make_node("Identity", [h], ["output"], name="output"))
    graph = helper.make_graph(
        b.nodes,
        name,
        [helper.make_tensor_value_info("input", elem, ["N", network.d_in])],
        [helper.make_tensor_value_info("output", elem, ["N", network.d_out])],
        initializer=b.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ecflow"
    )
    model.ir_version = min(model.ir_version, 8)  # readable by onnxruntime >= 1.12
    onnx.checker.check_model(model)
    return model


def write_onnx(path: str | os.PathLike, network: MLP, *, float32: bool = False,
               softmax: bool = False) -> Path:
    """Write :func:`network_to_onnx` atomically to ``path`` (``.onnx``); returns the path."""
    p = check_destination(path)
    model = network_to_onnx(network, float32=float32, softmax=softmax)
    with atomic_path(p, suffix=".onnx") as tmp:
        tmp.write_bytes(model.SerializeToString())
    return p


# --- import --------------------------------------------------------------------------------------


def _attr(node, key: str, default):
    for a in node.attribute:
        if a.name == key:
            from onnx import helper

            return helper.get_attribute_value(a)
    return default


def _sigmoid(z):
    return special.expit(z)


_UNARY: dict[str, Callable[..., np.ndarray]] = {
    "Identity": lambda z, n: z,
    "Cast": lambda z, n: z,
    "Neg": lambda z, n: -z,
    "Abs": lambda z, n: np.abs(z),
    "Sign": lambda z, n: np.sign(z),
    "Exp": lambda z, n: np.exp(z),
    "Log": lambda z, n: np.log(z),
    "Log1p": lambda z, n: np.log1p(z),
    "Sqrt": lambda z, n: np.sqrt(z),
    "Reciprocal": lambda z, n: 1.0 / z,
    "Tanh": lambda z, n: np.tanh(z),
    "Sigmoid": lambda z, n: _sigmoid(z),
    "Relu": lambda z, n: np.maximum(z, 0.0),
    "Erf": lambda z, n: special.erf(z),
    "Softplus": lambda z, n: np.logaddexp(0.0, z),
    "Mish": lambda z, n: z * np.tanh(np.logaddexp(0.0, z)),
    "LeakyRelu": lambda z, n: np.where(z > 0, z, _attr(n, "alpha", 0.01) * z),
    "Elu": lambda z, n: np.where(z > 0, z, _attr(n, "alpha", 1.0) * np.expm1(np.minimum(z, 0))),
    "Selu": lambda z, n: _attr(n, "gamma", 1.0507009873554805)
    * np.where(z > 0, z, _attr(n, "alpha", 1.6732632423543772) * np.expm1(np.minimum(z, 0))),
    "Gelu": lambda z, n: (
        0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
        if _attr(n, "approximate", b"none") in (b"tanh", "tanh")
        else z * special.ndtr(z)
    ),
    "HardSigmoid": lambda z, n: np.clip(_attr(n, "alpha", 0.2) * z + _attr(n, "beta", 0.5), 0, 1),
    "Softsign": lambda z, n: z / (1 + np.abs(z)),
}
_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "Add": np.add,
    "Sub": np.subtract,
    "Mul": np.multiply,
    "Div": np.divide,
    "Pow": np.power,
    "Max": np.maximum,
    "Min": np.minimum,
}


def _tensor_array(tensor) -> np.ndarray:
    """A tensor's values; a tensor whose data does not fill its declared shape is bad input
    (the checker does not look at sizes)."""
    from onnx import numpy_helper

    try:
        return numpy_helper.to_array(tensor)
    except (ValueError, TypeError) as exc:
        raise InputError(
            f"tensor {printable(tensor.name)!r:.60} of shape {list(tensor.dims)}: its data does "
            f"not match ({_first_line(exc)})"
        ) from None


class _Graph:
    """Index of a model's graph: constants, producers and consumers of each tensor."""

    def __init__(self, model):
        self.model = model
        self.consts: dict[str, np.ndarray] = {
            t.name: _tensor_array(t) for t in model.graph.initializer
        }
        self.producer: dict[str, Any] = {}
        self.consumers: dict[str, list] = {}
        for node in model.graph.node:
            if node.op_type == "Constant":
                value = _attr(node, "value", None)
                if value is not None:
                    self.consts[node.output[0]] = _tensor_array(value)
                    continue
            for out in node.output:
                self.producer[out] = node
            for inp in node.input:
                self.consumers.setdefault(inp, []).append(node)

    def const(self, name: str) -> np.ndarray | None:
        return self.consts.get(name)


def _label(node) -> str:
    return f"node {node.name!r} ({node.op_type})" if node.name else f"a {node.op_type} node"


def _dense(g: _Graph, node, h: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Weight ``(n_out, n_in)``, bias and output tensor of the dense layer starting at ``node``."""
    if node.op_type == "Gemm":
        if list(node.input[:1]) != [h] or len(node.input) < 2:
            raise InputError(f"{_label(node)}: its first input must be the previous layer")
        W = g.const(node.input[1])
        if W is None or W.ndim != 2:
            raise InputError(f"{_label(node)}: the weight is not a constant matrix")
        if _attr(node, "transA", 0):
            raise InputError(f"{_label(node)}: transA = 1 is not supported")
        W = np.asarray(W, dtype=np.float64)
        W = W if _attr(node, "transB", 0) else W.T
        W = W * float(_attr(node, "alpha", 1.0))
        bias = np.zeros(W.shape[0])
        if len(node.input) > 2 and node.input[2]:
            c = g.const(node.input[2])
            if c is None:
                raise InputError(f"{_label(node)}: the bias is not a constant")
            bias = bias + float(_attr(node, "beta", 1.0)) * np.broadcast_to(
                np.asarray(c, np.float64).reshape(-1), W.shape[:1]
            )
        return W, bias, node.output[0]
    # MatMul, then an optional Add of a constant vector.
    if list(node.input[:1]) != [h]:
        raise InputError(f"{_label(node)}: its first input must be the previous layer")
    W = g.const(node.input[1])
    if W is None or W.ndim != 2:
        raise InputError(f"{_label(node)}: the weight is not a constant matrix")
    W = np.asarray(W, dtype=np.float64).T
    out = node.output[0]
    nxt = g.consumers.get(out, [])
    bias = np.zeros(W.shape[0])
    if len(nxt) == 1 and nxt[0].op_type == "Add":
        add = nxt[0]
        other = [i for i in add.input if i != out]
        c = g.const(other[0]) if len(other) == 1 else None
        if c is not None and c.size in (1, W.shape[0]):
            bias = np.broadcast_to(np.asarray(c, np.float64).reshape(-1), W.shape[:1]).copy()
            out = add.output[0]
    return W, bias, out


def _activation_block(g: _Graph, z: str, outputs: set[str]) -> tuple[list, str]:
    """Elementwise nodes fed by tensor ``z`` (and scalar constants) up to the next dense layer.

    Returns the nodes in evaluation order and the one tensor that leaves the block.
    """
    nodes: list = []
    taken: set[int] = set()
    known = {z}
    grew = True
    while grew:
        grew = False
        for t in list(known):
            for node in g.consumers.get(t, []):
                if id(node) in taken or node.op_type in _DENSE_OPS:
                    continue
                if node.op_type not in _UNARY and node.op_type not in _BINARY:
                    raise InputError(f"{_label(node)} is not supported in a plain MLP")
                if not all(i in known or i in g.consts or not i for i in node.input):
                    continue
                for i in node.input:
                    c = g.const(i)
                    if c is not None and c.size != 1:
                        raise InputError(
                            f"{_label(node)}: a constant of shape {c.shape} is not elementwise"
                        )
                nodes.append(node)
                taken.add(id(node))
                known |= set(node.output)
                grew = True
    exits = sorted(
        t for t in known
        if t in outputs or any(id(n) not in taken for n in g.consumers.get(t, []))
    )
    if len(exits) != 1:
        raise InputError(
            f"the activation after tensor {z!r} has {len(exits)} outputs ({', '.join(exits)}); "
            "a plain MLP has one"
        )
    return nodes, exits[0]


def _evaluate_block(g: _Graph, nodes: list, z: str, out: str, grid: np.ndarray) -> np.ndarray:
    values = {z: grid}
    with np.errstate(all="ignore"):
        for node in nodes:
            args = [values[i] if i in values else float(np.asarray(g.consts[i]).reshape(-1)[0])
                    for i in node.input if i]
            if node.op_type in _BINARY:
                res = _BINARY[node.op_type](*args[:2])
                for extra in args[2:]:  # Max/Min are variadic
                    res = _BINARY[node.op_type](res, extra)
            else:
                res = _UNARY[node.op_type](args[0], node)
            values[node.output[0]] = np.broadcast_to(res, grid.shape)
    return values[out]


def _match_activation(g: _Graph, nodes: list, z: str, out: str) -> Activation:
    """The spec activation the block computes: the closest one on a grid of ``z``, within
    1e-9 of its scale (1e-6 when a constant is stored in less than float64, e.g. SELU's
    λ and α in a float32 graph)."""
    if out == z:
        return ACTIVATIONS["identity"]
    grid = np.linspace(-8.0, 8.0, 4001)
    values = _evaluate_block(g, nodes, z, out, grid)
    low = any(
        c is not None and c.dtype != np.float64 for n in nodes for c in map(g.const, n.input)
    )
    tol = 1e-6 if low else 1e-9
    errors = {}
    if np.all(np.isfinite(values)):
        for act in ACTIVATIONS.values():
            ref = act(grid)
            errors[act.name] = np.max(np.abs(values - ref)) / max(1.0, float(np.max(np.abs(ref))))
    best = min(errors, key=errors.get) if errors else None
    if best is not None and errors[best] <= tol:
        return ACTIVATIONS[best]
    names = ", ".join(_label(n) for n in nodes)
    raise InputError(f"{names}: computes no activation of the spec (ecflow.activations)")


def onnx_to_network(model) -> MLP:
    """Convert a plain-MLP ONNX graph to an :class:`MLP`, exactly.

    Parameters
    ----------
    model : onnx.ModelProto

    Raises
    ------
    InputError
        Several inputs, an input that is not ``(N, d_in)``, or a node that is not part of a
        chain of dense layers and spec activations (the message names it).
    """
    g = _Graph(model)
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise InputError(f"the model has {len(inputs)} inputs; a plain MLP has one")
    info = _tensor_info(inputs[0])
    if info.shape is not None and len(info.shape) != 2:
        raise InputError(f"input {info.describe()} is not a batch of vectors (N, d_in)")
    outputs = {o.name for o in model.graph.output}
    if len(outputs) != 1:
        raise InputError(f"the model has {len(outputs)} outputs; a plain MLP has one")
    h = info.name
    # Leading Identity/Cast/Flatten nodes on a (N, d) input change nothing.
    layers: list[Layer] = []
    while h not in outputs or not layers:
        users = g.consumers.get(h, [])
        if len(users) != 1:
            if not users:
                raise InputError(f"tensor {h!r} is not used and is not the output")
            names = ", ".join(_label(n) for n in users)
            raise InputError(
                f"tensor {h!r} feeds {len(users)} nodes ({names}); a plain MLP is a chain"
            )
        node = users[0]
        if node.op_type in ("Identity", "Cast", "Flatten") and not layers:
            h = node.output[0]
            continue
        if node.op_type not in _DENSE_OPS:
            raise InputError(
                f"{_label(node)} is not supported in a plain MLP (expected Gemm or MatMul)"
            )
        W, bias, z = _dense(g, node, h)
        block, h = _activation_block(g, z, outputs)
        act = _match_activation(g, block, z, h)
        try:
            layers.append(Layer(W, bias, act))
            MLP(tuple(layers))
        except ValueError as exc:
            raise InputError(f"{_label(node)}: {exc}") from None
        if h in outputs:
            break
    tail = g.consumers.get(h, [])
    if tail:
        raise InputError(f"{_label(tail[0])} after the output layer is not supported")
    return MLP(tuple(layers))


def read_onnx_network(path: str | os.PathLike) -> MLP:
    """Read an ONNX file that is a plain MLP (:func:`onnx_to_network`)."""
    model = load_onnx(path)
    try:
        return onnx_to_network(model)
    except InputError as exc:
        raise InputError(f"{Path(path)}: {exc}") from None
