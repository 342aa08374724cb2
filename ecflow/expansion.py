"""Expansion and training phase: train N overparameterised students (paper section 5, steps 1-2).

A student is a network ``d_in -> hidden -> d_out`` with the teacher's hidden activation and an
``identity`` output, initialised Glorot-normal (appendix A.6.1) from its own seed, and trained
full-batch on the teacher's queries by an engine (:mod:`ecflow.engines`). The only randomness
of a student is its initialisation, so the seeds make a run reproducible.

:func:`train_student` is a top-level function so that executors can pickle it;
:func:`train_students` fans students out over an executor (a process pool or a Dask cluster,
:func:`ecflow.parallel.make_executor`) or runs them one after the other.
"""

from __future__ import annotations

import concurrent.futures as cf
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ecflow.activations import get_activation
from ecflow.budget import Budget
from ecflow.engines import get_engine
from ecflow.engines.base import TrainConfig, TrainResult, TrainStatus
from ecflow.errors import InputError, InputTypeError
from ecflow.networks import MLP, Layer, check_xy, glorot_normal, parameter_mask, standardise_inputs
from ecflow.parallel import SharingStop, ThreadShare, make_stop_flag, spare_threads

__all__ = [
    "student_seeds",
    "student_width",
    "train_student",
    "train_students",
    "expand",
    "Expansion",
    "quorum_rule",
    "STUDENT_SHARE",
]

STUDENT_SHARE = 0.8
"""Share of the time left before a recovery's deadline that its students may use; the rest is
kept for fine-tuning and pruning (students that finish sooner leave more). A layer-wise recovery
splits it evenly between its remaining stages."""

_MIN_STUDENT_SECONDS = 1.0
"""A student that would start with less time than this before the deadline is skipped."""


def student_seeds(seed: int, n_students: int) -> list[int]:
    """Independent initialisation seeds of ``n_students`` students derived from one ``seed``.

    Drawn from ``numpy.random.SeedSequence([seed, 2])`` so that they share no stream with the
    query inputs, which use ``seed`` itself.
    """
    if isinstance(n_students, bool) or not isinstance(n_students, (int, np.integer)):
        raise InputTypeError(f"n_students must be an integer, got {n_students!r}")
    if n_students < 1:
        raise InputError(f"n_students must be positive, got {n_students}")
    state = np.random.SeedSequence([int(seed), 2]).generate_state(int(n_students))
    return [int(s) for s in state]


def student_width(teacher_width: int, rho: float) -> int:
    """Hidden width ``m = ceil(rho * r)`` of a student overparameterised by ``rho``."""
    if not rho > 0:
        raise InputError(f"rho must be positive, got {rho!r}")
    return max(1, int(np.ceil(rho * teacher_width - 1e-9)))


def _check_hidden(hidden) -> tuple[int, ...]:
    hidden = tuple(hidden)
    if not hidden or any(isinstance(h, bool) or int(h) != h or h < 1 for h in hidden):
        raise InputError(f"hidden must be a non-empty tuple of positive integers, got {hidden!r}")
    return tuple(int(h) for h in hidden)


def train_student(
    x: np.ndarray,
    y: np.ndarray,
    *,
    hidden: tuple[int, ...],
    activation: str,
    seed: int,
    config: TrainConfig,
    engine: str = "native",
    stop: Callable[[], bool] | None = None,
    deadline: float | None = None,
    progress: Callable[[float, float], object] | None = None,
    fixed: Sequence[Layer] = (),
) -> TrainResult | None:
    """Initialise one student from ``seed`` and train it on ``(x, y)``.

    Parameters
    ----------
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    hidden : tuple of int
        Hidden layer widths.
    activation : str
        Hidden activation (the output layer is ``identity``).
    seed : int
        Seed of the Glorot-normal initialisation. In a student with two hidden layers or
        more, each layer above the first (and above ``fixed``) then has its inputs
        standardised over ``x`` (:func:`~ecflow.networks.standardise_inputs`), as in the deep
        teachers of appendix A.4.
    config : TrainConfig
    engine : str, default="native"
    stop : callable, optional
        Cooperative stop flag (:mod:`ecflow.parallel`), polled by the engine.
    deadline : float, optional
        Wall-clock time (``time.time()``, comparable across processes: a worker may run on
        another machine; :meth:`ecflow.budget.Budget.wall_deadline`) by which training must
        end: the student's budget is cut to what is left when it starts.
    progress : callable, optional
        ``progress(elapsed_seconds, loss)``, passed to the engine.
    fixed : sequence of Layer, optional
        Reconstructed layers under the student's own (the layer-wise recovery of a deep
        teacher, :mod:`ecflow.layerwise`): the student is ``fixed`` followed by Glorot-normal
        layers of widths ``hidden`` and the output; the weights of ``fixed`` are frozen (the
        engine's ``free`` mask, :func:`~ecflow.networks.parameter_mask`) and their biases
        train with the rest.

    Returns
    -------
    TrainResult or None
        None when the stop flag was already set or the deadline had passed at the start (a
        queued student that is no longer needed).
    """
    x, y = check_xy(x, y)
    hidden = _check_hidden(hidden)
    get_activation(activation)
    fixed = _check_fixed(fixed, x.shape[1])
    if stop is not None and stop():
        return None
    budget = Budget.until_wall(deadline)
    if budget.expired(_MIN_STUDENT_SECONDS):
        return None
    config = budget.fit(config)
    n_in = fixed[-1].n_out if fixed else x.shape[1]
    sizes = (n_in, *hidden, y.shape[1])
    init = glorot_normal(sizes, [activation] * len(hidden) + ["identity"], seed)
    free = None
    if fixed:
        init = MLP(tuple(fixed) + init.layers)
        free = parameter_mask(init, {i: "weight" for i in range(len(fixed))})
    if len(init.layers) > 2:
        init = _standardised_start(init, x, first=max(1, len(fixed)))
    return get_engine(engine).train(x, y, init, config, stop=stop, progress=progress, free=free)


def _standardised_start(init: MLP, x: np.ndarray, first: int) -> MLP:
    """``init`` with the inputs of layers ``first, first + 1, ...`` standardised over ``x``.

    Deep students only. A Glorot layer on top of a hidden layer receives activations with
    nonzero mean and uneven scales (``g`` is positive), so its units start alike and the
    student spends its budget separating them; the deep teachers are built with standardised
    layer inputs (appendix A.4), and so start the students. Measured on a g 8-4-2-1 teacher
    (seed 201, 16-8 students, 150 s, no stall rule): Glorot students ended at MSE 3.0e-5 and
    8.7e-5, the standardised start reached 1e-6 in 12 s and 1e-10 in 98 s.
    """
    layers = list(init.layers)
    h = x
    for k, layer in enumerate(layers):
        if k >= first:
            layer = layers[k] = standardise_inputs(layer, h)
        if k + 1 < len(layers):
            h = layer.activation(h @ layer.weight.T + layer.bias)
    return MLP(tuple(layers))


def _check_fixed(fixed, d_in: int) -> tuple[Layer, ...]:
    fixed = tuple(fixed)
    if any(not isinstance(layer, Layer) for layer in fixed):
        raise InputTypeError("fixed must be a sequence of Layer")
    if fixed:
        MLP(fixed)  # consecutive sizes agree
        if fixed[0].n_in != d_in:
            raise InputError(f"fixed layers take {fixed[0].n_in} inputs, x has {d_in} columns")
    return fixed


@dataclass(frozen=True, eq=False)
class Expansion:
    """Outcome of :func:`expand`: the students and what happened to each.

    Attributes
    ----------
    results : tuple of (TrainResult or None)
        One per seed, in the order of the seeds; None for a student that never ran (cancelled
        in the queue, or started after the stop flag or the deadline).
    reused : tuple of bool
        Per seed: the result was given (``reuse``), not trained.
    stop_reason : str or None
        Why the remaining students were stopped (the ``enough`` rule's sentence, or the
        deadline), None when every student ran to its own end.
    seconds : float
    """

    results: tuple[TrainResult | None, ...]
    reused: tuple[bool, ...]
    stop_reason: str | None
    seconds: float

    @property
    def finished(self) -> list[int]:
        """Indices of students that ended by themselves (not stopped, not skipped)."""
        return [
            i for i, r in enumerate(self.results)
            if r is not None and r.status is not TrainStatus.STOPPED
        ]

    @property
    def n_trained(self) -> int:
        """Students trained by this call (finished or stopped)."""
        return sum(r is not None and not u for r, u in zip(self.results, self.reused))

    @property
    def n_reused(self) -> int:
        return sum(self.reused)

    @property
    def n_stopped(self) -> int:
        """Students stopped while training by the stop flag."""
        return sum(r is not None and r.status is TrainStatus.STOPPED for r in self.results)

    @property
    def n_skipped(self) -> int:
        """Students that never trained (cancelled in the queue or skipped at their start)."""
        return sum(r is None for r in self.results)


def expand(
    x: np.ndarray,
    y: np.ndarray,
    *,
    hidden: tuple[int, ...],
    activation: str,
    seeds: Sequence[int],
    config: TrainConfig,
    engine: str = "native",
    executor: cf.Executor | None = None,
    reuse: Mapping[int, TrainResult] | None = None,
    enough: Callable[[Sequence[TrainResult | None]], str | None] | None = None,
    on_result: Callable[[int, TrainResult], None] | None = None,
    deadline: float | None = None,
    progress: Callable[[int, int], None] | None = None,
    fixed: Sequence[Layer] = (),
) -> Expansion:
    """Train one student per seed, stopping early once more students cannot matter.

    Parameters
    ----------
    x, y, hidden, activation, config, engine, fixed
        As :func:`train_student`.
    seeds : sequence of int
        One initialisation seed per student.
    executor : concurrent.futures.Executor, optional
        Runs :func:`train_student` calls; in-process when None.
    reuse : mapping of int to TrainResult, optional
        Results already at hand, by index into ``seeds`` (e.g. read back from a work folder):
        those students are not trained again.
    enough : callable, optional
        ``enough(results)`` with the results so far (None where not finished) returns a
        sentence when the remaining students can no longer change the outcome, else None.
        Then queued students are cancelled and running ones are stopped through a cooperative
        stop flag (:func:`ecflow.parallel.make_stop_flag`).
    on_result : callable, optional
        ``on_result(index, result)`` as soon as a student ends by itself (not when stopped),
        in this process: the place to save it.
    deadline : float, optional
        Wall-clock time (``time.time()``) by which every student must end.
    progress : callable, optional
        ``progress(done, total)`` after each finished student.

    Returns
    -------
    Expansion
    """
    t0 = time.monotonic()
    x, y = check_xy(x, y)
    hidden = _check_hidden(hidden)
    get_activation(activation)
    fixed = _check_fixed(fixed, x.shape[1])
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise InputError("seeds must name at least one student")
    tally = _Tally.start(len(seeds), reuse, enough, on_result, progress)
    todo = [i for i in range(len(seeds)) if not tally.reused[i]]
    if tally.reason is not None or not todo:
        return tally.expansion(t0)
    if progress is not None:
        progress(tally.done, len(seeds))
    flag = make_stop_flag(executor)
    # a local pool's last students take the cores that the finished ones leave idle
    share = ThreadShare() if isinstance(executor, cf.ProcessPoolExecutor) else None
    kwargs = dict(
        hidden=hidden, activation=activation, config=config, engine=engine,
        stop=flag if share is None else SharingStop(flag, share), deadline=deadline, fixed=fixed,
    )
    try:
        if executor is None:
            for i in todo:
                if tally.record(i, train_student(x, y, seed=seeds[i], **kwargs)):
                    flag.set()
        else:
            _run_on(executor, x, y, seeds, todo, kwargs, tally, flag, share)
    finally:
        flag.close()
        if share is not None:
            share.close()
    return tally.expansion(t0)


@dataclass(eq=False)
class _Tally:
    """The students of one :func:`expand` call as they end: results, the reason to stop the
    rest once there is one, and the count reported to ``progress``."""

    results: list[TrainResult | None]
    reused: list[bool]
    enough: Callable[[Sequence[TrainResult | None]], str | None] | None
    on_result: Callable[[int, TrainResult], None] | None
    progress: Callable[[int, int], None] | None
    reason: str | None = None
    done: int = 0

    @classmethod
    def start(cls, total: int, reuse, enough, on_result, progress) -> _Tally:
        tally = cls([None] * total, [False] * total, enough, on_result, progress)
        for i, res in (reuse or {}).items():
            if not 0 <= i < total:
                raise InputError(f"reuse names student {i}, outside the {total} seeds")
            tally.results[i], tally.reused[i] = res, True
        tally.done = sum(tally.reused)
        tally.reason = enough(tally.results) if enough is not None else None
        return tally

    def record(self, i: int, res: TrainResult | None) -> bool:
        """Note that student ``i`` ended; True when the ``enough`` rule has just said stop."""
        self.results[i] = res
        if res is not None and res.status is not TrainStatus.STOPPED and self.on_result:
            self.on_result(i, res)
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.results))
        if self.enough is None or self.reason is not None:
            return False
        self.reason = self.enough(self.results)
        return self.reason is not None

    def expansion(self, t0: float) -> Expansion:
        return Expansion(tuple(self.results), tuple(self.reused), self.reason,
                         time.monotonic() - t0)


def _run_on(executor: cf.Executor, x, y, seeds, todo, kwargs, tally: _Tally, flag,
            share: ThreadShare | None) -> None:
    """The students ``todo`` on ``executor``; once ``tally`` says stop, the queued ones are
    cancelled and the running ones stopped through ``flag``."""
    futures = {executor.submit(train_student, x, y, seed=seeds[i], **kwargs): i for i in todo}

    def share_cores(left: int) -> None:
        running = min(left, getattr(executor, "_max_workers", left))
        share.set(spare_threads(running))

    if share is not None:
        share_cores(len(todo))
    try:
        # Not cf.as_completed: it also waits for the futures cancelled here, and a Dask
        # executor never reports one whose task finished while it was being cancelled
        # (setting the result of a cancelled future fails), which hung a test run.
        pending = set(futures)
        while pending:
            finished, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                if fut.cancelled():
                    continue
                if tally.record(futures[fut], fut.result()):
                    flag.set()
                    pending = {other for other in pending if not other.cancel()}
            if tally.reason is None and share is not None and pending:
                share_cores(len(pending))
    except BaseException:
        flag.set()
        for fut in futures:
            fut.cancel()
        raise


def train_students(
    x: np.ndarray,
    y: np.ndarray,
    *,
    hidden: tuple[int, ...],
    activation: str,
    seeds: Sequence[int],
    config: TrainConfig,
    engine: str = "native",
    executor: cf.Executor | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[TrainResult]:
    """Train one student per seed to its own end (:func:`expand` without early stop).

    Returns
    -------
    list of TrainResult
        In the order of ``seeds``.
    """
    out = expand(
        x, y, hidden=hidden, activation=activation, seeds=seeds, config=config, engine=engine,
        executor=executor, progress=progress,
    )
    return [r for r in out.results if r is not None]


def quorum_rule(needed: int, why: str) -> Callable[[Sequence[TrainResult | None]], str | None]:
    """``enough(results)`` for :func:`expand`: the students can stop once ``needed`` of them
    have converged (reached the student loss); ``why`` says what asks for that many, in the
    reason given."""

    def enough(results: Sequence[TrainResult | None]) -> str | None:
        good = sum(r is not None and r.status.converged for r in results)
        if good < needed:
            return None
        return (
            f"{good} students reached the student loss, the {needed} {why}: each teacher "
            "neuron already has a big cluster"
        )

    return enough
