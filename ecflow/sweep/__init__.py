"""The synthetic-teacher sweep of the paper (section 5, figures 4 and 5, appendix A.6).

A sweep trains, for every cell ``(d_in, r)`` of a grid, ``teachers`` synthetic teachers
(appendix A.4), and for every teacher and overparameterisation factor ``ρ`` it trains
``N`` students with ``m = ρ r`` hidden neurons and runs Expand-and-Cluster on them. Two kinds
of *units* are executed:

- a **student** ``(d_in, r, teacher, ρ, s)``: one training from a seed derived from those five
  numbers (``np.random.SeedSequence``), so that any unit can be recomputed alone;
- a **recovery** ``(d_in, r, teacher, ρ)``: clustering, reconstruction and fine-tuning of the
  group's ``N`` students, started as soon as the last of them has finished.

Every finished unit is written at once, atomically, as an HDF5 network file plus a JSON record;
the JSON record is written last and marks the unit finished. Resuming reads the records,
skips finished units and computes only the others, so a run killed at any moment (SIGKILL
included) and resumed ends with the same records as an uninterrupted one, provided training is
limited by steps rather than wall-clock time (a time budget makes any run depend on the
machine's load). One caveat, measured: values at machine zero (losses below ~1e-24, RMSEs below
~1e-12) can differ in their digits between two runs of the same unit, because the last
roundoff-level steps of a training depend on the memory alignment of the arrays. Units run on a :mod:`concurrent.futures` executor
from :func:`ecflow.parallel.make_executor` — local processes or a Dask cluster — with a bounded
number in flight, so that the queries of only a few teachers are in memory or in transit.

Directory layout (``out``)::

    sweep.json                          format, version and the SweepConfig
    teachers/d{d_in}_r{r}_t{t}.h5       teacher network with its training queries
    students/d{..}_r{..}_t{..}_rho{ρ}_s{s}.h5 / .json
    recoveries/d{..}_r{..}_t{..}_rho{ρ}.h5 / .json   (no .h5 when nothing was reconstructed)
    results.csv                         one row per student
    recoveries.csv                      one row per teacher and ρ

Figures are drawn from the two tables by :mod:`ecflow.plots`.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import csv
import dataclasses
import enum
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecflow._checks import check_int
from ecflow import networks, teachers
from ecflow.activations import get_activation
from ecflow.engines import ENGINES
from ecflow.engines.base import NEAR_ZERO_LOSS, TrainConfig, TrainResult, TrainStatus
from ecflow.errors import InputError, InputTypeError
from ecflow.expansion import train_student
from ecflow.networks import MLP
from ecflow.parallel import make_executor
from ecflow.recover import RecoverConfig, Recovery, reconstruct_from_students

__all__ = [
    "NEAR_ZERO_LOSS",
    "SUCCESS_RMSE",
    "Profile",
    "SweepConfig",
    "SweepStatus",
    "SweepResult",
    "StudentUnit",
    "RecoveryUnit",
    "profile_config",
    "override_config",
    "read_sweep_config",
    "check_directory",
    "prepare_directory",
    "student_units",
    "recovery_units",
    "unit_seed",
    "run_sweep",
    "read_table",
    "write_tables",
    "results_rows",
    "recoveries_rows",
    "RESULTS_COLUMNS",
    "RECOVERIES_COLUMNS",
]

log = logging.getLogger(__name__)

SUCCESS_RMSE = 1e-14
"""A recovery succeeds when it has the teacher's size and at most this RMSE on the training
queries (the paper's criterion for figure 5B, section 5)."""

TABLE_INTERVAL_S = 60.0
"""Seconds between rewrites of the tables while students finish (always after a recovery)."""

SWEEP_FORMAT = "sweep"
SWEEP_VERSION = 1

# Seed domains: the first entry of every SeedSequence key, so that a teacher, its queries and its
# students never share a stream even when their other numbers coincide.
_TEACHER, _QUERIES, _FRESH, _STUDENT, _RECOVERY = range(5)


def _int_axis(values: Any, name: str) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    try:
        items = tuple(values)
    except TypeError:
        raise InputTypeError(f"{name} must be a sequence of positive integers, got {values!r}") from None
    if not items:
        raise InputError(f"{name} is empty: the sweep grid needs at least one value of {name}")
    out = tuple(check_int(v, f"each {name}") for v in items)
    if len(set(out)) != len(out):
        raise InputError(f"{name} has repeated values: {list(out)}")
    return tuple(sorted(out))


def _train_to_dict(config: TrainConfig) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = v.value if isinstance(v, enum.Enum) else v
    return out


def _train_from_dict(data: Mapping[str, Any], name: str) -> TrainConfig:
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(data) - known
    if unknown:
        raise InputError(f"{name} has unknown settings: {', '.join(sorted(unknown))}")
    return TrainConfig(**data)


class Profile(enum.Enum):
    """Named sweep sizes (``--profile``)."""

    QUICK = "quick"
    """d_in ∈ {2, 4} × r ∈ {2, 4}, 1 teacher, ρ ∈ {1, 2, 4}, 4 students, 10k queries: minutes."""
    MEDIUM = "medium"
    """All 15 cells × 2 teachers, ρ ∈ {1, 4}, 10 students, 30k queries: hours."""
    PAPER = "paper"
    """The paper's 150 teachers at ρ ∈ {1, 2, 4, 8} with the settings of appendix A.6.4: days."""


@dataclass(frozen=True)
class SweepConfig:
    """Everything that determines a sweep's results (stored in ``sweep.json``).

    Parameters
    ----------
    d_in : tuple of int
        Input dimensions of the teachers.
    r : tuple of int
        Hidden-layer sizes of the (one-hidden-layer) teachers.
    rho : tuple of int
        Overparameterisation factors; a student has ``ρ r`` hidden neurons.
    teachers : int
        Teachers per cell ``(d_in, r)``.
    students : int or None, default=None
        Students per teacher and ρ. None follows appendix A.6.4: 20 for r ≤ 4, 10 for larger r.
    n_queries : int, default=30_000
        Training queries per teacher (paper A.6.1).
    n_fresh : int, default=10_000
        Fresh inputs, not used in training, on which the reconstruction's RMSE is also reported.
    gamma : float, default=0.8
        Minimal cluster size as a fraction of the students (appendix A.6.4, shallow teachers).
    beta_deg : float, default=7.5
        Maximal alignment angle of a cluster in degrees (π/24, appendix A.6.4).
    activation : str, default="g"
        Hidden activation of teachers and students (the paper's ``softplus(z) + sigmoid(4z)``).
    engine : str, default="native"
    seed : int, default=0
        Root of every derived seed.
    train : TrainConfig
        Student training.
    finetune : TrainConfig
        Fine-tuning of the reconstructed network.
    """

    d_in: tuple[int, ...]
    r: tuple[int, ...]
    rho: tuple[int, ...]
    teachers: int
    students: int | None = None
    n_queries: int = 30_000
    n_fresh: int = 10_000
    gamma: float = 0.8
    beta_deg: float = 7.5
    activation: str = "g"
    engine: str = "native"
    seed: int = 0
    train: TrainConfig = field(default_factory=TrainConfig)
    # The paper fine-tunes for up to 15 minutes (A.6.1); 2 minutes of LM is plenty at the
    # sizes of the synthetic teachers (at most 8 hidden neurons).
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(max_seconds=120.0))

    def __post_init__(self):
        object.__setattr__(self, "d_in", _int_axis(self.d_in, "d_in"))
        object.__setattr__(self, "r", _int_axis(self.r, "r"))
        object.__setattr__(self, "rho", _int_axis(self.rho, "rho"))
        check_int(self.teachers, "teachers")
        if self.students is not None:
            check_int(self.students, "students")
        check_int(self.n_queries, "n_queries")
        check_int(self.n_fresh, "n_fresh")
        if not (isinstance(self.gamma, (int, float)) and 0.0 < self.gamma <= 1.0):
            raise InputError(f"gamma must be in (0, 1], got {self.gamma!r}")
        if not (isinstance(self.beta_deg, (int, float)) and 0.0 < self.beta_deg <= 90.0):
            raise InputError(f"beta_deg must be in (0, 90] degrees, got {self.beta_deg!r}")
        get_activation(self.activation)
        if self.engine not in ENGINES:
            raise InputError(
                f"engine must be one of: {', '.join(ENGINES)}; got {self.engine!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise InputTypeError(f"seed must be an integer, got {self.seed!r}")
        if self.seed < 0:
            raise InputError(f"seed must be non-negative, got {self.seed}")
        for name in ("train", "finetune"):
            if not isinstance(getattr(self, name), TrainConfig):
                raise InputTypeError(f"{name} must be a TrainConfig, got {getattr(self, name)!r}")

    def n_students(self, r: int) -> int:
        """Students per teacher and ρ for teachers with ``r`` hidden neurons."""
        if self.students is not None:
            return int(self.students)
        return 20 if r <= 4 else 10

    @property
    def n_teachers(self) -> int:
        return len(self.d_in) * len(self.r) * self.teachers

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready settings; :meth:`from_dict` inverts it exactly."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, TrainConfig):
                v = _train_to_dict(v)
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SweepConfig:
        """Rebuild a config from :meth:`to_dict` output, validating every field."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown sweep settings: {', '.join(sorted(unknown))}")
        kwargs = dict(data)
        for name in ("train", "finetune"):
            if name in kwargs:
                kwargs[name] = _train_from_dict(kwargs[name], name)
        return cls(**kwargs)


_PROFILES: dict[Profile, Callable[[], SweepConfig]] = {
    # The quick and medium profiles train fewer students (4, 10) for shorter times (10 s, 60 s
    # per student) than the paper (20, 5000 ODE steps plus a second-order phase, A.6.1), so
    # fewer of them reach zero loss; γ = 0.8 then asks a teacher neuron to appear in nearly
    # every student, and on the quick profile it recovered none of 12 teachers where γ = 0.5
    # recovered the groups with converged students. β keeps the paper's π/24.
    Profile.QUICK: lambda: SweepConfig(
        d_in=(2, 4), r=(2, 4), rho=(1, 2, 4), teachers=1, students=4, n_queries=10_000,
        gamma=0.5, beta_deg=7.5,
        train=TrainConfig(max_seconds=10.0), finetune=TrainConfig(max_seconds=10.0),
    ),
    Profile.MEDIUM: lambda: SweepConfig(
        d_in=(2, 4, 8, 16, 32), r=(2, 4, 8), rho=(1, 4), teachers=2, students=10,
        n_queries=30_000, gamma=0.5, beta_deg=7.5,
        train=TrainConfig(max_seconds=60.0), finetune=TrainConfig(max_seconds=60.0),
    ),
    Profile.PAPER: lambda: SweepConfig(
        d_in=(2, 4, 8, 16, 32), r=(2, 4, 8), rho=(1, 2, 4, 8), teachers=10, students=None,
        n_queries=30_000, gamma=0.8, beta_deg=7.5,
    ),
}


def profile_config(profile: Profile | str, **overrides: Any) -> SweepConfig:
    """The config of a named profile with some fields replaced (see :func:`override_config`).

    Parameters
    ----------
    profile : Profile or str
        ``"quick"``, ``"medium"`` or ``"paper"``.
    **overrides
        As :func:`override_config`.
    """
    if not isinstance(profile, Profile):
        try:
            profile = Profile(profile)
        except ValueError:
            known = ", ".join(p.value for p in Profile)
            raise InputError(f"unknown profile {profile!r}; expected one of: {known}") from None
    return override_config(_PROFILES[profile](), **overrides)


def override_config(base: SweepConfig, **overrides: Any) -> SweepConfig:
    """``base`` with some fields replaced.

    Parameters
    ----------
    base : SweepConfig
    **overrides
        Fields of :class:`SweepConfig`; a value of None keeps the base's. ``max_seconds``
        replaces the student training's wall-clock budget; ``max_steps`` the step budget of
        the student training and of the fine-tuning.
    """
    overrides = {k: v for k, v in overrides.items() if v is not None}
    max_seconds = overrides.pop("max_seconds", None)
    max_steps = overrides.pop("max_steps", None)
    known = {f.name for f in dataclasses.fields(SweepConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise InputError(f"unknown sweep settings: {', '.join(sorted(unknown))}")
    train = overrides.pop("train", base.train)
    finetune = overrides.pop("finetune", base.finetune)
    if max_seconds is not None:
        train = dataclasses.replace(train, max_seconds=max_seconds)
    if max_steps is not None:
        train = dataclasses.replace(train, max_steps=max_steps)
        finetune = dataclasses.replace(finetune, max_steps=max_steps)
    return dataclasses.replace(base, train=train, finetune=finetune, **overrides)


# --- units ---------------------------------------------------------------------------------------


def unit_seed(config: SweepConfig, domain: int, *numbers: int) -> int:
    """A 32-bit seed derived from the sweep seed, a domain tag and the unit's numbers."""
    key = [int(config.seed), int(domain), *(int(n) for n in numbers)]
    return int(np.random.SeedSequence(key).generate_state(1)[0])


@dataclass(frozen=True, order=True)
class TeacherKey:
    d_in: int
    r: int
    teacher: int

    @property
    def name(self) -> str:
        return f"d{self.d_in}_r{self.r}_t{self.teacher}"


@dataclass(frozen=True, order=True)
class RecoveryUnit:
    """One Expand-and-Cluster run: teacher ``(d_in, r, teacher)`` at factor ``rho``."""

    d_in: int
    r: int
    teacher: int
    rho: int

    @property
    def teacher_key(self) -> TeacherKey:
        return TeacherKey(self.d_in, self.r, self.teacher)

    @property
    def name(self) -> str:
        return f"{self.teacher_key.name}_rho{self.rho}"


@dataclass(frozen=True, order=True)
class StudentUnit:
    """One student training: student ``student`` of teacher ``(d_in, r, teacher)`` at ``rho``."""

    d_in: int
    r: int
    teacher: int
    rho: int
    student: int

    @property
    def group(self) -> RecoveryUnit:
        return RecoveryUnit(self.d_in, self.r, self.teacher, self.rho)

    @property
    def name(self) -> str:
        return f"{self.group.name}_s{self.student}"

    @property
    def hidden(self) -> tuple[int, ...]:
        return (self.rho * self.r,)


def recovery_units(config: SweepConfig) -> list[RecoveryUnit]:
    """All recoveries of the grid, in the order they are scheduled."""
    return [
        RecoveryUnit(d, r, t, rho)
        for d in config.d_in
        for r in config.r
        for t in range(config.teachers)
        for rho in config.rho
    ]


def student_units(config: SweepConfig) -> list[StudentUnit]:
    """All student trainings of the grid, grouped by recovery, in scheduling order."""
    return [
        StudentUnit(g.d_in, g.r, g.teacher, g.rho, s)
        for g in recovery_units(config)
        for s in range(config.n_students(g.r))
    ]


def _teacher_data(config: SweepConfig, key: TeacherKey) -> dict[str, Any]:
    """The teacher, its training queries and fresh inputs, all from derived seeds."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread, as in the workers, so that the teacher's outputs never depend on how
    # many threads the main process happens to have.
    with threadpool_limits(limits=1):
        return _draw_teacher_data(config, key)


def _draw_teacher_data(config: SweepConfig, key: TeacherKey) -> dict[str, Any]:
    tconf = teachers.TeacherConfig(d_in=key.d_in, hidden=(key.r,), activation=config.activation)
    net = teachers.synthetic_teacher(tconf, unit_seed(config, _TEACHER, key.d_in, key.r, key.teacher))
    x = teachers.sample_inputs(
        config.n_queries, key.d_in, unit_seed(config, _QUERIES, key.d_in, key.r, key.teacher)
    )
    x_fresh = teachers.sample_inputs(
        config.n_fresh, key.d_in, unit_seed(config, _FRESH, key.d_in, key.r, key.teacher)
    )
    return {
        "teacher": net,
        "x": x,
        "y": teachers.query(net, x),
        "x_fresh": x_fresh,
        "y_fresh": teachers.query(net, x_fresh),
    }


# --- tasks (run in worker processes; top-level so that they pickle) ------------------------------


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
        n_queries=config.n_queries,
        n_fresh=config.n_fresh,
        rho=unit.rho,
        activation=config.activation,
        seed=unit_seed(config, _RECOVERY, unit.d_in, unit.r, unit.teacher, unit.rho),
        train=config.train,
        finetune=config.finetune,
    )


# --- records (the JSON files that mark finished units) -------------------------------------------


def _finite_or_none(v: Any) -> float | None:
    v = float(v)
    return v if math.isfinite(v) else None


def _student_record(unit: StudentUnit, seed: int, res: TrainResult) -> dict[str, Any]:
    return {
        "d_in": unit.d_in,
        "r": unit.r,
        "teacher": unit.teacher,
        "rho": unit.rho,
        "student": unit.student,
        "seed": seed,
        "hidden": list(unit.hidden),
        "loss": _finite_or_none(res.loss),
        "rmse": _finite_or_none(res.rmse),
        "grad_norm": _finite_or_none(res.grad_norm),
        "status": res.status.name,
        "stopped_by": str(res.stopped_by),
        "steps": int(res.steps),
        "seconds": float(res.seconds),
        "engine": str(res.engine),
        "notes": [str(n) for n in res.notes],
    }


def _none_to_nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _student_from_record(record: Mapping[str, Any], network: MLP) -> TrainResult:
    """The TrainResult handed to the recovery, identical whether fresh or read back from disk."""
    return TrainResult(
        network=network,
        loss=_none_to_nan(record["loss"]),
        rmse=_none_to_nan(record["rmse"]),
        grad_norm=_none_to_nan(record["grad_norm"]),
        status=TrainStatus[record["status"]],
        stopped_by=record["stopped_by"],
        steps=int(record["steps"]),
        seconds=float(record["seconds"]),
        # The loss history is not kept on disk; an empty one is passed in both cases so that a
        # resumed recovery sees exactly what an uninterrupted one does.
        history=np.zeros((0, 2)),
        engine=record["engine"],
        notes=tuple(record["notes"]),
    )


def _recovery_record(unit: RecoveryUnit, rec: Recovery) -> dict[str, Any]:
    sizes = tuple(int(s) for s in rec.hidden_sizes)
    rmse_train = None if rec.rmse_train is None else _finite_or_none(rec.rmse_train)
    success = (
        rec.network is not None
        and sizes == (unit.r,)
        and rmse_train is not None
        and rmse_train <= SUCCESS_RMSE
    )
    return {
        "d_in": unit.d_in,
        "r": unit.r,
        "teacher": unit.teacher,
        "rho": unit.rho,
        "teacher_size": unit.r,
        # One hidden layer here; 0 when nothing was reconstructed.
        "recovered_size": sizes[0] if sizes else 0,
        "rmse_train": rmse_train,
        "rmse_fresh": None if rec.rmse_fresh is None else _finite_or_none(rec.rmse_fresh),
        "max_cosine_distance": (
            None if rec.max_cosine_distance is None else _finite_or_none(rec.max_cosine_distance)
        ),
        "success": bool(success),
        "status": rec.status.name,
        "seconds": float(rec.seconds),
        "report": rec.to_report(),
    }


def _write_json(path: Path, obj: Any) -> None:
    with networks.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: unreadable record ({exc})") from None


# --- tables --------------------------------------------------------------------------------------

RESULTS_COLUMNS = (
    "d_in", "r", "teacher", "rho", "student", "seed", "hidden",
    "loss", "rmse", "status", "steps", "seconds",
)
"""Columns of ``results.csv`` (one row per student)."""

RECOVERIES_COLUMNS = (
    "d_in", "r", "teacher", "rho", "n_students", "teacher_size", "recovered_size",
    "rmse_train", "rmse_fresh", "max_cosine_distance", "success", "status", "seconds",
)
"""Columns of ``recoveries.csv`` (one row per teacher and ρ)."""


def _cell(v: Any) -> str:
    if v is None:
        return "nan"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)  # shortest text that reads back to the same float
    if isinstance(v, (list, tuple)):
        return "-".join(str(x) for x in v)
    return str(v)


def results_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Rows of ``results.csv`` from student records, sorted by unit."""
    rows = []
    for rec in sorted(
        records, key=lambda r: (r["d_in"], r["r"], r["teacher"], r["rho"], r["student"])
    ):
        rows.append({c: _cell(rec[c]) for c in RESULTS_COLUMNS})
    return rows


def recoveries_rows(
    records: Iterable[Mapping[str, Any]], config: SweepConfig
) -> list[dict[str, str]]:
    """Rows of ``recoveries.csv`` from recovery records, sorted by unit."""
    rows = []
    for rec in sorted(records, key=lambda r: (r["d_in"], r["r"], r["teacher"], r["rho"])):
        full = dict(rec, n_students=config.n_students(rec["r"]))
        rows.append({c: _cell(full[c]) for c in RECOVERIES_COLUMNS})
    return rows


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with networks.atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def read_table(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Read ``results.csv`` or ``recoveries.csv`` back with typed values.

    Integers become ``int``, ``true``/``false`` become ``bool``, other numbers ``float``
    (``nan`` for a missing value); text stays ``str``.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: table not found")
    with p.open(newline="") as fh:
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _parse_cell(text: str) -> Any:
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


# --- the directory -------------------------------------------------------------------------------


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


def _paths(out: Path) -> dict[str, Path]:
    return {
        "config": out / "sweep.json",
        "teachers": out / "teachers",
        "students": out / "students",
        "recoveries": out / "recoveries",
        "results": out / "results.csv",
        "recoveries_csv": out / "recoveries.csv",
    }


def _config_differences(a: SweepConfig, b: SweepConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]


def read_sweep_config(out: str | os.PathLike) -> SweepConfig | None:
    """The config stored in a sweep directory, or None when it holds none."""
    p = Path(out) / "sweep.json"
    if not p.is_file():
        return None
    data = _read_json(p)
    if not isinstance(data, dict) or data.get("ecflow_format") != SWEEP_FORMAT:
        raise InputError(f"{p}: not an ecflow sweep file (ecflow_format != {SWEEP_FORMAT!r})")
    if data.get("version") != SWEEP_VERSION:
        raise InputError(f"{p}: unsupported sweep version {data.get('version')!r}")
    try:
        return SweepConfig.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"{p}: invalid sweep configuration ({exc})") from None


def check_directory(
    out: str | os.PathLike, config: SweepConfig | None, resume: bool
) -> SweepConfig:
    """Check ``out`` against ``config`` and ``resume`` without writing; return the config to run.

    Parameters
    ----------
    out : path-like
    config : SweepConfig or None
        None is allowed only with ``resume`` and a directory holding a sweep: its config is used.
    resume : bool

    Raises
    ------
    ValueError
        A non-empty directory without ``resume``; ``resume`` on a directory holding a different
        configuration or something other than a sweep; no config and nothing to resume.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    stored = read_sweep_config(out) if out.is_dir() else None
    non_empty = out.is_dir() and any(out.iterdir())
    if not resume:
        if stored is not None:
            raise InputError(
                f"{out} already holds a sweep; pass --resume to continue it or pick another folder"
            )
        if non_empty:
            raise InputError(f"{out} is not empty; pick another folder for the sweep")
    elif stored is None and non_empty:
        raise InputError(f"{out} is not empty and holds no sweep.json: nothing to resume there")
    if stored is not None and config is not None and stored != config:
        diff = ", ".join(_config_differences(stored, config))
        raise InputError(
            f"{out} holds a sweep with a different configuration (differs in: {diff}); "
            "resume it with its own settings or pick another folder"
        )
    config = stored if config is None else config
    if config is None:
        raise InputError(f"{out} holds no sweep to resume; give a profile or grid options")
    return config


def _create_directory(out: Path, config: SweepConfig) -> None:
    paths = _paths(out)
    try:
        for key in ("teachers", "students", "recoveries"):
            paths[key].mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the sweep directory ({exc.strerror})") from None
    if not paths["config"].is_file():
        _write_json(
            paths["config"],
            {"ecflow_format": SWEEP_FORMAT, "version": SWEEP_VERSION, "config": config.to_dict()},
        )


def prepare_directory(
    out: str | os.PathLike, config: SweepConfig | None, resume: bool
) -> SweepConfig:
    """:func:`check_directory`, then create the folders and ``sweep.json``; returns the config."""
    config = check_directory(out, config, resume)
    _create_directory(Path(out), config)
    return config


# --- the run -------------------------------------------------------------------------------------


def _executor_slots(executor: cf.Executor, workers: int | None) -> int:
    """Tasks kept in flight: twice the parallelism, so that no worker waits for a submission."""
    client = getattr(executor, "_client", None)  # a Dask ClientExecutor
    if client is not None:
        try:
            return max(2, 2 * sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001 - a cluster that cannot say its size gets a fixed window
            return 64
    return max(2, 2 * (workers or 1))


ProgressFn = Callable[[int, int, str], None]


class _Run:
    """State of one :func:`run_sweep` call: records on disk and in memory, and the scheduler."""

    def __init__(self, out: Path, config: SweepConfig, progress: ProgressFn | None):
        self.out = out
        self.config = config
        self.paths = _paths(out)
        self.progress = progress
        self.students = student_units(config)
        self.recoveries = recovery_units(config)
        self.student_records: dict[StudentUnit, dict[str, Any]] = {}
        self.recovery_records: dict[RecoveryUnit, dict[str, Any]] = {}
        self.teacher_cache: dict[TeacherKey, dict[str, Any]] = {}
        self.done = 0
        self.students_run = 0
        self.recoveries_run = 0
        self.tables_written = time.monotonic()

    # -- files --
    def student_path(self, u: StudentUnit, ext: str) -> Path:
        return self.paths["students"] / f"{u.name}.{ext}"

    def recovery_path(self, u: RecoveryUnit, ext: str) -> Path:
        return self.paths["recoveries"] / f"{u.name}.{ext}"

    def load_finished(self) -> None:
        # A run killed while writing leaves hidden temporary files (networks.atomic_path).
        folders = (self.out, self.paths["teachers"], self.paths["students"], self.paths["recoveries"])
        for folder in (f for f in folders if f.is_dir()):
            for tmp in folder.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        self.student_records.clear()
        self.recovery_records.clear()
        for u in self.students:
            p = self.student_path(u, "json")
            if p.is_file() and self.student_path(u, "h5").is_file():
                self.student_records[u] = _read_json(p)
        for g in self.recoveries:
            p = self.recovery_path(g, "json")
            if p.is_file():
                self.recovery_records[g] = _read_json(p)
        self.done = len(self.student_records) + len(self.recovery_records)

    def teacher(self, key: TeacherKey) -> dict[str, Any]:
        data = self.teacher_cache.get(key)
        if data is None:
            data = _teacher_data(self.config, key)
            path = self.paths["teachers"] / f"{key.name}.h5"
            if not path.is_file():
                networks.write_network(
                    path, data["teacher"], x=data["x"], y=data["y"],
                    attrs={
                        "teacher": "synthetic",
                        "d_in": key.d_in,
                        "r": key.r,
                        "index": key.teacher,
                        "seed": unit_seed(self.config, _TEACHER, key.d_in, key.r, key.teacher),
                        "activation": self.config.activation,
                    },
                )
            self.teacher_cache[key] = data
        return data

    def start(self) -> None:
        """Report the units found finished (the first progress call)."""
        if self.progress is not None:
            self.progress(self.done, len(self.students) + len(self.recoveries), "")

    def summary(self, status: SweepStatus, seconds: float) -> SweepResult:
        """Write the tables and sum up this call."""
        self.write_tables()
        config = self.config
        n_success = {rho: 0 for rho in config.rho}
        for g, rec in self.recovery_records.items():
            n_success[g.rho] += bool(rec["success"])
        per_rho = ", ".join(f"ρ={rho}: {n}/{config.n_teachers}" for rho, n in n_success.items())
        total = len(self.students) + len(self.recoveries)
        ran = self.students_run + self.recoveries_run
        reason = (
            f"{self.students_run} students and {self.recoveries_run} recoveries computed, "
            f"{total - ran} of {total} units already finished; recovered {per_rho}"
        )
        return SweepResult(
            out=self.out,
            status=status,
            reason=reason,
            n_students=len(self.students),
            n_recoveries=len(self.recoveries),
            students_run=self.students_run,
            recoveries_run=self.recoveries_run,
            n_success=n_success,
            seconds=seconds,
        )

    def tick(self, name: str) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.students) + len(self.recoveries), name)

    # -- submissions --
    def submit_student(self, ex: cf.Executor, u: StudentUnit) -> cf.Future:
        data = self.teacher(u.group.teacher_key)
        seed = unit_seed(self.config, _STUDENT, u.d_in, u.r, u.teacher, u.rho, u.student)
        return ex.submit(
            _student_task, data["x"], data["y"], u.hidden, self.config.activation, seed,
            self.config.train, self.config.engine,
        )

    def group_students(self, g: RecoveryUnit) -> list[TrainResult]:
        out = []
        for s in range(self.config.n_students(g.r)):
            u = StudentUnit(g.d_in, g.r, g.teacher, g.rho, s)
            net = networks.read_network(self.student_path(u, "h5"))
            out.append(_student_from_record(self.student_records[u], net))
        return out

    def submit_recovery(self, ex: cf.Executor, g: RecoveryUnit) -> cf.Future:
        data = self.teacher(g.teacher_key)
        return ex.submit(
            _recovery_task, data["x"], data["y"], self.group_students(g),
            _recover_config(self.config, g), self.config.engine,
            data["x_fresh"], data["y_fresh"], data["teacher"],
        )

    # -- completions --
    def finish_student(self, u: StudentUnit, res: TrainResult) -> None:
        seed = unit_seed(self.config, _STUDENT, u.d_in, u.r, u.teacher, u.rho, u.student)
        record = _student_record(u, seed, res)
        networks.write_network(
            self.student_path(u, "h5"), res.network,
            attrs={k: v for k, v in record.items() if not isinstance(v, list)},
        )
        _write_json(self.student_path(u, "json"), record)
        log.info("student %s: loss %.3g (%s) in %.1f s", u.name, res.loss, res.status.name, res.seconds)
        self.student_records[u] = record
        self.students_run += 1
        self.tick(u.name)
        # Tables follow the records at most a minute behind (rewriting them after every unit
        # would cost quadratic time over a sweep of thousands of students).
        if time.monotonic() - self.tables_written > TABLE_INTERVAL_S:
            self.write_tables()

    def finish_recovery(self, g: RecoveryUnit, rec: Recovery) -> None:
        record = _recovery_record(g, rec)
        h5 = self.recovery_path(g, "h5")
        if rec.network is not None:
            attrs = dict(rec.to_attrs())
            attrs.update(
                {k: record[k] for k in ("d_in", "r", "teacher", "rho", "success", "teacher_size")}
            )
            networks.write_network(h5, rec.network, attrs=attrs)
        elif h5.exists():
            h5.unlink()  # left by an earlier attempt of this unit, killed before its record
        _write_json(self.recovery_path(g, "json"), record)
        log.info("recovery %s: %s, sizes %s", g.name, rec.status.name, rec.hidden_sizes)
        self.recovery_records[g] = record
        self.recoveries_run += 1
        self.tick(g.name)
        self.write_tables()

    def write_tables(self) -> None:
        self.tables_written = time.monotonic()
        _write_csv(
            self.paths["results"], RESULTS_COLUMNS,
            results_rows(self.student_records.values()),
        )
        _write_csv(
            self.paths["recoveries_csv"], RECOVERIES_COLUMNS,
            recoveries_rows(self.recovery_records.values(), self.config),
        )

    def group_complete(self, g: RecoveryUnit) -> bool:
        return all(
            StudentUnit(g.d_in, g.r, g.teacher, g.rho, s) in self.student_records
            for s in range(self.config.n_students(g.r))
        )

    def execute(self, ex: cf.Executor, slots: int) -> None:
        """Run every unfinished unit, ``slots`` at most in flight, recoveries as soon as ready."""
        todo_students = [u for u in self.students if u not in self.student_records]
        todo_groups = [g for g in self.recoveries if g not in self.recovery_records]
        # Units still to finish per teacher: its queries stay in memory until the count is 0.
        remaining: dict[TeacherKey, int] = {}
        for unit in (*todo_students, *todo_groups):
            key = unit.group.teacher_key if isinstance(unit, StudentUnit) else unit.teacher_key
            remaining[key] = remaining.get(key, 0) + 1
        in_flight: dict[cf.Future, StudentUnit | RecoveryUnit] = {}
        waiting = set(todo_groups)

        def submit_recovery_if_ready(g: RecoveryUnit) -> None:
            if g in waiting and self.group_complete(g):
                waiting.discard(g)
                in_flight[self.submit_recovery(ex, g)] = g

        def finished(key: TeacherKey) -> None:
            remaining[key] -= 1
            if remaining[key] == 0:
                self.teacher_cache.pop(key, None)

        for g in todo_groups:
            submit_recovery_if_ready(g)
        next_student = 0
        try:
            while next_student < len(todo_students) or in_flight:
                while next_student < len(todo_students) and len(in_flight) < slots:
                    u = todo_students[next_student]
                    in_flight[self.submit_student(ex, u)] = u
                    next_student += 1
                done, _ = cf.wait(list(in_flight), return_when=cf.FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: in_flight[f].name):
                    unit = in_flight.pop(fut)
                    result = fut.result()
                    if isinstance(unit, StudentUnit):
                        self.finish_student(unit, result)
                        finished(unit.group.teacher_key)
                        submit_recovery_if_ready(unit.group)
                    else:
                        self.finish_recovery(unit, result)
                        finished(unit.teacher_key)
        finally:
            for fut in in_flight:
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
        The sweep directory (layout in the module docstring).
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
        Called as ``progress(done, total, unit_name)`` after every finished unit, and once at
        the start with the units already finished.

    Returns
    -------
    SweepResult

    Raises
    ------
    ValueError
        Bad directory or configuration (see :func:`prepare_directory`), bad ``workers``, an
        unreachable scheduler.
    """
    t0 = time.perf_counter()
    out = Path(out)
    if workers is not None and (
        isinstance(workers, bool) or not isinstance(workers, int) or workers < 1
    ):
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    config = check_directory(out, config, resume)
    run = _Run(out, config, progress)
    run.load_finished()
    if run.done < len(run.students) + len(run.recoveries):
        # The executor (and a Dask connection) is set up before anything is written, so that
        # an unreachable scheduler leaves no directory behind.
        with make_executor(workers=workers, scheduler=scheduler) as ex:
            _create_directory(out, config)
            with _directory_lock(out):
                run.load_finished()  # under the lock: what another run finished meanwhile
                run.start()
                run.execute(ex, _executor_slots(ex, workers))
                return run.summary(SweepStatus.COMPLETE, time.perf_counter() - t0)
    with _directory_lock(out):
        run.start()
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
    ValueError
        ``out`` holds no sweep, or a sweep is running in it.
    """
    out = Path(out)
    config = read_sweep_config(out)
    if config is None:
        raise InputError(f"{out} holds no sweep.json")
    with _directory_lock(out):
        run = _Run(out, config, None)
        run.load_finished()
        run.write_tables()
    return len(run.student_records), len(run.recovery_records)


@contextlib.contextmanager
def _directory_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` so that two runs never write the same sweep; the
    kernel releases it when the process dies, SIGKILL included."""
    import fcntl

    with open(out / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(f"{out}: another sweep is running in this folder") from None
        yield


