"""Black-box teachers: anything that maps inputs ``(n_samples, d_in)`` to outputs
``(n_samples, d_out)`` and is known only through its answers.

Expand-and-Cluster needs nothing else of a teacher (paper section 5): a :class:`BlackBox` wraps
an ecflow network, an ONNX model run by onnxruntime, or any Python callable (a PyTorch model in
a lambda), checks every answer once at this boundary (shape, finite values) and says how precise
the answers are.

**Precision floor.** A float32 model computes in float32, so no float64 network can match its
answers more closely than the rounding noise of that computation. :meth:`BlackBox.rmse_floor`
states the noise of rounding each answer to the model's precision, ``sqrt(mean(ulp(y)² / 12))``
(a uniform rounding error of one unit in the last place has variance ``ulp² / 12``), and
:meth:`BlackBox.rmse_tolerance` judges a recovery against ``FLOOR_FACTOR`` times that floor: the
rounding inside the model's own sums and activations adds a few such units per answer.
Float32 models are queried at inputs rounded to float32, and ecflow trains on those rounded
inputs (:meth:`BlackBox.round_inputs`), so that the inputs add no error of their own.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecflow._extras import require
from ecflow.engines.base import NEAR_ZERO_LOSS
from ecflow.errors import InputError, InputTypeError
from ecflow.networks import MLP
from ecflow.safety import check_array_bytes

__all__ = ["FLOOR_FACTOR", "BlackBox", "as_black_box", "from_network", "from_onnx", "from_callable"]

FLOOR_FACTOR = 30.0
"""A float32 model's answers are judged against this many times the rounding floor: measured,
a float32 tanh teacher d_in 4 r 4 differs from its float64 forward pass by 6x the floor."""

_DTYPES = {"float64": np.float64, "float32": np.float32}
_PROBE_ROWS = 3


@dataclass(frozen=True, eq=False)
class BlackBox:
    """A teacher known only through its answers.

    Build one with :func:`from_network`, :func:`from_onnx` or :func:`from_callable`.

    Attributes
    ----------
    function : callable
        ``function(x) -> y`` on ``x`` of shape ``(n_samples, d_in)`` in the model's precision;
        checked by :meth:`__call__`, never called directly.
    d_in, d_out : int
    precision : str
        ``"float64"`` or ``"float32"``: the dtype the model computes in.
    name : str
        For messages and reports (a file name, ``"callable"``).
    width : int or None
        Hidden width when known (an ecflow teacher), None for a real black box.
    network : MLP or None
        The network itself when known (its neurons are then matched to the recovered ones).
    activation : str or None
        Hidden activation read from the model when it names one unambiguously.
    activation_reason : str
        Why ``activation`` is what it is.
    outputs : str or None
        ``"probabilities"`` when the model says it answers a softmax
        (:func:`ecflow.oracle.onnx_head`), else None (not said).
    """

    function: Callable[[np.ndarray], np.ndarray]
    d_in: int
    d_out: int
    precision: str = "float64"
    name: str = "callable"
    width: int | None = None
    network: MLP | None = None
    activation: str | None = None
    activation_reason: str = "a black box does not say its activation"
    outputs: str | None = None

    def __post_init__(self):
        if self.precision not in _DTYPES:
            raise InputError(
                f"precision must be one of {', '.join(_DTYPES)}, got {self.precision!r}"
            )

    @property
    def dtype(self) -> type:
        return _DTYPES[self.precision]

    def round_inputs(self, x: np.ndarray) -> np.ndarray:
        """The inputs as the model sees them: rounded to its precision, returned in float64.

        Parameters
        ----------
        x : ndarray of shape (n_samples, d_in), float64

        Returns
        -------
        ndarray of shape (n_samples, d_in), float64
        """
        x = _check_inputs(x, self.d_in)
        return x.astype(self.dtype).astype(np.float64)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Query the model.

        Parameters
        ----------
        x : ndarray of shape (n_samples, d_in), float64
            Rounded to the model's precision before the call (see :meth:`round_inputs`).

        Returns
        -------
        y : ndarray of shape (n_samples, d_out), float64

        Raises
        ------
        InputError
            The model answered with a wrong shape, or with NaN or Inf.
        """
        x = _check_inputs(x, self.d_in)
        y = self.function(np.ascontiguousarray(x.astype(self.dtype)))
        return _check_outputs(y, x.shape[0], self.d_out, self.name)

    def query(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inputs as the model saw them and its answers: the pairs to train on.

        Returns
        -------
        x : ndarray of shape (n_samples, d_in), float64
        y : ndarray of shape (n_samples, d_out), float64
        """
        x = self.round_inputs(x)
        return x, self(x)

    def rmse_floor(self, y: np.ndarray) -> float:
        """RMSE of rounding the answers ``y`` to the model's precision, ``sqrt(mean(ulp²/12))``.

        Parameters
        ----------
        y : ndarray of shape (n_samples, d_out), float64
            Answers of this model.
        """
        ulp = np.spacing(np.abs(np.asarray(y, dtype=self.dtype))).astype(np.float64)
        return float(np.sqrt(np.mean(ulp * ulp) / 12.0))

    def rmse_tolerance(self, y: np.ndarray, rmse_tol: float) -> float:
        """RMSE at which a recovery of this model counts as exact: ``rmse_tol``, or
        ``FLOOR_FACTOR`` times :meth:`rmse_floor` when the model is less precise than that."""
        if self.precision == "float64":
            return float(rmse_tol)
        return max(float(rmse_tol), FLOOR_FACTOR * self.rmse_floor(y))

    def near_zero_loss(self, y: np.ndarray) -> float:
        """MSE at which a student of this model has reached "near-zero" loss: the paper's
        :data:`~ecflow.engines.base.NEAR_ZERO_LOSS`, or the square of the float32 tolerance."""
        if self.precision == "float64":
            return NEAR_ZERO_LOSS
        return max(NEAR_ZERO_LOSS, (FLOOR_FACTOR * self.rmse_floor(y)) ** 2)

    def precision_report(self, y: np.ndarray, rmse_tol: float) -> dict:
        """The report's lines on precision: the model's dtype, its rounding floor and the RMSE a
        recovery is judged against, with the reason.

        Parameters
        ----------
        y : ndarray of shape (n_samples, d_out), float64
            Answers of this model.
        rmse_tol : float
            The tolerance asked for (``RecoverConfig.rmse_tol``).
        """
        floor = self.rmse_floor(y)
        tol = self.rmse_tolerance(y, rmse_tol)
        if self.precision == "float64":
            why = f"a float64 model: judged against rmse_tol {tol:.3g}"
        else:
            why = (f"a {self.precision} model answers with rounding noise: floor {floor:.3g} "
                   f"(RMSE of rounding its answers), judged against {FLOOR_FACTOR:g} x floor = "
                   f"{tol:.3g}")
        return {"precision": self.precision, "rmse_floor": floor, "rmse_tol": tol,
                "precision_reason": why}

    def known_width(self) -> int:
        """The teacher's hidden width, for ``rho``; a real black box does not say it.

        Raises
        ------
        InputError
            The width is unknown; the message points to ``--hidden auto``.
        """
        if self.width is None:
            raise InputError(
                f"--rho multiplies the teacher's width, which the black box {self.name} does not "
                "say: use --hidden auto (the width search) or --hidden N"
            )
        return self.width

    def candidate_activations(self, given: str | None = None) -> tuple[list[str], str]:
        """Activations the width search should try, and where they come from.

        ``given`` (``--activation``) wins; else the activation the model names unambiguously;
        else every activation of the spec.

        Returns
        -------
        candidates : list of str
        source : str
            One phrase for the report.
        """
        from ecflow.activations import ACTIVATIONS, get_activation

        if given is not None:
            return [get_activation(given).name], "given (--activation)"
        if self.activation is not None:
            return [self.activation], f"read from the model: {self.activation_reason}"
        return list(ACTIVATIONS), f"unknown ({self.activation_reason}): the width search tries all"

    def describe(self) -> str:
        width = "unknown" if self.width is None else str(self.width)
        return (
            f"{self.name}: {self.d_in} -> {self.d_out}, {self.precision}, hidden width {width}, "
            f"activation {self.activation or 'unknown'}"
        )


def _check_inputs(x, d_in: int) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype.kind != "f" or x.ndim != 2 or x.shape[1] != d_in or x.shape[0] == 0:
        raise InputError(
            f"query inputs must be a non-empty float array of shape (n, d_in) with d_in = "
            f"{d_in}, got {x.dtype} {x.shape}"
        )
    if not np.all(np.isfinite(x)):
        raise InputError("query inputs contain NaN or Inf")
    return x.astype(np.float64, copy=False)


def _check_outputs(y, n: int, d_out: int | None, name: str) -> np.ndarray:
    try:
        y = np.asarray(y)
    except Exception as exc:  # a framework tensor that numpy cannot read
        raise InputError(
            f"{name}: answered with {type(y).__name__}, not an array ({exc})"
        ) from None
    if y.dtype.kind not in "fiu":
        raise InputError(f"{name}: answered with dtype {y.dtype}; expected floats")
    if y.ndim == 1 and y.shape[0] == n:
        y = y[:, None]
    expected = f"({n}, {d_out if d_out is not None else 'd_out'})"
    if y.ndim != 2 or y.shape[0] != n or (d_out is not None and y.shape[1] != d_out):
        raise InputError(f"{name}: answered {n} inputs with shape {y.shape}; expected {expected}")
    if y.shape[1] == 0:
        raise InputError(f"{name}: answered with no outputs (shape {y.shape})")
    if not np.all(np.isfinite(y)):
        bad = int(np.sum(~np.all(np.isfinite(y), axis=1)))
        raise InputError(f"{name}: answered NaN or Inf for {bad} of {n} inputs")
    return y.astype(np.float64)


def _probe(function, d_in: int, dtype, name: str) -> int:
    """``d_out`` of a model, read from its answer to a few inputs (zeros and ±1)."""
    x = np.zeros((_PROBE_ROWS, d_in), dtype=dtype)
    x[1], x[2] = 1.0, -1.0
    return _check_outputs(function(x), _PROBE_ROWS, None, name).shape[1]


def from_network(network: MLP, *, name: str = "network") -> BlackBox:
    """A known ecflow network queried as a black box (its width and weights stay available for
    the metrics, never for the recovery)."""
    if not isinstance(network, MLP):
        raise InputError(f"network must be an MLP, got {type(network).__name__}")
    acts = {layer.activation.name for layer in network.layers[:-1]}
    act = acts.pop() if len(acts) == 1 else None
    return BlackBox(
        function=network.forward,
        d_in=network.d_in,
        d_out=network.d_out,
        name=name,
        width=network.hidden_sizes[0] if len(network.layers) == 2 else None,
        network=network,
        activation=act,
        activation_reason="the network file names it" if act else "layers differ",
    )


def from_callable(
    function: Callable[[np.ndarray], np.ndarray],
    d_in: int,
    *,
    d_out: int | None = None,
    precision: str = "float64",
    name: str = "callable",
) -> BlackBox:
    """Wrap a Python function, e.g. ``lambda x: torch_model(torch.from_numpy(x)).numpy()``.

    Parameters
    ----------
    function : callable
        ``function(x) -> y``, ``x`` of shape ``(n_samples, d_in)`` in ``precision``, ``y``
        array-like of shape ``(n_samples, d_out)`` (or ``(n_samples,)`` for one output).
    d_in : int
    d_out : int, optional
        Checked against the answer to a probe query; read from it when not given.
    precision : {"float64", "float32"}, default="float64"
        The precision the function computes in (a float32 torch model: ``"float32"``).
    name : str

    Raises
    ------
    InputError
        Not callable, a bad ``d_in``, or a probe answer of the wrong shape or not finite.
    """
    if not callable(function):
        raise InputError(f"query must be callable, got {type(function).__name__}")
    if isinstance(d_in, bool) or not isinstance(d_in, (int, np.integer)) or d_in < 1:
        raise InputError(f"d_in must be a positive integer, got {d_in!r}")
    if precision not in _DTYPES:
        raise InputError(f"precision must be one of {', '.join(_DTYPES)}, got {precision!r}")
    try:
        probed = _probe(function, int(d_in), _DTYPES[precision], name)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{name}: failed on a probe query of shape ({_PROBE_ROWS}, {d_in}): "
                         f"{type(exc).__name__}: {exc}") from None
    if d_out is not None and probed != d_out:
        raise InputError(f"{name}: answers have {probed} columns, d_out is {d_out}")
    return BlackBox(function=function, d_in=int(d_in), d_out=probed, precision=precision,
                    name=name)


class _OnnxFunction:
    """Runs an onnxruntime session on ``x``, in chunks when the model's batch size is fixed."""

    def __init__(self, session, input_name: str, output_name: str, batch: int | None):
        self.session = session
        self.input_name = input_name
        self.output_name = output_name
        self.batch = batch

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.output_name], {self.input_name: x})[0]
        except Exception as exc:  # onnxruntime raises its own exception classes
            first = str(exc).strip().splitlines()[0]
            raise InputError(f"onnxruntime failed on the model: {first}") from None

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.batch is None:
            return self._run(x)
        n = x.shape[0]
        pad = (-n) % self.batch
        xp = np.concatenate([x, np.zeros((pad, x.shape[1]), x.dtype)]) if pad else x
        parts = [self._run(xp[i : i + self.batch]) for i in range(0, xp.shape[0], self.batch)]
        return np.concatenate(parts)[:n]


def from_onnx(path: str | os.PathLike, *, output: str | None = None) -> BlackBox:
    """Query an ONNX model through onnxruntime, reading ``d_in``, the output and the precision
    from the model; its weights are never read.

    Parameters
    ----------
    path : path of a ``.onnx`` file
    output : str, optional
        Output to use when the model has several.

    Raises
    ------
    InputError
        A corrupt or non-ONNX file, several inputs, an input that is not a batch of vectors
        ``(N, d_in)`` of float32 or float64, several outputs and no ``output``, or a probe
        answer that is NaN.
    """
    from ecflow import interop, oracle

    p = Path(path)
    info = interop.describe_onnx(p)
    model = interop.load_onnx(p)
    inp = _onnx_input(info, p)
    outputs = {t.name: t for t in info.outputs}
    head = oracle.onnx_head(model, outputs, output)
    if head is not None:
        model, output, outputs[head.output] = head.model, head.output, head.info
    if output is None:
        if len(outputs) != 1:
            raise InputError(
                f"{p}: the model has {len(outputs)} outputs ({', '.join(outputs)}); ecflow "
                "queries one (in Python: blackbox.from_onnx(path, output=name))"
            )
        output = next(iter(outputs))
    if output not in outputs:
        raise InputError(f"{p}: no output {output!r}; outputs: {', '.join(outputs)}")
    out = outputs[output]
    if out.dtype not in _DTYPES:
        raise InputError(f"{p}: output {out.describe()} is not float32 or float64")
    ort = require("onnxruntime", "onnx", "ONNX support")

    options = ort.SessionOptions()
    # Queries come in big batches; one thread keeps workers of a pool from oversubscribing.
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{p}: onnxruntime cannot run the model: {first}") from None
    precision = "float32" if "float32" in (inp.dtype, out.dtype) else "float64"
    batch = inp.shape[0]
    function = _OnnxFunction(session, inp.name, output, batch)
    d_out = _probe(function, inp.shape[1], _DTYPES[inp.dtype], p.name)
    return BlackBox(
        function=_CastInputs(function, _DTYPES[inp.dtype]),
        d_in=int(inp.shape[1]),
        d_out=d_out,
        precision=precision,
        name=p.name,
        activation=head.activation if head else info.activation,
        activation_reason=head.activation_reason if head else info.activation_reason,
        outputs=head.kind.value if head else None,
    )


def _onnx_input(info, p: Path):
    """The one input of an ONNX model, checked to be a batch of float vectors ``(N, d_in)``."""
    if len(info.inputs) != 1:
        names = ", ".join(t.name for t in info.inputs)
        raise InputError(f"{p}: the model has {len(info.inputs)} inputs ({names}); ecflow "
                         "queries models with one input")
    inp = info.inputs[0]
    if inp.shape is None or len(inp.shape) != 2 or inp.shape[1] is None:
        raise InputError(f"{p}: input {inp.describe()} is not a batch of vectors (N, d_in)")
    if inp.dtype not in _DTYPES:
        raise InputError(f"{p}: input {inp.describe()} is not float32 or float64")
    if inp.shape[0] == 0 or inp.shape[1] == 0:
        raise InputError(f"{p}: input {inp.describe()} has a zero dimension")
    # a declared d_in of 10^9 would fail as a MemoryError in the first probe
    check_array_bytes((max(_PROBE_ROWS, inp.shape[0] or 0), inp.shape[1]), f"{p}: input")
    return inp


class _CastInputs:
    """Feeds the model its own input dtype whatever precision it computes in."""

    def __init__(self, function, dtype):
        self.function = function
        self.dtype = dtype

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.function(x.astype(self.dtype, copy=False))


def as_black_box(teacher=None, query=None, d_in=None) -> BlackBox | None:
    """The teacher as a black box: an MLP keeps its weights for the metrics; a query function
    is checked on a probe; None on the data path."""
    if query is not None:
        if teacher is not None:
            raise InputError("give a teacher or a query function, not both")
        if d_in is None:
            raise InputError("a query function needs d_in, the width of its inputs")
        return from_callable(query, d_in)
    if teacher is None or isinstance(teacher, BlackBox):
        return teacher
    if not isinstance(teacher, MLP):
        raise InputTypeError(
            f"teacher must be an MLP or a BlackBox, got {type(teacher).__name__}"
        )
    if len(teacher.layers) < 2:
        raise InputError(f"the teacher must have a hidden layer, got sizes {teacher.sizes}")
    return from_network(teacher)
