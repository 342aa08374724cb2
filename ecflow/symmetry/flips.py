"""The orientation of the kept groups: the sign flips that cancel the linear remainder Θ.

For even+linear classes a kept group ``A_g σ(z_g)`` may be flipped, ``A_g σ(-z_g) + 2 c1 A_g z_g``
(the last step of Fig. A.6), which changes Θ by ``Δ_g = 2 c1 A_g w_g``. The reduction needs the
fewest flips ``S`` with ``Θ0 + Σ_{g∈S} Δ_g = 0`` on the domain; :func:`choose_orientations`
sets up that search, :func:`search_flips` solves it (exhaustively, or by a rounded
least-squares relaxation when there are too many groups).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from scipy.optimize import lsq_linear

from ecflow.metrics import match_vectors
from ecflow.symmetry.groups import LayerProblem, LayerState

__all__ = ["choose_orientations", "search_flips"]


def _teacher_preference(p: LayerProblem, s: LayerState, teacher_rows: np.ndarray) -> np.ndarray:
    """Cost change of flipping each kept group: towards its matched teacher neuron gains,
    away from it costs (2 outweighs any member cost, which only breaks the remaining ties)."""
    V = p.V
    reps = np.stack([V[g.rep] for g in s.kept])
    match = match_vectors(teacher_rows, reps, p.act.symmetry)
    extra = np.zeros(len(s.kept))
    for k, g in zip(match.teacher, match.recovered):
        extra[g] = 2.0 if reps[g] @ teacher_rows[k] >= 0.0 else -2.0
    return extra


def choose_orientations(
    p: LayerProblem, s: LayerState, teacher_rows: np.ndarray | None = None
) -> np.ndarray:
    """Orientation ``±1`` of each kept group so that Θ vanishes on the domain.

    Among the valid flip sets, the one that goes least against the members' orientations is
    chosen; ``teacher_rows`` (teacher ``[w, b]``, shape ``(r, d + 1)``), when given, decides
    between flip sets that are equally valid (the orientation is then not identifiable from
    the student). All ``+1`` when the class leaves no linear term, or when no flip set works.

    Returns
    -------
    ndarray of shape (n_kept,), int
    """
    orient = np.ones(len(s.kept), dtype=int)
    if not (p.act.symmetry.flip_leaves_linear and s.kept):
        return orient
    d = p.W.shape[1]
    base = [p.terms(g, 1).linear[:, :d] for g in s.kept]
    lin_total = s.theta + sum(base, np.zeros_like(s.theta))
    if p.lin_rms(lin_total) <= p.tol_out:
        return orient
    deltas = np.stack([p.terms(g, -1).linear[:, :d] - t for g, t in zip(s.kept, base)])
    weight = np.linalg.norm(p.A, axis=0) * np.linalg.norm(p.V, axis=1)
    costs = np.array([g.flip_cost(weight) for g in s.kept])
    if teacher_rows is not None:
        costs = costs + _teacher_preference(p, s, teacher_rows)
    flips = search_flips(lin_total, deltas, costs, p.domain.cov_sqrt(), p.tol_out,
                         p.config.max_flip_subsets)
    if flips is not None:
        orient[flips] = -1
    return orient


def search_flips(
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
