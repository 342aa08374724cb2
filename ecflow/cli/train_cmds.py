"""``ecflow train``: train one student on a pairs file and write it with its result fields."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from ecflow import networks, teachers
from ecflow.cli._app import app
from ecflow.cli._sizes import check_width
from ecflow.safety import check_outputs
from ecflow.activations import get_activation
from ecflow.engines import TrainConfig, get_engine, jobs
from ecflow.expansion import train_student
from ecflow.errors import InputError


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="Pairs file (HDF5) to train on."),
    hidden: str = typer.Option(..., "--hidden", help="Student hidden sizes, e.g. 16 or 16,8."),
    seed: int = typer.Option(0, "--seed", help="Seed of the Glorot-normal initialisation."),
    out: Path = typer.Option(..., "--out", help="Output network file (the trained student)."),
    activation: str = typer.Option("g", "--activation", help="Hidden activation."),
    engine: str = typer.Option("native", "--engine", help="native|julia."),
    optimizer: str = typer.Option("lm", "--optimizer", help="Second phase: lm|trust-exact|bfgs."),
    schedule: str = typer.Option("lm-first", "--schedule", help="lm-first|flow-first."),
    max_seconds: Optional[float] = typer.Option(
        None, "--max-seconds", help="Overall time budget (default: flow + polish budgets, 300 s)."
    ),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
) -> None:
    """Train a Glorot-normal student on input-output pairs to (near) zero MSE and write it.

    The student file holds the trained network and, as root attributes, loss, rmse, grad_norm,
    status, stopped_by, steps, seconds, engine, seed and the loss history.
    """
    if seed < 0:
        raise InputError(f"--seed must be non-negative, got {seed}")
    sizes = teachers.parse_hidden(hidden)
    config = TrainConfig(schedule=schedule, optimizer=optimizer, max_seconds=max_seconds)
    get_engine(engine)  # a missing optional engine fails before the data is read
    get_activation(activation)
    check_outputs({"--data": data}, {"--out": out})
    pairs = networks.read_pairs(data)
    check_width("--hidden", sizes, pairs.x.shape[1], pairs.y.shape[1])
    budget = config.total_seconds
    sizes_text = "-".join(map(str, (pairs.x.shape[1], *sizes, pairs.y.shape[1])))
    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]training[/bold] {task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        TextColumn("loss {task.fields[loss]:.3e}  rmse {task.fields[rmse]:.3e}"),
        console=console,
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task(f"{sizes_text} ({activation})", total=budget, loss=np.nan,
                            rmse=np.nan)

        def progress(elapsed: float, loss: float) -> None:
            bar.update(task, completed=min(elapsed, budget), loss=loss, rmse=np.sqrt(loss))

        try:
            result = train_student(
                pairs.x, pairs.y, hidden=sizes, activation=activation, seed=seed,
                config=config, engine=engine, progress=progress,
            )
        except BaseException:
            console.quiet = True  # an error or a signal ends with its one line alone
            raise
        bar.update(task, completed=budget)
    jobs.write_result_file(out, result, attrs={"seed": np.int64(seed)})
    typer.echo(
        f"wrote {out}: {result.network.describe()}; loss {result.loss:.3e} "
        f"(rmse {result.rmse:.3e}), {result.reason}; stopped by {result.stopped_by}, "
        f"{result.steps} steps, {result.seconds:.1f} s"
    )
    for note in result.notes:
        typer.echo(f"note: {note}")
