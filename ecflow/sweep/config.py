"""The sweep's configuration: the grid, the named profiles and the units derived from them.

A sweep is fully determined by its :class:`SweepConfig`; every unit (a student training or a
recovery) and every seed is derived from it, so that any unit can be recomputed alone.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ecflow._checks import check_in_range, check_int
from ecflow.activations import get_activation
from ecflow.clustering import ClusterConfig
from ecflow.engines import ENGINES
from ecflow.engines.base import NEAR_ZERO_LOSS, TrainConfig
from ecflow.errors import InputError, InputTypeError

__all__ = [
    "SUCCESS_RMSE",
    "Profile",
    "SweepConfig",
    "TeacherKey",
    "RecoveryUnit",
    "StudentUnit",
    "profile_config",
    "override_config",
    "unit_seed",
    "recovery_units",
    "student_units",
    "TEACHER_SEED",
    "QUERIES_SEED",
    "FRESH_SEED",
    "STUDENT_SEED",
    "RECOVERY_SEED",
]

SUCCESS_RMSE = 1e-14
"""A recovery succeeds when it has the teacher's size and at most this RMSE on the training
queries (the paper's criterion for figure 5B, section 5)."""

# Seed domains: the first entry of every SeedSequence key, so that a teacher, its queries and its
# students never share a stream even when their other numbers coincide.
TEACHER_SEED, QUERIES_SEED, FRESH_SEED, STUDENT_SEED, RECOVERY_SEED = range(5)


def _int_axis(values: Any, name: str) -> tuple[int, ...]:
    if isinstance(values, (int, np.integer)) and not isinstance(values, bool):
        values = (values,)
    try:
        items = tuple(values)
    except TypeError:
        raise InputTypeError(
            f"{name} must be a sequence of positive integers, got {values!r}"
        ) from None
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
    cluster_counts : {"students", "neurons"}, default="students"
        What a cluster's size counts against ``gamma N``
        (:attr:`ecflow.clustering.ClusterConfig.counts`); the paper profile counts neurons,
        as the paper does.
    rho_order : tuple of int or None, default=None
        The order in which the ρ values are run, ρ by ρ, each over every teacher; None:
        ascending. A run stopped early then holds whole ρ values, the first ones complete.
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
    rho_order: tuple[int, ...] | None = None
    cluster_counts: str = "students"

    def __post_init__(self):
        object.__setattr__(self, "d_in", _int_axis(self.d_in, "d_in"))
        object.__setattr__(self, "r", _int_axis(self.r, "r"))
        object.__setattr__(self, "rho", _int_axis(self.rho, "rho"))
        if self.rho_order is not None:
            order = tuple(check_int(v, "each rho_order") for v in self.rho_order)
            if sorted(order) != list(self.rho):
                raise InputError(
                    f"rho_order {list(order)} must list each rho {list(self.rho)} once"
                )
            object.__setattr__(self, "rho_order", order)
        check_int(self.teachers, "teachers")
        if self.students is not None:
            check_int(self.students, "students")
        check_int(self.n_queries, "n_queries")
        check_int(self.n_fresh, "n_fresh")
        check_in_range(self.gamma, "gamma", 0.0, 1.0)
        check_in_range(self.beta_deg, "beta_deg", 0.0, 90.0, unit=" degrees")
        get_activation(self.activation)
        ClusterConfig(self.gamma, self.beta_deg, self.cluster_counts)
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

    @property
    def scheduled_rho(self) -> tuple[int, ...]:
        """The ρ values in the order they are run."""
        return self.rho if self.rho_order is None else self.rho_order

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
    # Their students stop at near-zero loss, the threshold of Fig. 4B (issue 12: in the
    # medium sweep of 2026-11-27, 97 of the 151 students at ρ 4 that reached it ran on to
    # their 60 s budget); the fine-tune of the reconstruction gives the machine precision.
    # The quick and medium profiles train fewer students (4, 10) for shorter times (10 s, 60 s
    # per student) than the paper (20, 5000 ODE steps plus a second-order phase, A.6.1), so
    # fewer of them reach zero loss; γ = 0.8 then asks a teacher neuron to appear in nearly
    # every student, and on the quick profile it recovered none of 12 teachers where γ = 0.5
    # recovered the groups with converged students. β keeps the paper's π/24.
    Profile.QUICK: lambda: SweepConfig(
        d_in=(2, 4), r=(2, 4), rho=(1, 2, 4), teachers=1, students=4, n_queries=10_000,
        gamma=0.5, beta_deg=7.5,
        train=TrainConfig(max_seconds=10.0, target_loss=NEAR_ZERO_LOSS),
        finetune=TrainConfig(max_seconds=10.0),
    ),
    Profile.MEDIUM: lambda: SweepConfig(
        d_in=(2, 4, 8, 16, 32), r=(2, 4, 8), rho=(1, 4), teachers=2, students=10,
        n_queries=30_000, gamma=0.5, beta_deg=7.5,
        train=TrainConfig(max_seconds=60.0, target_loss=NEAR_ZERO_LOSS),
        finetune=TrainConfig(max_seconds=60.0),
    ),
    # The paper profile keeps the paper's N, γ and β, and its cluster size |κ| ≥ γN in
    # neurons: counting students, γ = 0.8 lost a teacher neuron of d_in 4, r 2 teacher 0 (14
    # of 20 students at near-zero loss; its ρ-4 students recovered it at γ 0.6). Its students stop where Fig. 4B judges
    # them (near-zero loss) or at a stall; 120 s, twice the medium profile's budget, caps
    # those that creep (the summary sets the steps they took against the paper's 5000 ODE
    # plus 250 BFGS steps). ρ 4 and ρ 1 run first: the headline and its contrast in Fig. 4B.
    Profile.PAPER: lambda: SweepConfig(
        d_in=(2, 4, 8, 16, 32), r=(2, 4, 8), rho=(1, 2, 4, 8), teachers=10, students=None,
        n_queries=30_000, gamma=0.8, beta_deg=7.5,
        train=TrainConfig(max_seconds=120.0, target_loss=NEAR_ZERO_LOSS),
        rho_order=(4, 1, 2, 8), cluster_counts="neurons",
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
    if "rho" in overrides and "rho_order" not in overrides and base.rho_order is not None:
        # a subset of the profile's ρ values keeps the profile's order; new ones come last
        rho = set(_int_axis(overrides["rho"], "rho"))
        kept = [v for v in base.rho_order if v in rho]
        overrides["rho_order"] = (*kept, *sorted(rho - set(kept)))
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
    """All recoveries of the grid, in the order they are scheduled: ρ by ρ, and within a ρ
    teacher index by teacher index over every cell, so that a run stopped at any point has
    about as many teachers of each cell."""
    return [
        RecoveryUnit(d, r, t, rho)
        for rho in config.scheduled_rho
        for t in range(config.teachers)
        for d in config.d_in
        for r in config.r
    ]


def student_units(config: SweepConfig) -> list[StudentUnit]:
    """All student trainings of the grid, grouped by recovery, in scheduling order."""
    return [
        StudentUnit(g.d_in, g.r, g.teacher, g.rho, s)
        for g in recovery_units(config)
        for s in range(config.n_students(g.r))
    ]
