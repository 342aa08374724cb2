"""Second-phase optimizers from ``scipy.optimize.minimize`` on the exact loss derivatives.

* ``trust-exact`` — Newton trust region on the exact Hessian (MLPGradientFlow.jl's
  ``NewtonTrustRegion``, used by the paper for ρ = 1 students, A.6.1).
* ``bfgs`` — BFGS on the exact gradient (the paper's choice for ρ ≥ 2).
* ``l-bfgs`` — L-BFGS-B on the exact gradient of all parameters.
* ``l-bfgs-varpro`` — L-BFGS-B on the reduced loss of the hidden parameters, the output layer
  solved by linear least squares at every evaluation (:mod:`.variable_projection`); plain
  ``l-bfgs`` where the output layer is not linear or partly frozen.

Each runs under a deadline and a call budget enforced inside the objective; the tracker keeps
the best point seen, so a phase interrupted mid-line-search still returns its best.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from ecflow.engines.native.problem import Objective, PhaseOutcome, Problem, StopPhase, Tracker
from ecflow.engines.native.variable_projection import OutputProjection, ProjectedObjective

__all__ = ["METHODS", "minimize_phase"]

_LBFGS_MEMORY = 30
"""Correction pairs kept by L-BFGS (scipy's default of 10 is short for ill-conditioned losses)."""

METHODS = {
    "trust-exact": "trust-exact",
    "bfgs": "BFGS",
    "l-bfgs": "L-BFGS-B",
    "l-bfgs-varpro": "L-BFGS-B",
}
"""Phase name -> scipy method."""


def minimize_phase(
    problem: Problem,
    theta: np.ndarray,
    tracker: Tracker,
    *,
    method: str,
    deadline: float,
    max_steps: int,
) -> PhaseOutcome:
    """Minimise the loss from ``theta`` with one of :data:`METHODS`.

    Parameters
    ----------
    problem : Problem
    theta : ndarray of shape (problem.n_params,), float64
    tracker : Tracker
    method : {"trust-exact", "bfgs", "l-bfgs", "l-bfgs-varpro"}
    deadline : float
        ``time.perf_counter()`` value at which the phase stops.
    max_steps : int
        Iteration budget (and objective-call budget).

    Returns
    -------
    PhaseOutcome
        ``rule``: ``loss_tol``, ``grad_tol``, ``max_seconds``, ``max_steps`` or ``stalled``
        (scipy stopped without meeting a tolerance, e.g. precision loss in the line search).
    """
    projection = OutputProjection.of(problem) if method == "l-bfgs-varpro" else None
    if projection is None:
        fun = Objective(problem, tracker, deadline, max_steps)
    else:
        fun = ProjectedObjective(problem, tracker, deadline, max_steps, projection)
    kwargs: dict = {"jac": True}
    options: dict = {"maxiter": max_steps}
    if method == "trust-exact":

        def hess(th):
            fun.check_time()
            return problem.hessian(th)

        kwargs["hess"] = hess
        options["gtol"] = tracker.grad_tol
    elif method == "bfgs":
        options.update(gtol=tracker.grad_tol, norm=2.0)
    elif method in ("l-bfgs", "l-bfgs-varpro"):
        # ftol = 0: scipy's relative test divides by max(|f|, 1), which at small losses would
        # stop at once.
        options.update(ftol=0.0, gtol=tracker.grad_tol, maxfun=max_steps, maxcor=_LBFGS_MEMORY)
    else:
        raise ValueError(f"unknown method {method!r}; expected one of: {', '.join(METHODS)}")
    try:
        res = minimize(fun, fun.start(theta), method=METHODS[method], options=options, **kwargs)
    except StopPhase as stop:
        return PhaseOutcome(stop.rule, fun.calls)
    grad_norm = float(np.linalg.norm(problem.loss_grad(tracker.best_theta)[1]))
    if grad_norm <= tracker.grad_tol:
        return PhaseOutcome("grad_tol", fun.calls)
    if getattr(res, "nit", 0) >= max_steps:
        return PhaseOutcome("max_steps", fun.calls)
    return PhaseOutcome("stalled", fun.calls)
