"""Gradient flow ``dθ/dt = -∇L(θ)`` integrated by a stiff implicit solver (paper A.6.1).

The flow follows the steepest-descent path of the MSE exactly, through saddles and plateaus
that a line-search method might jump across; MLPGradientFlow.jl integrates it with KenCarp58,
here scipy's ``solve_ivp`` (BDF by default, Radau or LSODA) uses the exact Hessian as the
Jacobian of the vector field, ``∂(-∇L)/∂θ = -∇²L``. Near zero loss the vector field is
extremely stiff (Hessian eigenvalues span ~15 decades), which is why an implicit method is used.

The phase is time-budgeted rather than integrated to a fixed ``t``: the right-hand side raises
:class:`~ecflow.engines.native.problem.StopPhase` at the deadline, and the best point of every
evaluation (kept by the tracker) is the phase's result.
"""

from __future__ import annotations

import numpy as np
from scipy.integrate import solve_ivp

from ecflow.engines.base import OdeMethod
from ecflow.engines.native.problem import Objective, PhaseOutcome, Problem, StopPhase, Tracker

__all__ = ["gradient_flow"]

_T_END = 1e15
"""Flow time horizon; gradient-flow time to converge grows like 1/(smallest Hessian eigenvalue)."""
_RTOL = 1e-6
_ATOL = 1e-9
"""The flow only has to deliver a point in the basin of a minimum; the polish phase that
follows converges to machine precision, so moderate tolerances keep the steps long."""


def gradient_flow(
    problem: Problem,
    theta: np.ndarray,
    tracker: Tracker,
    *,
    method: OdeMethod,
    deadline: float,
    max_steps: int,
) -> PhaseOutcome:
    """Integrate the gradient flow from ``theta`` until the deadline or a stopping rule.

    Parameters
    ----------
    problem : Problem
    theta : ndarray of shape (problem.n_params,), float64
    tracker : Tracker
    method : OdeMethod
    deadline : float
        ``time.perf_counter()`` value at which the phase stops.
    max_steps : int
        Budget of right-hand-side evaluations.

    Returns
    -------
    PhaseOutcome
        ``rule``: ``loss_tol``, ``grad_tol``, ``max_seconds``, ``max_steps``, or ``stalled`` when
        the integration reached its time horizon or the solver gave up.
    """
    fun = Objective(problem, tracker, deadline, max_steps)

    def rhs(_t, th):
        value, grad = fun(th)
        if float(np.linalg.norm(grad)) <= tracker.grad_tol and np.isfinite(value):
            raise StopPhase("grad_tol")
        return -grad

    def jac(_t, th):
        fun.check_time()
        return -problem.hessian(th)

    try:
        solve_ivp(
            rhs, (0.0, _T_END), theta.copy(), method=method.value, jac=jac, rtol=_RTOL, atol=_ATOL
        )
    except StopPhase as stop:
        return PhaseOutcome(stop.rule, fun.calls)
    return PhaseOutcome("stalled", fun.calls)
