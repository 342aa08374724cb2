"""Exact zero-loss symmetry mapping: neuron types and the minimal equivalent network.

Paper section 4, Fig. 2, appendix A.2 and Figs. A.5/A.6. A hidden layer with activation σ feeds
the next layer's pre-activation (the output, for a one-hidden-layer network) through

    y(x) = Σ_i a_i σ(z_i(x)) + c,      z_i(x) = w_i·x + b_i,      v_i = [w_i, b_i],

with ``a_i`` of shape ``(d_out,)``. At zero loss an over-parameterised student contains only a
few neuron types, each removed by one exact identity of σ's symmetry class (``Symmetry``):

``zero``
    ``a_i = 0``, or a group of duplicates whose (compensated) output weights sum to zero.
``constant``
    σ(z_i) constant over the input domain: ``w_i = 0`` or, for relu, a hyperplane outside the
    domain on the flat side. ``a_i σ(z_i)`` is folded into the next bias.
``cancelled``
    A contribution that is linear on the domain: an even+linear group whose output weights sum
    to zero but whose flipped members leave ``-2 c1 a_i z`` (a *linear-type* group), or a relu
    whose hyperplane lies outside the domain on its linear side (Fig. A.6). Their linear terms
    must cancel against the others'.
``neuron``
    A member of a kept group of duplicates ``v_i = s_i λ_i v_g`` (sign ``s_i``, scale ``λ_i``),
    merged into one neuron ``A_g σ(v_g·[x, 1])`` with the identity of its class:

    ===========================  ================================================================
    class                        member contribution ``a_i σ(s_i λ_i z_g)``
    ===========================  ================================================================
    ``NONE``                     ``s_i = λ_i = 1``: ``a_i σ(z_g)``
    ``ODD``                      ``s_i a_i σ(z_g)``
    ``ODD_CONSTANT``             ``s_i a_i σ(z_g) + [s_i = -1] 2 c0 a_i``
    ``EVEN_LINEAR``              ``a_i σ(z_g) - [s_i = -1] 2 c1 a_i z_g``
    ``EVEN_LINEAR_SCALING``      as even+linear with ``a_i`` replaced by ``λ_i a_i``
    ===========================  ================================================================

The linear terms accumulate into ``Θ x + β`` (``Θ`` of shape ``(d_out, d_in)``). β joins the
bias; Θ must vanish for the reduced network to keep the plain MLP form. For even+linear classes
each kept group may still be flipped (``A σ(z) = A σ(-z) + 2 c1 A z``, the last step of
Fig. A.6), which adds ``2 c1 A_g w_g`` to Θ: the reduction searches the fewest flips that make
Θ vanish on the domain, and reports ``LINEAR_REMAINDER`` when none does, rather than dropping
Θ silently.

Gradient descent also leaves neurons with small ``w`` that are each slightly curved on the
domain but whose sum is affine there; such near-linear groups are tested together and, when
their sum is affine, typed ``constant`` or ``cancelled`` as a whole ("collectively").
:func:`reduction_steps` replays a reduction step by step, as in the panels of Fig. A.6.

Tolerances are scale-aware: directions are compared relative to ``||[w, b]||`` (``param_rtol``)
and contributions relative to the rms of the layer's output over the domain (``output_rtol``).
The domain is the box ``[-h, h]^d_in`` (``h = √3`` by default, where ``z_i`` ranges exactly
over ``b_i ± h ||w_i||_1``) or the given query inputs. The reduced network is verified against
the student on the domain.

Deeper networks are reduced layer by layer from the first hidden layer; the domain of layer
``l > 0`` is the image of the query inputs (or of samples of the box) through the layers below.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import math
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from ecflow._checks import check_int, check_number
from ecflow.activations import Activation, Symmetry
from ecflow.errors import InputError, InputTypeError
from ecflow.networks import MLP, Layer, check_array
from ecflow.teachers import INPUT_HALF_WIDTH, sample_inputs

__all__ = [
    "NeuronType",
    "ReductionStatus",
    "SymmetryConfig",
    "NeuronClass",
    "LayerReduction",
    "NeuronMatch",
    "TeacherMapping",
    "ReductionResult",
    "ReductionStep",
    "reduce_network",
    "reduction_steps",
    "map_to_teacher",
    "cosine_distance_matrix",
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
    note : str
        Finer description: ``"duplicate"``, ``"flipped duplicate"``, ``"output weight 0"``,
        ``"zero-type group"``, ``"constant-type group"``, ``"w = 0"``, ``"off-bound flat"``,
        ``"off-bound linear"``, ``"linear-type group"``, ``"collectively constant"``,
        ``"collectively linear"``.
    layer : int
        Hidden layer of the neuron (0 for the first).
    """

    index: int
    type: NeuronType
    group: int | None
    cluster: int | None
    sign: int
    scale: float
    note: str
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
class NeuronMatch:
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
    neurons : tuple of NeuronMatch
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

    neurons: tuple[NeuronMatch, ...]
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
                    "note": n.note,
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


# --- domain ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Domain:
    """Input domain of one layer: a box (exact z ranges) or a finite point set."""

    points: np.ndarray  # (n, d) points (box samples or given inputs)
    half_width: float | None  # set for the box
    n_grid: int

    @property
    def mean(self) -> np.ndarray:
        return np.zeros(self.points.shape[1]) if self.half_width else self.points.mean(axis=0)

    def cov_sqrt(self) -> np.ndarray:
        """``L`` with ``L L^T`` the covariance of the domain: ``||Θ L||_F`` is the rms of Θ(x-μ)."""
        d = self.points.shape[1]
        if self.half_width:
            # Uniform on [-h, h]: variance h²/3 per coordinate, independent coordinates.
            return np.eye(d) * (self.half_width / math.sqrt(3.0))
        xc = self.points - self.mean
        cov = xc.T @ xc / xc.shape[0]
        s, u = np.linalg.eigh(cov)
        return u * np.sqrt(np.clip(s, 0.0, None))

    def z_values(self, w: np.ndarray, b: float) -> np.ndarray:
        """Values ``w·x + b`` that matter over the domain, shape ``(n_grid,)`` or ``(n,)``."""
        if self.half_width:
            r = self.half_width * float(np.abs(w).sum())
            return np.linspace(b - r, b + r, self.n_grid)
        return self.points @ w + b


# --- per-layer reduction ---------------------------------------------------------------------


@dataclass
class _Group:
    members: list[int]
    rep: int
    signs: np.ndarray  # (k,) relative to rep
    scales: np.ndarray  # (k,) ||v_i|| / ||v_rep|| (1 unless positively homogeneous)

    def flip_cost(self, weight: np.ndarray) -> float:
        """Share of the group's output carried by members that a flip would put against it."""
        w = weight[self.members]
        return float((w[self.signs > 0].sum() - w[self.signs < 0].sum()) / max(w.sum(), 1e-300))


def _union_find_groups(u: np.ndarray, tol: np.ndarray, signed: bool) -> list[list[int]]:
    """Group rows of ``u`` equal (up to sign when ``signed``) within per-row tolerance."""
    n = u.shape[0]
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        d = np.linalg.norm(u[i + 1 :] - u[i], axis=1)
        if signed:
            d = np.minimum(d, np.linalg.norm(u[i + 1 :] + u[i], axis=1))
        tol_ij = np.maximum(tol[i + 1 :], tol[i])
        for j in np.nonzero(d <= tol_ij)[0]:
            ri, rj = find(i), find(i + 1 + int(j))
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def _leaky_slope(act: Activation) -> float:
    """Slope ``α`` of a positively homogeneous activation on z < 0 (relu 0, identity 1)."""
    return -float(act(np.array([-1.0]))[0])


def _linear_fit(
    act: Activation, z: np.ndarray, fz: np.ndarray
) -> tuple[float, float, float]:
    """Best line ``p z + q`` through ``(z, σ(z))`` and its max deviation.

    Positively homogeneous activations are exactly linear with slope 1 (z ≥ 0) or α (z ≤ 0),
    so those slopes are used as such for an exact fold; otherwise least squares.
    """
    if act.symmetry.scale_invariant:
        p = 1.0 if z.mean() >= 0.0 else _leaky_slope(act)
        q = 0.0
    elif np.ptp(z) > 0.0:
        p, q = np.polyfit(z, fz, 1)
    else:
        p, q = 0.0, float(fz[0])
    return float(p), float(q), float(np.max(np.abs(fz - p * z - q)))


def _reduce_layer(
    W: np.ndarray,
    b: np.ndarray,
    A: np.ndarray,
    c: np.ndarray,
    act: Activation,
    domain: _Domain,
    out_scale: float,
    config: SymmetryConfig,
    layer_index: int,
    teacher_rows: np.ndarray | None = None,
) -> tuple[LayerReduction, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reduce one hidden layer ``A σ(W x + b) + c``.

    ``teacher_rows`` (``(r, d + 1)`` teacher ``[w, b]``), when given, decides between flip
    sets that are equally valid (the orientation is then not identifiable from the student).
    Returns the layer report and the reduced ``(W', b', A', c')``.
    """
    m, d = W.shape
    sym = act.symmetry
    tol_out = config.output_rtol * out_scale
    V = np.hstack([W, b[:, None]])
    vnorm = np.linalg.norm(V, axis=1)
    anorm = np.linalg.norm(A, axis=0)
    L = domain.cov_sqrt()
    mu = domain.mean

    def lin_rms(theta: np.ndarray) -> float:
        return float(np.linalg.norm(theta @ L) / math.sqrt(theta.shape[0]))

    types: list[NeuronClass | None] = [None] * m
    bias = c.astype(np.float64).copy()
    theta = np.zeros_like(A @ W)  # (n_next, d)
    active: list[int] = []
    rms_f = np.zeros(m)

    # Output weights ~ 0: zero types on their own.
    for i in range(m):
        fz = act(domain.z_values(W[i], b[i]))
        rms_f[i] = float(np.sqrt(np.mean(fz * fz)))
        if anorm[i] * max(1.0, rms_f[i]) <= tol_out:
            types[i] = NeuronClass(i, NeuronType.ZERO, None, None, 1, 1.0, "output weight 0",
                                   layer_index)

    scaled = sym.scale_invariant

    def make_groups(indices: list[int]) -> list[_Group]:
        """Duplicates among ``indices``: equal [w, b] up to the class's sign and scale."""
        if not indices:
            return []
        U = V[indices] / vnorm[indices, None] if scaled else V[indices]
        tol = config.param_rtol * np.linalg.norm(U, axis=1)
        out = []
        for g in _union_find_groups(U, tol, sym.sign_invariant):
            idx = [indices[k] for k in g]
            weight = anorm[idx] * vnorm[idx]  # contribution size, invariant to the scale symmetry
            rep = idx[int(np.argmax(weight))]
            signs = sym.signs(V[idx], V[rep])
            # Keep the orientation that carries most of the group's output (fewest flipped).
            if weight[signs < 0].sum() > weight[signs > 0].sum():
                rep = idx[int(np.argmax(np.where(signs < 0, weight, -1.0)))]
                signs = -signs
            scales = vnorm[idx] / vnorm[rep] if scaled else np.ones(len(idx))
            out.append(_Group(idx, rep, signs, scales))
        return out

    def terms(g: _Group, orient: int):
        """Output weight, constant and linear term ``(Θ | β)`` of group g kept as orient·v_rep."""
        comp = act.compensate(A[:, g.members], g.signs * orient, g.scales, orient * V[g.rep])
        return comp.output_weight, comp.bias, comp.linear

    cluster_id = 0

    def remove_if_cancelling(g: _Group, cid: int | None) -> bool:
        """Type a group whose output weights sum to zero (appendix A.2); False if they don't.

        What is left is constant (odd+constant flips; w = 0) or linear (even+linear flips):
        a linear-type group when Θ ≠ 0, a constant-type group when only a constant is left,
        else a zero-type group.
        """
        out_w, const, lin = terms(g, 1)
        if np.linalg.norm(out_w) * max(1.0, rms_f[g.rep]) > tol_out:
            return False
        bias[:] += const + lin[:, d]
        theta[:] += lin[:, :d]
        if lin_rms(lin[:, :d]) > tol_out:
            kind, note = NeuronType.CANCELLED, "linear-type group"
        elif np.linalg.norm(const + lin[:, d]) > tol_out:
            kind, note = NeuronType.CONSTANT, "constant-type group"
        else:
            kind, note = NeuronType.ZERO, "zero-type group"
        for k, i in enumerate(g.members):
            types[i] = NeuronClass(i, kind, None, cid, int(g.signs[k]), float(g.scales[k]),
                                   note, layer_index)
        return True

    # 1. groups whose output weights sum to zero, wherever their hyperplanes lie.
    for g in make_groups([i for i in range(m) if types[i] is None]):
        if len(g.members) > 1 and remove_if_cancelling(g, cluster_id):
            cluster_id += 1

    # 2. singletons constant or linear on the domain (w = 0, off-bound).
    for i in range(m):
        if types[i] is not None:
            continue
        z = domain.z_values(W[i], b[i])
        fz = act(z)
        lo, hi = float(fz.min()), float(fz.max())
        w_zero = np.linalg.norm(W[i]) <= config.param_rtol * vnorm[i]
        if w_zero or anorm[i] * 0.5 * (hi - lo) <= tol_out:
            value = float(act(np.array([b[i]]))[0]) if w_zero else 0.5 * (hi + lo)
            bias += A[:, i] * value
            note = "w = 0" if w_zero else "off-bound flat"
            types[i] = NeuronClass(i, NeuronType.CONSTANT, None, None, 1, 1.0, note, layer_index)
            continue
        p, q, dev = _linear_fit(act, z, fz)
        if anorm[i] * dev <= tol_out:
            theta += p * np.outer(A[:, i], W[i])
            bias += A[:, i] * (p * b[i] + q)
            types[i] = NeuronClass(i, NeuronType.CANCELLED, None, None, 1, 1.0,
                                   "off-bound linear", layer_index)
            continue
        active.append(i)

    # 3. duplicate groups among the remaining neurons.
    even = sym.flip_leaves_linear
    kept: list[_Group] = []
    cids: list[int | None] = []
    for g in make_groups(active):
        multi = len(g.members) > 1
        cid = cluster_id if multi else None
        if multi:
            cluster_id += 1
        if not remove_if_cancelling(g, cid):
            kept.append(g)
            cids.append(cid)

    # Near-linear groups (small w, as gradient descent leaves them) whose contributions are
    # together affine on the domain: collectively constant or linear (their Θ joins the rest).
    def nonlinearity(g: _Group) -> float:
        z = domain.z_values(W[g.rep], b[g.rep])
        return float(np.linalg.norm(terms(g, 1)[0])) * _linear_fit(act, z, act(z))[2]

    near = [j for j, g in enumerate(kept) if nonlinearity(g) <= config.near_linear_rtol * out_scale]
    if near:
        P = domain.points
        members = [i for j in near for i in kept[j].members]
        F = act(P @ W[members].T + b[members]) @ A[:, members].T  # (n, n_next)
        X1 = np.hstack([P, np.ones((P.shape[0], 1))])
        coef, *_ = np.linalg.lstsq(X1, F, rcond=None)  # (d + 1, n_next)
        if np.max(np.abs(X1 @ coef - F)) <= tol_out:
            fit_theta = coef[:d].T
            theta += fit_theta
            bias += coef[d]
            linear = lin_rms(fit_theta) > tol_out
            kind = NeuronType.CANCELLED if linear else NeuronType.CONSTANT
            note = "collectively linear" if linear else "collectively constant"
            for j in near:
                for k, i in enumerate(kept[j].members):
                    types[i] = NeuronClass(i, kind, None, cluster_id, int(kept[j].signs[k]),
                                           float(kept[j].scales[k]), note, layer_index)
            cluster_id += 1
            kept = [g for j, g in enumerate(kept) if j not in near]
            cids = [c for j, c in enumerate(cids) if j not in near]
    for j, (g, cid) in enumerate(zip(kept, cids)):
        for k, i in enumerate(g.members):
            note = "duplicate" if g.signs[k] > 0 else "flipped duplicate"
            types[i] = NeuronClass(i, NeuronType.NEURON, j, cid, int(g.signs[k]),
                                   float(g.scales[k]), note, layer_index)

    # 4. orientations: for even+linear classes, flip kept groups so that Θ vanishes, choosing
    # among the valid flip sets the one that goes least against the members' orientations.
    orient = np.ones(len(kept), dtype=int)
    base = [terms(g, 1) for g in kept]
    lin_total = theta + sum((t[2][:, :d] for t in base), np.zeros_like(theta))
    if even and kept and lin_rms(lin_total) > tol_out:
        deltas = np.stack([(terms(g, -1)[2][:, :d] - t[2][:, :d]) for g, t in zip(kept, base)])
        costs = np.array([g.flip_cost(anorm * vnorm) for g in kept])
        if teacher_rows is not None:
            # Prefer the teacher's orientation: flipping a group towards its matched teacher
            # neuron gains, away from it costs (member costs only break the remaining ties).
            reps = np.stack([V[g.rep] for g in kept])
            rows, cols = linear_sum_assignment(
                cosine_distance_matrix(reps, teacher_rows, signed=False)
            )
            for g, k in zip(rows, cols):
                costs[g] += 2.0 if reps[g] @ teacher_rows[k] >= 0.0 else -2.0
        flips = _search_flips(lin_total, deltas, costs, L, tol_out, config.max_flip_subsets)
        if flips is not None:
            orient[flips] = -1

    n_next = A.shape[0]
    W_new = np.zeros((max(len(kept), 1), d))
    b_new = np.zeros(max(len(kept), 1))
    A_new = np.zeros((n_next, max(len(kept), 1)))
    for j, g in enumerate(kept):
        out_w, const, lin = terms(g, int(orient[j]))
        W_new[j] = orient[j] * W[g.rep]
        b_new[j] = orient[j] * b[g.rep]
        A_new[:, j] = out_w
        bias += const + lin[:, d]
        theta += lin[:, :d]
        if orient[j] < 0:
            for i in g.members:
                t = types[i]
                types[i] = NeuronClass(i, t.type, t.group, t.cluster, -t.sign, t.scale,
                                       "duplicate" if t.sign < 0 else "flipped duplicate",
                                       layer_index)
    rms_theta = lin_rms(theta)
    if rms_theta <= tol_out:
        # Θ(x - μ) vanishes on the domain, so Θx is the constant Θμ there.
        bias += theta @ mu
    report = LayerReduction(
        layer=layer_index,
        neurons=tuple(types),  # type: ignore[arg-type]
        n_before=m,
        n_after=len(kept),
        flipped=tuple(int(j) for j in np.nonzero(orient < 0)[0]),
        linear_remainder=theta,
        linear_rms=rms_theta,
        output_scale=out_scale,
    )
    return report, W_new, b_new, A_new, bias


def _search_flips(
    theta0: np.ndarray,
    deltas: np.ndarray,
    costs: np.ndarray,
    L: np.ndarray,
    tol: float,
    max_subsets: int,
) -> np.ndarray | None:
    """Groups to flip so that ``Θ0 + Σ_{g∈S} Δ_g`` vanishes on the domain.

    Several flip sets can be valid when the teacher's own ``a_k w_k`` are linearly dependent
    (then the orientations are not identifiable); the one of least total cost is returned,
    ties broken by size.

    Parameters
    ----------
    theta0 : ndarray of shape (n_next, d)
    deltas : ndarray of shape (K, n_next, d)
        Change of Θ when kept group g is flipped (``2 c1 A_g w_g``).
    costs : ndarray of shape (K,)
        Cost of flipping each group (share of its output against the new orientation).
    L : ndarray of shape (d, d)
        Square root of the domain covariance (the rms of Θ(x - μ) is ``||Θ L||_F / √n_next``).
    max_subsets : int
        All ``2^K`` subsets are tried when that is at most this; otherwise a rounded
        least-squares relaxation, then subsets by increasing size up to this many.

    Returns
    -------
    ndarray of int or None
        Indices of the groups to flip, or None when no flip set cancels Θ.
    """
    n_next = theta0.shape[0]
    t0 = (theta0 @ L).ravel() / math.sqrt(n_next)
    D = np.stack([(dl @ L).ravel() for dl in deltas]) / math.sqrt(n_next)  # (K, p)
    K = D.shape[0]
    # The exhaustive search holds all 2^K subset sums; cap its memory at 2^23 floats (64 MiB).
    if 2**K <= max_subsets and 2**K * D.shape[1] <= 1 << 23:
        sums = t0[None, :]
        cost = np.zeros(1)
        size = np.zeros(1, dtype=int)
        for g in range(K):  # subset sums by doubling: bit g of the row index flips group g
            sums = np.concatenate([sums, sums + D[g]])
            cost = np.concatenate([cost, cost + costs[g]])
            size = np.concatenate([size, size + 1])
        ok = np.nonzero(np.linalg.norm(sums, axis=1) <= tol)[0]
        if ok.size == 0:
            return None
        best = int(ok[np.lexsort((size[ok], np.round(cost[ok], 9)))[0]])
        return np.array([g for g in range(K) if best >> g & 1], dtype=int)
    # Too many groups: the rounded relaxation (exact when the Δ_g are independent), then the
    # fewest flips first, up to max_subsets tries.
    relaxed = _round_flips(t0, D, tol)
    if relaxed is not None:
        return relaxed
    tried = 0
    for k in range(1, K + 1):
        combos = itertools.combinations(range(K), k)
        while tried < max_subsets:
            chunk = list(itertools.islice(combos, min(8192, max_subsets - tried)))
            if not chunk:
                break
            idx = np.array(chunk)
            res = np.linalg.norm(t0 + D[idx].sum(axis=1), axis=1)
            j = int(np.argmin(res))
            if res[j] <= tol:
                return idx[j]
            tried += len(chunk)
    return None


def _round_flips(t0: np.ndarray, D: np.ndarray, tol: float) -> np.ndarray | None:
    """Relaxation ``min ||t0 + D^T s||`` over ``s ∈ [0, 1]^K``, rounded, then single flips.

    For many groups (too many subsets to try): the bounded least-squares solution is rounded
    to {0, 1} and improved by flipping one group at a time while the residual decreases.
    """
    from scipy.optimize import lsq_linear

    K = D.shape[0]
    s = np.round(lsq_linear(D.T, -t0, bounds=(0.0, 1.0)).x)
    r = t0 + D.T @ s
    for _ in range(4 * K):
        # Residual after flipping group g: r + (1 - 2 s_g) D_g.
        trial = np.linalg.norm(r[None, :] + (1.0 - 2.0 * s)[:, None] * D, axis=1)
        g = int(np.argmin(trial))
        if trial[g] >= np.linalg.norm(r):
            break
        r = r + (1.0 - 2.0 * s[g]) * D[g]
        s[g] = 1.0 - s[g]
    if np.linalg.norm(r) <= tol:
        return np.nonzero(s == 1.0)[0]
    return None


# --- front door ------------------------------------------------------------------------------


def _rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(a * a)))


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
        :func:`map_to_teacher`), and where the student leaves the orientation of even+linear
        neurons undetermined (several sign-flip sets cancel Θ) the teacher's is chosen.
    config : SymmetryConfig, optional

    Returns
    -------
    ReductionResult
        Status (exact, linear remainder, mismatch) with reason, per-neuron types, the reduced
        network and its RMSE to the student on the domain.

    Raises
    ------
    TypeError, ValueError
        On a non-MLP student, a student without hidden layer, or inputs of the wrong shape.
    """
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
        x_check = sample_inputs(config.n_verify, student.d_in, config.seed)
        x_check = x_check * (config.half_width / INPUT_HALF_WIDTH)
        box = config.half_width
    else:
        x_check = check_array(x, "x", ndim=2)
        if x_check.shape[1] != student.d_in or x_check.shape[0] < 2:
            raise InputError(
                f"x must have shape (n_samples >= 2, d_in = {student.d_in}), got {x_check.shape}"
            )
        box = None
    if teacher is not None:
        _check_teacher(student, teacher)

    net = student
    reports: list[LayerReduction] = []
    for li in range(len(student.layers) - 1):
        h_in = x_check if li == 0 else net.hidden(x_check, li - 1)
        domain = _Domain(h_in, box if li == 0 else None, config.n_grid)
        hid, nxt = net.layers[li], net.layers[li + 1]
        pre_next = net.hidden(x_check, li) @ nxt.weight.T + nxt.bias
        out_scale = _rms(pre_next) or 1.0
        t_rows = None
        if teacher is not None and li == 0:
            t_rows = np.hstack([teacher.layers[0].weight, teacher.layers[0].bias[:, None]])
        rep, W, b, A, c = _reduce_layer(
            hid.weight, hid.bias, nxt.weight, nxt.bias, hid.activation, domain, out_scale,
            config, li, t_rows,
        )
        reports.append(rep)
        layers = list(net.layers)
        layers[li : li + 2] = [Layer(W, b, hid.activation), Layer(A, c, nxt.activation)]
        net = MLP(tuple(layers))

    y_student = student.forward(x_check)
    y_reduced = net.forward(x_check)
    rmse = _rms(y_student - y_reduced)
    scale = _rms(y_student) or 1.0
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
    neurons = tuple(n for r in reports for n in r.neurons)
    result = ReductionResult(status, reason, net, neurons, tuple(reports), rmse, scale, student)
    if teacher is not None:
        result = dataclasses.replace(result, mapping=map_to_teacher(result, teacher))
    return result


def _check_teacher(student: MLP, teacher: MLP) -> None:
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


def cosine_distance_matrix(V: np.ndarray, T: np.ndarray, *, signed: bool) -> np.ndarray:
    """Cosine distances ``1 - cos`` (``1 - |cos|`` unless ``signed``) between rows.

    Parameters
    ----------
    V : ndarray of shape (n, p), float64
    T : ndarray of shape (k, p), float64

    Returns
    -------
    ndarray of shape (n, k), float64, in [0, 2]
    """
    vn = np.linalg.norm(V, axis=1, keepdims=True)
    tn = np.linalg.norm(T, axis=1, keepdims=True)
    cos = (V / np.where(vn > 0, vn, 1.0)) @ (T / np.where(tn > 0, tn, 1.0)).T
    cos = np.clip(cos, -1.0, 1.0)
    return 1.0 - (cos if signed else np.abs(cos))


def map_to_teacher(result: ReductionResult, teacher: MLP) -> TeacherMapping:
    """Map each student neuron to a teacher neuron, with sign, scale and share.

    Reduced neurons are matched to teacher neurons by the Hungarian algorithm on the
    cosine distance between ``[w, b]`` rows, sign-invariant for symmetric activations (the
    distance is scale-invariant by construction). A member ``i`` of reduced group ``g`` has
    ``[w_i, b_i] = s_i λ_i [w_g, b_g]`` and ``[w_g, b_g] = s_g λ_g [w*_k, b*_k]``; its share
    of ``a*_k`` is ``(ã_i · a*_k) / ||a*_k||²`` with ``ã_i`` its output weight brought to the
    teacher's sign and scale.

    Parameters
    ----------
    result : ReductionResult
        A reduction of a one-hidden-layer student.
    teacher : MLP
        One-hidden-layer teacher of the same input/output sizes and activation.
    """
    if len(result.network.layers) != 2:
        raise InputError("the teacher mapping needs a one-hidden-layer student")
    if not isinstance(teacher, MLP) or len(teacher.layers) != 2:
        raise InputError("the teacher mapping needs a one-hidden-layer teacher MLP")
    act = result.network.layers[0].activation
    sym = act.symmetry
    R = np.hstack([result.network.layers[0].weight, result.network.layers[0].bias[:, None]])
    AR = result.network.layers[1].weight
    T = np.hstack([teacher.layers[0].weight, teacher.layers[0].bias[:, None]])
    AT = teacher.layers[1].weight
    n_red = result.layers[0].n_after
    cost = cosine_distance_matrix(R[:n_red], T, signed=not sym.sign_invariant)
    rows, cols = linear_sum_assignment(cost) if n_red else (np.array([], int), np.array([], int))
    teacher_of = [None] * n_red
    sign_g = np.ones(n_red, dtype=int)
    scale_g = np.ones(n_red)
    dist, out_err = [], []
    for g, k in zip(rows, cols):
        teacher_of[g] = int(k)
        sign_g[g] = 1 if float(R[g] @ T[k]) >= 0.0 else -1
        scale_g[g] = float(np.linalg.norm(R[g]) / np.linalg.norm(T[k]))
        dist.append(float(cost[g, k]))
        a_t = act.output_weight(AR[:, g], sign_g[g], scale_g[g])
        out_err.append(float(np.linalg.norm(a_t - AT[:, k]) / max(np.linalg.norm(AT[:, k]), 1e-300)))
    matches = []
    for n in result.neurons:
        if n.layer != 0:
            continue
        if n.type is not NeuronType.NEURON or teacher_of[n.group] is None:
            matches.append(NeuronMatch(n.index, n.type, None, n.sign, n.scale, 0.0, math.nan))
            continue
        g, k = n.group, teacher_of[n.group]
        sign = n.sign * int(sign_g[g])
        scale = n.scale * float(scale_g[g])
        a_i = result.student.layers[1].weight[:, n.index]
        a_t = act.output_weight(a_i, sign, scale)
        share = float(a_t @ AT[:, k] / max(float(AT[:, k] @ AT[:, k]), 1e-300))
        matches.append(NeuronMatch(n.index, n.type, k, sign, scale, share, float(cost[g, k])))
    unmatched = tuple(sorted(set(range(T.shape[0])) - {int(k) for k in cols}))
    return TeacherMapping(
        tuple(matches), tuple(teacher_of), np.array(dist), np.array(out_err), unmatched
    )


# --- the mapping step by step (Fig. A.6) -----------------------------------------------------


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


@dataclass(eq=False)
class _Unit:
    v: np.ndarray  # [w, b]
    a: np.ndarray  # (d_out,)
    sources: tuple[int, ...]


def reduction_steps(
    result: ReductionResult, x: np.ndarray | None = None
) -> tuple[ReductionStep, ...]:
    """Replay a one-hidden-layer reduction step by step (paper Fig. A.6).

    Steps: the student; merge duplicates of the same orientation (output weights summed,
    positive scales moved into them); remove zero types; remove constant and off-bound
    neurons; merge opposite (linear) duplicates and drop linear-type groups; flip the signs
    chosen to cancel Θ. What each step removes is affine on the domain (that is what the
    neuron types mean), so its contribution is moved into ``Θ x + β`` by an affine
    least-squares fit on the domain points, exact to rounding.

    Parameters
    ----------
    result : ReductionResult
        From :func:`reduce_network` on a one-hidden-layer student.
    x : ndarray of shape (n_samples, d_in), float64, optional
        Domain points (default: 4096 uniform samples of the box ``[-√3, √3]^d_in``).

    Returns
    -------
    tuple of ReductionStep
    """
    student = result.student
    if len(student.layers) != 2:
        raise InputError(f"reduction_steps needs a one-hidden-layer student, got {student.sizes}")
    act = student.layers[0].activation
    d = student.d_in
    X = sample_inputs(4096, d, 0) if x is None else check_array(x, "x", ndim=2)
    if X.shape[1] != d:
        raise InputError(f"x must have d_in = {d} columns, got shape {X.shape}")
    X1 = np.hstack([X, np.ones((X.shape[0], 1))])
    Ws, bs = student.layers[0].weight, student.layers[0].bias
    As = student.layers[1].weight
    V = np.hstack([Ws, bs[:, None]])
    types = [n for n in result.neurons if n.layer == 0]
    kept_rows = np.hstack([result.network.layers[0].weight, result.network.layers[0].bias[:, None]])
    kept_out = result.network.layers[1].weight
    flipped = set(result.layers[0].flipped)

    units = [_Unit(V[i].copy(), As[:, i].copy(), (i,)) for i in range(V.shape[0])]
    state = {"bias": student.layers[1].bias.copy(), "theta": np.zeros((student.d_out, d))}
    steps: list[ReductionStep] = []

    def contribution(us: list[_Unit]) -> np.ndarray:
        if not us:
            return np.zeros((X.shape[0], student.d_out))
        V_ = np.stack([u.v for u in us])
        A_ = np.stack([u.a for u in us], axis=1)
        return act(X1 @ V_.T) @ A_.T

    def replace(old: list[_Unit], new: list[_Unit]) -> None:
        coef, *_ = np.linalg.lstsq(X1, contribution(old) - contribution(new), rcond=None)
        state["theta"] = state["theta"] + coef[:d].T
        state["bias"] = state["bias"] + coef[d]

    def record(name: str, description: str, changed: list[_Unit]) -> None:
        if units:
            W_ = np.stack([u.v[:d] for u in units])
            b_ = np.array([u.v[d] for u in units])
            A_ = np.stack([u.a for u in units], axis=1)
        else:  # layers cannot be empty: one neuron with zero output weight
            W_, b_, A_ = np.zeros((1, d)), np.zeros(1), np.zeros((student.d_out, 1))
        net = MLP.from_arrays([W_, A_], [b_, state["bias"].copy()], [act, "identity"])
        ids = {id(u) for u in changed}
        steps.append(ReductionStep(
            name, description, net, state["theta"].copy(),
            tuple(u.sources for u in units),
            tuple(k for k, u in enumerate(units) if id(u) in ids),
        ))

    record("student", "the zero-loss student", [])

    # 1. duplicates of one orientation: one neuron, output weights summed (scales moved in).
    by_key: dict[tuple, list[int]] = {}
    for n in types:
        if n.cluster is not None and not n.note.startswith("collectively"):
            by_key.setdefault((n.cluster, n.sign), []).append(n.index)
    merged = []
    for (_, _), members in by_key.items():
        if len(members) < 2:
            continue
        first = members[0]
        lam0 = types[first].scale
        a = sum(As[:, i] * types[i].scale for i in members) / lam0
        old = [u for u in units if u.sources[0] in members]
        new = _Unit(V[first].copy(), a, tuple(members))
        replace(old, [new])
        pos = units.index(old[0])
        units[:] = [u for u in units if u not in old]
        units.insert(pos, new)
        merged.append(new)
    record("merge duplicates", "duplicates of the same orientation merged: output weights "
           "summed (relu: positive scales moved into the output weight)", merged)

    def remove(pred, name: str, description: str) -> None:
        old = [u for u in units if all(pred(types[i]) for i in u.sources)]
        replace(old, [])
        units[:] = [u for u in units if u not in old]
        record(name, description, [])

    remove(lambda n: n.type is NeuronType.ZERO, "remove zero types",
           "neurons and groups with zero output weight removed")
    remove(lambda n: n.type is NeuronType.CONSTANT or (
        n.type is NeuronType.CANCELLED and n.cluster is None) or n.note.startswith("collectively"),
        "remove constants and off-bounds",
        "constant neurons folded into the bias; off-bound linear neurons into Θx")

    # 4. opposite duplicates: one neuron in the pre-flip orientation plus a linear term.
    changed = []
    for g in range(result.layers[0].n_after):
        old = [u for u in units if types[u.sources[0]].type is NeuronType.NEURON
               and types[u.sources[0]].group == g]
        if not old:
            continue
        o = -1 if g in flipped else 1
        members = [i for u in old for i in u.sources]
        s_pre = [types[i].sign * o for i in members]
        scales = np.array([types[i].scale for i in members])
        a = act.output_weight(As[:, members], np.array(s_pre), scales).sum(axis=1)
        new = _Unit(o * kept_rows[g], a, tuple(sorted(members)))
        if len(old) > 1:
            replace(old, [new])
            changed.append(new)
        pos = units.index(old[0])
        units[:] = [u for u in units if u not in old]
        units.insert(pos, new if len(old) > 1 else old[0])
    lin_groups = [u for u in units if all(types[i].type is NeuronType.CANCELLED for i in u.sources)]
    replace(lin_groups, [])
    units[:] = [u for u in units if u not in lin_groups]
    record("merge opposite duplicates", "neurons sharing a hyperplane with opposite vectors "
           "merged into one neuron plus a linear term; linear-type groups into Θx", changed)

    # 5. the flips that cancel Θ.
    changed = []
    for k, u in enumerate(units):
        g = types[u.sources[0]].group
        if g in flipped:
            new = _Unit(kept_rows[g].copy(), kept_out[:, g].copy(), u.sources)
            replace([u], [new])
            units[k] = new
            changed.append(new)
    record("flip signs", "vectors opposite to the kept orientation flipped, adding a linear "
           "term; Θ now vanishes for an exact reduction", changed)
    return tuple(steps)
