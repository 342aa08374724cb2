"""The sweep's runner: the units scheduled on an executor, their results handed to the store.

Units run on a :mod:`concurrent.futures` executor from :func:`ecflow.parallel.make_executor` —
local processes or a Dask cluster — with a bounded number in flight, so that the queries of
only a few teachers are in memory or in transit. A recovery is submitted as soon as the last of
its students has finished.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import concurrent.futures as cf
import enum
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecflow import teachers
from ecflow.context import Progress
from ecflow.engines.base import TrainConfig, TrainResult
from ecflow.errors import InputError
from ecflow.expansion import train_student
from ecflow.networks import MLP
from ecflow.parallel import make_executor
from ecflow.recover import RecoverConfig, Recovery, reconstruct_from_students
from ecflow.sweep.config import (
    FRESH_SEED,
    QUERIES_SEED,
    RECOVERY_SEED,
    STUDENT_SEED,
    TEACHER_SEED,
    RecoveryUnit,
    StudentUnit,
    SweepConfig,
    TeacherKey,
    unit_seed,
)
from ecflow.sweep.store import (
    Store,
    check_directory,
    create_directory,
    directory_lock,
    read_sweep_config,
)

__all__ = [
    "ProgressFn", "SweepStatus", "SweepResult", "run_sweep", "write_tables", "recluster",
]

log = logging.getLogger(__name__)

TABLE_INTERVAL_S = 60.0
"""Seconds between rewrites of the tables while students finish (always after a recovery)."""

ProgressFn = Progress
"""``progress(what, done, total)``: the package's one shape of progress callback
(:data:`ecflow.context.Progress`); here ``what`` is the name of the unit that just finished,
``""`` for the first call."""


class SweepStatus(enum.Enum):
    """How a call of :func:`run_sweep` ended."""

    COMPLETE = "complete: every unit finished"
    ALREADY_COMPLETE = "already complete: nothing was recomputed, tables were regenerated"


@dataclass(frozen=True)
class SweepResult:
    """Outcome of :func:`run_sweep`.

    Attributes
    ----------
    out : Path
    status : SweepStatus
    reason : str
        One line for the user.
    n_students, n_recoveries : int
        Units in the grid.
    students_run, recoveries_run : int
        Units computed by this call (the rest were found finished on disk).
    n_success : dict of int to int
        Successful recoveries per ρ.
    seconds : float
        Wall-clock time of this call.
    """

    out: Path
    status: SweepStatus
    reason: str
    n_students: int
    n_recoveries: int
    students_run: int
    recoveries_run: int
    n_success: dict[int, int]
    seconds: float


# --- teachers and tasks (tasks run in worker processes; top-level so that they pickle) -----------


def _teacher_seed(config: SweepConfig, key: TeacherKey, domain: int) -> int:
    return unit_seed(config, domain, key.d_in, key.r, key.teacher)


def _teacher_data(config: SweepConfig, key: TeacherKey) -> dict[str, Any]:
    """The teacher, its training queries and fresh inputs, all from derived seeds."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread, as in the workers, so that the teacher's outputs never depend on how
    # many threads the main process happens to have.
    with threadpool_limits(limits=1):
        tconf = teachers.TeacherConfig(
            d_in=key.d_in, hidden=(key.r,), activation=config.activation
        )
        net = teachers.synthetic_teacher(tconf, _teacher_seed(config, key, TEACHER_SEED))
        x = teachers.sample_inputs(
            config.n_queries, key.d_in, _teacher_seed(config, key, QUERIES_SEED)
        )
        x_fresh = teachers.sample_inputs(
            config.n_fresh, key.d_in, _teacher_seed(config, key, FRESH_SEED)
        )
        return {
            "teacher": net,
            "x": x,
            "y": teachers.query(net, x),
            "x_fresh": x_fresh,
            "y_fresh": teachers.query(net, x_fresh),
        }


def _student_task(
    x: np.ndarray,
    y: np.ndarray,
    hidden: tuple[int, ...],
    activation: str,
    seed: int,
    train: TrainConfig,
    engine: str,
) -> TrainResult:
    return train_student(
        x, y, hidden=hidden, activation=activation, seed=seed, config=train, engine=engine
    )


def _recovery_task(
    x: np.ndarray,
    y: np.ndarray,
    students: Sequence[TrainResult],
    recover_config: RecoverConfig,
    engine: str,
    x_fresh: np.ndarray,
    y_fresh: np.ndarray,
    teacher: MLP,
) -> Recovery:
    return reconstruct_from_students(
        x, y, students, config=recover_config, engine=engine,
        x_fresh=x_fresh, y_fresh=y_fresh, teacher=teacher,
    )


def _recover_config(config: SweepConfig, unit: RecoveryUnit) -> RecoverConfig:
    return RecoverConfig(
        n_students=config.n_students(unit.r),
        gamma=config.gamma,
        beta_deg=config.beta_deg,
        cluster_counts=config.cluster_counts,
        n_queries=config.n_queries,
        n_fresh=config.n_fresh,
        rho=unit.rho,
        activation=config.activation,
        seed=unit_seed(config, RECOVERY_SEED, unit.d_in, unit.r, unit.teacher, unit.rho),
        train=config.train,
        finetune=config.finetune,
    )


def _executor_slots(executor: cf.Executor, workers: int | None) -> int:
    """Tasks kept in flight: twice the parallelism, so that no worker waits for a submission."""
    client = getattr(executor, "_client", None)  # a Dask ClientExecutor
    if client is not None:
        try:
            return max(2, 2 * sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a cluster that cannot say its size gets a fixed window
            return 64
    return max(2, 2 * (workers or 1))


# --- the run -------------------------------------------------------------------------------------


class _Session:
    """One call's line of ``runs.json``: when it ran, on what, under what load, and what it
    computed (the wall time and load of a sweep run in several calls, on several machines)."""

    def __init__(self, workers: int | None, scheduler: str | None):
        self.t0 = time.monotonic()
        self.loads: list[float] = []
        self.record: dict[str, Any] = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            # None: a Dask cluster, or as many local workers as usable CPUs
            "workers": workers if scheduler is None else None,
            "scheduler": scheduler is not None,
            "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
            os.cpu_count(),
        }

    def update(self, students_run: int, recoveries_run: int) -> None:
        with contextlib.suppress(OSError):
            self.loads.append(os.getloadavg()[0])
        self.record.update(
            wall_seconds=time.monotonic() - self.t0,
            students_run=students_run,
            recoveries_run=recoveries_run,
            load_1min_mean=sum(self.loads) / len(self.loads) if self.loads else None,
            load_1min_max=max(self.loads) if self.loads else None,
            updated_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )


class _SweepRun:
    """One :func:`run_sweep` call: the store, the teachers in memory, progress and counts."""

    def __init__(self, store: Store, progress: ProgressFn | None, cached_teachers: int = 8):
        self.store = store
        self.config = store.config
        self.progress = progress
        # The most recently used teachers: the units in flight belong to a few of them, and a
        # teacher dropped is regenerated from its seeds in milliseconds.
        self.teacher_cache: collections.OrderedDict[TeacherKey, dict[str, Any]] = (
            collections.OrderedDict()
        )
        self.cached_teachers = cached_teachers
        self.session: _Session | None = None
        self.students_run = 0
        self.recoveries_run = 0
        self.tables_written = time.monotonic()

    def teacher(self, key: TeacherKey) -> dict[str, Any]:
        data = self.teacher_cache.get(key)
        if data is None:
            data = _teacher_data(self.config, key)
            self.store.write_teacher(key, data, _teacher_seed(self.config, key, TEACHER_SEED))
            self.teacher_cache[key] = data
            while len(self.teacher_cache) > self.cached_teachers:
                self.teacher_cache.popitem(last=False)
        self.teacher_cache.move_to_end(key)
        return data

    def report(self, name: str) -> None:
        if self.progress is not None:
            self.progress(name, self.store.n_finished, self.store.n_units)

    def submit_student(self, ex: cf.Executor, u: StudentUnit) -> cf.Future:
        data = self.teacher(u.group.teacher_key)
        seed = unit_seed(self.config, STUDENT_SEED, u.d_in, u.r, u.teacher, u.rho, u.student)
        return ex.submit(
            _student_task, data["x"], data["y"], u.hidden, self.config.activation, seed,
            self.config.train, self.config.engine,
        )

    def submit_recovery(self, ex: cf.Executor, g: RecoveryUnit) -> cf.Future:
        data = self.teacher(g.teacher_key)
        return ex.submit(
            _recovery_task, data["x"], data["y"], self.store.read_students(g),
            _recover_config(self.config, g), self.config.engine,
            data["x_fresh"], data["y_fresh"], data["teacher"],
        )

    def finish_student(self, u: StudentUnit, res: TrainResult) -> None:
        self.store.write_student(u, res)
        log.info("student %s: loss %.3g (%s) in %.1f s",
                 u.name, res.loss, res.status.name, res.seconds)
        self.students_run += 1
        self.report(u.name)
        # Tables follow the records at most a minute behind (rewriting them after every unit
        # would cost quadratic time over a sweep of thousands of students).
        if time.monotonic() - self.tables_written > TABLE_INTERVAL_S:
            self.write_tables()

    def finish_recovery(self, g: RecoveryUnit, rec: Recovery) -> None:
        self.store.write_recovery(g, rec)
        log.info("recovery %s: %s, sizes %s", g.name, rec.status.name, rec.hidden_sizes)
        self.recoveries_run += 1
        self.report(g.name)
        self.write_tables()

    def write_tables(self) -> None:
        self.tables_written = time.monotonic()
        self.store.write_tables()
        if self.session is not None:
            self.session.update(self.students_run, self.recoveries_run)
            self.store.write_session(self.session.record)

    def summary(self, status: SweepStatus, seconds: float) -> SweepResult:
        """Write the tables and sum up this call."""
        self.write_tables()
        config, store = self.config, self.store
        n_success = {rho: 0 for rho in config.rho}
        for g, rec in store.recovery_records.items():
            n_success[g.rho] += bool(rec["success"])
        per_rho = ", ".join(f"ρ={rho}: {n}/{config.n_teachers}" for rho, n in n_success.items())
        ran = self.students_run + self.recoveries_run
        reason = (
            f"{self.students_run} students and {self.recoveries_run} recoveries computed, "
            f"{store.n_units - ran} of {store.n_units} units already finished; "
            f"recovered {per_rho}"
        )
        return SweepResult(
            out=store.out,
            status=status,
            reason=reason,
            n_students=len(store.students),
            n_recoveries=len(store.recoveries),
            students_run=self.students_run,
            recoveries_run=self.recoveries_run,
            n_success=n_success,
            seconds=seconds,
        )


@dataclass(eq=False)
class _Schedule:
    """What the scheduling steps share: the units still to submit and those in flight.

    Attributes
    ----------
    students : list of StudentUnit
        Unfinished students, in scheduling order; ``next_student`` is the first not submitted.
    waiting : set of RecoveryUnit
        Unfinished recoveries not submitted yet (their students are not all finished).
    in_flight : dict of Future to unit
    """

    students: list[StudentUnit]
    waiting: set[RecoveryUnit]
    in_flight: dict[cf.Future, StudentUnit | RecoveryUnit] = field(default_factory=dict)
    next_student: int = 0

    @property
    def busy(self) -> bool:
        return self.next_student < len(self.students) or bool(self.in_flight)


def _submit_recovery_if_ready(
    run: _SweepRun, ex: cf.Executor, sched: _Schedule, g: RecoveryUnit
) -> None:
    if g in sched.waiting and run.store.group_complete(g):
        sched.waiting.discard(g)
        sched.in_flight[run.submit_recovery(ex, g)] = g


def _fill(run: _SweepRun, ex: cf.Executor, sched: _Schedule, slots: int) -> None:
    """Submit students until ``slots`` units are in flight."""
    while sched.next_student < len(sched.students) and len(sched.in_flight) < slots:
        u = sched.students[sched.next_student]
        sched.in_flight[run.submit_student(ex, u)] = u
        sched.next_student += 1


def _collect(run: _SweepRun, ex: cf.Executor, sched: _Schedule) -> None:
    """Wait for the next finished units, store them, submit the recoveries they complete."""
    done, _ = cf.wait(list(sched.in_flight), return_when=cf.FIRST_COMPLETED)
    for fut in sorted(done, key=lambda f: sched.in_flight[f].name):
        unit = sched.in_flight.pop(fut)
        result = fut.result()
        if isinstance(unit, StudentUnit):
            run.finish_student(unit, result)
            _submit_recovery_if_ready(run, ex, sched, unit.group)
        else:
            run.finish_recovery(unit, result)


def _execute(run: _SweepRun, ex: cf.Executor, slots: int) -> None:
    """Run every unfinished unit, ``slots`` at most in flight, recoveries as soon as ready."""
    store = run.store
    todo_students = [u for u in store.students if u not in store.student_records]
    todo_groups = [g for g in store.recoveries if g not in store.recovery_records]
    sched = _Schedule(todo_students, set(todo_groups))
    for g in todo_groups:
        _submit_recovery_if_ready(run, ex, sched, g)
    try:
        while sched.busy:
            _fill(run, ex, sched, slots)
            _collect(run, ex, sched)
    finally:
        for fut in sched.in_flight:
            fut.cancel()


def run_sweep(
    out: str | os.PathLike,
    config: SweepConfig | None = None,
    *,
    resume: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    progress: ProgressFn | None = None,
) -> SweepResult:
    """Run (or resume) a synthetic-teacher sweep into the directory ``out``.

    Parameters
    ----------
    out : path-like
        The sweep directory (layout in :mod:`ecflow.sweep`).
    config : SweepConfig, optional
        Required for a new sweep; with ``resume`` it must equal the stored one, or be None to
        use the stored one.
    resume : bool, default=False
        Continue the sweep in ``out``: finished units are read back, not recomputed.
    workers : int, optional
        Local worker processes (default: the usable CPUs); ignored with ``scheduler``.
    scheduler : str, optional
        Address of a Dask scheduler whose workers run the units.
    progress : callable, optional
        :data:`ProgressFn`: called as ``progress(unit_name, done, total)`` after every
        finished unit, and once at the start as ``progress("", done, total)`` with the units
        already finished.

    Returns
    -------
    SweepResult

    Raises
    ------
    InputError
        Bad directory or configuration (see :func:`~ecflow.sweep.store.prepare_directory`),
        bad ``workers``, an unreachable scheduler.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    config = check_directory(out, config, resume)
    run = _SweepRun(Store(out, config), progress)
    run.store.load()
    if run.store.n_finished < run.store.n_units:
        # The executor (and a Dask connection) is set up before anything is written, so that
        # an unreachable scheduler leaves no directory behind.
        with make_executor(workers=workers, scheduler=scheduler) as ex:
            create_directory(out, config)
            with directory_lock(out):
                run.store.load()  # under the lock: what another run finished meanwhile
                run.session = _Session(workers, scheduler)
                run.report("")
                _execute(run, ex, _executor_slots(ex, workers))
                return run.summary(SweepStatus.COMPLETE, time.perf_counter() - t0)
    with directory_lock(out):
        run.store.load()  # under the lock: archive files left behind by a killed run catch up
        run.report("")
        return run.summary(SweepStatus.ALREADY_COMPLETE, time.perf_counter() - t0)


def write_tables(out: str | os.PathLike) -> tuple[int, int]:
    """Rewrite ``results.csv`` and ``recoveries.csv`` from the unit records in ``out``.

    Computes nothing: for a sweep that was stopped, to see its finished units.

    Returns
    -------
    (n_students, n_recoveries) : tuple of int
        Finished units found.

    Raises
    ------
    InputError
        ``out`` holds no sweep, or a sweep is running in it.
    """
    out = Path(out)
    config = read_sweep_config(out)
    if config is None:
        raise InputError(f"{out} holds no sweep.json")
    with directory_lock(out):
        store = Store(out, config)
        store.load()
        store.write_tables()
    return len(store.student_records), len(store.recovery_records)


def recluster(
    out: str | os.PathLike,
    unit: str,
    *,
    gamma: float | None = None,
    beta_deg: float | None = None,
    progress: ProgressFn | None = None,
) -> tuple[Recovery, dict[str, Any] | None]:
    """Cluster, reconstruct and fine-tune the finished students of one recovery unit again, as
    the sweep did (``ecflow cluster --sweep DIR --unit NAME``): the teacher and its queries are
    regenerated from the sweep's seeds, the students read from its unit files or its archive.

    Parameters
    ----------
    out : path-like
        The sweep directory.
    unit : str
        The unit's name, ``d{d_in}_r{r}_t{teacher}_rho{rho}`` (a row of ``recoveries.csv``).
    gamma, beta_deg : float, optional
        Other cluster thresholds than the sweep's.

    Returns
    -------
    (Recovery, dict or None)
        The reconstruction and the sweep's own record of that unit (None when the sweep has not
        run its recovery yet).

    Raises
    ------
    InputError
        No sweep in ``out``, an unknown unit, or a unit whose students are not all finished.
    """
    out = Path(out)
    config = read_sweep_config(out) if out.is_dir() else None
    if config is None:
        raise InputError(f"--sweep {out}: holds no sweep (no sweep.json)")
    store = Store(out, config)
    by_name = {g.name: g for g in store.recoveries}
    if unit not in by_name:
        raise InputError(
            f"--unit {unit!r}: not a unit of this sweep (names as d4_r2_t0_rho4, "
            f"one per row of recoveries.csv)"
        )
    g = by_name[unit]
    store.load()
    if not store.group_complete(g):
        done = sum(u in store.student_records for u in store.members(g))
        raise InputError(
            f"--unit {unit}: {done} of {config.n_students(g.r)} students finished; "
            "a recovery clusters all of them"
        )
    rconf = _recover_config(config, g)
    rconf = dataclasses.replace(
        rconf, gamma=rconf.gamma if gamma is None else gamma,
        beta_deg=rconf.beta_deg if beta_deg is None else beta_deg,
    )
    data = _teacher_data(config, g.teacher_key)
    if progress is not None:
        progress("", 0, 1)
    rec = _recovery_task(
        data["x"], data["y"], store.read_students(g), rconf, config.engine,
        data["x_fresh"], data["y_fresh"], data["teacher"],
    )
    if progress is not None:
        progress(unit, 1, 1)
    return rec, store.recovery_records.get(g)
