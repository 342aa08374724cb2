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
from dataclasses import dataclass

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
    state = _State(theta, sse, ref=sse, normal=normal_above > 0.0 and sse / nd > normal_above)

    def out_of_time() -> bool:
        return time.perf_counter() >= deadline

    while True:
        if state.sse / nd <= tracker.loss_tol:
            return PhaseOutcome("loss_tol", state.steps)
        if tracker.should_stop():
            return PhaseOutcome(tracker.stop_rule, state.steps)
        if out_of_time():
            return PhaseOutcome("max_seconds", state.steps)
        if state.normal and state.sse / nd <= normal_above:
            state.leave_normal()
        factors = (_factor_normal if state.normal else _factor_qr)(
            problem, state.theta, out_of_time
        )
        if factors is None:
            return PhaseOutcome("max_seconds", state.steps)
        grad = (2.0 / nd) * factors[3]
        if float(np.linalg.norm(grad)) <= tracker.grad_tol:
            if state.leave_normal():
                continue
            return PhaseOutcome("grad_tol", state.steps)
        rule = _trial_steps(problem, state, factors, tracker, out_of_time, max_steps, patience)
        if rule is not None:
            return PhaseOutcome(rule, state.steps)


@dataclass(eq=False)
class _State:
    """The iteration of :func:`levenberg_marquardt`: the point and its SSE, the reference SSE
    of the patience count, the damping ``lam`` and its growth ``nu``, and whether steps come
    from the normal equations."""

    theta: np.ndarray
    sse: float
    ref: float
    normal: bool
    steps: int = 0
    since: int = 0
    lam: float | None = None
    nu: float = 2.0

    def leave_normal(self) -> bool:
        # a stall of the normal equations may be their rounding: hand over to the QR
        if not self.normal:
            return False
        self.normal, self.since, self.lam, self.ref = False, 0, None, self.sse
        return True


def _trial_steps(problem: Problem, state: _State, factors, tracker: Tracker, out_of_time,
                 max_steps: int, patience: int) -> str | None:
    """Trial steps at this point until one is accepted or the normal equations hand over (None:
    a new factorisation), or a stopping rule fires (its name)."""
    Vt, s, g, _ = factors
    nd = problem.n_residuals
    s0sq = float(np.max(s) ** 2) if s.size and np.max(s) > 0 else 1.0
    floor = (_NORMAL_LAMBDA_FLOOR if state.normal else _LAMBDA_FLOOR) * s0sq
    g2 = g * g
    s2 = s * s
    if state.lam is None:
        state.lam = _LAMBDA_INIT * s0sq
    state.lam = max(state.lam, floor)
    while True:
        if state.steps >= max_steps:
            return "max_steps"
        if out_of_time():
            return "max_seconds"
        state.steps += 1
        state.since += 1
        lam = state.lam
        coef = s / (s2 + lam)
        delta = -(Vt.T @ (coef * g))
        pred = float(np.sum(g2 * (1.0 - (lam / (s2 + lam)) ** 2)))
        trial = state.theta + delta
        sse_new = problem.sum_sq(trial)
        actual = state.sse - sse_new
        accepted = np.isfinite(sse_new) and actual > 0.0 and pred > 0.0
        if accepted:
            tracker.observe(trial, sse_new / nd)
            rho = actual / pred
            state.lam = max(lam * max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3), floor)
            state.nu = 2.0
            state.theta, state.sse = trial, sse_new
            if state.sse < state.ref * (1.0 - _IMPROVEMENT):
                state.ref, state.since = state.sse, 0
        else:
            state.lam *= state.nu
            state.nu *= 2.0
        if state.since >= patience:
            return None if state.leave_normal() else "patience"
        if accepted:
            return None
        if state.lam > _LAMBDA_CEIL * s0sq:
            return None if state.leave_normal() else "stalled"
