"""Entry point of ``make bench``: reproduce the committed result files with their own settings.

Every file of ``benchmarks/results/`` is listed in :data:`RESULTS` with the commands that
produced it, argument for argument, so a rerun measures the same thing and never replaces a
result with a differently configured one. A benchmark script run by hand with other options
is a different experiment: give it another ``--out``.

Most files took from 20 minutes to an hour of a 2-core machine. ``make bench`` reruns those
whose recorded time is within ``--max-minutes`` (default 15) and, for each of the others,
prints the ``make`` target that reruns it and how long it took when it was measured.

Usage::

    python -m benchmarks.run [--max-minutes M]   # make bench
    python -m benchmarks.run --only sweep-medium  # make bench-sweep-medium
    python -m benchmarks.run --all                # make bench-all (hours)
    python -m benchmarks.run --list
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS_DIR = HERE / "results"
RUNS_DIR = HERE / "runs"


@dataclass(frozen=True)
class Reproduction:
    """How one committed result file was produced.

    Attributes
    ----------
    name : str
        The file's stem (``benchmarks/results/<name>.json``) and the make target
        ``bench-<name>``.
    commands : tuple of tuple of str
        Argument lists run one after the other from the repository root, each with
        ``python -m`` in front; ``ecflow`` for the command line.
    recorded_seconds : callable
        Reads the measured time back from the file (None when it holds none).
    sweep : str or None
        For a sweep: the folder (under ``benchmarks/runs/``) the first command fills, resumed
        when it exists; it is then summarised into the result file and its figures.
    """

    name: str
    commands: tuple[tuple[str, ...], ...]
    recorded_seconds: Callable[[dict[str, Any]], float | None]
    sweep: str | None = None

    @property
    def path(self) -> Path:
        return RESULTS_DIR / f"{self.name}.json"

    def seconds(self) -> float | None:
        """The time the committed run took, as the file records it."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        try:
            return self.recorded_seconds(data)
        except (KeyError, TypeError):
            return None


def _sum(key: str, *path: str) -> Callable[[dict[str, Any]], float]:
    def read(data: dict[str, Any]) -> float:
        for p in path:
            data = data[p]
        return float(sum(v[key] for v in (data.values() if isinstance(data, dict) else data)
                         if isinstance(v, dict) and key in v))
    return read


def _sweep(name: str, *options: str) -> Reproduction:
    folder = str((RUNS_DIR / name).relative_to(ROOT))
    return Reproduction(
        name=f"sweep-{name}",
        commands=(("ecflow", "synthetic-sweep", *options, "--workers", "2", "--out", folder),),
        recorded_seconds=lambda d: d["run"]["wall_seconds"],
        sweep=name,
    )


RESULTS: tuple[Reproduction, ...] = (
    _sweep("quick", "--profile", "quick"),
    Reproduction(
        name="sweep-throughput",
        commands=(("benchmarks.sweep", "throughput"),),
        recorded_seconds=lambda d: sum(run["seconds"] for run in d["runs"]),
    ),
    Reproduction(
        name="deep",
        commands=(("benchmarks.deep", "--cases", "g:8-4-2-1,tanh:6-6-4-1,g:8-6-4-2-1",
                   "--workers", "2"),),
        recorded_seconds=_sum("run_seconds", "cases"),
    ),
    Reproduction(
        name="recover",
        commands=(("benchmarks.recover", "--cases", "4x4,8x4,16x8", "--teachers", "3",
                   "--prototype", "4x4", "--prototype-teachers", "1", "--workers", "2"),),
        recorded_seconds=_sum("run_seconds", "cases"),
    ),
    Reproduction(
        name="oracle",
        commands=(
            ("benchmarks.oracle", "--groups", "probabilities,floor,queries",
             "--teachers", "tanh:4:4", "--queries", "500,1000,2000,5000"),
            ("benchmarks.oracle", "--groups", "floor", "--teachers", "g:4:4,g:8:8"),
            ("benchmarks.oracle", "--groups", "queries", "--teachers", "g:4:4",
             "--queries", "1000,2000,5000,10000,20000,40003"),
            ("benchmarks.oracle", "--groups", "queries", "--teachers", "g:8:8",
             "--queries", "1000,2000,5000,10000,20000,40003", "--exact-streak", "2"),
            ("benchmarks.oracle", "--groups", "queries", "--teachers", "g:8:8",
             "--queries", "500"),
            ("benchmarks.oracle", "--groups", "queries", "--teachers", "g:16:8",
             "--queries", "2000,5000,10000,20000,40003", "--exact-streak", "1"),
            ("benchmarks.oracle", "--groups", "queries", "--teachers", "g:16:8",
             "--queries", "1000,5000"),
        ),
        recorded_seconds=lambda d: sum(
            row["seconds"] for group in ("probabilities", "floor", "queries")
            for row in d.get(group, {}).values()
        ),
    ),
    _sweep("medium-d16r8-240s", "--profile", "medium", "--d-in", "16", "--r", "8", "--rho", "4",
           "--students", "6", "--max-seconds", "240"),
    Reproduction(
        name="blackbox",
        commands=(("benchmarks.blackbox", "--d-in", "4,8", "--r", "2,4", "--seeds", "1",
                   "--students", "10", "--budget", "60", "--workers", "2", "--rho", "4",
                   "--multiple", "2"),),
        recorded_seconds=lambda d: d["seconds"],
    ),
    _sweep("medium", "--profile", "medium"),
    Reproduction(
        name="sweep-hard-cells",
        commands=(("benchmarks.hard_cells", "--students", "6", "--max-seconds", "60"),),
        recorded_seconds=lambda d: sum(
            sum(row["seconds"]) for rows in d["teachers"].values() for row in rows.values()
        ),
    ),
    Reproduction(
        name="sweep-paper",
        commands=(("ecflow", "synthetic-sweep", "--profile", "paper", "--workers", "2", "--out",
                   str((RUNS_DIR / "paper").relative_to(ROOT))),),
        # the run spans many calls: the sum of their wall times (runs.json)
        recorded_seconds=lambda d: d["wall_seconds"],
        sweep="paper",
    ),
    Reproduction(
        name="engine",
        commands=(
            ("benchmarks.engine", "--parts", "derivatives,scaling,threads"),
            ("benchmarks.engine", "--parts", "convergence", "--students", "10", "--budget",
             "60", "--workers", "1"),
            ("benchmarks.engine", "--parts", "large_student", "--students", "20", "--budget",
             "90", "--workers", "1"),
            ("benchmarks.engine", "--parts", "varpro"),
        ),
        recorded_seconds=lambda d: sum(
            d[p]["run_seconds"]
            for p in ("derivatives", "scaling", "threads", "convergence", "large_student")
        ),
    ),
    Reproduction(
        name="table1",
        commands=(("benchmarks.table1", "--cases",
                   "digits-tanh-16,digits-g-16,digits-sigmoid-16,digits-softplus-16",
                   "--workers", "2"),),
        recorded_seconds=_sum("wall_seconds", "cases"),
    ),
)
"""Every committed result file, cheapest first."""

BY_NAME = {r.name: r for r in RESULTS}


def _minutes(seconds: float | None) -> str:
    return "time not recorded" if seconds is None else f"{seconds / 60:.1f} min when measured"


def _command_line(argv: tuple[str, ...]) -> str:
    return " ".join(argv if argv[0] == "ecflow" else ("python", "-m", *argv))


def reproduce(rep: Reproduction) -> None:
    """Run ``rep``'s commands; a sweep is then summarised into its result file and figures."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    for argv in rep.commands:
        if rep.sweep is not None and (RUNS_DIR / rep.sweep).is_dir():
            # A stopped rerun continues; a folder of other settings is refused by the sweep.
            argv = (*argv, "--resume")
        full = [sys.executable, "-m", "ecflow", *argv[1:]] if argv[0] == "ecflow" else [
            sys.executable, "-m", *argv]
        print(f"$ {_command_line(argv)}", flush=True)
        subprocess.run(full, cwd=ROOT, env=env, check=True)
    if rep.sweep is not None:
        from benchmarks.sweep import summarize_sweep

        summarize_sweep(RUNS_DIR / rep.sweep, rep.sweep, run={
            "command": "OMP_NUM_THREADS=1 " + _command_line(rep.commands[0]),
            "wall_seconds": round(time.perf_counter() - t0, 1),
        })


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=None,
                        help="comma-separated result names: " + ", ".join(BY_NAME))
    parser.add_argument("--all", action="store_true", help="rerun every result file (hours)")
    parser.add_argument("--max-minutes", type=float, default=15.0,
                        help="rerun the files measured within this time (default 15)")
    parser.add_argument("--list", action="store_true", help="list the files and their commands")
    args = parser.parse_args(argv)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(BY_NAME))
        if unknown:
            parser.error(f"unknown result {', '.join(unknown)}; expected: {', '.join(BY_NAME)}")
        chosen = [BY_NAME[n] for n in args.only.split(",")]
    else:
        chosen = list(RESULTS)
    if args.list:
        for rep in chosen:
            print(f"{rep.path.relative_to(ROOT)} ({_minutes(rep.seconds())}): make bench-{rep.name}")
            for command in rep.commands:
                print(f"    {_command_line(command)}")
        return 0
    failed = []
    for rep in chosen:
        seconds = rep.seconds()
        if not (args.only or args.all) and (seconds is None or seconds > 60 * args.max_minutes):
            print(f"-- {rep.path.relative_to(ROOT)}: make bench-{rep.name} ({_minutes(seconds)})",
                  flush=True)
            continue
        print(f"== {rep.path.relative_to(ROOT)} ({_minutes(seconds)})", flush=True)
        t0 = time.perf_counter()
        try:
            reproduce(rep)
        except subprocess.CalledProcessError as exc:  # the others' results still count
            print(f"!! {rep.name} failed: {exc}", file=sys.stderr, flush=True)
            failed.append(rep.name)
        print(f"== {rep.name} done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
