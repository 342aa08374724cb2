"""The front door of the symmetry reduction: each hidden layer typed, oriented and merged.

:func:`reduce_network` validates, then for each hidden layer runs the stages
:func:`~ecflow.symmetry.groups.type_layer` and
:func:`~ecflow.symmetry.flips.choose_orientations`, merges every kept group into one neuron with
the activation's compensation algebra (:meth:`ecflow.activations.Activation.compensate`), and
verifies the reduced network against the student on the domain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from ecflow.errors import InputError, InputTypeError
from ecflow.metrics import rms
from ecflow.networks import MLP, Layer, check_array
from ecflow.symmetry.flips import choose_orientations
from ecflow.symmetry.groups import Domain, LayerProblem, LayerState, type_layer
from ecflow.symmetry.mapping import check_teacher, map_to_teacher
from ecflow.symmetry.types import (
    LayerReduction,
    NeuronClass,
    NeuronNote,
    ReductionResult,
    ReductionStatus,
    SymmetryConfig,
)
from ecflow.teachers import INPUT_HALF_WIDTH, sample_inputs

__all__ = ["ReducedLayer", "domain_points", "reduce_layer", "reduce_network"]


@dataclass(frozen=True, eq=False)
class ReducedLayer:
    """One hidden layer after the reduction.

    Attributes
    ----------
    report : LayerReduction
    hidden : Layer
        The reduced hidden layer (one zero neuron when nothing is kept: layers cannot be empty).
    next_weight : ndarray of shape (n_next, n_after), float64
        The next layer's weights: each column the merged output weight of a kept group.
    next_bias : ndarray of shape (n_next,), float64
        The next layer's bias with the constants folded in.
    """

    report: LayerReduction
    hidden: Layer
    next_weight: np.ndarray
    next_bias: np.ndarray


def domain_points(config: SymmetryConfig, d_in: int) -> np.ndarray:
    """The default domain's points: ``config.n_verify`` uniform samples of the box
    ``[-config.half_width, config.half_width]^d_in`` drawn with ``config.seed``.

    Returns
    -------
    ndarray of shape (n_verify, d_in), float64
    """
    x = sample_inputs(config.n_verify, d_in, config.seed)
    return x * (config.half_width / INPUT_HALF_WIDTH)


def _flip_types(s: LayerState, members: tuple[int, ...]) -> LayerState:
    flipped = []
    for i in members:
        t = s.types[i]
        flipped.append(dataclasses.replace(t, sign=-t.sign, note=NeuronNote.for_sign(-t.sign)))
    return s.typed(flipped)


def _merge(p: LayerProblem, s: LayerState, orient: np.ndarray) -> ReducedLayer:
    """Merge each kept group into one neuron and fold what its members leave (Θ, bias)."""
    n_kept, d = len(s.kept), p.W.shape[1]
    W = np.zeros((max(n_kept, 1), d))
    b = np.zeros(max(n_kept, 1))
    A = np.zeros((p.A.shape[0], max(n_kept, 1)))
    for j, g in enumerate(s.kept):
        comp = p.terms(g, int(orient[j]))
        W[j], b[j], A[:, j] = orient[j] * p.W[g.rep], orient[j] * p.b[g.rep], comp.output_weight
        s = s.fold(comp.bias + comp.linear[:, d], comp.linear[:, :d])
        if orient[j] < 0:
            s = _flip_types(s, g.members)
    rms_theta = p.lin_rms(s.theta)
    bias = s.bias
    if rms_theta <= p.tol_out:
        # Θ(x - μ) vanishes on the domain, so Θx is the constant Θμ there.
        bias = bias + s.theta @ p.domain.mean
    report = LayerReduction(
        layer=p.index,
        neurons=tuple(t for t in s.types if isinstance(t, NeuronClass)),
        n_before=p.W.shape[0],
        n_after=n_kept,
        flipped=tuple(int(j) for j in np.nonzero(orient < 0)[0]),
        linear_remainder=s.theta,
        linear_rms=rms_theta,
        output_scale=p.out_scale,
    )
    return ReducedLayer(report, Layer(W, b, p.act), A, bias)


def reduce_layer(p: LayerProblem, teacher_rows: np.ndarray | None = None) -> ReducedLayer:
    """Reduce one hidden layer ``A σ(W x + b) + c``: type, orient, merge.

    ``teacher_rows`` (``(r, d + 1)`` teacher ``[w, b]``), when given, decides between flip
    sets that are equally valid (see :func:`~ecflow.symmetry.flips.choose_orientations`).
    """
    s = type_layer(p)
    return _merge(p, s, choose_orientations(p, s, teacher_rows))


def _check_inputs(student: MLP, x: np.ndarray | None, config: SymmetryConfig | None):
    if not isinstance(student, MLP):
        raise InputTypeError(f"student must be an MLP, got {type(student).__name__}")
    if len(student.layers) < 2:
        raise InputError(
            f"student must have at least one hidden layer, got sizes {student.sizes}"
        )
    config = SymmetryConfig() if config is None else config
    if not isinstance(config, SymmetryConfig):
        raise InputTypeError(f"config must be a SymmetryConfig, got {type(config).__name__}")
    if x is None:
        return domain_points(config, student.d_in), config.half_width, config
    x = check_array(x, "x", ndim=2)
    if x.shape[1] != student.d_in or x.shape[0] < 2:
        raise InputError(
            f"x must have shape (n_samples >= 2, d_in = {student.d_in}), got {x.shape}"
        )
    return x, None, config


def _status(
    reports: list[LayerReduction], rmse: float, scale: float, config: SymmetryConfig
) -> tuple[ReductionStatus, str]:
    """Status and reason of a reduction, with the remedy of its status."""
    remainder = [r for r in reports if r.linear_rms > config.output_rtol * r.output_scale]
    if remainder:
        status = ReductionStatus.LINEAR_REMAINDER
        r = remainder[0]
        reason = (
            f"layer {r.layer}: rms of Θx on the domain is {r.linear_rms:.3g} "
            f"(output rms {r.output_scale:.3g}); {status.message}"
        )
    elif rmse > config.verify_rtol * scale:
        status = ReductionStatus.MISMATCH
        reason = f"RMSE {rmse:.3g} to the student (output rms {scale:.3g}); {status.message}"
    else:
        status = ReductionStatus.EXACT
        sizes = ", ".join(f"{r.n_before} -> {r.n_after}" for r in reports)
        reason = f"hidden sizes {sizes}; RMSE {rmse:.3g} to the student on the domain"
    if all(r.n_after == 0 for r in reports[:1]):
        reason += "; the function is constant: one zero neuron kept since layers cannot be empty"
    return status, reason


def reduce_network(
    student: MLP,
    x: np.ndarray | None = None,
    *,
    teacher: MLP | None = None,
    config: SymmetryConfig | None = None,
) -> ReductionResult:
    """Classify every hidden neuron of a zero-loss student and build the minimal network.

    Parameters
    ----------
    student : MLP
        The student; every hidden layer is reduced in turn (one hidden layer is the usual case).
    x : ndarray of shape (n_samples, d_in), float64, optional
        Query inputs defining the domain. Default: the box ``[-h, h]^d_in`` of
        ``config.half_width``, with ``config.n_verify`` uniform samples for the verification.
    teacher : MLP, optional
        A one-hidden-layer teacher with the student's input and output sizes; when given,
        ``result.mapping`` maps every student neuron to a teacher neuron (see
        :func:`~ecflow.symmetry.mapping.map_to_teacher`), and where the student leaves the
        orientation of even+linear neurons undetermined (several sign-flip sets cancel Θ) the
        teacher's is chosen.
    config : SymmetryConfig, optional

    Returns
    -------
    ReductionResult
        Status (exact, linear remainder, mismatch) with reason, per-neuron types, the reduced
        network and its RMSE to the student on the domain.

    Raises
    ------
    InputError
        On a non-MLP student, a student without hidden layer, or inputs of the wrong shape.
    """
    x_check, box, config = _check_inputs(student, x, config)
    if teacher is not None:
        check_teacher(student, teacher)
    net = student
    reports: list[LayerReduction] = []
    for li in range(len(student.layers) - 1):
        h_in = x_check if li == 0 else net.hidden(x_check, li - 1)
        hid, nxt = net.layers[li], net.layers[li + 1]
        pre_next = net.hidden(x_check, li) @ nxt.weight.T + nxt.bias
        problem = LayerProblem(
            hid.weight, hid.bias, nxt.weight, nxt.bias, hid.activation,
            Domain(h_in, box if li == 0 else None, config.n_grid),
            rms(pre_next) or 1.0, config, li,
        )
        t_rows = None
        if teacher is not None and li == 0:
            t_rows = np.hstack([teacher.layers[0].weight, teacher.layers[0].bias[:, None]])
        reduced = reduce_layer(problem, t_rows)
        reports.append(reduced.report)
        layers = list(net.layers)
        next_layer = Layer(reduced.next_weight, reduced.next_bias, nxt.activation)
        layers[li : li + 2] = [reduced.hidden, next_layer]
        net = MLP(tuple(layers))

    y_student = student.forward(x_check)
    rmse = rms(y_student - net.forward(x_check))
    scale = rms(y_student) or 1.0
    status, reason = _status(reports, rmse, scale, config)
    neurons = tuple(n for r in reports for n in r.neurons)
    result = ReductionResult(status, reason, net, neurons, tuple(reports), rmse, scale, student)
    if teacher is not None:
        result = dataclasses.replace(result, mapping=map_to_teacher(result, teacher))
    return result
