"""Typing the neurons of one hidden layer: zero outputs, duplicate groups, constant and linear ones.

The stages of one layer's reduction (package docstring) share a :class:`LayerProblem` (the
layer, its domain and tolerances, read-only) and a :class:`LayerState` (the types assigned so
far, the next bias with what was folded into it and the linear remainder Θ), which each stage
takes and returns. The orientation of the kept groups is chosen afterwards by
:mod:`ecflow.symmetry.flips`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ecflow.activations import Activation, Compensation
from ecflow.metrics import rms
from ecflow.symmetry.types import NeuronClass, NeuronNote, NeuronType, SymmetryConfig

__all__ = [
    "Domain",
    "Group",
    "LayerProblem",
    "LayerState",
    "find_groups",
    "type_layer",
]


@dataclass(frozen=True, eq=False)
class Domain:
    """Input domain of one layer: a box (exact z ranges) or a finite point set.

    Attributes
    ----------
    points : ndarray of shape (n_points, d), float64
        Box samples or the given inputs.
    half_width : float or None
        Set for the box ``[-h, h]^d``.
    n_grid : int
        Points of the 1-D grid over a neuron's range of ``z`` on the box.
    """

    points: np.ndarray
    half_width: float | None
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


@dataclass(frozen=True, eq=False)
class Group:
    """Duplicates ``v_i = s_i λ_i v_rep`` among a layer's neurons.

    Attributes
    ----------
    members : tuple of int
        Neuron indices in the layer.
    rep : int
        The member whose ``[w, b]`` the group keeps.
    signs : ndarray of shape (k,), int
        ``s_i`` relative to ``rep``.
    scales : ndarray of shape (k,), float64
        ``λ_i = ||v_i|| / ||v_rep||`` (1 unless the class is scale-invariant).
    """

    members: tuple[int, ...]
    rep: int
    signs: np.ndarray
    scales: np.ndarray

    def flip_cost(self, weight: np.ndarray) -> float:
        """Share of the group's output carried by members that a flip would put against it."""
        w = weight[list(self.members)]
        return float((w[self.signs > 0].sum() - w[self.signs < 0].sum()) / max(w.sum(), 1e-300))


@dataclass(frozen=True, eq=False)
class LayerProblem:
    """One hidden layer ``A σ(W x + b) + c`` with its domain and tolerances (read-only).

    Attributes
    ----------
    W : ndarray of shape (m, d), float64
    b : ndarray of shape (m,), float64
    A : ndarray of shape (n_next, m), float64
    c : ndarray of shape (n_next,), float64
    act : Activation
    domain : Domain
    out_scale : float
        rms of the layer's output (the next pre-activation) over the domain.
    config : SymmetryConfig
    index : int
        Hidden layer index (0 for the first).
    """

    W: np.ndarray
    b: np.ndarray
    A: np.ndarray
    c: np.ndarray
    act: Activation
    domain: Domain
    out_scale: float
    config: SymmetryConfig
    index: int

    @property
    def V(self) -> np.ndarray:
        """Neurons ``[w, b]``, shape ``(m, d + 1)``."""
        return np.hstack([self.W, self.b[:, None]])

    @property
    def tol_out(self) -> float:
        return self.config.output_rtol * self.out_scale

    def lin_rms(self, theta: np.ndarray) -> float:
        """rms of ``Θ (x - μ)`` over the domain."""
        L = self.domain.cov_sqrt()
        return float(np.linalg.norm(theta @ L) / math.sqrt(theta.shape[0]))

    def terms(self, g: Group, orient: int) -> Compensation:
        """What group ``g`` contributes when kept as ``orient · v_rep`` (the class's algebra)."""
        members = list(g.members)
        return self.act.compensate(
            self.A[:, members], g.signs * orient, g.scales, orient * self.V[g.rep]
        )

    def neuron_rms(self, i: int) -> float:
        """rms of ``σ(z_i)`` over the domain."""
        return rms(self.act(self.domain.z_values(self.W[i], self.b[i])))


@dataclass(frozen=True, eq=False)
class LayerState:
    """What the stages of one layer's reduction share (taken and returned by each).

    Attributes
    ----------
    types : tuple of NeuronClass or None
        One per neuron; ``None`` until a stage types it.
    bias : ndarray of shape (n_next,), float64
        The next bias with the constants folded in so far.
    theta : ndarray of shape (n_next, d), float64
        Linear remainder Θ accumulated so far.
    kept : tuple of Group
        Groups kept as neurons of the reduced layer.
    clusters : tuple of int or None
        Cluster id of each kept group (``None`` for a singleton).
    n_clusters : int
        Cluster ids handed out so far.
    """

    types: tuple[NeuronClass | None, ...]
    bias: np.ndarray
    theta: np.ndarray
    kept: tuple[Group, ...] = ()
    clusters: tuple[int | None, ...] = ()
    n_clusters: int = 0

    @classmethod
    def start(cls, p: LayerProblem) -> LayerState:
        m, d = p.W.shape
        return cls((None,) * m, p.c.astype(np.float64).copy(), np.zeros((p.A.shape[0], d)))

    def untyped(self) -> list[int]:
        return [i for i, t in enumerate(self.types) if t is None]

    def typed(self, classes: list[NeuronClass]) -> LayerState:
        types = list(self.types)
        for n in classes:
            types[n.index] = n
        return dataclasses.replace(self, types=tuple(types))

    def fold(self, bias: np.ndarray, theta: np.ndarray | None = None) -> LayerState:
        """Add a constant to the next bias and (optionally) a term to Θ."""
        new_theta = self.theta if theta is None else self.theta + theta
        return dataclasses.replace(self, bias=self.bias + bias, theta=new_theta)


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


def find_groups(p: LayerProblem, indices: list[int]) -> list[Group]:
    """Duplicates among ``indices``: equal ``[w, b]`` up to the class's sign and scale.

    Each group keeps the orientation that carries most of its output (fewest flipped).
    """
    if not indices:
        return []
    sym = p.act.symmetry
    V = p.V
    vnorm = np.linalg.norm(V, axis=1)
    anorm = np.linalg.norm(p.A, axis=0)
    U = V[indices] / vnorm[indices, None] if sym.scale_invariant else V[indices]
    tol = p.config.param_rtol * np.linalg.norm(U, axis=1)
    out = []
    for g in _union_find_groups(U, tol, sym.sign_invariant):
        idx = [indices[k] for k in g]
        weight = anorm[idx] * vnorm[idx]  # contribution size, invariant to the scale symmetry
        rep = idx[int(np.argmax(weight))]
        signs = sym.signs(V[idx], V[rep])
        if weight[signs < 0].sum() > weight[signs > 0].sum():
            rep = idx[int(np.argmax(np.where(signs < 0, weight, -1.0)))]
            signs = -signs
        scales = vnorm[idx] / vnorm[rep] if sym.scale_invariant else np.ones(len(idx))
        out.append(Group(tuple(idx), rep, signs, scales))
    return out


def _leaky_slope(act: Activation) -> float:
    """Slope ``α`` of a positively homogeneous activation on z < 0 (relu 0, identity 1)."""
    return -float(act(np.array([-1.0]))[0])


def _linear_fit(act: Activation, z: np.ndarray, fz: np.ndarray) -> tuple[float, float, float]:
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


def _zero_outputs(p: LayerProblem, s: LayerState) -> LayerState:
    """Neurons whose output weight is negligible are zero types on their own."""
    anorm = np.linalg.norm(p.A, axis=0)
    zero = [
        NeuronClass(i, NeuronType.ZERO, None, None, 1, 1.0, NeuronNote.OUTPUT_ZERO, p.index)
        for i in range(p.W.shape[0])
        if anorm[i] * max(1.0, p.neuron_rms(i)) <= p.tol_out
    ]
    return s.typed(zero)


def _remove_if_cancelling(p: LayerProblem, s: LayerState, g: Group, cid: int | None):
    """Type a group whose output weights sum to zero (appendix A.2); None if they don't.

    What is left is constant (odd+constant flips; w = 0) or linear (even+linear flips):
    a linear-type group when Θ ≠ 0, a constant-type group when only a constant is left,
    else a zero-type group.
    """
    comp = p.terms(g, 1)
    if np.linalg.norm(comp.output_weight) * max(1.0, p.neuron_rms(g.rep)) > p.tol_out:
        return None
    d = p.W.shape[1]
    const = comp.bias + comp.linear[:, d]
    if p.lin_rms(comp.linear[:, :d]) > p.tol_out:
        kind, note = NeuronType.CANCELLED, NeuronNote.LINEAR_GROUP
    elif np.linalg.norm(const) > p.tol_out:
        kind, note = NeuronType.CONSTANT, NeuronNote.CONSTANT_GROUP
    else:
        kind, note = NeuronType.ZERO, NeuronNote.ZERO_GROUP
    classes = [
        NeuronClass(i, kind, None, cid, int(g.signs[k]), float(g.scales[k]), note, p.index)
        for k, i in enumerate(g.members)
    ]
    return s.fold(const, comp.linear[:, :d]).typed(classes)


def _cancelling_groups(p: LayerProblem, s: LayerState) -> LayerState:
    """Groups of several neurons whose output weights sum to zero, wherever they lie."""
    for g in find_groups(p, s.untyped()):
        if len(g.members) > 1:
            removed = _remove_if_cancelling(p, s, g, s.n_clusters)
            if removed is not None:
                s = dataclasses.replace(removed, n_clusters=removed.n_clusters + 1)
    return s


def _flat_or_linear(p: LayerProblem, s: LayerState, i: int) -> LayerState:
    """Type neuron ``i`` constant (w = 0, off-bound flat) or linear (off-bound) if it is."""
    z = p.domain.z_values(p.W[i], p.b[i])
    fz = p.act(z)
    lo, hi = float(fz.min()), float(fz.max())
    a = p.A[:, i]
    anorm = float(np.linalg.norm(a))
    w_zero = np.linalg.norm(p.W[i]) <= p.config.param_rtol * np.linalg.norm(p.V[i])
    if w_zero or anorm * 0.5 * (hi - lo) <= p.tol_out:
        value = float(p.act(np.array([p.b[i]]))[0]) if w_zero else 0.5 * (hi + lo)
        note = NeuronNote.W_ZERO if w_zero else NeuronNote.OFF_BOUND_FLAT
        n = NeuronClass(i, NeuronType.CONSTANT, None, None, 1, 1.0, note, p.index)
        return s.fold(a * value).typed([n])
    slope, icpt, dev = _linear_fit(p.act, z, fz)
    if anorm * dev <= p.tol_out:
        n = NeuronClass(i, NeuronType.CANCELLED, None, None, 1, 1.0,
                        NeuronNote.OFF_BOUND_LINEAR, p.index)
        return s.fold(a * (slope * p.b[i] + icpt), slope * np.outer(a, p.W[i])).typed([n])
    return s


def _kept_groups(p: LayerProblem, s: LayerState) -> LayerState:
    """Duplicate groups among the remaining neurons: cancelling ones removed, others kept."""
    kept, cids = [], []
    for g in find_groups(p, s.untyped()):
        cid = s.n_clusters if len(g.members) > 1 else None
        if cid is not None:
            s = dataclasses.replace(s, n_clusters=cid + 1)
        removed = _remove_if_cancelling(p, s, g, cid)
        if removed is None:
            kept.append(g)
            cids.append(cid)
        else:
            s = removed
    return dataclasses.replace(s, kept=tuple(kept), clusters=tuple(cids))


def _near_linear_groups(p: LayerProblem, s: LayerState) -> LayerState:
    """Kept groups that are nearly linear (small w, left by gradient descent) and whose sum is
    affine on the domain: collectively constant or linear (their Θ joins the rest)."""

    def nonlinearity(g: Group) -> float:
        z = p.domain.z_values(p.W[g.rep], p.b[g.rep])
        deviation = _linear_fit(p.act, z, p.act(z))[2]
        return float(np.linalg.norm(p.terms(g, 1).output_weight)) * deviation

    near = [j for j, g in enumerate(s.kept)
            if nonlinearity(g) <= p.config.near_linear_rtol * p.out_scale]
    if not near:
        return s
    P, d = p.domain.points, p.W.shape[1]
    members = [i for j in near for i in s.kept[j].members]
    F = p.act(P @ p.W[members].T + p.b[members]) @ p.A[:, members].T  # (n, n_next)
    X1 = np.hstack([P, np.ones((P.shape[0], 1))])
    coef, *_ = np.linalg.lstsq(X1, F, rcond=None)  # (d + 1, n_next)
    if np.max(np.abs(X1 @ coef - F)) > p.tol_out:
        return s
    linear = p.lin_rms(coef[:d].T) > p.tol_out
    kind = NeuronType.CANCELLED if linear else NeuronType.CONSTANT
    note = NeuronNote.COLLECTIVELY_LINEAR if linear else NeuronNote.COLLECTIVELY_CONSTANT
    classes = [
        NeuronClass(i, kind, None, s.n_clusters, int(s.kept[j].signs[k]),
                    float(s.kept[j].scales[k]), note, p.index)
        for j in near for k, i in enumerate(s.kept[j].members)
    ]
    s = s.fold(coef[d], coef[:d].T).typed(classes)
    return dataclasses.replace(
        s,
        kept=tuple(g for j, g in enumerate(s.kept) if j not in near),
        clusters=tuple(c for j, c in enumerate(s.clusters) if j not in near),
        n_clusters=s.n_clusters + 1,
    )


def _label_kept(p: LayerProblem, s: LayerState) -> LayerState:
    classes = [
        NeuronClass(i, NeuronType.NEURON, j, cid, int(g.signs[k]), float(g.scales[k]),
                    NeuronNote.for_sign(int(g.signs[k])), p.index)
        for j, (g, cid) in enumerate(zip(s.kept, s.clusters))
        for k, i in enumerate(g.members)
    ]
    return s.typed(classes)


def type_layer(p: LayerProblem) -> LayerState:
    """Type every neuron of the layer (package docstring), in the order of appendix A.2.

    1. zero output weights; 2. groups whose output weights sum to zero; 3. singletons
    constant or linear on the domain; 4. duplicate groups among the rest, kept unless they
    cancel; 5. near-linear kept groups tested together. The kept groups keep their members'
    majority orientation; :func:`ecflow.symmetry.flips.choose_orientations` may flip them.
    """
    s = _cancelling_groups(p, _zero_outputs(p, LayerState.start(p)))
    for i in s.untyped():
        s = _flat_or_linear(p, s, i)
    return _label_kept(p, _near_linear_groups(p, _kept_groups(p, s)))
