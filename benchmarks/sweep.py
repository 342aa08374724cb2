"""Sweep benchmarks: throughput with 2 workers against 1, and the summary of a (medium) sweep.

``bench_sweep_throughput`` runs one reduced quick sweep twice, with one and with two local
workers, students stopped by a step budget so that both runs do the same work, and writes
``benchmarks/results/sweep-throughput.json``. ``summarize_sweep`` turns a sweep directory
(finished or not) into ``benchmarks/results/sweep-<name>.json`` with success counts per ρ and
per (d_in, r) and the median seconds per student, and copies its three figures beside it.

Usage::

    python -m benchmarks.sweep throughput [--d-in 2,4 --r 2,4 --rho 1,2,4 --students 4 ...]
    python -m benchmarks.sweep summarize RUN_DIR --name medium

The medium sweep itself is run with the CLI, resumable across calls and machines::

    ecflow synthetic-sweep --profile medium --out runs/medium --workers 2 --resume
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from ecflow import sweep
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError

RESULTS = Path(__file__).resolve().parent / "results"


def _load() -> dict[str, float] | None:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:  # pragma: no cover - not on Linux
        return None
    return {"1min": one, "5min": five, "15min": fifteen}


def _machine() -> dict[str, Any]:
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        cpus = os.cpu_count()
    return {
        "cpus": cpus,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "blas_threads_per_worker": 1,
    }


def bench_sweep_throughput(
    *,
    d_in: tuple[int, ...] = (2, 4),
    r: tuple[int, ...] = (2, 4),
    rho: tuple[int, ...] = (1, 2, 4),
    students: int = 4,
    n_queries: int = 10_000,
    max_steps: int = 100,
    workers: tuple[int, ...] = (1, 2),
    shared_machine: bool = True,
    out: Path | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Units per second of one sweep run with each number of ``workers``.

    The sweep is the quick profile (4 cells, ρ ∈ {1, 2, 4}, 4 students, 10k queries; about 4
    minutes for both runs on 2 cores) with a step budget per phase (``max_steps``) instead of
    its 10-second time budget, so that every run trains the same students the same way; the
    time budget is raised to 600 s and never reached. Much smaller units (under a second)
    measure the main process's overhead and the other jobs of a shared machine rather than
    the workers.

    Returns
    -------
    dict
        JSON-ready record (also written to ``out``, default
        ``benchmarks/results/sweep-throughput.json``).
    """
    config = sweep.profile_config(
        "quick", d_in=d_in, r=r, rho=rho, students=students, n_queries=n_queries,
        max_steps=max_steps, max_seconds=600.0,
    )
    config = sweep.override_config(
        config, finetune=TrainConfig(max_seconds=600.0, max_steps=max_steps)
    )
    n_units = len(sweep.student_units(config)) + len(sweep.recovery_units(config))
    runs = []
    for k in workers:
        with tempfile.TemporaryDirectory() as tmp:
            load = _load()
            t0 = time.perf_counter()
            result = sweep.run_sweep(Path(tmp) / "run", config, workers=k)
            seconds = time.perf_counter() - t0
            student_seconds = [
                row["seconds"] for row in sweep.read_table(Path(tmp) / "run" / "results.csv")
            ]
        runs.append({
            "workers": k,
            "seconds": seconds,
            "units": n_units,
            "units_per_second": n_units / seconds,
            "sum_student_seconds": sum(student_seconds),
            "successes_per_rho": {str(k2): v for k2, v in result.n_success.items()},
            "load_average_before": load,
        })
    base = runs[0]["seconds"]
    record = {
        "benchmark": "sweep-throughput",
        "what": (
            "wall-clock seconds of one sweep (reduced quick profile, step budgets) run with "
            "each number of local worker processes; speedup = seconds(1 worker) / seconds(k)"
        ),
        "machine": {**_machine(), "shared_with_other_jobs": shared_machine},
        "config": config.to_dict(),
        "runs": runs,
        "speedup": {str(run["workers"]): base / run["seconds"] for run in runs},
        "target_speedup_2_workers": 1.8,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if note is not None:
        record["note"] = note
    out = out or RESULTS / "sweep-throughput.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


PAPER_RHO4 = {
    "identified": 118,
    "teachers": 150,
    "identified_with_excess_neurons": 7,
    "d_in_8_rho_4_and_8": "28 of 30 (the text gives the two factors together)",
    "source": "section 5 of the paper; the other cells are drawn in Fig. 5B only",
}
"""What the paper's text states of its ρ = 4 results."""

PAPER_RHO4_CELLS: dict[tuple[int, int], str] = {}
"""Per-cell counts of the paper at ρ = 4 where its text gives them (none cell by cell)."""

PAPER_CELL_UNREAD = "not stated in the text (Fig. 5B only)"


def _counts(config, results, recoveries, **where) -> dict[str, Any]:
    """Recoveries and students of the rows matching ``where`` (rho, and d_in and r for a cell)."""

    def match(row):
        return all(row[k] == v for k, v in where.items())

    recs = [row for row in recoveries if match(row)]
    studs = [row for row in results if match(row)]
    n_teachers = config.teachers if "d_in" in where else config.n_teachers

    def fresh_ok(row):
        v = row["rmse_fresh"]
        return isinstance(v, float) and v == v and v <= sweep.SUCCESS_RMSE

    excess = [row for row in recs if row["recovered_size"] > row["teacher_size"]]
    return {
        "teachers_total": n_teachers,
        "recoveries_finished": len(recs),
        "complete": len(recs) == n_teachers,
        "successes": sum(1 for row in recs if row["success"]),
        "exact_fresh": sum(1 for row in recs if row["success"] and fresh_ok(row)),
        "exact_size": sum(1 for row in recs if row["recovered_size"] == row["teacher_size"]),
        "excess_neurons": len(excess),
        "excess_reported_recovered": sum(1 for row in excess if row["status"] == "RECOVERED"),
        "students_finished": len(studs),
        "students_near_zero_loss": sum(
            1 for row in studs if row["loss"] <= sweep.NEAR_ZERO_LOSS
        ),
    }


def _steps(results) -> dict[str, Any]:
    """Steps students took, set against the paper's budget (5000 ODE + 250 BFGS steps, or
    + 5000 Newton steps at ρ = 1; A.6.1)."""
    steps = [row["steps"] for row in results]
    if not steps:
        return {}
    return {
        "median": statistics.median(steps),
        "max": max(steps),
        "paper_budget": "5000 ODE steps + 250 BFGS steps (rho >= 2) or + 5000 Newton steps (rho 1)",
    }


def _calls(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "runs.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []


def summarize_sweep(
    run_dir: Path,
    name: str,
    *,
    out_dir: Path = RESULTS,
    run: dict[str, Any] | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """Summarise a sweep directory (finished or partial) into ``sweep-<name>.json`` + figures.

    Counts only what is on disk; a partial sweep says so (``partial``, units finished of
    total). Success is :data:`ecflow.sweep.SUCCESS_RMSE` with the teacher's size. ``run``
    records how the sweep was run (command, measured wall-clock seconds), as given.
    """
    from ecflow import plots

    run_dir = Path(run_dir)
    config = sweep.read_sweep_config(run_dir)
    if config is None:
        raise ValueError(f"{run_dir}: no sweep.json")
    try:
        sweep.write_tables(run_dir)  # the records are the truth; a stopped run's tables lag behind
    except InputError as exc:
        if "another sweep is running" not in str(exc):
            raise
        # a running sweep rewrites its tables every minute: a snapshot of those
    results = sweep.read_table(run_dir / "results.csv") if (run_dir / "results.csv").exists() else []
    recoveries = (
        sweep.read_table(run_dir / "recoveries.csv")
        if (run_dir / "recoveries.csv").exists()
        else []
    )
    n_students = len(sweep.student_units(config))
    n_recoveries = len(sweep.recovery_units(config))
    per_rho = {str(rho): _counts(config, results, recoveries, rho=rho) for rho in config.rho}
    per_cell = {}
    for d in config.d_in:
        for r in config.r:
            for rho in config.rho:
                cell = _counts(config, results, recoveries, rho=rho, d_in=d, r=r)
                if cell["recoveries_finished"] or cell["students_finished"]:
                    if rho == 4:
                        cell["paper"] = PAPER_RHO4_CELLS.get((d, r), PAPER_CELL_UNREAD)
                    per_cell[f"d_in={d},r={r},rho={rho}"] = cell
    seconds = [row["seconds"] for row in results]
    calls = _calls(run_dir)
    record = {
        "benchmark": f"sweep-{name}",
        "partial": len(results) < n_students or len(recoveries) < n_recoveries,
        "students_finished": len(results),
        "students_total": n_students,
        "recoveries_finished": len(recoveries),
        "recoveries_total": n_recoveries,
        "success_criterion": (
            f"recovered hidden size == teacher's and training RMSE <= {sweep.SUCCESS_RMSE:g}; "
            f"'exact_fresh' also asks RMSE <= {sweep.SUCCESS_RMSE:g} on the fresh inputs"
        ),
        "per_rho": per_rho,
        "per_cell": per_cell,
        "paper_rho4": PAPER_RHO4,
        "median_seconds_per_student": statistics.median(seconds) if seconds else None,
        "max_seconds_per_student": max(seconds) if seconds else None,
        "student_seconds": sum(seconds),
        "recovery_seconds": sum(row["seconds"] for row in recoveries),
        "steps_per_student": _steps(results),
        "calls": calls,
        "wall_seconds": sum(c.get("wall_seconds") or 0.0 for c in calls) or None,
        "config": config.to_dict(),
        "run": run or {},
        "machine": {**_machine(), "shared_with_other_jobs": True},
        "summarized_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if note is not None:
        record["note"] = note
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"sweep-{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    if results or recoveries:
        for path in plots.write_sweep_figures(run_dir):
            shutil.copyfile(path, out_dir / f"sweep-{name}-{path.name}")
    return record


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(","))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput", help="1 vs 2 workers on a reduced quick sweep")
    t.add_argument("--d-in", type=_ints, default=(2, 4))
    t.add_argument("--r", type=_ints, default=(2, 4))
    t.add_argument("--rho", type=_ints, default=(1, 2, 4))
    t.add_argument("--students", type=int, default=4)
    t.add_argument("--n-queries", type=int, default=10_000)
    t.add_argument("--max-steps", type=int, default=100)
    s = sub.add_parser("summarize", help="summarise a sweep directory into sweep-<name>.json")
    s.add_argument("run_dir", type=Path)
    s.add_argument("--name", required=True)
    s.add_argument("--command", default=None, help="how the sweep was run (recorded as given)")
    s.add_argument("--wall-seconds", type=float, default=None, help="measured wall-clock time")
    for p in (t, s):
        p.add_argument("--note", default=None,
                       help="remark stored as the JSON's 'note' (never edit the JSON by hand)")
    args = parser.parse_args(argv)
    if args.cmd == "throughput":
        rec = bench_sweep_throughput(
            d_in=args.d_in, r=args.r, rho=args.rho, students=args.students,
            n_queries=args.n_queries, max_steps=args.max_steps, note=args.note,
        )
        print(json.dumps({"runs": rec["runs"], "speedup": rec["speedup"]}, indent=1))
    else:
        run = {k: v for k, v in (("command", args.command), ("wall_seconds", args.wall_seconds))
               if v is not None}
        rec = summarize_sweep(args.run_dir, args.name, run=run, note=args.note)
        print(json.dumps({k: rec[k] for k in ("partial", "students_finished", "recoveries_finished", "per_rho")}, indent=1))


if __name__ == "__main__":
    main()
