"""The types of the symmetry reduction: its configuration, notes, results and statuses.

Every stage of :mod:`ecflow.symmetry` (groups, flips, mapping, steps) reads and returns these;
see the package docstring for the derivation.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np

from ecflow._checks import check_int, check_number
from ecflow.networks import MLP
from ecflow.teachers import INPUT_HALF_WIDTH

__all__ = [
    "NeuronType",
    "NeuronNote",
    "ReductionStatus",
    "SymmetryConfig",
    "NeuronClass",
    "LayerReduction",
    "NeuronMapping",
    "TeacherMapping",
    "ReductionResult",
    "ReductionStep",
]


class NeuronType(enum.Enum):
    """Type of a student hidden neuron at zero loss (paper Fig. 2)."""

    NEURON = "neuron"
    """Member of a kept group of duplicates (with sign/scale compensation)."""
    ZERO = "zero"
    """No contribution: zero output weight, or a zero-type group."""
    CONSTANT = "constant"
    """Constant over the domain; folded into the next bias."""
    CANCELLED = "cancelled"
    """Linear over the domain (linear-type group or off-bound linear); cancels against others."""

class NeuronNote(enum.StrEnum):
    """Finer description of a neuron's type; the value is what reports and tables print."""

    DUPLICATE = "duplicate"
    FLIPPED_DUPLICATE = "flipped duplicate"
    OUTPUT_ZERO = "output weight 0"
    ZERO_GROUP = "zero-type group"
    CONSTANT_GROUP = "constant-type group"
    LINEAR_GROUP = "linear-type group"
    W_ZERO = "w = 0"
    OFF_BOUND_FLAT = "off-bound flat"
    OFF_BOUND_LINEAR = "off-bound linear"
    COLLECTIVELY_CONSTANT = "collectively constant"
    COLLECTIVELY_LINEAR = "collectively linear"

    @property
    def collective(self) -> bool:
        """Typed together with other near-linear groups, not on its own."""
        return self in (NeuronNote.COLLECTIVELY_CONSTANT, NeuronNote.COLLECTIVELY_LINEAR)

    @classmethod
    def for_sign(cls, sign: int) -> NeuronNote:
        """``DUPLICATE`` for a member of the kept orientation, else ``FLIPPED_DUPLICATE``."""
        return cls.DUPLICATE if sign > 0 else cls.FLIPPED_DUPLICATE


class ReductionStatus(enum.Enum):
    """Outcome of :func:`reduce_network`. ``message`` says what to do about it."""

    EXACT = "exact: the reduced network computes the student's function on the domain"
    LINEAR_REMAINDER = (
        "linear remainder: the neurons' linear parts leave a term Θx that no choice of signs "
        "cancels, so the student is the reduced network plus Θx (see linear_remainder); check "
        "that the student is at zero loss, or loosen param_rtol/output_rtol"
    )
    MISMATCH = (
        "mismatch: the reduced network differs from the student on the domain by more than "
        "verify_rtol; the student is not at exact zero loss for these tolerances: loosen "
        "param_rtol/output_rtol, or train the student further"
    )

    @property
    def exact(self) -> bool:
        return self is ReductionStatus.EXACT

    @property
    def message(self) -> str:
        return self.value


@dataclass(frozen=True)
class SymmetryConfig:
    """Tolerances and domain of the exact symmetry reduction.

    Parameters
    ----------
    param_rtol : float, default=1e-7
        Two neurons are duplicates when their ``[w, b]`` (unit-normalised for positively
        homogeneous activations, up to sign for symmetric ones) differ by at most
        ``param_rtol · ||[w, b]||``; a neuron has ``w ≈ 0`` when ``||w|| ≤ param_rtol ||[w, b]||``.
        Exact constructions agree to ~1e-15; students trained to RMSE ~1e-11 to ~1e-8.
    output_rtol : float, default=1e-9
        A contribution (an output weight, a neuron's variation over the domain, its deviation
        from linear, the linear remainder Θx) is negligible below ``output_rtol`` times the rms
        of the layer's output over the domain.
    verify_rtol : float, default=1e-8
        Status ``MISMATCH`` when the RMSE between reduced network and student on the domain
        exceeds ``verify_rtol`` times the rms of the student's output.
    half_width : float, default=√3
        The default domain is the box ``[-half_width, half_width]^d_in`` (the paper's inputs).
    n_verify : int, default=4096
        Points sampled from the box for verification (and for the domains of deeper layers).
    n_grid : int, default=513
        Points of the 1-D grid over each neuron's range of ``z`` on the box, on which constancy
        and linearity are tested.
    near_linear_rtol : float, default=1e-3
        Kept groups whose deviation from linear on the domain is below this times the output
        rms (small-``w`` neurons left by gradient descent) are tested together: when their
        summed contribution is affine within ``output_rtol`` they are collectively constant
        (or linear, their Θ joining the others'). Exact constructions never trigger it; a real
        neuron of a teacher deviates from linear by O(1).
    max_flip_subsets : int, default=2**20
        Sign-flip subsets tried to cancel Θ for even+linear activations: all of them when
        ``2^K`` (K kept groups) is at most this, else a rounded least-squares relaxation and
        then subsets by increasing size up to this many.
    seed : int, default=0
        Seed of the verification sample.
    """

    param_rtol: float = 1e-7
    output_rtol: float = 1e-9
    verify_rtol: float = 1e-8
    half_width: float = INPUT_HALF_WIDTH
    n_verify: int = 4096
    n_grid: int = 513
    near_linear_rtol: float = 1e-3
    max_flip_subsets: int = 1 << 20
    seed: int = 0

    def __post_init__(self):
        for name in ("param_rtol", "output_rtol", "verify_rtol", "half_width", "near_linear_rtol"):
            object.__setattr__(self, name, check_number(getattr(self, name), name, positive=True))
        object.__setattr__(self, "n_verify", check_int(self.n_verify, "n_verify", 2))
        object.__setattr__(self, "n_grid", check_int(self.n_grid, "n_grid", 3))
        object.__setattr__(
            self, "max_flip_subsets", check_int(self.max_flip_subsets, "max_flip_subsets")
        )
        object.__setattr__(self, "seed", check_int(self.seed, "seed", 0))


@dataclass(frozen=True)
class NeuronClass:
    """The type of one student hidden neuron.

    Attributes
    ----------
    index : int
        Index of the neuron in its (student) layer.
    type : NeuronType
    group : int or None
        For ``NEURON``: the index of the neuron it is merged into in the reduced layer.
    cluster : int or None
        Duplicate cluster id (shared by ``NEURON`` members of one group, and by the members
        of a zero-type or linear-type group); ``None`` for singletons removed on their own.
    sign : int
        ``+1`` or ``-1``: the neuron's ``[w, b]`` is ``sign · scale`` times the kept neuron's.
    scale : float
        Positive factor (1 except for positively homogeneous activations).
    note : NeuronNote
        Finer description (a ``str`` enum: compares equal to its printed value).
    layer : int
        Hidden layer of the neuron (0 for the first).
    """

    index: int
    type: NeuronType
    group: int | None
    cluster: int | None
    sign: int
    scale: float
    note: NeuronNote
    layer: int = 0


@dataclass(frozen=True, eq=False)
class LayerReduction:
    """Reduction of one hidden layer.

    Attributes
    ----------
    layer : int
    neurons : tuple of NeuronClass
        One per student neuron of this layer, in the student's order.
    n_before, n_after : int
        Layer width before and after.
    flipped : tuple of int
        Reduced-layer indices whose sign was flipped (even+linear) to cancel Θ.
    linear_remainder : ndarray of shape (n_next, n_in), float64
        Θ left after the flips (≈ 0 when the status is exact).
    linear_rms : float
        rms of ``Θ (x - mean x)`` over the layer's domain.
    output_scale : float
        rms of the layer's output (next pre-activation) over the domain.
    """

    layer: int
    neurons: tuple[NeuronClass, ...]
    n_before: int
    n_after: int
    flipped: tuple[int, ...]
    linear_remainder: np.ndarray
    linear_rms: float
    output_scale: float


@dataclass(frozen=True)
class NeuronMapping:
    """Where one student neuron sits in the teacher (first hidden layer).

    ``[w_i, b_i] = sign · scale · [w*_k, b*_k]`` with ``k = teacher``; ``share`` is the
    fraction of the teacher's output weight ``a*_k`` that neuron ``i`` carries after sign/scale
    compensation (shares of a duplicate group sum to 1).
    """

    student: int
    type: NeuronType
    teacher: int | None
    sign: int
    scale: float
    share: float
    cosine_distance: float


@dataclass(frozen=True, eq=False)
class TeacherMapping:
    """Explicit student → teacher mapping.

    Attributes
    ----------
    neurons : tuple of NeuronMapping
        One per student neuron, in the student's order (``teacher`` is ``None`` for removed
        neurons and for kept neurons without a teacher partner).
    teacher_of_reduced : tuple of int or None
        Teacher neuron matched to each reduced-network neuron (Hungarian matching on the
        sign/scale-invariant cosine distance).
    cosine_distance : ndarray of shape (n_matched,), float64
        Distance of each matched pair.
    output_error : ndarray of shape (n_matched,), float64
        ``||A_g - a*_k|| / ||a*_k||`` with ``A_g`` brought to the teacher's sign and scale.
    unmatched_teacher : tuple of int
        Teacher neurons without a reduced partner.
    """

    neurons: tuple[NeuronMapping, ...]
    teacher_of_reduced: tuple[int | None, ...]
    cosine_distance: np.ndarray
    output_error: np.ndarray
    unmatched_teacher: tuple[int, ...]

    @property
    def max_cosine_distance(self) -> float:
        return float(self.cosine_distance.max()) if self.cosine_distance.size else 0.0


@dataclass(frozen=True, eq=False)
class ReductionResult:
    """Result of :func:`reduce_network`.

    Attributes
    ----------
    status : ReductionStatus
    reason : str
        Human-readable explanation with a remedy when not exact.
    network : MLP
        The minimal network (same depth; each hidden layer reduced).
    neurons : tuple of NeuronClass
        Every student hidden neuron, layer by layer, in the student's order.
    layers : tuple of LayerReduction
    rmse : float
        RMSE between reduced network and student on the verification points.
    output_scale : float
        rms of the student's output on those points.
    student : MLP
        The student that was reduced.
    mapping : TeacherMapping or None
        Present when a teacher was given.
    """

    status: ReductionStatus
    reason: str
    network: MLP
    neurons: tuple[NeuronClass, ...]
    layers: tuple[LayerReduction, ...]
    rmse: float
    output_scale: float
    student: MLP
    mapping: TeacherMapping | None = None

    @property
    def types(self) -> tuple[str, ...]:
        """Type names of the first hidden layer's neurons, in the student's order."""
        return tuple(n.type.value for n in self.neurons if n.layer == 0)

    @property
    def groups(self) -> tuple[int | None, ...]:
        """Reduced-neuron index of each first-layer student neuron (``None`` if removed)."""
        return tuple(n.group for n in self.neurons if n.layer == 0)

    @property
    def linear_remainder(self) -> np.ndarray:
        """Θ of the first hidden layer, shape ``(n_next, d_in)``."""
        return self.layers[0].linear_remainder

    def report(self) -> dict:
        """JSON-ready summary: ``{"status", "reason", "neurons": [...], "sizes", ...}``."""
        out = {
            "status": self.status.name.lower(),
            "reason": self.reason,
            "rmse": self.rmse,
            "output_scale": self.output_scale,
            "student_hidden": [lr.n_before for lr in self.layers],
            "reduced_hidden": [lr.n_after for lr in self.layers],
            "sizes": list(self.network.sizes),
            "linear_rms": [lr.linear_rms for lr in self.layers],
            "neurons": [
                {
                    "index": n.index,
                    "layer": n.layer,
                    "type": n.type.value,
                    "group": n.group,
                    "cluster": n.cluster,
                    "sign": n.sign,
                    "scale": n.scale,
                    "note": n.note.value,
                }
                for n in self.neurons
            ],
        }
        if self.mapping is not None:
            out["mapping"] = [
                {
                    "index": m.student,
                    "teacher": m.teacher,
                    "sign": m.sign,
                    "scale": m.scale,
                    "share": m.share,
                    "cosine_distance": None
                    if math.isnan(m.cosine_distance)
                    else m.cosine_distance,
                }
                for m in self.mapping.neurons
            ]
            out["max_cosine_distance"] = self.mapping.max_cosine_distance
            out["unmatched_teacher"] = list(self.mapping.unmatched_teacher)
        return out


@dataclass(frozen=True, eq=False)
class ReductionStep:
    """One step of the student → minimal network mapping, as in the panels of Fig. A.6.

    The student's function is ``network(x) + x Θ^T`` at every step: each step removes or
    merges neurons and moves what they contributed beyond the new neurons into Θ and the
    output bias.

    Attributes
    ----------
    name : str
    description : str
    network : MLP
        One hidden layer: the neurons left after this step.
    theta : ndarray of shape (d_out, d_in), float64
        Linear term accumulated so far (Θ); it vanishes at the end of an exact reduction.
    sources : tuple of tuple of int
        For each hidden neuron of ``network``, the student neurons it stands for.
    changed : tuple of int
        Hidden neurons of ``network`` created or modified by this step.
    """

    name: str
    description: str
    network: MLP
    theta: np.ndarray
    sources: tuple[tuple[int, ...], ...]
    changed: tuple[int, ...]
