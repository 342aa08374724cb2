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
from collections.abc import Callable, Sequence

import numpy as np

from ecflow.activations import get_activation
from ecflow.engines import get_engine
from ecflow.engines.base import TrainConfig, TrainResult
from ecflow.networks import check_xy, glorot_normal

__all__ = ["student_seeds", "student_width", "train_student", "train_students"]


def student_seeds(seed: int, n_students: int) -> list[int]:
    """Independent initialisation seeds of ``n_students`` students derived from one ``seed``.

    Drawn from ``numpy.random.SeedSequence([seed, 2])`` so that they share no stream with the
    query inputs, which use ``seed`` itself.
    """
    if isinstance(n_students, bool) or not isinstance(n_students, (int, np.integer)):
        raise TypeError(f"n_students must be an integer, got {n_students!r}")
    if n_students < 1:
        raise ValueError(f"n_students must be positive, got {n_students}")
    state = np.random.SeedSequence([int(seed), 2]).generate_state(int(n_students))
    return [int(s) for s in state]


def student_width(teacher_width: int, rho: float) -> int:
    """Hidden width ``m = ceil(rho * r)`` of a student overparameterised by ``rho``."""
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    return max(1, int(np.ceil(rho * teacher_width - 1e-9)))


def _check_hidden(hidden) -> tuple[int, ...]:
    hidden = tuple(hidden)
    if not hidden or any(isinstance(h, bool) or int(h) != h or h < 1 for h in hidden):
        raise ValueError(f"hidden must be a non-empty tuple of positive integers, got {hidden!r}")
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
) -> TrainResult:
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
        Seed of the Glorot-normal initialisation.
    config : TrainConfig
    engine : str, default="native"

    Returns
    -------
    TrainResult
    """
    x, y = check_xy(x, y)
    hidden = _check_hidden(hidden)
    get_activation(activation)
    sizes = (x.shape[1], *hidden, y.shape[1])
    init = glorot_normal(sizes, [activation] * len(hidden) + ["identity"], seed)
    return get_engine(engine).train(x, y, init, config)


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
    """Train one student per seed, in parallel when an executor is given.

    Parameters
    ----------
    x, y, hidden, activation, config, engine
        As :func:`train_student`.
    seeds : sequence of int
        One initialisation seed per student.
    executor : concurrent.futures.Executor, optional
        Runs :func:`train_student` calls (``executor.submit``); in-process when None.
    progress : callable, optional
        ``progress(done, total)`` after each finished student.

    Returns
    -------
    list of TrainResult
        In the order of ``seeds``.
    """
    x, y = check_xy(x, y)
    hidden = _check_hidden(hidden)
    get_activation(activation)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds must name at least one student")
    kwargs = dict(hidden=hidden, activation=activation, config=config, engine=engine)
    total = len(seeds)
    if executor is None:
        results = []
        for i, s in enumerate(seeds):
            results.append(train_student(x, y, seed=s, **kwargs))
            if progress is not None:
                progress(i + 1, total)
        return results
    futures = {executor.submit(train_student, x, y, seed=s, **kwargs): i for i, s in enumerate(seeds)}
    out: list[TrainResult | None] = [None] * total
    try:
        for done, fut in enumerate(cf.as_completed(futures), start=1):
            out[futures[fut]] = fut.result()
            if progress is not None:
                progress(done, total)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    return [r for r in out if r is not None]
