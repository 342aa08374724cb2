"""What a black box answers, and what a recovery may ask of it: output kinds, the noise floor
of the answers, and the query budget.

**Output kinds** (:class:`OutputKind`). A classifier usually answers probabilities
``p = softmax(z)`` of its logits ``z = W2 h(x) + b2``; after the softmax the logits are known
only up to a constant per input (paper section 6.2). The centred log-probabilities

    ``L_k(x) = log p_k(x) - (1/K) sum_j log p_j(x) = z_k(x) - (1/K) sum_j z_j(x)``

are the centred logits, an MLP with the same hidden layers and the output layer
``(I - 11^T / K) [W2, b2]``: the hidden layers are identifiable exactly, the output layer up
to the common shift. A binary classifier that answers ``(1 - p, p)`` is the case ``K = 2``;
one that answers ``p`` alone gives its logit ``log(p / (1 - p))``. Probabilities that are 0 or
1 in their precision carry no logit information: those rows are dropped
(:func:`read_answers`) and counted.

**Noise floor** (:func:`answer_floor`). Answers rounded to ``K`` decimals carry a uniform error
of variance ``10^-2K / 12``; Gaussian noise of standard deviation ``S`` one of ``S²``; a float32
model rounds to one unit in the last place (:meth:`ecflow.blackbox.BlackBox.rmse_floor`).
Rounding is visible in the values (every answer is a multiple of ``10^-K``); a probability's
error is divided by the probability in its logarithm. No recovery can match the answers more
closely than this floor: a recovery is judged against ``NOISE_FACTOR`` times it.

**Query budget** (:class:`QueryCounter`). Every input row sent to the black box is counted,
the probe that reads its output width and the fresh inputs of the reported RMSE included; a
recovery with ``max_queries`` splits the budget between training and fresh queries
(:func:`split_budget`) and never sends more.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ecflow._checks import check_int, check_number
from ecflow.errors import InputError

__all__ = [
    "NOISE_FACTOR",
    "FRESH_SHARE",
    "OutputKind",
    "OracleConfig",
    "Answers",
    "QueryCounter",
    "read_answers",
    "check_probabilities",
    "centred_log_probabilities",
    "detect_decimals",
    "answer_floor",
    "split_budget",
    "onnx_head",
    "OnnxHead",
]

NOISE_FACTOR = 2.0
"""Rounded or noisy answers are judged against this many times their floor: the RMSE of a
network that is exact, measured against fresh noisy answers, is the floor itself; a student
fit to the training answers absorbs a little of their noise."""

FRESH_SHARE = 0.2
"""Share of ``max_queries`` that goes to fresh queries when the budget is smaller than
``n_queries + n_fresh`` (the default 30 000 + 10 000 keeps the same ratio)."""

PROBE_ROWS = 3
"""Rows a black box built from a callable or an ONNX model was probed with (zeros, +1, -1),
before any recovery query (:func:`ecflow.blackbox.from_callable`)."""

_MAX_DECIMALS = 12
"""Rounding finer than this cannot be told apart from float64 arithmetic on values near 1."""


class OutputKind(enum.Enum):
    """What the black box answers."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"


@dataclass(frozen=True)
class OracleConfig:
    """What the user says about the black box's answers and the queries it may take.

    Parameters
    ----------
    outputs : {"logits", "probabilities"} or None, default=None
        What the black box answers; None: what the model says (an ONNX classifier whose
        output is a softmax), else logits.
    output_decimals : int or None, default=None
        The answers are rounded to this many decimals; None: read from the values.
    noise_std : float or None, default=None
        Standard deviation of Gaussian noise on the answers (same units as the answers).
    max_queries : int or None, default=None
        Most input rows sent to the black box, training and fresh queries and the probe
        together; None: no limit.
    """

    outputs: str | None = None
    output_decimals: int | None = None
    noise_std: float | None = None
    max_queries: int | None = None

    def __post_init__(self):
        if self.outputs is not None:
            kinds = [k.value for k in OutputKind]
            if self.outputs not in kinds:
                raise InputError(f"outputs must be one of {', '.join(kinds)}, got "
                                 f"{self.outputs!r}")
        if self.output_decimals is not None:
            check_int(self.output_decimals, "output_decimals", 0)
        if self.noise_std is not None:
            check_number(self.noise_std, "noise_std", positive=True)
        if self.max_queries is not None:
            check_int(self.max_queries, "max_queries", 1)

    def kind(self, model_says: str | None) -> OutputKind:
        """The output kind: the user's, else the model's, else logits."""
        return OutputKind(self.outputs or model_says or OutputKind.LOGITS.value)


class QueryCounter:
    """Counts the input rows sent to ``function`` and refuses to send more than ``limit``.

    Parameters
    ----------
    function : callable
        ``function(x) -> y`` on ``x`` of shape ``(n_samples, d_in)``.
    limit : int or None
        Most rows; None: count only.
    used : int, default=0
        Rows already sent (the probe of a black box wrapped after it was built).
    """

    def __init__(self, function: Callable[[np.ndarray], np.ndarray], limit: int | None,
                 used: int = 0):
        self.function = function
        self.limit = limit
        self.used = int(used)

    @property
    def left(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = int(np.shape(x)[0])
        if self.limit is not None and self.used + n > self.limit:
            raise InputError(
                f"--max-queries {self.limit}: {n} more queries would make {self.used + n}; "
                "lower --n-queries or --n-fresh, or raise --max-queries"
            )
        self.used += n
        return self.function(x)


def count_box(box, limit: int | None):
    """The black box with its queries counted (:class:`QueryCounter`): a box built from a
    callable or an ONNX model was already probed with :data:`PROBE_ROWS` rows.

    Returns
    -------
    box : BlackBox
    counter : QueryCounter
    """
    probed = PROBE_ROWS if box.network is None else 0
    counter = QueryCounter(box.function, limit, used=probed)
    if limit is not None and probed > limit:
        raise InputError(f"--max-queries {limit}: the probe of the black box alone takes "
                         f"{probed} queries")
    return dataclasses.replace(box, function=counter), counter


def split_budget(n_queries: int, n_fresh: int, left: int | None) -> tuple[int, int, str | None]:
    """Training and fresh query counts within ``left`` rows, and a note when they were cut.

    A budget too small for both keeps :data:`FRESH_SHARE` of it for the fresh queries (none
    when ``n_fresh`` is 0) and gives the rest to training.

    Raises
    ------
    InputError
        Fewer than two rows left.
    """
    if left is None or n_queries + n_fresh <= left:
        return n_queries, n_fresh, None
    if left < 2:
        raise InputError(f"--max-queries leaves {left} queries, too few to train on")
    fresh = min(n_fresh, int(FRESH_SHARE * left)) if n_fresh > 0 else 0
    train = left - fresh
    return train, fresh, (f"--max-queries: {train} training and {fresh} fresh queries "
                          f"instead of {n_queries} and {n_fresh}")


def check_probabilities(y: np.ndarray, *, eps: float, step: float | None = None,
                        name: str = "the black box") -> None:
    """Raise unless ``y`` holds probabilities: in [0, 1], and rows of two or more that sum to 1.

    Parameters
    ----------
    y : ndarray of shape (n_samples, n_classes), float64
    eps : float
        Machine epsilon of the answers' precision: a sum may miss 1 by a few per class.
    step : float, optional
        Rounding step of answers rounded to ``K`` decimals (``10^-K``): a sum may miss 1 by
        half a step per class.

    Raises
    ------
    InputError
    """
    tol = y.shape[1] * (8.0 * eps + 0.5 * (step or 0.0))
    low, high = float(np.min(y)), float(np.max(y))
    # rounding keeps a probability within [0, 1]: only arithmetic can push it out
    if low < -8.0 * eps or high > 1.0 + 8.0 * eps:
        raise InputError(f"{name}: --outputs probabilities, but the answers range over "
                         f"[{low:.3g}, {high:.3g}], not [0, 1]")
    if y.shape[1] >= 2:
        miss = np.abs(np.sum(y, axis=1) - 1.0)
        worst = int(np.argmax(miss))
        if miss[worst] > tol:
            raise InputError(
                f"{name}: --outputs probabilities, but {int(np.sum(miss > tol))} of "
                f"{len(y)} rows do not sum to 1 (row {worst} sums to "
                f"{float(np.sum(y[worst])):.10g}; tolerance {tol:.2g})"
            )


def centred_log_probabilities(p: np.ndarray) -> np.ndarray:
    """The centred logits of probabilities ``p``, ``log p_k - mean_j log p_j`` (module
    docstring); one column ``p`` gives the logit ``log(p / (1 - p))``.

    Parameters
    ----------
    p : ndarray of shape (n_samples, n_classes), float64
        Strictly between 0 and 1.

    Returns
    -------
    ndarray of shape (n_samples, n_classes), float64
    """
    if p.shape[1] == 1:
        return np.log(p) - np.log1p(-p)
    logp = np.log(p)
    return logp - np.mean(logp, axis=1, keepdims=True)


def _saturated(p: np.ndarray, eps: float) -> np.ndarray:
    """Rows holding a probability that is 0 or 1 at resolution ``eps``."""
    return np.any((p <= 0.5 * eps) | (p >= 1.0 - 0.5 * eps), axis=1)


def detect_decimals(y: np.ndarray) -> int | None:
    """The fewest decimals ``K`` (0 to 12) such that every answer is a multiple of ``10^-K``,
    or None (answers not visibly rounded).

    Parameters
    ----------
    y : ndarray of shape (n_samples, d_out), float64
    """
    y = np.asarray(y, dtype=np.float64).ravel()
    if y.size < 16:
        return None
    for k in range(_MAX_DECIMALS + 1):
        scaled = y * 10.0**k
        # a multiple of 10^-k read back from float64 is an integer to ~1e-16 relative
        if np.all(np.abs(scaled - np.round(scaled)) <= 1e-6 + 4e-16 * np.abs(scaled)):
            return k
    return None


@dataclass(frozen=True, eq=False)
class Answers:
    """The black box's answers, as the recovery learns from them.

    Attributes
    ----------
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
        Logits, or the centred log-probabilities of probability answers.
    n_dropped : int
        Rows dropped because a probability was 0 or 1.
    step : float or None
        Rounding step of the raw answers (``10^-K``), None when not rounded.
    floor : float
        RMSE of the answers' rounding and noise, in the units of ``y`` (0: exact float64).
    """

    x: np.ndarray
    y: np.ndarray
    n_dropped: int
    step: float | None
    floor: float


def read_answers(x: np.ndarray, raw: np.ndarray, kind: OutputKind, *, eps: float,
                 config: OracleConfig, step: float | None = None,
                 name: str = "the black box") -> Answers:
    """Check the raw answers and turn them into what the students fit.

    Parameters
    ----------
    x : ndarray of shape (n_samples, d_in), float64
    raw : ndarray of shape (n_samples, d_out), float64
        The black box's answers.
    kind : OutputKind
    eps : float
        Machine epsilon of the model's precision.
    config : OracleConfig
    step : float, optional
        Rounding step already read from the training answers (fresh answers reuse it).

    Returns
    -------
    Answers

    Raises
    ------
    InputError
        Probability answers that are not probabilities, or all saturated.
    """
    if step is None:
        decimals = config.output_decimals
        if decimals is None:
            decimals = detect_decimals(raw)
        step = None if decimals is None else 10.0 ** -decimals
    resolution = max(eps, step or 0.0)
    noise = config.noise_std or 0.0
    if kind is OutputKind.LOGITS:
        floor = math.sqrt((step or 0.0) ** 2 / 12.0 + noise**2)
        return Answers(x, raw, 0, step, floor)
    check_probabilities(raw, eps=eps, step=step, name=name)
    bad = _saturated(raw, resolution)
    if np.all(bad):
        raise InputError(f"{name}: every probability answer holds a 0 or a 1, which carry no "
                         "logit information")
    p = raw[~bad]
    # the error of log p is the error of p over p (the binary logit: over p (1 - p))
    spread = p * (1.0 - p) if p.shape[1] == 1 else p
    per_entry = ((step or 0.0) ** 2 / 12.0 + noise**2) / spread**2
    floor = float(math.sqrt(np.mean(per_entry))) if (step or noise) else 0.0
    if eps > np.finfo(np.float64).eps and not step:
        # a float32 probability rounds to its own precision: relative error eps / 2
        floor = math.sqrt(floor**2 + float(np.mean((eps * p / spread) ** 2)) / 12.0)
    return Answers(x[~bad], centred_log_probabilities(p), int(np.sum(bad)), step, floor)


def kind_notes(kind: OutputKind, n_dropped: int) -> list[str]:
    """The report's notes on what the students fit."""
    if kind is OutputKind.LOGITS:
        return []
    notes = ["the black box answers probabilities: the students fit the centred "
             "log-probabilities, which equal the centred logits; the hidden layers are "
             "identifiable, the output layer only up to a shift common to all classes, which "
             "no probability reveals; the recovered network writes centred logits (ecflow "
             "export --softmax answers probabilities)"]
    if n_dropped:
        notes.append(f"{n_dropped} queries answered a probability of 0 or 1, which carries no "
                     "logit information: dropped")
    return notes


def student_loss_at_floor(precision: dict) -> float | None:
    """The MSE students of rounded or noisy answers can reach, ``(NOISE_FACTOR floor)²``;
    None for exact answers."""
    floor = precision.get("output_floor") or 0.0
    return (NOISE_FACTOR * floor) ** 2 if floor > 0 else None


def residual_note(student_losses, rmse: float | None, precision: dict) -> str | None:
    """A hint when a recovery misses its tolerance on answers with no stated floor: the
    residual of the best student, ``sqrt(min MSE)``, at the width that fits, is what the data
    allows when the answers are noisy (section "Noise floor" of the module docstring). Only
    a hint: a failed recovery has a large residual too, so it is not judged against it.

    Parameters
    ----------
    student_losses : sequence of float
        Final MSE of each student.
    rmse : float or None
        The recovery's RMSE.
    precision : dict
        The report's precision lines (:func:`answer_floor`).
    """
    losses = [v for v in student_losses if np.isfinite(v)]
    if not losses or rmse is None or precision.get("output_floor"):
        return None
    residual = math.sqrt(min(losses))
    if rmse <= precision.get("rmse_tol", 0.0) or residual <= precision.get("rmse_tol", 0.0):
        return None
    return (f"the best student's residual RMSE is {residual:.3g}: if the answers are noisy, "
            f"that is about their floor (state it with --noise-std {residual:.2g})")


def answer_floor(answers: Answers, box_report: dict, rmse_tol: float) -> dict:
    """The report's lines on precision, the rounding and noise of the answers added to the
    model's own (:meth:`ecflow.blackbox.BlackBox.precision_report`).

    Parameters
    ----------
    answers : Answers
        The training answers.
    box_report : dict
        The black box's precision report (its dtype's floor and tolerance).
    rmse_tol : float
        The tolerance asked for.

    Returns
    -------
    dict
        ``precision``, ``rmse_floor``, ``rmse_tol``, ``precision_reason``, ``output_floor``,
        ``output_decimals``.
    """
    out = dict(box_report)
    decimals = None if answers.step is None else int(round(-math.log10(answers.step)))
    out["output_decimals"] = decimals
    out["output_floor"] = answers.floor
    if answers.floor <= 0.0:
        return out
    tol = NOISE_FACTOR * answers.floor
    out["rmse_floor"] = max(float(out.get("rmse_floor") or 0.0), answers.floor)
    if tol > out["rmse_tol"]:
        what = "noisy" if decimals is None else f"rounded to {decimals} decimals"
        out["rmse_tol"] = tol
        out["precision_reason"] = (
            f"the answers are {what}: floor {answers.floor:.3g} "
            f"(RMSE of their rounding and noise), judged against {NOISE_FACTOR:g} x floor = "
            f"{tol:.3g}"
        )
    return out


@dataclass(frozen=True, eq=False)
class OnnxHead:
    """What an ONNX model's output is, read from its graph.

    Attributes
    ----------
    model : onnx.ModelProto
        The model, with the probability tensor exposed as an output when it fed a ZipMap.
    output : str
        The output to query.
    info : OnnxTensorInfo
        Its name, shape and dtype.
    kind : OutputKind
    activation : str or None
        The hidden activation named by the graph below the output head.
    activation_reason : str
    """

    model: object
    output: str
    info: object
    kind: OutputKind
    activation: str | None
    activation_reason: str


_PASS_OPS = {"Identity", "Cast", "Reshape", "Flatten"}
_PROBABILITY_NAMES = ("probabilities", "output_probability")


def _producers(model) -> dict:
    return {out: node for node in model.graph.node for out in node.output}


def _through(name: str, producers: dict) -> str:
    """Follow ``name`` up through operators that only pass a tensor on."""
    while name in producers and producers[name].op_type in _PASS_OPS:
        name = producers[name].input[0]
    return name


def _softmax_of(name: str, producers: dict) -> str | None:
    """The logits tensor when ``name`` is a softmax of it, or a binary (1 - sigmoid, sigmoid)
    concatenation; else None."""
    node = producers.get(_through(name, producers))
    if node is None:
        return None
    if node.op_type == "Softmax":
        return node.input[0]
    if node.op_type == "Concat" and len(node.input) == 2:
        a, b = (producers.get(_through(i, producers)) for i in node.input)
        if a is not None and b is not None and a.op_type == "Sub" and b.op_type == "Sigmoid":
            return b.input[0]
    return None


def onnx_head(model, outputs: dict, output: str | None) -> OnnxHead | None:
    """Recognise a classifier whose output is a softmax: a final ``Softmax`` (or a binary
    ``(1 - Sigmoid, Sigmoid)``), or skl2onnx's ``probabilities`` output (a ZipMap's input
    when the model maps classes to probabilities).

    Parameters
    ----------
    model : onnx.ModelProto
    outputs : mapping of str to OnnxTensorInfo
        The graph's outputs.
    output : str or None
        The output asked for.

    Returns
    -------
    OnnxHead or None
        None: no probability output (or ``output`` names another one).
    """
    import onnx

    from ecflow.interop import _tensor_info, guess_activation

    producers = _producers(model)
    candidates = [output] if output is not None else (
        [n for n in _PROBABILITY_NAMES if n in outputs] + list(outputs))
    for name in candidates:
        if name not in outputs:
            continue
        source = name
        node = producers.get(_through(name, producers))
        if node is not None and node.op_type == "ZipMap":
            source = _through(node.input[0], producers)
        logits = _softmax_of(source, producers)
        if logits is None:
            continue
        info = outputs[name]
        if source != name:
            inferred = onnx.shape_inference.infer_shapes(model)
            types = {v.name: v for v in (*inferred.graph.value_info, *inferred.graph.output)}
            if source not in types:
                continue
            model = onnx.ModelProto()
            model.CopyFrom(inferred)
            # The ZipMap goes: its map output is not queried, and onnxruntime rejects a ZipMap
            # of float64 probabilities, which skl2onnx writes for a DoubleTensorType input.
            kept = [n for n in model.graph.node if n.op_type != "ZipMap"]
            del model.graph.node[:]
            model.graph.node.extend(kept)
            outs = [o for o in model.graph.output if o.name != name]
            del model.graph.output[:]
            model.graph.output.extend([*outs, types[source]])
            info = _tensor_info(types[source])
        body = _ancestors(logits, producers)
        view = onnx.ModelProto()
        view.CopyFrom(model)
        del view.graph.node[:]
        view.graph.node.extend(body)
        activation, reason = guess_activation(view)
        return OnnxHead(model, source, info, OutputKind.PROBABILITIES, activation,
                        f"{reason} (below the softmax of output {name})")
    return None


def _ancestors(name: str, producers: dict) -> list:
    """The nodes that compute ``name``, in graph order."""
    seen, stack = {}, [name]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name + node.output[0] in seen:
            continue
        seen[node.name + node.output[0]] = node
        stack.extend(node.input)
    order = {id(n): i for i, n in enumerate(producers.values())}
    return sorted(seen.values(), key=lambda n: order.get(id(n), 0))
