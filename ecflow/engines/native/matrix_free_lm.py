"""Matrix-free Levenberg–Marquardt: each damped step solved inexactly by LSMR on J·v / Jᵀ·u.

Each iteration approximately solves the damped least-squares problem

    δ = argmin_δ |r + J δ|² + λ |D δ|²,     D = diag(√diag(JᵀJ))  (Jacobi column scaling),

as ``z = argmin_z |r + (J D⁻¹) z|² + λ |z|²``, ``δ = D⁻¹ z``, with LSMR (Fong & Saunders,
*SIAM J. Sci. Comput.* 33, 2011; ``scipy.sparse.linalg.lsmr``, ``damp = √λ``) on the operator
``J D⁻¹``. ``J`` is never formed: at a point, one forward pass stores the layer values
``h_l`` and slopes ``σ'(z_l)`` (:class:`Linearisation`), and then

    J v   (forward mode)   dz_l = dh_l W_lᵀ + h_l dW_lᵀ + db_l,   dh_{l+1} = σ'(z_l) ⊙ dz_l,
    Jᵀ u  (reverse mode)   as the gradient, with the residuals replaced by ``u``,

each about one forward or backward pass: ``O(n_samples · n_params)`` per product against the
``O(n_samples · d_out · n_params²)`` of the dense QR of :mod:`.levenberg_marquardt`. ``diag(JᵀJ)``
comes from ``d_out`` reverse sweeps, one per output. The column scaling makes LM invariant to
the scale of each parameter, which is what keeps the Krylov solve useful on these badly scaled
problems (the first layer of an MNIST student sees pixel inputs, its output layer hidden values).

``λ`` follows the gain ratio (actual / predicted reduction) with Nielsen's rule, as in the dense
LM; the predicted reduction ``|r|² - |r + Jδ|²`` takes one more ``J v`` product (the Krylov
solve is inexact, so its own residual estimate is not used). A rejected step re-solves with a
larger ``λ``. The phase keeps no factorisation: its memory is the forward pass and a few
gradients.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.sparse.linalg import LinearOperator, lsmr

from ecflow.engines.native.derivatives import Architecture, _forward
from ecflow.engines.native.problem import PhaseOutcome, Problem, Tracker

__all__ = ["Linearisation", "matrix_free_lm"]

INNER_ITERATIONS = 50
"""LSMR iterations per damped step. Measured on an MNIST r 16 reconstruction (12 730
parameters, 50 000 residuals): 50 and 200 inner iterations reached RMSE 9.0e-6 and 9.5e-6
after 120 s, so the limit is the conditioning of the step, not the inner solve."""
_LAMBDA_INIT = 1e-3
"""Initial λ relative to the scaled problem (columns of unit norm)."""
_LAMBDA_FLOOR = 1e-20
_LAMBDA_CEIL = 1e16
"""λ above this means no step reduces the loss: the point is a minimum to working precision."""
_IMPROVEMENT = 1e-3
"""A step counts as progress for ``patience`` when the best loss drops by this relative amount."""
_SCALE_FLOOR = 1e-12
"""Columns of ``J`` with norm under this times the largest are scaled as if they had it: dead
neurons have zero columns, which must not blow the scaled step up."""


class Linearisation:
    """``J`` of a problem at one point, as products: ``J v``, ``Jᵀ u`` and ``diag(JᵀJ)``.

    Parameters
    ----------
    problem : Problem
    theta : ndarray of shape (problem.n_params,), float64
        The (free) parameters at which ``J`` is taken.

    Attributes
    ----------
    residuals : ndarray of shape (n_samples, d_out), float64
        ``ŷ - y`` at ``theta``.
    """

    def __init__(self, problem: Problem, theta: np.ndarray):
        self.problem = problem
        self.arch: Architecture = problem.arch
        self.params = self.arch.unpack(problem.full(theta))
        with np.errstate(over="ignore", invalid="ignore"):
            self.hs, self.dfs, _ = _forward(self.arch, self.params, problem.x)
        self.residuals = self.hs[-1] - problem.y

    def _full(self, v: np.ndarray) -> np.ndarray:
        p = self.problem
        if p.free is None:
            return v
        out = np.zeros(self.arch.n_params)
        out[p.free] = v
        return out

    def matvec(self, v: np.ndarray) -> np.ndarray:
        """``J v`` of shape (n_samples · d_out,), sample-major like the residuals."""
        tangents = self.arch.unpack(self._full(np.asarray(v, dtype=np.float64).ravel()))
        dh = None
        for l, ((W, _), (dW, db)) in enumerate(zip(self.params, tangents)):
            dz = self.hs[l] @ dW.T
            dz += db
            if dh is not None:
                dz += dh @ W.T
            dz *= self.dfs[l]
            dh = dz
        return dh.ravel()

    def rmatvec(self, u: np.ndarray) -> np.ndarray:
        """``Jᵀ u`` of shape (problem.n_params,) for ``u`` of shape (n_samples · d_out,)."""
        arch = self.arch
        delta = np.asarray(u, dtype=np.float64).reshape(self.residuals.shape) * self.dfs[-1]
        out = np.empty(arch.n_params)
        for l in range(arch.n_layers - 1, -1, -1):
            W = self.params[l][0]
            o, n_w = arch.offsets[l], W.size
            out[o : o + n_w] = (delta.T @ self.hs[l]).ravel()
            out[o + n_w : arch.offsets[l + 1]] = delta.sum(axis=0)
            if l > 0:
                delta = delta @ W
                delta *= self.dfs[l - 1]
        return self.problem.reduce(out)

    def column_norms_sq(self) -> np.ndarray:
        """``diag(JᵀJ)`` of shape (problem.n_params,): one reverse sweep per output."""
        arch = self.arch
        out = np.zeros(arch.n_params)
        n = self.residuals.shape[0]
        for k in range(arch.d_out):
            g = np.zeros((n, arch.d_out))
            g[:, k] = self.dfs[-1][:, k]
            for l in range(arch.n_layers - 1, -1, -1):
                W = self.params[l][0]
                o, n_w = arch.offsets[l], W.size
                g2 = g * g
                out[o : o + n_w] += (g2.T @ (self.hs[l] * self.hs[l])).ravel()
                out[o + n_w : arch.offsets[l + 1]] += g2.sum(axis=0)
                if l > 0:
                    g = g @ W
                    g *= self.dfs[l - 1]
        return self.problem.reduce(out)


def _scaled_operator(lin: Linearisation, inv_d: np.ndarray) -> LinearOperator:
    n_res = lin.residuals.size
    return LinearOperator(
        (n_res, inv_d.size),
        matvec=lambda z: lin.matvec(inv_d * np.ravel(z)),
        rmatvec=lambda u: inv_d * lin.rmatvec(np.ravel(u)),
        dtype=np.float64,
    )


def _damped_step(lin: Linearisation, op: LinearOperator, inv_d, lam: float, inner: int):
    """``(δ, predicted reduction of |r|²)`` of the damped step at ``λ``."""
    r = lin.residuals.ravel()
    z = lsmr(op, -r, damp=np.sqrt(lam), atol=0.0, btol=0.0, maxiter=inner)[0]
    delta = inv_d * z
    model = r + lin.matvec(delta)
    return delta, float(r @ r - model @ model)


def matrix_free_lm(
    problem: Problem,
    theta: np.ndarray,
    tracker: Tracker,
    *,
    deadline: float,
    max_steps: int,
    patience: int,
    inner: int = INNER_ITERATIONS,
) -> PhaseOutcome:
    """Run matrix-free LM from ``theta`` until a stopping rule fires (best point in ``tracker``).

    Parameters
    ----------
    problem : Problem
    theta : ndarray of shape (problem.n_params,), float64
        Starting point (not modified).
    tracker : Tracker
    deadline : float
        ``time.perf_counter()`` value at which the phase stops.
    max_steps, patience : int
        Trial-step budget, and trial steps without a relative improvement of ``_IMPROVEMENT``
        in the best loss after which the phase counts as stalled.
    inner : int, default=INNER_ITERATIONS
        LSMR iterations per damped step.

    Returns
    -------
    PhaseOutcome
        ``rule`` is one of ``loss_tol``, ``grad_tol``, ``patience``, ``stalled`` (no step
        reduces the loss even at the largest damping), ``max_seconds``, ``max_steps``, or the
        tracker's ``stopped`` / ``hopeless``.
    """
    nd = problem.n_residuals
    theta = theta.copy()
    lin = Linearisation(problem, theta)
    sse = float(np.vdot(lin.residuals, lin.residuals))
    if not np.isfinite(sse):
        return PhaseOutcome("stalled", 0)
    tracker.observe(theta, sse / nd)
    steps = since = 0
    ref, lam, nu = sse, _LAMBDA_INIT, 2.0
    while True:
        if sse / nd <= tracker.loss_tol:
            return PhaseOutcome("loss_tol", steps)
        if tracker.should_stop():
            return PhaseOutcome(tracker.stop_rule, steps)
        if time.perf_counter() >= deadline:
            return PhaseOutcome("max_seconds", steps)
        grad = (2.0 / nd) * lin.rmatvec(lin.residuals.ravel())
        if float(np.linalg.norm(grad)) <= tracker.grad_tol:
            return PhaseOutcome("grad_tol", steps)
        d = np.sqrt(lin.column_norms_sq())
        inv_d = 1.0 / np.maximum(d, _SCALE_FLOOR * (d.max() if d.size else 1.0) + 1e-300)
        op = _scaled_operator(lin, inv_d)
        while True:
            if steps >= max_steps:
                return PhaseOutcome("max_steps", steps)
            if time.perf_counter() >= deadline:
                return PhaseOutcome("max_seconds", steps)
            steps += 1
            since += 1
            delta, pred = _damped_step(lin, op, inv_d, lam, inner)
            trial = theta + delta
            sse_new = problem.sum_sq(trial)
            actual = sse - sse_new
            accepted = np.isfinite(sse_new) and actual > 0.0 and pred > 0.0
            if accepted:
                tracker.observe(trial, sse_new / nd)
                rho = actual / pred
                lam = max(lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), _LAMBDA_FLOOR)
                nu = 2.0
                theta, sse = trial, sse_new
                if sse < ref * (1.0 - _IMPROVEMENT):
                    ref, since = sse, 0
                lin = Linearisation(problem, theta)
            else:
                lam *= nu
                nu *= 2.0
            if since >= patience:
                return PhaseOutcome("patience", steps)
            if accepted:
                break
            if lam > _LAMBDA_CEIL:
                return PhaseOutcome("stalled", steps)
