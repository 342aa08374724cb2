"""``ecflow synthetic-sweep``: the paper's teacher grid, resumable, on local processes or Dask."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ecflow import plots, sweep
from ecflow.cli._app import app
from ecflow.cli._signals import set_resume_hint
from ecflow.cli._sizes import check_rows, check_scheduler, check_width, check_workers
from ecflow.engines import get_engine
from ecflow.errors import InputError
from ecflow.teachers import parse_hidden


def _int_list(text: Optional[str], option: str) -> Optional[tuple[int, ...]]:
    if text is None:
        return None
    try:
        return parse_hidden(text)
    except ValueError:
        raise InputError(
            f"{option} must be comma-separated positive integers, got {text!r}"
        ) from None


@contextlib.contextmanager
def _progress_bar():
    """A units bar on stderr, started once the sweep folder is checked (so bad input prints
    its one line without a bar around it)."""
    bar = Progress(
        TextColumn("[bold]units"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=Console(stderr=True),
        # Units last seconds to minutes: estimate the speed over the last 15 minutes, not 30 s.
        speed_estimate_period=900.0,
    )
    task = bar.add_task("", total=None)
    started = []

    def progress(name: str, done: int, total: int) -> None:
        if not name:
            # The first call, once the directory is checked, counts the units found finished;
            # starting the clock there makes the ETA reflect only this run's work.
            bar.start()
            started.append(True)
            bar.reset(task, total=total, completed=done)
        else:
            bar.update(task, completed=done, description=name)

    try:
        yield progress
    except BaseException:
        bar.console.quiet = True  # the error's one line alone, not under a last frame of bars
        raise
    finally:
        if started:
            bar.stop()


@app.command("synthetic-sweep")
def synthetic_sweep(
    out: Optional[Path] = typer.Option(
        None, "--out", help="Sweep directory (created; must be new or --resume)."
    ),
    status: Optional[Path] = typer.Option(
        None, "--status", help="Print where the sweep in this folder stands, and stop."
    ),
    profile: Optional[str] = typer.Option(
        None, "--profile", help="quick | medium | paper (default quick; with --resume: the stored one)."
    ),
    d_in: Optional[str] = typer.Option(None, "--d-in", help="Input dimensions, e.g. 2,4."),
    r: Optional[str] = typer.Option(None, "--r", help="Teacher hidden sizes, e.g. 2,4,8."),
    rho: Optional[str] = typer.Option(None, "--rho", help="Overparameterisation factors, e.g. 1,4."),
    teachers: Optional[int] = typer.Option(None, "--teachers", help="Teachers per (d_in, r)."),
    students: Optional[int] = typer.Option(None, "--students", help="Students per teacher and ρ."),
    n_queries: Optional[int] = typer.Option(None, "--n-queries", help="Training queries per teacher."),
    n_fresh: Optional[int] = typer.Option(None, "--n-fresh", help="Fresh inputs for the test RMSE."),
    max_seconds: Optional[float] = typer.Option(
        None, "--max-seconds", help="Wall-clock budget per student."
    ),
    max_steps: Optional[int] = typer.Option(
        None, "--max-steps", help="Step budget per phase of students and fine-tuning."
    ),
    gamma: Optional[float] = typer.Option(None, "--gamma", help="Minimal cluster size fraction γ."),
    beta_deg: Optional[float] = typer.Option(None, "--beta-deg", help="Maximal alignment angle β (degrees)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="native | julia."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Root seed of the sweep."),
    resume: bool = typer.Option(False, "--resume", help="Continue the sweep in --out."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Dask scheduler address (tcp://host:8786) to run the units on."
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="Draw fig4b/4c/5b.png."),
) -> None:
    """Train students on synthetic teachers, run Expand-and-Cluster, write tables and figures."""
    if status is not None:
        check_workers(workers)
        if not (status / "sweep.json").is_file():
            raise InputError(f"--status {status}: holds no sweep (no sweep.json)")
        for line in sweep.sweep_status(status).lines(workers or 1):
            typer.echo(line)
        return
    if out is None:
        raise InputError("give the sweep folder as --out (or --status DIR to see one)")
    overrides = dict(
        d_in=_int_list(d_in, "--d-in"),
        r=_int_list(r, "--r"),
        rho=_int_list(rho, "--rho"),
        teachers=teachers,
        students=students,
        n_queries=n_queries,
        n_fresh=n_fresh,
        max_seconds=max_seconds,
        max_steps=max_steps,
        gamma=gamma,
        beta_deg=beta_deg,
        engine=engine,
        seed=seed,
    )
    if resume and not out.is_dir():
        raise InputError(f"--resume: {out} is not a folder; without --resume a new sweep starts")
    stored = sweep.read_sweep_config(out) if resume else None
    if stored is not None and profile is None:
        # Resuming: options given change the stored settings, and then fail the equality check.
        config = sweep.override_config(stored, **overrides)
    else:
        config = sweep.profile_config(profile or sweep.Profile.QUICK.value, **overrides)
    get_engine(config.engine)  # a missing optional engine (julia) fails here, before any work
    check_workers(workers)
    check_scheduler(scheduler)
    for d in config.d_in:
        check_rows("--n-queries", config.n_queries, d)
        check_rows("--n-fresh", config.n_fresh, d)
        for r_teacher in config.r:
            for factor in config.rho:
                check_width("--r and --rho", (r_teacher * factor,), d, 1)
    set_resume_hint(f"rerun with --out {out} --resume to continue")

    with _progress_bar() as progress:
        result = sweep.run_sweep(
            out, config, resume=resume, workers=workers, scheduler=scheduler, progress=progress
        )
    drawn = plots.write_sweep_figures(out) if figures else []
    typer.echo(f"{result.out}: {result.status.value}")
    typer.echo(result.reason)
    typer.echo(
        f"ran {result.students_run + result.recoveries_run} units in {result.seconds:.1f} s; "
        "wrote " + ", ".join(["results.csv", "recoveries.csv", *(p.name for p in drawn)])
    )
