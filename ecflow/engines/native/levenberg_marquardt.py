"""Levenberg–Marquardt on the residuals, each step from a QR then an SVD of the Jacobian.

Each iteration solves the damped least-squares problem

    δ = argmin_δ |r + J δ|² + λ |δ|²

without forming the normal equations ``(JᵀJ + λ I) δ = -Jᵀ r``: near a zero-loss point the
condition number of ``JᵀJ`` (~1e15 and more) is the square of that of ``J``, and solving with it
stalls at an RMSE of about 1e-9. Instead ``[J | r] = Q [[R_J, q], [0, ρ]]`` is built in row
chunks (:func:`~ecflow.engines.native.derivatives._jacobian_qr`), ``R_J = U S Vᵀ`` is
decomposed, and

    δ(λ) = -V diag(s / (s² + λ)) Uᵀ q,
    predicted reduction of |r|²:  Σ_i (Uᵀq)_i² (1 - (λ / (s_i² + λ))²).

One factorisation serves every trial ``λ`` at a point, so a rejected step costs one forward pass.
``λ`` follows the gain ratio (actual / predicted reduction) with Nielsen's rule (Madsen, Nielsen
& Tingleff, *Methods for non-linear least squares problems*, 2004, §3.2) and never drops below
``1e-26 · s_0²``, which keeps the step bounded along directions the data does not determine
(singular values under ~1e-13 · s_0, at the level of rounding in ``R``).
"""

from __future__ import annotations

import time
import numpy as np
import scipy.linalg

from ecflow.engines.native.problem import PhaseOutcome, Problem, Tracker

__all__ = ["levenberg_marquardt"]

_LAMBDA_FLOOR = 1e-26
"""λ ≥ _LAMBDA_FLOOR · s_0² (relative to the largest singular value of J)."""
_LAMBDA_INIT = 1e-3
"""Initial λ = _LAMBDA_INIT · s_0² (Nielsen's τ)."""
_LAMBDA_CEIL = 1e16
"""λ above _LAMBDA_CEIL · s_0² means no step can reduce the loss: the point is a minimum to
working precision."""
_IMPROVEMENT = 1e-3
"""A step counts as progress for ``patience`` when the best loss drops by this relative amount."""


def _svd(R: np.ndarray):
    try:
        return scipy.linalg.svd(R, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    except np.linalg.LinAlgError:  # gesdd rarely fails to converge; gesvd is slower but robust
        return scipy.linalg.svd(R, full_matrices=False, check_finite=False, lapack_driver="gesvd")


_NORMAL_LAMBDA_FLOOR = 1e-15
"""λ ≥ _NORMAL_LAMBDA_FLOOR · s_0² for steps from the normal equations: ``JᵀJ`` carries rounding
of about ``eps · s_0²``, so smaller eigenvalues are noise and must stay damped."""
_NORMAL_RESOLVE = 1e-8
"""Singular values below _NORMAL_RESOLVE · s_0 are not resolved by ``JᵀJ`` (they square to
rounding); their components of the step are dropped."""


def _factor_qr(problem: Problem, theta: np.ndarray, out_of_time):
    """``(Vᵀ, s, g, Jᵀr)`` at ``theta`` from the chunked QR of ``[J | r]`` (the columns
    of the free parameters only, when some are frozen)."""
    P = problem.n_params
    R = problem.jacobian_qr(theta, out_of_time)
    if R is None:
        return None
    RJ, q = R[:P, :P], R[:P, P]
    U, s, Vt = _svd(RJ)
    return Vt, s, U.T @ q, RJ.T @ q


def _factor_normal(problem: Problem, theta: np.ndarray, out_of_time):
    """The same quantities from the eigendecomposition of ``JᵀJ`` (no QR: ~4x cheaper)."""
    out = problem.jacobian_normal(theta, out_of_time)
    if out is None:
        return None
    G, Jtr, _ = out
    w, V = np.linalg.eigh(G)
    s = np.sqrt(np.clip(w, 0.0, None))
    a = V.T @ Jtr
    resolved = s > _NORMAL_RESOLVE * (s.max() if s.size else 0.0)
    g = np.where(resolved, a / np.where(resolved, s, 1.0), 0.0)
    return V.T, s, g, Jtr


def levenberg_marquardt(
    problem: Problem,
    theta: np.ndarray,
    tracker: Tracker,
    *,
    deadline: float,
    max_steps: int,
    patience: int,
    normal_above: float = 0.0,
) -> PhaseOutcome:
    """Run LM from ``theta`` until a stopping rule fires; the best point is kept by ``tracker``.

    Parameters
    ----------
    problem : Problem
        Pairs and architecture.
    theta : ndarray of shape (problem.n_params,), float64
        Starting point (not modified).
    tracker : Tracker
        Records the best point, the history and reports progress.
    deadline : float
        ``time.perf_counter()`` value at which the phase stops.
    max_steps, patience : int
        Trial-step budget, and trial steps without a relative improvement of ``_IMPROVEMENT``
        in the best loss after which the phase counts as stalled.
    normal_above : float, default=0.0
        While the MSE is above this value, steps come from the normal equations ``JᵀJ``
        (one GEMM instead of a QR per step); below it, or once they stop making progress,
        from the QR. Their precision (RMSE ~1e-9) is enough far from zero loss.

    Returns
    -------
    PhaseOutcome
        ``rule`` is one of ``loss_tol``, ``grad_tol``, ``patience``, ``stalled`` (no step
        reduces the loss even at the largest damping), ``max_seconds``, ``max_steps``.
    """
    nd = problem.n_residuals
    theta = theta.copy()
    sse = problem.sum_sq(theta)
    tracker.observe(theta, sse / nd)
    steps = 0
    since = 0
    ref = sse
    lam = None
    nu = 2.0
    normal = normal_above > 0.0 and sse / nd > normal_above

    def out_of_time() -> bool:
        return time.perf_counter() >= deadline

    def leave_normal() -> bool:
        # a stall of the normal equations may be their rounding: hand over to the QR
        nonlocal normal, since, lam, ref
        if not normal:
            return False
        normal, since, lam, ref = False, 0, None, sse
        return True

    while True:
        if sse / nd <= tracker.loss_tol:
            return PhaseOutcome("loss_tol", steps)
        if tracker.should_stop():
            return PhaseOutcome(tracker.stop_rule, steps)
        if out_of_time():
            return PhaseOutcome("max_seconds", steps)
        if normal and sse / nd <= normal_above:
            leave_normal()
        factors = (_factor_normal if normal else _factor_qr)(problem, theta, out_of_time)
        if factors is None:
            return PhaseOutcome("max_seconds", steps)
        Vt, s, g, Jtr = factors
        grad = (2.0 / nd) * Jtr
        if float(np.linalg.norm(grad)) <= tracker.grad_tol:
            if leave_normal():
                continue
            return PhaseOutcome("grad_tol", steps)
        s0sq = float(np.max(s) ** 2) if s.size and np.max(s) > 0 else 1.0
        floor = (_NORMAL_LAMBDA_FLOOR if normal else _LAMBDA_FLOOR) * s0sq
        g2 = g * g
        s2 = s * s
        if lam is None:
            lam = _LAMBDA_INIT * s0sq
        lam = max(lam, floor)
        # Trial steps at this point until one is accepted (new factorisation) or a rule fires.
        while True:
            if steps >= max_steps:
                return PhaseOutcome("max_steps", steps)
            if out_of_time():
                return PhaseOutcome("max_seconds", steps)
            steps += 1
            since += 1
            coef = s / (s2 + lam)
            delta = -(Vt.T @ (coef * g))
            pred = float(np.sum(g2 * (1.0 - (lam / (s2 + lam)) ** 2)))
            trial = theta + delta
            sse_new = problem.sum_sq(trial)
            actual = sse - sse_new
            accepted = np.isfinite(sse_new) and actual > 0.0 and pred > 0.0
            if accepted:
                tracker.observe(trial, sse_new / nd)
                rho = actual / pred
                lam = max(lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), floor)
                nu = 2.0
                theta, sse = trial, sse_new
                if sse < ref * (1.0 - _IMPROVEMENT):
                    ref, since = sse, 0
            else:
                lam *= nu
                nu *= 2.0
            if since >= patience:
                if leave_normal():
                    break
                return PhaseOutcome("patience", steps)
            if accepted:
                break
            if lam > _LAMBDA_CEIL * s0sq:
                if leave_normal():
                    break
                return PhaseOutcome("stalled", steps)
