"""The explicit student → teacher mapping of a reduction (paper Fig. 2, appendix A.2).

Reduced neurons are matched to teacher neurons by :func:`ecflow.metrics.match_vectors` (the
package's one matching, on the sign/scale-invariant cosine distance of ``[w, b]``). A member
``i`` of reduced group ``g`` has ``[w_i, b_i] = s_i λ_i [w_g, b_g]`` and
``[w_g, b_g] = s_g λ_g [w*_k, b*_k]``; its share of ``a*_k`` is ``(ã_i · a*_k) / ||a*_k||²``
with ``ã_i`` its output weight brought to the teacher's sign and scale
(:meth:`ecflow.activations.Activation.output_weight`).
"""

from __future__ import annotations

import math

import numpy as np

from ecflow.errors import InputError, InputTypeError
from ecflow.metrics import match_vectors
from ecflow.networks import MLP
from ecflow.symmetry.types import NeuronMapping, NeuronType, ReductionResult, TeacherMapping

__all__ = ["check_teacher", "map_to_teacher"]


def check_teacher(student: MLP, teacher: MLP) -> None:
    """Check that ``teacher`` can be mapped to: one hidden layer, same sizes and activation.

    Raises
    ------
    InputError
        Naming what differs.
    """
    if not isinstance(teacher, MLP):
        raise InputTypeError(f"teacher must be an MLP, got {type(teacher).__name__}")
    if len(teacher.layers) != 2 or len(student.layers) != 2:
        raise InputError(
            "the teacher mapping needs one-hidden-layer networks, got student sizes "
            f"{student.sizes} and teacher sizes {teacher.sizes}"
        )
    if teacher.d_in != student.d_in or teacher.d_out != student.d_out:
        raise InputError(
            f"teacher {teacher.d_in} -> {teacher.d_out} does not match student "
            f"{student.d_in} -> {student.d_out}"
        )
    if teacher.layers[0].activation.name != student.layers[0].activation.name:
        raise InputError(
            f"teacher activation {teacher.layers[0].activation.name!r} differs from the "
            f"student's {student.layers[0].activation.name!r}"
        )


def _rows(net: MLP) -> np.ndarray:
    return np.hstack([net.layers[0].weight, net.layers[0].bias[:, None]])


def _member(result: ReductionResult, n, group_frame: dict, AT: np.ndarray) -> NeuronMapping:
    """Mapping of one student neuron ``n`` (a NeuronClass) through its reduced group."""
    if n.type is not NeuronType.NEURON or n.group not in group_frame:
        return NeuronMapping(n.index, n.type, None, n.sign, n.scale, 0.0, math.nan)
    k, sign_g, scale_g, dist = group_frame[n.group]
    act = result.network.layers[0].activation
    sign, scale = n.sign * sign_g, n.scale * scale_g
    a_t = act.output_weight(result.student.layers[1].weight[:, n.index], sign, scale)
    share = float(a_t @ AT[:, k] / max(float(AT[:, k] @ AT[:, k]), 1e-300))
    return NeuronMapping(n.index, n.type, k, sign, scale, share, dist)


def map_to_teacher(result: ReductionResult, teacher: MLP) -> TeacherMapping:
    """Map each student neuron to a teacher neuron, with sign, scale and share (module doc).

    Parameters
    ----------
    result : ReductionResult
        A reduction of a one-hidden-layer student.
    teacher : MLP
        One-hidden-layer teacher of the same input/output sizes and activation.

    Raises
    ------
    InputError
        A student or teacher that is not one-hidden-layer.
    """
    if len(result.network.layers) != 2:
        raise InputError("the teacher mapping needs a one-hidden-layer student")
    if not isinstance(teacher, MLP) or len(teacher.layers) != 2:
        raise InputError("the teacher mapping needs a one-hidden-layer teacher MLP")
    act = result.network.layers[0].activation
    R, T = _rows(result.network), _rows(teacher)
    AR, AT = result.network.layers[1].weight, teacher.layers[1].weight
    n_red = result.layers[0].n_after
    pairs: list[tuple[int, int, float]] = []
    unmatched = tuple(range(T.shape[0]))
    if n_red:
        match = match_vectors(T, R[:n_red], act.symmetry)
        pairs = sorted(zip(match.recovered.tolist(), match.teacher.tolist(),
                           match.distances.tolist()))
        unmatched = match.unmatched_teacher
    teacher_of: list[int | None] = [None] * n_red
    frame: dict[int, tuple[int, int, float, float]] = {}
    out_err = []
    for g, k, dist in pairs:
        teacher_of[g] = k
        sign = 1 if float(R[g] @ T[k]) >= 0.0 else -1
        scale = float(np.linalg.norm(R[g]) / np.linalg.norm(T[k]))
        frame[g] = (k, sign, scale, dist)
        a_t = act.output_weight(AR[:, g], sign, scale)
        norm_t = max(float(np.linalg.norm(AT[:, k])), 1e-300)
        out_err.append(float(np.linalg.norm(a_t - AT[:, k])) / norm_t)
    neurons = tuple(_member(result, n, frame, AT) for n in result.neurons if n.layer == 0)
    dist = np.array([d for _, _, d in pairs])
    return TeacherMapping(neurons, tuple(teacher_of), dist, np.array(out_err), unmatched)
