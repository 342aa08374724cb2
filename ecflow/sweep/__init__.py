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
roundoff-level steps of a training depend on the memory alignment of the arrays.

The package has five parts: :mod:`~ecflow.sweep.config` (the grid, the profiles, the units
and their seeds), :mod:`~ecflow.sweep.archive` (the compact copy of the finished units),
:mod:`~ecflow.sweep.store` (records, tables, the directory and its lock),
:mod:`~ecflow.sweep.runner` (the scheduling of the units on an executor, re-clustering one unit)
and :mod:`~ecflow.sweep.status` (where a sweep stands).

A repository keeps a sweep's ``sweep.json``, tables and ``archive/``; ``--resume`` on a clone
writes the archived units back and goes on from them.

Directory layout (``out``)::

    sweep.json                          format, version and the SweepConfig
    teachers/d{d_in}_r{r}_t{t}.h5       teacher network with its training queries
    students/d{..}_r{..}_t{..}_rho{ρ}_s{s}.h5 / .json   (a job-protocol result file)
    recoveries/d{..}_r{..}_t{..}_rho{ρ}.h5 / .json   (no .h5 when nothing was reconstructed)
    archive/d{..}_r{..}_t{..}_rho{ρ}.h5  the compact copy a repository keeps
                                        (:mod:`~ecflow.sweep.archive`)
    results.csv                         one row per student
    recoveries.csv                      one row per teacher and ρ

Figures are drawn from the two tables by :mod:`ecflow.plots`.
"""

from __future__ import annotations

from ecflow.engines.base import NEAR_ZERO_LOSS
from ecflow.sweep.config import (
    SUCCESS_RMSE,
    Profile,
    RecoveryUnit,
    StudentUnit,
    SweepConfig,
    TeacherKey,
    override_config,
    profile_config,
    recovery_units,
    student_units,
    unit_seed,
)
from ecflow.sweep.runner import (
    ProgressFn,
    SweepResult,
    SweepStatus,
    recluster,
    run_sweep,
    write_tables,
)
from ecflow.sweep.status import CellStatus, SweepProgress, sweep_status
from ecflow.sweep.store import (
    RECOVERIES_COLUMNS,
    RESULTS_COLUMNS,
    check_directory,
    prepare_directory,
    read_sweep_config,
    read_table,
    recoveries_rows,
    results_rows,
    write_csv,
)

__all__ = [
    "NEAR_ZERO_LOSS",
    "SUCCESS_RMSE",
    "Profile",
    "ProgressFn",
    "SweepConfig",
    "SweepStatus",
    "SweepResult",
    "StudentUnit",
    "RecoveryUnit",
    "TeacherKey",
    "profile_config",
    "override_config",
    "read_sweep_config",
    "check_directory",
    "prepare_directory",
    "student_units",
    "recovery_units",
    "unit_seed",
    "run_sweep",
    "recluster",
    "sweep_status",
    "SweepProgress",
    "CellStatus",
    "read_table",
    "write_tables",
    "write_csv",
    "results_rows",
    "recoveries_rows",
    "RESULTS_COLUMNS",
    "RECOVERIES_COLUMNS",
]
