"""The training problem (pairs + architecture) and the tracker of the best point seen.

Both are private plumbing shared by the phases of the native engine: :class:`Problem` binds the
derivative kernels to one data set and picks chunk sizes; :class:`Tracker` keeps the lowest-loss
parameters, the ``(elapsed, loss)`` history and calls the user's ``progress`` callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ecflow.engines.native.derivatives import (
    Architecture,
    _hessian,
    _hessian_row_bytes,
    _hessian_rows,
    _jacobian_normal,
    _jacobian_qr,
    _loss_grad,
    _sum_sq_residuals,
)

__all__ = ["Problem", "Tracker", "StallRule", "StopPhase", "PhaseOutcome", "dense_bytes", "Objective"]

_BYTES = 8
_QR_CHUNK_BYTES = 48 * 2**20
"""Target size of one chunk of Jacobian rows in the chunked QR."""
_QR_CHUNK_ROWS = 4096


def _qr_chunk_rows(P1: int) -> int:
    """Jacobian rows per chunk of the QR: about ``_QR_CHUNK_ROWS`` keep the stacked chunk in
    cache; at least ``2 (P+1)`` so that each factor update makes progress through the data."""
    return max(2 * P1, min(_QR_CHUNK_ROWS, _QR_CHUNK_BYTES // (2 * _BYTES * P1)))


def dense_bytes(arch: Architecture, n_samples: int) -> float:
    """Estimated peak memory of the dense methods: ``R``, ``U``, ``Vᵀ``, ``H`` (P² each), one
    chunk of Jacobian rows and one chunk of Hessian tangents (at least ``2 (P+1)`` rows)."""
    P1 = arch.n_params + 1
    chunk_rows = min(n_samples * arch.d_out, _qr_chunk_rows(P1))
    hess = min(n_samples, _hessian_rows(arch)) * _hessian_row_bytes(arch)
    return _BYTES * (4.0 * P1 * P1 + 2.0 * chunk_rows * P1) + hess


class Problem:
    """Pairs ``x (n_samples, d_in)``, ``y (n_samples, d_out)`` and the architecture (trusted).

    With ``free`` (increasing int64 indices of shape (n_free,)) and ``fixed`` (the full θ of
    shape (n_params,) whose other entries stay as they are), the optimisers see only the free
    parameters: every method takes the reduced ``θ_free`` of shape (n_free,), evaluates at
    :meth:`full` and returns the columns of ``J`` and the rows (and columns) of ``∇L``, ``∇²L``
    of the free parameters. Without them (None) ``θ`` is the full vector and nothing is copied.
    """

    def __init__(
        self,
        arch: Architecture,
        x: np.ndarray,
        y: np.ndarray,
        free: np.ndarray | None = None,
        fixed: np.ndarray | None = None,
    ):
        self.arch = arch
        self.x = np.ascontiguousarray(x)
        self.y = np.ascontiguousarray(y)
        self.n_residuals = y.size
        self.qr_chunk = max(1, _qr_chunk_rows(arch.n_params + 1) // arch.d_out)
        self.free = free
        self.fixed = None if free is None else np.array(fixed, dtype=np.float64)
        self.n_params = arch.n_params if free is None else free.size
        # the residual column of [J | r] is kept with the free ones
        self._qr_columns = None if free is None else np.append(free, arch.n_params)

    def full(self, theta: np.ndarray) -> np.ndarray:
        """The full θ (n_params,) of a reduced ``θ_free`` (n_free,), frozen entries from ``fixed``."""
        if self.free is None:
            return theta
        out = self.fixed.copy()
        out[self.free] = theta
        return out

    def reduce(self, theta: np.ndarray) -> np.ndarray:
        """The free entries (n_free,) of a full θ (n_params,)."""
        return theta if self.free is None else theta[self.free]

    def subset(self, idx: np.ndarray) -> Problem:
        """The same problem (and frozen parameters) on the samples ``idx``."""
        return Problem(self.arch, self.x[idx], self.y[idx], self.free, self.fixed)

    def sum_sq(self, theta: np.ndarray) -> float:
        """``|r|²``; ``inf`` when the forward pass overflows."""
        with np.errstate(over="ignore", invalid="ignore"):
            v = _sum_sq_residuals(self.arch, self.full(theta), self.x, self.y)
        return v if np.isfinite(v) else np.inf

    def loss_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """``(L, ∇L)``, the gradient over the free parameters (n_free,)."""
        with np.errstate(over="ignore", invalid="ignore"):
            value, grad = _loss_grad(self.arch, self.full(theta), self.x, self.y)
        return value, self.reduce(grad)

    def hessian(self, theta: np.ndarray) -> np.ndarray:
        """``∇²L`` over the free parameters, (n_free, n_free)."""
        with np.errstate(over="ignore", invalid="ignore"):
            H = _hessian(self.arch, self.full(theta), self.x, self.y)
        return H if self.free is None else H[np.ix_(self.free, self.free)]

    def jacobian_qr(self, theta: np.ndarray, deadline=None) -> np.ndarray | None:
        """``R`` (n_free+1, n_free+1) of ``[J_free | r] = Q R`` (see ``_jacobian_qr``)."""
        return _jacobian_qr(
            self.arch, self.full(theta), self.x, self.y, self.qr_chunk, deadline,
            self._qr_columns,
        )

    def jacobian_normal(self, theta: np.ndarray, deadline=None):
        """``(J_freeᵀJ_free, J_freeᵀr, |r|²)`` (see ``_jacobian_normal``); None at the deadline."""
        return _jacobian_normal(
            self.arch, self.full(theta), self.x, self.y, self.qr_chunk, deadline, self.free
        )


@dataclass(frozen=True)
class PhaseOutcome:
    """How one phase ended.

    Attributes
    ----------
    rule : str
        ``loss_tol``, ``grad_tol``, ``patience`` (no progress), ``stalled`` (the method cannot
        make a step), ``max_seconds`` or ``max_steps``.
    steps : int
        Steps taken (LM trial steps, ODE right-hand-side or objective evaluations).
    """

    rule: str
    steps: int


class StopPhase(Exception):
    """Raised inside a scipy callback to end a phase; ``rule`` says why."""

    def __init__(self, rule: str):
        super().__init__(rule)
        self.rule = rule


@dataclass(frozen=True)
class StallRule:
    """Gives up on a training that cannot reach ``goal`` (an MSE) before ``deadline``.

    The rate is the slope of ``log10`` of the best loss over the last ``window`` share of the
    elapsed time (at least ``min_window`` seconds). A training is hopeless when, at that rate,
    reaching ``goal`` (or one more decade, whichever is more) would take more than ``factor``
    times the time it has left, or than ``elapsed_factor`` times the time it has already run
    (students that converge do so superlinearly; those that creep rarely end aligned with the
    teacher). Nothing is
    judged before ``warmup`` seconds, nor once the best loss is at ``goal``: LM's progress
    comes in bursts after plateaus (saddles), so a short look would stop good students.

    Parameters
    ----------
    goal : float
        Target MSE.
    deadline : float
        Elapsed seconds (since the tracker's start) at which the training ends.
    factor : float
        Safety factor on the projected time.
    warmup : float
        Seconds before the first judgement.
    window : float
        Share of the elapsed time over which the rate is measured.
    min_window : float
        Shortest window, in seconds.
    min_steps : int
        Improving steps before the first judgement: a large student on a loaded machine may
        take seconds per step, and a rate over a handful of steps says nothing.
    elapsed_factor : float
        Safety factor on the projected time against the time already run; 0 judges only
        against the time left.
    creep_steps : int
        Improving steps before a student is judged against the time it has run: aligned
        students converge in 50-700 LM steps, creeping ones take thousands, and a large student
        (500+ parameters, ~0.3 s a step) is still far from zero loss after its first 60 steps
        without creeping.
    """

    goal: float
    deadline: float
    factor: float = 3.0
    warmup: float = 10.0
    window: float = 0.5
    min_window: float = 5.0
    min_steps: int = 50
    elapsed_factor: float = 1.0
    creep_steps: int = 200

    def hopeless(self, history: list, t: float, best: float, steps: int) -> bool:
        if t < self.warmup or steps < self.min_steps or best <= self.goal:
            return False
        left = self.deadline - t
        if left <= 0:
            return False
        span = max(self.min_window, self.window * t)
        # best loss at t - span: the last record at or before it (history is time-ordered)
        past = history[0][1]
        for when, value in history:
            if when > t - span:
                break
            past = value
        gained = np.log10(past) - np.log10(best) if past > 0 and best > 0 else np.inf
        # at least a decade: near the goal a creeping student needs little, but at its pace
        # a decade still takes longer than it has run
        needed = max(np.log10(best) - np.log10(self.goal), 1.0)
        if gained <= 0:
            return True
        projected = needed / (gained / span)
        # Judged against the time already spent as well as the time left: a student that
        # needs longer than it has run is creeping along a valley (several of its neurons
        # standing in for one teacher neuron), and such students are not aligned with the
        # teacher even when their loss is small (measured: misaligned at MSE 1e-14 after
        # 4000 LM steps, where aligned students converge in 100-700 steps).
        if projected > self.factor * left:
            return True
        return (
            self.elapsed_factor > 0
            and steps >= self.creep_steps
            and projected > self.elapsed_factor * max(t, self.warmup)
        )


class Tracker:
    """Best point, history and progress reporting across all phases of one training.

    Parameters
    ----------
    theta0 : ndarray of shape (n_params,)
    loss0 : float
    loss_tol, grad_tol : float
    progress : callable or None
        ``progress(elapsed_seconds, best_loss)``, called at most every ``report_every`` seconds.
    start : float, optional
        ``time.perf_counter()`` at which elapsed time starts (default: now).
    """

    report_every = 0.25
    record_every = 0.05
    check_every = 0.2

    def __init__(
        self,
        theta0: np.ndarray,
        loss0: float,
        *,
        loss_tol: float,
        grad_tol: float,
        progress: Callable[[float, float], object] | None = None,
        start: float | None = None,
        stop: Callable[[], bool] | None = None,
        stall: StallRule | None = None,
        trend: list | None = None,
    ):
        self.start = time.perf_counter() if start is None else start
        self.loss_tol = loss_tol
        self.grad_tol = grad_tol
        self.progress = progress
        self.best_theta = theta0.copy()
        self.best_loss = loss0
        self._history = [(0.0, loss0)]
        self._last_report = -np.inf
        self.stop_flag = stop
        self.stall = stall
        self._last_check = -np.inf
        self.stop_rule: str | None = None
        self.improvements = 0
        # What the stall rule reads: the best loss over time across the phases that share
        # this list (the subset phase hands it to the full-data phase), so that a student
        # creeping in the first phase is still seen creeping in the next.
        self.trend = trend if trend is not None else [(0.0, loss0)]
        self._report(0.0)

    def should_stop(self) -> bool:
        """Whether the caller's stop flag is set or the stall rule gives up on this training.

        Checked at most every ``check_every`` seconds (the flag may be a file or a Dask event);
        once true it stays true and ``stop_rule`` says why (``stopped`` or ``hopeless``).
        """
        if self.stop_rule is not None:
            return True
        t = self.elapsed()
        if t - self._last_check < self.check_every:
            return False
        self._last_check = t
        if self.stop_flag is not None and self.stop_flag():
            self.stop_rule = "stopped"
        elif self.stall is not None and self.stall.hopeless(
            self.trend, t, min(self.best_loss, self.trend[-1][1]), self.improvements
        ):
            self.stop_rule = "hopeless"
        return self.stop_rule is not None

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def observe(self, theta: np.ndarray, loss: float) -> bool:
        """Record a visited point; returns whether it is the best so far."""
        if not (loss < self.best_loss):
            return False
        self.best_loss = float(loss)
        self.best_theta = theta.copy()
        self.improvements += 1
        t = self.elapsed()
        last_t, last_loss = self._history[-1]
        if t - last_t >= self.record_every or loss < 0.1 * last_loss:
            self._history.append((t, self.best_loss))
        trend_t, trend_loss = self.trend[-1]
        if loss < trend_loss and (t - trend_t >= self.record_every or loss < 0.1 * trend_loss):
            self.trend.append((t, float(loss)))
        if t - self._last_report >= self.report_every:
            self._report(t)
        return True

    def _report(self, t: float) -> None:
        self._last_report = t
        if self.progress is not None:
            self.progress(t, self.best_loss)

    def finish(self) -> np.ndarray:
        """Close the history with the final best loss, report it, return ``(n, 2)`` float64."""
        t = self.elapsed()
        if self._history[-1][1] != self.best_loss or len(self._history) == 1:
            self._history.append((t, self.best_loss))
        self._report(t)
        return np.asarray(self._history, dtype=np.float64)


class Objective:
    """``fun(θ) -> (L, ∇L)`` for scipy: feeds ``tracker``, counts calls, and raises
    :class:`StopPhase` at the deadline, after ``max_calls`` calls, or at ``loss_tol``."""

    def __init__(self, problem: Problem, tracker: Tracker, deadline: float, max_calls: int):
        self.problem = problem
        self.tracker = tracker
        self.deadline = deadline
        self.max_calls = max_calls
        self.calls = 0

    def start(self, theta: np.ndarray) -> np.ndarray:
        """The optimiser's starting vector for the problem's point ``theta``."""
        return theta.copy()

    def evaluate(self, theta: np.ndarray) -> tuple[np.ndarray | None, float, np.ndarray]:
        """``(point, L, ∇L)``: the problem's point that the optimiser's ``theta`` stands for
        (what the tracker records), its loss, and the gradient the optimiser sees."""
        value, grad = self.problem.loss_grad(theta)
        return theta, value, grad

    def check_time(self) -> None:
        if time.perf_counter() >= self.deadline:
            raise StopPhase("max_seconds")

    def __call__(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        self.check_time()
        if self.tracker.should_stop():
            raise StopPhase(self.tracker.stop_rule)
        if self.calls >= self.max_calls:
            raise StopPhase("max_steps")
        self.calls += 1
        point, value, grad = self.evaluate(theta)
        if not np.isfinite(value):
            # Outside the region where the network is finite: scipy's line searches back off.
            return np.inf, np.zeros_like(theta)
        self.tracker.observe(point, value)
        if value <= self.tracker.loss_tol:
            raise StopPhase("loss_tol")
        return value, grad
