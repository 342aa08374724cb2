"""The sweep's store on disk: unit records, the tables, the directory and its lock.

Every finished unit is written at once, atomically: a student as a result file of the job
protocol (:func:`ecflow.engines.jobs.write_result_file`, read back with
:func:`~ecflow.engines.jobs.read_result_file`) plus a JSON record; a recovery as a network file
plus a JSON record. The JSON record is written last and marks the unit finished. The tables
``results.csv`` and ``recoveries.csv`` are regenerated from the records.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ecflow import networks
from ecflow.engines import jobs
from ecflow.engines.base import TrainResult, TrainStatus
from ecflow.errors import InputError
from ecflow.networks import MLP
from ecflow.recover import Recovery
from ecflow.safety import holds_lock, lock_folder, remove_temporaries
from ecflow.sweep.archive import ArchivedGroup, read_group, write_group
from ecflow.sweep.config import (
    STUDENT_SEED,
    SUCCESS_RMSE,
    RecoveryUnit,
    StudentUnit,
    SweepConfig,
    TeacherKey,
    recovery_units,
    student_units,
    unit_seed,
)

__all__ = [
    "SWEEP_FORMAT",
    "SWEEP_VERSION",
    "RESULTS_COLUMNS",
    "RECOVERIES_COLUMNS",
    "Store",
    "results_rows",
    "recoveries_rows",
    "write_csv",
    "read_table",
    "read_sweep_config",
    "check_directory",
    "create_directory",
    "prepare_directory",
    "directory_lock",
]

SWEEP_FORMAT = "sweep"
SWEEP_VERSION = 1


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


def write_json(path: Path, obj: Any) -> None:
    with networks.atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")


def _read_record(path: Path) -> Any:
    """A unit's JSON record, or None when it cannot be parsed (a truncated write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_json(path: Path) -> Any:
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


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping[str, str]]) -> None:
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


def _paths(out: Path) -> dict[str, Path]:
    return {
        "config": out / "sweep.json",
        "teachers": out / "teachers",
        "students": out / "students",
        "recoveries": out / "recoveries",
        "archive": out / "archive",
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
    data = read_json(p)
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


def create_directory(out: Path, config: SweepConfig) -> None:
    paths = _paths(out)
    try:
        for key in ("teachers", "students", "recoveries", "archive"):
            paths[key].mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the sweep directory ({exc.strerror})") from None
    if not paths["config"].is_file():
        write_json(
            paths["config"],
            {"ecflow_format": SWEEP_FORMAT, "version": SWEEP_VERSION, "config": config.to_dict()},
        )


def prepare_directory(
    out: str | os.PathLike, config: SweepConfig | None, resume: bool
) -> SweepConfig:
    """:func:`check_directory`, then create the folders and ``sweep.json``; returns the config."""
    config = check_directory(out, config, resume)
    create_directory(Path(out), config)
    return config


@contextlib.contextmanager
def directory_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` so that two runs never write the same sweep; the
    kernel releases it when the process dies, SIGKILL included.

    The lock file is opened without following links (a planted ``.lock`` symlink is refused,
    its target untouched). Once the lock is held, the temporary files of killed writers are
    removed: no other run can be writing them.
    """
    with lock_folder(out, str(out), busy=f"{out}: another sweep is running in this folder"):
        folders = [_paths(out)[k] for k in ("teachers", "students", "recoveries", "archive")]
        for folder in folders:
            if folder.is_symlink():
                raise InputError(
                    f"{folder}: is a symbolic link; a sweep writes only its own folders"
                )
        for folder in (out, *folders):
            remove_temporaries(folder)
        yield


def file_digest(path: Path) -> str:
    """SHA-256 of a file's bytes (a record's proof that its result file is the one written)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_STUDENT_FIELDS = {
    "d_in": int, "r": int, "teacher": int, "rho": int, "student": int, "seed": int,
    "hidden": list, "status": str, "steps": int, "seconds": (int, float),
}
_RECOVERY_FIELDS = {
    "d_in": int, "r": int, "teacher": int, "rho": int, "teacher_size": int,
    "recovered_size": int, "success": bool, "status": str, "seconds": (int, float),
}
_OPTIONAL_NUMBERS = {
    "student": ("loss", "rmse"),
    "recovery": ("rmse_train", "rmse_fresh", "max_cosine_distance"),
}


def _valid_record(record: Any, unit: Any, kind: str) -> bool:
    """Whether a JSON record has the fields and types the tables read, for this unit."""
    fields = _STUDENT_FIELDS if kind == "student" else _RECOVERY_FIELDS
    if not isinstance(record, dict):
        return False
    for key, types in fields.items():
        v = record.get(key)
        if not isinstance(v, types) or (types is int and isinstance(v, bool)):
            return False
    for key in _OPTIONAL_NUMBERS[kind]:
        v = record.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return False
    return all(record[f.name] == getattr(unit, f.name) for f in dataclasses.fields(unit))


def _result_from_record(record: Mapping[str, Any], net: MLP) -> TrainResult:
    """The training result of an archived student (its history is not archived)."""

    def number(key: str) -> float:
        v = record.get(key)
        return float("nan") if v is None else float(v)

    return TrainResult(
        network=net,
        loss=number("loss"),
        rmse=number("rmse"),
        grad_norm=number("grad_norm"),
        status=TrainStatus[record["status"]],
        stopped_by=str(record.get("stopped_by", "")),
        steps=int(record["steps"]),
        seconds=float(record["seconds"]),
        history=np.zeros((0, 2)),
        engine=str(record.get("engine", "")),
        notes=tuple(str(n) for n in record.get("notes", ())),
    )


# --- the store -----------------------------------------------------------------------------------

_UNIT_KEYS = ("d_in", "r", "teacher", "rho", "student", "seed")
"""Record fields also written as root attributes of a student's result file."""


class Store:
    """The files of one sweep directory: unit records in memory and on disk, and the tables.

    Parameters
    ----------
    out : Path
        The sweep directory (layout in :mod:`ecflow.sweep`).
    config : SweepConfig

    Attributes
    ----------
    damaged : list of str
        Units whose files :meth:`load` found damaged (removed when the lock is held, so that
        they are redone).
    archive_errors : list of str
        Archive files :meth:`load` could not read (their units are redone).
    """

    def __init__(self, out: Path, config: SweepConfig):
        self.out = out
        self.config = config
        self.paths = _paths(out)
        self.students = student_units(config)
        self.recoveries = recovery_units(config)
        self.student_records: dict[StudentUnit, dict[str, Any]] = {}
        self.recovery_records: dict[RecoveryUnit, dict[str, Any]] = {}
        self.damaged: list[str] = []
        self.archive_errors: list[str] = []
        self._nets: dict[StudentUnit, MLP] = {}

    @property
    def n_units(self) -> int:
        return len(self.students) + len(self.recoveries)

    @property
    def n_finished(self) -> int:
        return len(self.student_records) + len(self.recovery_records)

    def student_path(self, u: StudentUnit, ext: str) -> Path:
        return self.paths["students"] / f"{u.name}.{ext}"

    def recovery_path(self, u: RecoveryUnit, ext: str) -> Path:
        return self.paths["recoveries"] / f"{u.name}.{ext}"

    def load(self) -> None:
        """Read the records of the finished units.

        A unit whose record is unreadable, of the wrong shape or for another unit, or whose
        result file is missing, truncated or not the one the record was written with, is not
        finished: its files are removed and a resume redoes it. Removing is safe only under
        :func:`directory_lock`; before it, the damaged unit is only skipped.
        """
        self.student_records.clear()
        self.recovery_records.clear()
        self.damaged = []
        self.archive_errors = []
        for u in self.students:
            p = self.student_path(u, "json")
            if not p.is_file():
                continue
            record = _read_record(p)
            if _valid_record(record, u, "student") and self._student_file_ok(u, record):
                self.student_records[u] = record
            else:
                self.damaged.append(u.name)
        for g in self.recoveries:
            p = self.recovery_path(g, "json")
            if not p.is_file():
                continue
            record = _read_record(p)
            if _valid_record(record, g, "recovery"):
                self.recovery_records[g] = record
            else:
                self.damaged.append(g.name)
        if self.damaged and holds_lock(self.out):
            self.drop_damaged()
        self.load_archive()

    def archive_path(self, g: RecoveryUnit) -> Path:
        return self.paths["archive"] / f"{g.name}.h5"

    def load_archive(self) -> None:
        """Take the archived units that have no unit files (a fresh clone of a repository
        that keeps only the archive): under :func:`directory_lock` their unit files are
        written back, so that the run goes on from them; before it they are only counted.
        Under the lock, an archive file that lacks finished units (a run killed between a
        unit's record and its archive) is rewritten.

        An archive file that cannot be read is not trusted: its units are redone unless their
        unit files are there.
        """
        restore = holds_lock(self.out)
        if restore:  # a clone has no unit folders (the repository keeps none)
            for key in ("students", "recoveries", "archive"):
                self.paths[key].mkdir(exist_ok=True)
        for g in self.recoveries:
            path = self.archive_path(g)
            members = self.members(g)
            group = ArchivedGroup()
            if path.is_file():
                try:
                    group = read_group(path, g)
                except InputError as exc:
                    self.archive_errors.append(str(exc))
            for i, (record, net) in group.students.items():
                u = StudentUnit(*dataclasses.astuple(g), i)
                if u in members and u not in self.student_records and _valid_record(
                    record, u, "student"
                ):
                    self._restore_student(u, record, net, restore)
            if group.recovery is not None and g not in self.recovery_records:
                record, net = group.recovery
                if _valid_record(record, g, "recovery"):
                    self._restore_recovery(g, record, net, restore)
            behind = any(
                u in self.student_records and u.student not in group.students for u in members
            ) or (g in self.recovery_records and group.recovery is None)
            if restore and behind:
                self.write_archive(g)

    def members(self, g: RecoveryUnit) -> list[StudentUnit]:
        """The students of recovery unit ``g``."""
        return [StudentUnit(*dataclasses.astuple(g), i) for i in range(self.config.n_students(g.r))]

    def _restore_student(self, u: StudentUnit, record: dict, net: MLP, write: bool) -> None:
        record = {k: v for k, v in record.items() if k != "sha256"}
        if write:
            res = _result_from_record(record, net)
            h5 = self.student_path(u, "h5")
            jobs.write_result_file(h5, res, attrs={k: record[k] for k in _UNIT_KEYS})
            record["sha256"] = file_digest(h5)
            write_json(self.student_path(u, "json"), record)
        self.student_records[u] = record
        self._nets[u] = net

    def _restore_recovery(
        self, g: RecoveryUnit, record: dict, net: MLP | None, write: bool
    ) -> None:
        if write:
            if net is not None:
                keys = ("d_in", "r", "teacher", "rho", "success", "teacher_size")
                networks.write_network(
                    self.recovery_path(g, "h5"), net, attrs={k: record[k] for k in keys}
                )
            write_json(self.recovery_path(g, "json"), record)
        self.recovery_records[g] = record

    def _student_file_ok(self, u: StudentUnit, record: Mapping[str, Any]) -> bool:
        h5 = self.student_path(u, "h5")
        if not h5.is_file():
            return False
        digest = record.get("sha256")
        if digest is not None:
            return file_digest(h5) == digest
        try:  # a record written before records carried digests
            jobs.read_result_file(h5)
        except InputError:
            return False
        return True

    def drop_damaged(self) -> None:
        """Remove the files of the units :meth:`load` found damaged (under the lock)."""
        names = set(self.damaged)
        for u in self.students:
            if u.name in names:
                for ext in ("json", "h5"):
                    self.student_path(u, ext).unlink(missing_ok=True)
        for g in self.recoveries:
            if g.name in names:
                for ext in ("json", "h5"):
                    self.recovery_path(g, ext).unlink(missing_ok=True)
        self.damaged = []

    def write_teacher(self, key: TeacherKey, data: Mapping[str, Any], seed: int) -> None:
        """The teacher's network file with its training queries (once per teacher)."""
        path = self.paths["teachers"] / f"{key.name}.h5"
        if path.is_file():
            return
        networks.write_network(
            path, data["teacher"], x=data["x"], y=data["y"],
            attrs={
                "teacher": "synthetic",
                "d_in": key.d_in,
                "r": key.r,
                "index": key.teacher,
                "seed": seed,
                "activation": self.config.activation,
            },
        )

    def write_student(self, u: StudentUnit, res: TrainResult) -> None:
        """The student's result file, then its record (which marks it finished)."""
        seed = unit_seed(self.config, STUDENT_SEED, u.d_in, u.r, u.teacher, u.rho, u.student)
        record = _student_record(u, seed, res)
        h5 = self.student_path(u, "h5")
        jobs.write_result_file(h5, res, attrs={k: record[k] for k in _UNIT_KEYS})
        record["sha256"] = file_digest(h5)
        write_json(self.student_path(u, "json"), record)
        self.student_records[u] = record
        self._nets[u] = res.network
        self.write_archive(u.group)

    def write_archive(self, g: RecoveryUnit) -> None:
        """Rewrite the archive file of ``g`` from its finished units."""
        group = ArchivedGroup()
        for u in self.members(g):
            if u in self.student_records:
                net = self._nets.get(u)
                if net is None:
                    net = jobs.read_result_file(self.student_path(u, "h5")).network
                    self._nets[u] = net
                record = {k: v for k, v in self.student_records[u].items() if k != "sha256"}
                group.students[u.student] = (record, net)
        if g in self.recovery_records:
            h5 = self.recovery_path(g, "h5")
            net = networks.read_network(h5) if h5.is_file() else None
            group.recovery = (self.recovery_records[g], net)
        self.paths["archive"].mkdir(exist_ok=True)
        write_group(self.archive_path(g), g, group)

    def read_students(self, g: RecoveryUnit) -> list[TrainResult]:
        """The finished students of a recovery, read back from their result files, or from the
        archive where those were not written back (a folder read without its lock).

        A recovery always reads its students from disk, so that a resumed one sees exactly
        what an uninterrupted one does.
        """
        out = []
        for u in self.members(g):
            h5 = self.student_path(u, "h5")
            if h5.is_file():
                out.append(jobs.read_result_file(h5))
            else:
                out.append(_result_from_record(self.student_records[u], self._nets[u]))
        return out

    def group_complete(self, g: RecoveryUnit) -> bool:
        return all(u in self.student_records for u in self.members(g))

    def write_recovery(self, g: RecoveryUnit, rec: Recovery) -> None:
        """The recovered network (when there is one), then the record."""
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
        write_json(self.recovery_path(g, "json"), record)
        self.recovery_records[g] = record
        self.write_archive(g)

    def write_session(self, record: Mapping[str, Any]) -> None:
        """Add or update this call's line in ``runs.json`` (matched by its start time)."""
        path = self.out / "runs.json"
        calls = _read_record(path) if path.is_file() else []
        if not isinstance(calls, list):
            calls = []
        calls = [c for c in calls
                 if not (isinstance(c, dict) and c.get("started_at") == record["started_at"])]
        write_json(path, [*calls, dict(record)])

    def write_tables(self) -> None:
        write_csv(
            self.paths["results"], RESULTS_COLUMNS, results_rows(self.student_records.values())
        )
        write_csv(
            self.paths["recoveries_csv"], RECOVERIES_COLUMNS,
            recoveries_rows(self.recovery_records.values(), self.config),
        )
