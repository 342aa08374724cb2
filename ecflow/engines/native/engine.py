"""The native engine: schedules of Levenberg–Marquardt, gradient flow and scipy optimizers.

Schedules (:class:`~ecflow.engines.base.Schedule`):

``lm-first``
    LM from the initial point, first on an evenly spread subset of the samples (when the data
    has more than twice ``max(4000, 40 · n_params)`` samples; it stops at a subset loss of
    1e-24, a stall, or 80 % of the budget) and then on all of them. Only if LM stalls above
    ``loss_tol``: the gradient flow from the best point for
    at most ``flow_seconds``, then the second-phase optimizer (``config.optimizer``) for at most
    ``polish_seconds``; this flow + polish round repeats while time is left and each round
    lowers the best loss.
``flow-first``
    The paper's order (A.6.1): the gradient flow for at most ``flow_seconds``, then the
    second-phase optimizer with the rest of the budget.

When the whole budget ``max_seconds`` is shorter than ``flow_seconds + polish_seconds``, the
flow gets the same share of what is left as ``flow_seconds`` has of the sum, so the polish
always runs. A student whose dense Jacobian QR / Hessian would exceed ``memory_budget_mb``
(or past ``first_order_above``) is trained by L-BFGS on the exact gradient only, first on all
parameters, then on the hidden ones with the output layer solved by linear least squares at
each evaluation (variable projection, :mod:`.variable_projection`), and the result's notes say
so.
"""

from __future__ import annotations

import time

import numpy as np
from threadpoolctl import threadpool_limits

from ecflow.engines.base import (
    NEAR_ZERO_LOSS,
    Optimizer,
    Schedule,
    TrainConfig,
    TrainResult,
    TrainStatus,
    check_free,
    judge_training,
    loss_floor,
)
from ecflow.engines.native.derivatives import Architecture
from ecflow.engines.native.gradient_flow import gradient_flow
from ecflow.engines.native.levenberg_marquardt import levenberg_marquardt
from ecflow.engines.native.problem import (
    PhaseOutcome,
    Problem,
    StallRule,
    Tracker,
    dense_bytes,
)
from ecflow.engines.native.quasi_newton import minimize_phase
from ecflow.engines.native.variable_projection import OutputProjection
from ecflow.errors import InputError, InputTypeError
from ecflow.networks import MLP, check_xy

__all__ = ["NativeEngine"]

_ROUND_GAIN = 10.0
"""A flow + polish round of ``lm-first`` is repeated only if the previous one lowered the best
loss at least this many times: rounds that gain less do not reach zero loss in the time a
student has (restarting them at MSE 1e-25 for a 0.1 % gain is what made students run their
whole budget)."""
_MIN_PHASE_SECONDS = 0.05
"""A phase with less time than this left is not started."""
_STALL_WARMUP = 10.0
_STALL_WARMUP_SHARE = 0.2
"""The stall rule judges nothing before min(_STALL_WARMUP s, _STALL_WARMUP_SHARE of the budget)."""
_MULTITHREAD_PARAMS = 1000
"""Below this many parameters training pins BLAS to one thread."""
_SUBSET_SAMPLES_PER_PARAM = 10
_SUBSET_MIN_SAMPLES = 4000
"""The first LM phase of ``lm-first`` runs on an evenly spread subset of
max(_SUBSET_MIN_SAMPLES, _SUBSET_SAMPLES_PER_PARAM · n_params) samples when the data has at
least twice that many: far from a minimum the step direction does not need all 30k samples,
and each iteration costs in proportion to n_samples. The full data then takes over from the
subset's best point (near a zero-loss point of realisable data the two agree). Ten samples
per parameter still pin the function down (a 577-parameter student fitting 5 770 generic
points of a realisable teacher); at 40 per parameter students above 375 parameters got no
subset at all from 30k samples, and a 577-parameter one was at RMSE 3.5e-3 after 60 s where
the subset brought it to 1e-6 in 27-50 s (teachers 0 and 1 of the large-student benchmark)."""
_SUBSET_SHARE = 0.8
_SUBSET_LOSS = 1e-24
"""Subset loss at which the full data takes over."""

_VARPRO_WARMUP_SHARE = 0.25
"""Share of a first-order training given to plain L-BFGS before the variable-projection loss
takes over: from Glorot init the projected loss alone stalled digits r 16 ρ 4 students (RMSE
1.1e-2 and 1.6e-3 after 120 s, plain L-BFGS 5.2e-4 and 7.5e-4), a quarter of plain L-BFGS
first brought them to 1.3e-4 and 2.8e-4, and cost a fine-tune little (7.2e-9 against 6.6e-9
for projection throughout, plain L-BFGS 3.9e-8; ``engine.json`` section ``varpro``)."""
_FIRST_ORDER_NOTE = (
    "L-BFGS on the exact gradient, the output layer solved by least squares after a warm-up "
    "(variable projection)"
)

_STATUS = {
    "loss_tol": TrainStatus.CONVERGED_LOSS,
    "grad_tol": TrainStatus.CONVERGED_GRAD,
    "max_seconds": TrainStatus.MAX_TIME,
    "max_steps": TrainStatus.MAX_STEPS,
    "patience": TrainStatus.STALLED,
    "stalled": TrainStatus.STALLED,
    "hopeless": TrainStatus.STALLED,
    "stopped": TrainStatus.STOPPED,
}
_CONVERGED = ("loss_tol", "grad_tol")
_FINAL = ("loss_tol", "grad_tol", "hopeless", "stopped")
"""Phase outcomes after which no other phase runs."""


def _check_inputs(x, y, init, config, progress, stop):
    if not isinstance(init, MLP):
        raise InputTypeError(f"init must be an MLP, got {type(init).__name__}")
    if not isinstance(config, TrainConfig):
        raise InputTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if progress is not None and not callable(progress):
        raise InputTypeError(f"progress must be callable or None, got {type(progress).__name__}")
    if stop is not None and not callable(stop):
        raise InputTypeError(f"stop must be callable or None, got {type(stop).__name__}")
    x, y = check_xy(x, y)
    if x.shape[1] != init.d_in or y.shape[1] != init.d_out:
        raise InputError(
            f"pairs x {x.shape}, y {y.shape} do not match the initial network "
            f"{init.d_in} -> {init.d_out}"
        )
    return x, y


class NativeEngine:
    """NumPy/SciPy Float64 engine (see the module docstring for the schedules)."""

    name = "native"

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        init: MLP,
        config: TrainConfig,
        *,
        progress=None,
        stop=None,
        free=None,
    ) -> TrainResult:
        """Train ``init`` on pairs by minimising the MSE.

        Parameters
        ----------
        x : ndarray of shape (n_samples, d_in), float64
        y : ndarray of shape (n_samples, d_out), float64
        init : MLP
            Initial network (not modified).
        config : TrainConfig
        progress : callable, optional
            ``progress(elapsed_seconds, best_loss)``, called about every 0.25 s (during the
            ``lm-first`` phase on a subset of the samples, with the subset's loss).
        stop : callable, optional
            Cooperative stop flag, polled about every 0.2 s: when ``stop()`` is True training
            ends with ``STOPPED`` and the best point so far.
        free : ndarray of shape (init.n_params,), bool, optional
            Trainable parameters in ``init.flatten()`` order (:func:`ecflow.networks.parameter_mask`
            builds one by layer and part); those where it is False keep their initial values
            bit for bit. Every phase then works on the free parameters only: the Jacobian
            columns, gradient and Hessian are restricted to them. None: all train.

        Returns
        -------
        TrainResult
            The best network seen, with its loss, gradient norm (over the free parameters),
            status and history.
        """
        x, y = _check_inputs(x, y, init, config, progress, stop)
        free = check_free(free, init.n_params)
        if init.n_params < _MULTITHREAD_PARAMS:
            # QRs of ~100-column blocks run slower on several BLAS threads than on one, and
            # collapse when the cores are shared with other trainings.
            with threadpool_limits(limits=1, user_api="blas"):
                return self._train(x, y, init, config, progress, stop, free)
        return self._train(x, y, init, config, progress, stop, free)

    def _train(self, x, y, init, config, progress, stop, free=None) -> TrainResult:
        arch = Architecture.of(init)
        problem = Problem(arch, x, y, free, init.flatten())
        # the optimisers and the tracker work on the free parameters only
        theta0 = problem.reduce(init.flatten())
        loss0 = problem.sum_sq(theta0) / problem.n_residuals
        if not np.isfinite(loss0):
            raise InputError("the initial network's outputs overflow on x (loss is not finite)")
        stall = None
        if config.stall_factor > 0:
            stall = StallRule(
                goal=max(config.goal, NEAR_ZERO_LOSS),
                deadline=config.total_seconds,
                factor=config.stall_factor,
                elapsed_factor=config.creep_factor,
                warmup=min(_STALL_WARMUP, _STALL_WARMUP_SHARE * config.total_seconds),
            )
        tracker = Tracker(
            theta0, loss0, loss_tol=config.goal, grad_tol=config.grad_tol, progress=progress,
            stop=stop, stall=stall,
        )
        run = _Run(problem, tracker, config)
        notes = run.schedule(theta0)
        history = tracker.finish()
        best = tracker.best_theta
        loss, grad = problem.loss_grad(best)
        grad_norm = float(np.linalg.norm(grad))
        phase, outcome = run.last
        status, rule = judge_training(loss, grad_norm, config, run.floor, outcome.rule)
        if status is None:
            rule = rule if rule not in _CONVERGED else "stalled"
            status = _STATUS[rule]
        return TrainResult(
            network=init.unflatten(problem.full(best)),
            loss=float(loss),
            rmse=float(np.sqrt(loss)),
            grad_norm=grad_norm,
            status=status,
            stopped_by=f"{phase}: {rule}",
            steps=run.steps,
            seconds=tracker.elapsed(),
            history=history,
            engine=self.name,
            notes=tuple(notes),
        )


class _Run:
    """State of one training: deadlines, the phases run so far and their steps."""

    def __init__(self, problem: Problem, tracker: Tracker, config: TrainConfig):
        self.problem = problem
        self.tracker = tracker
        self.config = config
        self.total_deadline = tracker.start + config.total_seconds
        self.floor = loss_floor(problem.y, problem.arch.sizes)
        self.steps = 0
        self.last: tuple[str, PhaseOutcome] = ("none", PhaseOutcome("stalled", 0))

    def left(self) -> float:
        return self.total_deadline - time.perf_counter()

    def _record(self, phase: str, outcome: PhaseOutcome) -> PhaseOutcome:
        self.steps += outcome.steps
        self.last = (phase, outcome)
        return outcome

    def lm(self, theta, deadline) -> PhaseOutcome:
        c = self.config
        return self._record(
            "lm",
            levenberg_marquardt(
                self.problem, theta, self.tracker,
                deadline=deadline, max_steps=c.max_steps, patience=c.patience,
                normal_above=c.normal_above,
            ),
        )

    def flow(self, theta, deadline) -> PhaseOutcome:
        c = self.config
        return self._record(
            "flow",
            gradient_flow(
                self.problem, theta, self.tracker,
                method=c.ode_method, deadline=deadline, max_steps=c.max_steps,
            ),
        )

    def polish(self, method: str, theta, deadline) -> PhaseOutcome:
        if method == Optimizer.LM.value:
            return self.lm(theta, deadline)
        return self._record(
            method,
            minimize_phase(
                self.problem, theta, self.tracker,
                method=method, deadline=deadline, max_steps=self.config.max_steps,
            ),
        )

    def _flow_deadline(self) -> float:
        c = self.config
        share = c.flow_seconds / max(c.flow_seconds + c.polish_seconds, 1e-300)
        return time.perf_counter() + min(c.flow_seconds, share * self.left())

    def _polish_deadline(self) -> float:
        return min(self.total_deadline, time.perf_counter() + self.config.polish_seconds)

    def _subset_lm(self, theta0) -> tuple[np.ndarray, str | None]:
        """LM on a subset of the samples; returns its best point (``theta0`` when skipped) and
        the rule that ended it when that ends the whole training (``stopped``, ``hopeless``)."""
        p = self.problem
        n = p.x.shape[0]
        n_sub = max(_SUBSET_MIN_SAMPLES, _SUBSET_SAMPLES_PER_PARAM * p.arch.n_params)
        if n < 2 * n_sub:
            return theta0, None
        idx = np.linspace(0, n - 1, n_sub).round().astype(np.int64)
        sub = p.subset(idx)
        # progress shows the subset's loss meanwhile (an estimate of the full loss)
        tracker = Tracker(
            theta0, sub.sum_sq(theta0) / sub.n_residuals,
            loss_tol=max(self.config.goal, _SUBSET_LOSS), grad_tol=self.config.grad_tol,
            progress=self.tracker.progress, start=self.tracker.start,
            stop=self.tracker.stop_flag, stall=self.tracker.stall, trend=self.tracker.trend,
        )
        # keep a fifth of the budget for the full data in case the subset never settles
        deadline = tracker.start + _SUBSET_SHARE * (self.total_deadline - tracker.start)
        out = levenberg_marquardt(
            sub, theta0, tracker, deadline=deadline,
            max_steps=self.config.max_steps, patience=self.config.patience,
            normal_above=self.config.normal_above,
        )
        self.steps += out.steps
        self.tracker.improvements += tracker.improvements
        return tracker.best_theta, (out.rule if out.rule in ("stopped", "hopeless") else None)

    def lm_first(self, theta0) -> None:
        theta0, ended = self._subset_lm(theta0)
        if ended is not None:
            # the subset's best point is the training's result; its loss on all samples
            self.tracker.observe(theta0, self.problem.sum_sq(theta0) / self.problem.n_residuals)
            self.tracker.stop_rule = ended
            self._record("lm-subset", PhaseOutcome(ended, 0))
            return
        out = self.lm(theta0, self.total_deadline)
        # a stall at the rounding floor is convergence: no flow round can improve on it
        while (
            out.rule in ("patience", "stalled")
            and self.left() > _MIN_PHASE_SECONDS
            and self.tracker.best_loss > self.floor
        ):
            before = self.tracker.best_loss
            if self.config.flow_seconds > 0:
                out = self.flow(self.tracker.best_theta, self._flow_deadline())
                if out.rule in _FINAL:
                    return
            if self.left() <= _MIN_PHASE_SECONDS:
                return
            out = self.polish(
                self.config.optimizer.value, self.tracker.best_theta, self._polish_deadline()
            )
            if self.tracker.best_loss * _ROUND_GAIN > before:
                return

    def schedule(self, theta0) -> list[str]:
        """Train from ``theta0`` by the schedule the size allows; returns notes for the user."""
        c, p = self.config, self.problem
        need = dense_bytes(p.arch, p.x.shape[0]) / 2**20
        size = float(theta0.size) * p.n_residuals
        if need > c.memory_budget_mb:
            self.first_order(theta0)
            return [
                f"{p.arch.n_params} parameters need about {need:.0f} MB for the dense Jacobian "
                f"QR and Hessian, over memory_budget_mb = {c.memory_budget_mb:g}: trained "
                f"with {_FIRST_ORDER_NOTE} instead of LM / gradient flow"
            ]
        if c.first_order_above is not None and size > c.first_order_above:
            self.first_order(theta0)
            return [
                f"{theta0.size} parameters x {p.n_residuals} residuals = {size:.2g}, over "
                f"first_order_above = {c.first_order_above:g} (a dense LM step would take "
                f"too long): trained with {_FIRST_ORDER_NOTE}"
            ]
        if c.schedule is Schedule.LM_FIRST:
            self.lm_first(theta0)
        else:
            self.flow_first(theta0)
        return []

    def first_order(self, theta0) -> None:
        """Plain L-BFGS for :data:`_VARPRO_WARMUP_SHARE` of the budget, then L-BFGS on the
        loss reduced by variable projection of the output layer (plain L-BFGS throughout
        where the output layer is not linear or partly frozen)."""
        if OutputProjection.of(self.problem) is None:
            self.polish("l-bfgs", theta0, self.total_deadline)
            return
        start = self.tracker.start
        warmup = start + _VARPRO_WARMUP_SHARE * (self.total_deadline - start)
        out = self.polish("l-bfgs", theta0, warmup)
        if out.rule in _FINAL or self.left() <= _MIN_PHASE_SECONDS:
            return
        self.polish("l-bfgs-varpro", self.tracker.best_theta, self.total_deadline)

    def flow_first(self, theta0) -> None:
        if self.config.flow_seconds > 0:
            out = self.flow(theta0, self._flow_deadline())
            if out.rule in _FINAL:
                return
        if self.left() > _MIN_PHASE_SECONDS:
            self.polish(self.config.optimizer.value, self.tracker.best_theta, self.total_deadline)
