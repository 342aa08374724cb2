"""``ecflow make-job`` and ``ecflow train-job``: the engine job protocol on the command line.

A job file holds pairs, an initial student and the training settings; ``train-job`` trains it
with either engine and writes a result file (a network file with the result fields as root
attributes). Layouts: ``docs/formats.md``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ecflow import networks, teachers
from ecflow.cli._app import app
from ecflow.cli._sizes import check_width
from ecflow.safety import check_outputs
from ecflow.engines import TrainConfig
from ecflow.engines.jobs import run_job, write_job_file
from ecflow.errors import InputError


_TRAIN = TrainConfig()  # the CLI's defaults are the config's


@app.command("make-job")
def make_job(
    data: Path = typer.Option(..., "--data", help="Pairs file (HDF5) to train on."),
    hidden: str = typer.Option(..., "--hidden", help="Student hidden sizes, e.g. 16 or 16,8."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Glorot-normal initialisation."),
    out: Path = typer.Option(..., "--out", help="Output job file."),
    activation: str = typer.Option("g", "--activation", help="Hidden activation."),
    engine: str = typer.Option("native", "--engine", help="Engine stored in the job: native|julia."),
    schedule: str = typer.Option(_TRAIN.schedule.value, "--schedule", help="lm-first|flow-first."),
    optimizer: str = typer.Option(_TRAIN.optimizer.value, "--optimizer", help="lm|trust-exact|bfgs."),
    max_seconds: Optional[float] = typer.Option(
        _TRAIN.max_seconds, "--max-seconds", help="Overall time budget."
    ),
    flow_seconds: float = typer.Option(
        _TRAIN.flow_seconds, "--flow-seconds", help="Gradient-flow budget (s)."
    ),
    polish_seconds: float = typer.Option(
        _TRAIN.polish_seconds, "--polish-seconds", help="Polishing budget (s)."
    ),
) -> None:
    """Write a training job: pairs, a Glorot-normal student and the settings, in one HDF5 file."""
    if seed < 0:
        raise InputError(f"--seed must be non-negative, got {seed}")
    sizes = teachers.parse_hidden(hidden)
    config = TrainConfig(
        schedule=schedule,
        optimizer=optimizer,
        max_seconds=max_seconds,
        flow_seconds=flow_seconds,
        polish_seconds=polish_seconds,
    )
    check_outputs({"--data": data}, {"--out": out})
    pairs = networks.read_pairs(data)
    d_in, d_out = pairs.x.shape[1], pairs.y.shape[1]
    check_width("--hidden", sizes, d_in, d_out)
    init = networks.glorot_normal(
        (d_in, *sizes, d_out), [activation] * len(sizes) + ["identity"], seed
    )
    write_job_file(out, pairs.x, pairs.y, init, config, engine=engine)
    typer.echo(f"wrote {out}: {pairs.x.shape[0]} pairs, student {init.describe()}, engine {engine}")


@app.command("train-job")
def train_job(
    job: Path = typer.Argument(..., help="Job file (HDF5), e.g. from `ecflow make-job`."),
    out: Path = typer.Option(..., "--out", help="Output result file (a network file)."),
    engine: Optional[str] = typer.Option(
        None, "--engine", help="native|julia; default: the engine named in the job."
    ),
) -> None:
    """Train the student of a job file and write the result file."""
    check_outputs({"JOB": job}, {"--out": out})
    result = run_job(job, out, engine)
    typer.echo(
        f"wrote {out}: {result.reason} (loss {result.loss:.3g}, rmse {result.rmse:.3g}, "
        f"{result.steps} steps, {result.seconds:.1f} s, engine {result.engine})"
    )
