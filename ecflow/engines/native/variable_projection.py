"""Variable projection (Golub–Pereyra) of the linear output layer.

The output layer of a student is linear in its parameters: with ``Φ = [h_{L-1}, 1]`` the last
hidden activations and a column of ones ((n_samples, n_last + 1)) and ``B = [W_{L-1}ᵀ; b_{L-1}]``
((n_last + 1, d_out)), the prediction is ``ŷ = Φ B``. For given hidden parameters ``u`` the
best output layer is the linear least-squares solution

    B*(u) = argmin_B |Φ(u) B - y|²,

and training minimises the reduced loss ``L̃(u) = L(u, B*(u))`` over the hidden parameters only.
Because ``∂L/∂B = 0`` at ``B*`` (Golub & Pereyra, *The differentiation of pseudo-inverses and
nonlinear least squares problems whose variables separate*, SIAM J. Numer. Anal. 10, 1973; the
"variable projection" theorem), the gradient of the reduced loss is the partial gradient of the
full loss at the optimal output layer:

    ∇L̃(u) = ∂L/∂u (u, B*(u)),

so one evaluation is a forward pass to ``Φ``, one least-squares solve and the usual fused loss
and gradient at ``(u, B*(u))``, of which the hidden part is kept.

``B*`` comes from a QR factorisation with column pivoting of the column-equilibrated ``Φ``
(LAPACK ``gelsy``), never from ``ΦᵀΦ``: near zero loss the duplicated neurons of an expanded
student make ``Φ`` close to rank deficient, and the normal equations would square that.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from ecflow.engines.native.derivatives import _CACHE_ROWS, Architecture, _compiled
from ecflow.engines.native.problem import Objective, Problem, Tracker

__all__ = ["OutputProjection", "ProjectedObjective", "last_hidden", "solve_output"]

_RCOND = 1e-13
"""Relative cutoff on the pivoted ``R`` of the equilibrated ``Φ``: directions below it are
rounding (duplicated or constant neurons), and fitting them gives output weights of size
``1 / cond`` that cancel each other and lose the digits of the fit."""


def last_hidden(arch: Architecture, theta: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The activations ``h_{L-1}`` feeding the output layer, (n_samples, n_last), float64.

    Parameters
    ----------
    arch : Architecture
    theta : ndarray of shape (arch.n_params,), float64
        Full parameters; the output layer's entries are not read.
    x : ndarray of shape (n_samples, d_in), float64

    One hidden layer takes the compiled kernel of :mod:`.kernels` where there is one (the
    activation alone, without its derivatives, in one vectorised loop).
    """
    kernels = _compiled()
    fused = None if kernels is None else kernels.hidden_values(arch, theta, x)
    if fused is not None:
        return fused
    params = arch.unpack(theta)[:-1]
    acts = arch.activations[:-1]
    out = np.empty((x.shape[0], arch.sizes[-2]))
    for start in range(0, x.shape[0], _CACHE_ROWS):
        h = x[start : start + _CACHE_ROWS]
        for (W, b), act in zip(params, acts):
            z = h @ W.T
            z += b
            h = act.f(z)
        out[start : start + _CACHE_ROWS] = h
    return out


def solve_output(h: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The least-squares output layer ``[vec(W), b]`` for activations ``h`` and targets ``y``.

    Solves ``min |[h, 1] B - y|²`` (minimum-norm within the numerical rank, cutoff
    :data:`_RCOND` on the columns scaled to unit norm) and returns ``W = B[:n_last]ᵀ``
    (d_out, n_last) row-major, then ``b = B[n_last]`` (d_out,), the layout of
    :meth:`ecflow.networks.MLP.flatten`.

    Parameters
    ----------
    h : ndarray of shape (n_samples, n_last), float64, finite
    y : ndarray of shape (n_samples, d_out), float64

    Returns
    -------
    ndarray of shape (d_out * (n_last + 1),), float64
    """
    n, k = h.shape
    phi = np.empty((n, k + 1))
    phi[:, :k] = h
    phi[:, k] = 1.0
    norms = np.linalg.norm(phi, axis=0)
    norms[norms == 0.0] = 1.0
    phi /= norms
    B = scipy.linalg.lstsq(phi, y, cond=_RCOND, lapack_driver="gelsy", check_finite=False)[0]
    B /= norms[:, None]
    return np.concatenate([B[:k].T.ravel(), B[k]])


@dataclass(frozen=True)
class OutputProjection:
    """Where the output layer sits in a problem's (free) parameter vector.

    Attributes
    ----------
    start : int
        First entry of the output layer in the full θ (``arch.offsets[-2]``).
    n_output : int
        Parameters of the output layer, ``d_out · (n_last + 1)``; they are the last
        ``n_output`` entries of the problem's free θ.
    """

    start: int
    n_output: int

    @classmethod
    def of(cls, problem: Problem) -> OutputProjection | None:
        """The projection of ``problem``, or None where the output layer is not linear or not
        entirely free (then the optimiser must see all parameters)."""
        arch = problem.arch
        if arch.activations[-1].name != "identity":
            return None
        start = arch.offsets[-2]
        n_output = arch.n_params - start
        output = np.arange(start, arch.n_params)
        if problem.free is not None and not np.array_equal(problem.free[-n_output:], output):
            return None
        if problem.n_params == n_output:
            return None  # nothing but the output layer trains: one solve, no optimisation
        return cls(start, n_output)

    def hidden(self, theta: np.ndarray) -> np.ndarray:
        """The hidden part ``u`` (n_free - n_output,) of a free θ (n_free,)."""
        return theta[: theta.size - self.n_output]

    def complete(self, problem: Problem, u: np.ndarray) -> np.ndarray | None:
        """The free θ (n_free,) with hidden part ``u`` and the least-squares output layer;
        None when the hidden activations overflow."""
        full = problem.full(np.concatenate([u, np.zeros(self.n_output)]))
        with np.errstate(over="ignore", invalid="ignore"):
            h = last_hidden(problem.arch, full, problem.x)
        if not np.all(np.isfinite(h)):
            return None
        full[self.start :] = solve_output(h, problem.y)
        return problem.reduce(full)


class ProjectedObjective(Objective):
    """``fun(u) -> (L̃, ∇L̃)`` of the reduced loss over the hidden parameters ``u``; the
    tracker records the complete points ``(u, B*(u))``."""

    def __init__(
        self,
        problem: Problem,
        tracker: Tracker,
        deadline: float,
        max_calls: int,
        projection: OutputProjection,
    ):
        super().__init__(problem, tracker, deadline, max_calls)
        self.projection = projection

    def start(self, theta: np.ndarray) -> np.ndarray:
        return self.projection.hidden(theta).copy()

    def evaluate(self, u: np.ndarray) -> tuple[np.ndarray | None, float, np.ndarray]:
        theta = self.projection.complete(self.problem, u)
        if theta is None:
            return None, np.inf, np.zeros_like(u)
        value, grad = self.problem.loss_grad(theta)
        return theta, value, grad[: u.size]
