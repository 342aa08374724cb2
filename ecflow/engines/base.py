"""The engine protocol: what every training engine (native, julia) takes and returns.

An engine trains one student network on input-output pairs with the MSE loss

    L(θ) = 1/(n_samples · d_out) Σ_{s,k} (f_θ(x_s)_k - y_{s,k})²,

from a given initial network, and returns a :class:`TrainResult`. Engines differ only in how
they minimise; configs and results are shared so that tests and callers are engine-agnostic.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from ecflow.errors import InputError
from ecflow.networks import MLP

__all__ = [
    "Schedule",
    "Optimizer",
    "OdeMethod",
    "TrainStatus",
    "TrainConfig",
    "TrainResult",
    "Engine",
    "check_free",
    "loss_floor",
    "judge_training",
]


class Schedule(enum.Enum):
    """Order of the two training phases."""

    LM_FIRST = "lm-first"
    """Levenberg–Marquardt from the initial point; the gradient flow only if LM stalls."""
    FLOW_FIRST = "flow-first"
    """Gradient flow, then the second-phase optimizer (the paper's order)."""


class Optimizer(enum.Enum):
    """Second-phase (polishing) optimizer."""

    LM = "lm"
    TRUST_EXACT = "trust-exact"
    BFGS = "bfgs"


class OdeMethod(enum.Enum):
    """Stiff integrator of the gradient flow (scipy ``solve_ivp`` methods)."""

    BDF = "BDF"
    RADAU = "Radau"
    LSODA = "LSODA"


NEAR_ZERO_LOSS = 1e-14
"""MSE at or below which a student counts as having reached (near) zero loss (paper Fig. 4B)."""

FLOOR_FACTOR = 2.0
"""``c`` of :func:`loss_floor`: the largest ratio RMSE / (eps · rms(y) · √n_ops) that LM reached
at its stall from a perturbed teacher was 1.04 (softplus 4-4-1), the others 0.13-0.35 (11
teachers: g, tanh, relu, sigmoid, softplus, d_in 2-32, one to three hidden layers, 1 or 3
outputs, targets scaled by 1 and 10; OpenBLAS SkylakeX and Haswell kernels alike)."""


class TrainStatus(enum.Enum):
    """Why training stopped. ``message`` tells the user what to do about it."""

    CONVERGED_LOSS = "converged: loss below loss_tol or at the Float64 rounding floor of the targets"
    CONVERGED_GRAD = "converged: gradient norm below grad_tol"
    REACHED_TARGET = "good enough: loss below target_loss (a recovery-grade student)"
    STALLED = "stalled at a non-zero loss (likely a local minimum): try another seed or a wider student"
    STOPPED = "stopped by the caller: more students could not change the recovery's outcome"
    MAX_TIME = "time budget reached: increase max_seconds (or flow_seconds/polish_seconds)"
    MAX_STEPS = "step budget reached: increase max_steps"

    @property
    def converged(self) -> bool:
        return self in (
            TrainStatus.CONVERGED_LOSS, TrainStatus.CONVERGED_GRAD, TrainStatus.REACHED_TARGET
        )

    @property
    def message(self) -> str:
        return self.value


def _enum(cls, value, name):
    if isinstance(value, cls):
        return value
    try:
        return cls(value)
    except ValueError:
        known = ", ".join(m.value for m in cls)
        raise InputError(f"{name} must be one of: {known}; got {value!r}") from None


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one student training (defaults follow the paper and MLPGradientFlow.jl).

    Parameters
    ----------
    schedule : Schedule or str, default="lm-first"
    optimizer : Optimizer or str, default="lm"
        Second phase; ``trust-exact`` is Newton trust region on the exact Hessian.
    ode_method : OdeMethod or str, default="BDF"
    loss_tol : float, default=1e-31
        MSE at which training stops (paper A.6.1). A loss at or below the Float64 rounding
        floor of the targets (:func:`loss_floor`) counts as converged as well, whatever this
        says: below the floor the loss is the rounding of the forward pass.
    grad_tol : float, default=1e-16
        Gradient norm at which training stops (paper A.6.1).
    flow_seconds : float, default=180.0
        Time budget of the gradient-flow phase.
    polish_seconds : float, default=120.0
        Time budget of each second-phase run after a flow (``lm-first``: the first LM phase
        has the whole budget; ``flow-first``: the polish has what the flow left).
    max_seconds : float or None, default=None
        Overall wall-clock budget; None means ``flow_seconds + polish_seconds``.
    max_steps : int, default=100_000
        Step budget per phase.
    patience : int, default=50
        Steps without relative improvement of the best loss before a phase counts as stalled.
    memory_budget_mb : float, default=2048.0
        Above this estimated size of the dense Jacobian QR/Hessian the engine uses L-BFGS on the
        exact gradient (the native engine: after a warm-up, on the hidden parameters with the
        output layer solved by least squares, variable projection) and says so in
        ``TrainResult.notes``.
    target_loss : float or None, default=None
        MSE at which a student is good enough for its purpose and stops with
        ``REACHED_TARGET`` (recoveries cluster students that are far from zero loss: teacher
        neurons are aligned long before the loss reaches ``loss_tol``). None: only ``loss_tol``.
    stall_factor : float, default=3.0
        Give up (``STALLED``) when, at the rate of the recent log-loss decrease, reaching the
        goal (``target_loss``, or near-zero loss 1e-14 when it is None) would take more than
        ``stall_factor`` times the time left. 0 disables the rule (and ``creep_factor``).
    creep_factor : float, default=1.0
        Part of the same rule: after 200 improving steps, also give up when reaching the goal
        at that rate would take more than ``creep_factor`` times the time already run (aligned
        shallow students converge superlinearly in 50-700 LM steps; creeping ones stand several
        neurons in for one teacher neuron). 0 disables this part: deep students advance in
        bursts after long plateaus (a g 8-4-2-1 student reached MSE 1e-8 after 77 s and ~900
        steps, aligned to cosine distance 3e-8, where this part stopped such students at ~200
        steps and ~20 s), so layer-wise recoveries turn it off.
    normal_above : float, default=1e-15
        While the MSE is above this, LM steps come from the normal equations ``JᵀJ`` (one
        GEMM per step, ~4x cheaper than the QR at 500+ parameters, precise to RMSE ~1e-9,
        i.e. MSE ~1e-18); below it, or when they stall, from the QR. Recovery students
        (``target_loss`` 1e-14) thus never pay for a QR; fine-tuning to machine precision
        does. 0: always the QR.
    first_order_above : float or None, default=None
        Above this product of trained parameters and residuals (``n_samples · d_out``) the
        native engine trains with L-BFGS on the exact gradient (and variable projection of
        the output layer after a warm-up), as it does over ``memory_budget_mb``: one dense LM step costs ~P²·n_residuals flops, so at 3 610
        parameters and 17 970 residuals (a ρ = 4 student of a digits teacher with r = 12) a
        step takes tens of seconds on one core, where L-BFGS reached RMSE 1e-3 in 42 s. None:
        only ``memory_budget_mb`` decides (students that must reach zero loss need LM);
        recoveries set it for their students (``RecoverConfig.first_order_above``).
    """

    schedule: Schedule | str = Schedule.LM_FIRST
    optimizer: Optimizer | str = Optimizer.LM
    ode_method: OdeMethod | str = OdeMethod.BDF
    loss_tol: float = 1e-31
    grad_tol: float = 1e-16
    flow_seconds: float = 180.0
    polish_seconds: float = 120.0
    max_seconds: float | None = None
    max_steps: int = 100_000
    patience: int = 50
    memory_budget_mb: float = 2048.0
    target_loss: float | None = None
    stall_factor: float = 3.0
    creep_factor: float = 1.0
    normal_above: float = 1e-15
    first_order_above: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "schedule", _enum(Schedule, self.schedule, "schedule"))
        object.__setattr__(self, "optimizer", _enum(Optimizer, self.optimizer, "optimizer"))
        object.__setattr__(self, "ode_method", _enum(OdeMethod, self.ode_method, "ode_method"))
        for name in ("loss_tol", "grad_tol"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        for name in ("flow_seconds", "polish_seconds", "memory_budget_mb"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.first_order_above is not None:
            v = self.first_order_above
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and 0 <= v < np.inf):
                raise InputError(f"first_order_above must be a finite number >= 0, got {v!r}")
        for name in ("stall_factor", "creep_factor", "normal_above"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and v >= 0 and np.isfinite(v)):
                raise InputError(f"{name} must be a finite number >= 0, got {v!r}")
        if self.target_loss is not None and (
            isinstance(self.target_loss, bool)
            or not isinstance(self.target_loss, (int, float))
            or not (0 < self.target_loss < np.inf)
        ):
            raise InputError(f"target_loss must be a positive finite number, got {self.target_loss!r}")
        if self.max_seconds is not None and not (
            isinstance(self.max_seconds, (int, float)) and self.max_seconds > 0
        ):
            raise InputError(f"max_seconds must be positive, got {self.max_seconds!r}")
        for name in ("max_steps", "patience"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InputError(f"{name} must be a positive integer, got {v!r}")

    @property
    def goal(self) -> float:
        """The MSE a training aims for: ``target_loss``, else ``loss_tol``."""
        return float(self.target_loss) if self.target_loss is not None else float(self.loss_tol)

    @property
    def total_seconds(self) -> float:
        """Overall budget: ``max_seconds`` or ``flow_seconds + polish_seconds``."""
        if self.max_seconds is not None:
            return float(self.max_seconds)
        return float(self.flow_seconds + self.polish_seconds)


@dataclass(frozen=True, eq=False)
class TrainResult:
    """Outcome of one training.

    Attributes
    ----------
    network : MLP
        The best network seen (lowest loss).
    loss : float
        MSE on the training pairs.
    rmse : float
        ``sqrt(loss)``.
    grad_norm : float
        Euclidean norm of the gradient of ``loss`` at ``network`` with respect to the trained
        parameters (all of them unless some were frozen by ``free``).
    status : TrainStatus
    stopped_by : str
        Which phase/rule stopped training, e.g. ``"lm: loss_tol"``.
    steps : int
        Total steps over all phases.
    seconds : float
        Wall-clock time.
    history : ndarray of shape (n_records, 2), float64
        ``(elapsed seconds, loss)`` pairs, increasing in time.
    engine : str
    notes : tuple of str
        Remarks for the user (e.g. the switch to L-BFGS for a large student).
    """

    network: MLP
    loss: float
    rmse: float
    grad_norm: float
    status: TrainStatus
    stopped_by: str
    steps: int
    seconds: float
    history: np.ndarray
    engine: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def converged(self) -> bool:
        return self.status.converged

    @property
    def reason(self) -> str:
        """One sentence for the user: the status's message, made specific to the loss reached.

        A stall below :data:`NEAR_ZERO_LOSS` is not "likely a local minimum": the paper counts
        such a student as converged (Fig. 4B), and what stops LM there is the conditioning of
        the problem, so the advice differs.
        """
        if self.status is TrainStatus.CONVERGED_LOSS and self.stopped_by.endswith("loss_floor"):
            return (
                f"converged: MSE {self.loss:.1e} is at the Float64 rounding floor of these "
                "targets, where no Float64 training can lower it further"
            )
        if self.status is TrainStatus.STALLED and self.loss <= NEAR_ZERO_LOSS:
            return (
                f"stopped improving at MSE {self.loss:.1e}, already near zero loss "
                f"(<= {NEAR_ZERO_LOSS:g}, the paper's threshold): not a bad local minimum; "
                "a longer polish_seconds may lower it further"
            )
        return self.status.message


def loss_floor(y: np.ndarray, sizes) -> float:
    """The lowest MSE that Float64 can resolve for targets ``y`` and a network of ``sizes``.

    At an exact minimiser the residuals are not zero but the rounding of the forward pass and
    of the stored targets. Each output is computed through ``n_ops = Σ_l (n_in_l + 1)``
    products and additions (fan-in plus bias, summed over the layers) whose terms are of the
    order of the outputs, each rounded with a relative error of at most ``eps / 2``; those
    errors add in quadrature, so

        MSE_floor = (c · √n_ops · eps · rms(y))²,    rms(y) = √(mean(y²)),

    with ``c`` = :data:`FLOOR_FACTOR`, chosen above what was measured. A training whose loss
    is at or below it has converged whatever ``loss_tol`` says: which side of a fixed tolerance
    the last bits fall on depends on the BLAS kernel's summation order, not on the fit.

    Parameters
    ----------
    y : ndarray of shape (n_samples, d_out), float64
    sizes : sequence of int
        Layer sizes ``(d_in, n_hidden_1, ..., d_out)``.

    Returns
    -------
    float
        0.0 for targets that are all zero.
    """
    y = np.asarray(y, dtype=np.float64)
    n_ops = sum(int(n) + 1 for n in tuple(sizes)[:-1])
    rms = float(np.sqrt(np.mean(y * y))) if y.size else 0.0
    return float((FLOOR_FACTOR * np.sqrt(n_ops) * np.finfo(np.float64).eps * rms) ** 2)


def judge_training(
    loss: float, grad_norm: float, config: TrainConfig, floor: float, rule: str
) -> tuple[TrainStatus | None, str]:
    """Status and rule of a finished training from its final loss and gradient norm.

    Parameters
    ----------
    loss, grad_norm : float
        At the best point.
    config : TrainConfig
    floor : float
        :func:`loss_floor` of the training's targets and network.
    rule : str
        The rule that ended the last phase.

    Returns
    -------
    (TrainStatus or None, str)
        The status when the loss or gradient decides it (``None`` otherwise: the caller maps
        ``rule`` to a status), and the rule to report.
    """
    if loss <= config.loss_tol:
        return TrainStatus.CONVERGED_LOSS, "loss_tol"
    if loss <= floor:
        return TrainStatus.CONVERGED_LOSS, "loss_floor"
    if config.target_loss is not None and loss <= config.target_loss:
        return TrainStatus.REACHED_TARGET, "target_loss"
    if grad_norm <= config.grad_tol:
        return TrainStatus.CONVERGED_GRAD, "grad_tol"
    return None, rule


@runtime_checkable
class Engine(Protocol):
    """A training engine. ``train`` validates its inputs and never mutates ``init``."""

    name: str

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
        """Train ``init`` on pairs ``x (n_samples, d_in)``, ``y (n_samples, d_out)``.

        ``progress``, if given, is called as ``progress(elapsed_seconds, loss)`` now and then.
        ``stop``, if given, is a cooperative stop flag: a callable polled now and then; when it
        returns True the training ends with ``STOPPED`` and its best point so far.
        ``free``, if given, is a boolean mask of shape ``(init.n_params,)`` over
        ``init.flatten()`` (see :func:`~ecflow.networks.parameter_mask`): parameters where it
        is False keep their initial values exactly, the others train.
        """
        ...


def check_free(free, n_params: int) -> np.ndarray | None:
    """Validate a mask of trainable parameters.

    Parameters
    ----------
    free : array-like of shape (n_params,), bool, or None
        True where a parameter of ``MLP.flatten()`` trains; None: all train.
    n_params : int

    Returns
    -------
    ndarray of shape (n_free,), int64, or None
        Increasing indices of the trainable parameters; None when every parameter trains (the
        engines then take their unrestricted path).
    """
    if free is None:
        return None
    mask = np.asarray(free)
    if mask.dtype != np.bool_:
        raise InputError(f"free must be a boolean mask, got dtype {mask.dtype}")
    if mask.shape != (n_params,):
        raise InputError(
            f"free must have shape ({n_params},) (one entry per parameter), got {mask.shape}"
        )
    if not mask.any():
        raise InputError("free freezes every parameter: nothing is left to train")
    return None if mask.all() else np.flatnonzero(mask)
