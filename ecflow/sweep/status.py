"""Where a sweep stands: the units done, started and missing per ρ and cell, and the time left.

Read from the unit files and the archive alone (nothing is computed or written), so that it can
be asked of a sweep that is running, stopped, or only cloned from a repository.
"""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass
from pathlib import Path

from ecflow.errors import InputError
from ecflow.safety import lock_folder
from ecflow.sweep.config import RecoveryUnit, SweepConfig
from ecflow.sweep.store import Store, read_sweep_config

__all__ = ["CellStatus", "SweepProgress", "sweep_status"]


@dataclass(frozen=True)
class CellStatus:
    """The recoveries of one cell ``(d_in, r)`` at one ρ.

    Attributes
    ----------
    done : int
        Recoveries finished.
    started : int
        Recoveries with some of their students finished, not the recovery.
    missing : int
        Recoveries with no finished unit.
    students_done, students_total : int
    successes : int
        Finished recoveries at the teacher's size and the success RMSE.
    """

    done: int
    started: int
    missing: int
    students_done: int
    students_total: int
    successes: int

    @property
    def complete(self) -> bool:
        return self.started == 0 and self.missing == 0


@dataclass(frozen=True)
class SweepProgress:
    """Outcome of :func:`sweep_status`.

    Attributes
    ----------
    config : SweepConfig
    cells : dict of (rho, d_in, r) to CellStatus
    seconds_left : float or None
        Estimated seconds of one worker to finish every unit (None when no unit has finished
        to estimate from): each missing student costs the mean of the finished students of its
        cell and ρ (or of its ρ, or of all), each missing recovery the mean recovery.
    running : bool
        Whether a run holds the sweep's lock now.
    archive_errors : list of str
    """

    config: SweepConfig
    cells: dict[tuple[int, int, int], CellStatus]
    seconds_left: float | None
    running: bool
    archive_errors: list[str]

    def per_rho(self, rho: int) -> CellStatus:
        """The counts of every cell at ``rho`` added up."""
        cells = [c for (p, _, _), c in self.cells.items() if p == rho]
        return CellStatus(*(sum(getattr(c, f) for c in cells) for f in CellStatus.__annotations__))

    def lines(self, workers: int = 1) -> list[str]:
        """The text ``ecflow synthetic-sweep --status`` prints."""
        cfg = self.config
        out = [
            f"{cfg.n_teachers} teachers (d_in {list(cfg.d_in)} x r {list(cfg.r)} x "
            f"{cfg.teachers}), rho run in the order {list(cfg.scheduled_rho)}; "
            + ("a run is active in this folder" if self.running else "no run is active")
        ]
        for rho in cfg.scheduled_rho:
            t = self.per_rho(rho)
            out.append(
                f"rho {rho}: {t.done} of {t.done + t.started + t.missing} recoveries done "
                f"({t.successes} recovered exactly), {t.started} started, {t.missing} missing; "
                f"students {t.students_done} of {t.students_total}"
            )
            full = [f"d{d}r{r}" for d in cfg.d_in for r in cfg.r if self.cells[rho, d, r].complete]
            if full and len(full) < len(cfg.d_in) * len(cfg.r):
                out.append(f"  cells complete: {', '.join(full)}")
            elif full:
                out.append("  every cell complete")
        if self.seconds_left is None:
            out.append("time left: unknown (no unit has finished yet)")
        elif self.seconds_left == 0:
            out.append("time left: none, every unit is finished")
        else:
            hours = self.seconds_left / 3600
            out.append(
                f"time left: about {hours:.1f} h of one worker"
                + (f", {hours / workers:.1f} h on {workers} workers" if workers > 1 else "")
                + " (the mean time of the finished units of each cell)"
            )
        out.extend(f"unreadable archive file, its units will be redone: {e}"
                   for e in self.archive_errors)
        return out


def _is_running(out: Path) -> bool:
    try:
        with lock_folder(out, str(out), busy="busy"):
            return False
    except InputError:
        return True


def _seconds_left(store: Store) -> float | None:
    """One worker's seconds for the unfinished units (see :class:`SweepProgress`)."""
    records = list(store.student_records.values())
    recoveries = [r["seconds"] for r in store.recovery_records.values()]
    if not records and not recoveries:
        return None
    by_cell: dict[tuple, list[float]] = {}
    for rec in records:
        for key in ((rec["d_in"], rec["r"], rec["rho"]), (rec["rho"],), ()):
            by_cell.setdefault(key, []).append(float(rec["seconds"]))
    left = 0.0
    for u in store.students:
        if u not in store.student_records:
            for key in ((u.d_in, u.r, u.rho), (u.rho,), ()):
                if key in by_cell:
                    left += statistics.fmean(by_cell[key])
                    break
    missing = len(store.recoveries) - len(store.recovery_records)
    return left + missing * (statistics.fmean(recoveries) if recoveries else 0.0)


def _cell(store: Store, units: list[RecoveryUnit]) -> CellStatus:
    done = started = successes = students = total = 0
    for g in units:
        members = store.members(g)
        n = sum(u in store.student_records for u in members)
        students += n
        total += len(members)
        if g in store.recovery_records:
            done += 1
            successes += bool(store.recovery_records[g]["success"])
        elif n:
            started += 1
    return CellStatus(done, started, len(units) - done - started, students, total, successes)


def sweep_status(out: str | os.PathLike) -> SweepProgress:
    """Where the sweep in ``out`` stands (see :class:`SweepProgress`).

    Raises
    ------
    InputError
        ``out`` holds no sweep.
    """
    out = Path(out)
    config = read_sweep_config(out) if out.is_dir() else None
    if config is None:
        raise InputError(f"{out}: holds no sweep (no sweep.json)")
    store = Store(out, config)
    store.load()
    groups: dict[tuple[int, int, int], list[RecoveryUnit]] = {}
    for g in store.recoveries:
        groups.setdefault((g.rho, g.d_in, g.r), []).append(g)
    cells = {key: _cell(store, units) for key, units in groups.items()}
    return SweepProgress(config, cells, _seconds_left(store), _is_running(out),
                         list(store.archive_errors))
