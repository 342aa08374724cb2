"""``ecflow info``, ``ecflow teacher synthetic``, ``ecflow teacher train`` and ``ecflow query``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ecflow import blackbox, networks, teachers
from ecflow.cli._app import Typer, app
from ecflow.cli._output import cell
from ecflow.cli._sizes import check_rows, check_width
from ecflow.safety import check_outputs
from ecflow.errors import InputError

_TEACHER_DEFAULTS = {
    f.name: f.default for f in dataclasses.fields(teachers.TeacherConfig)
}

_LARGEST_IMAGE = 784
"""Pixels of the largest data set's images (mnist, fashion): bounds a classifier's first layer."""

teacher_app = Typer(help="Create teacher networks.")
app.add_typer(teacher_app, name="teacher")


@app.command()
def info(
    file: Path = typer.Argument(..., help="A network or pairs file (HDF5), or an ONNX model."),
) -> None:
    """Print format, version, layer sizes, activations, parameter count and queries of a file;
    of an ONNX model its inputs, outputs, precision and operators."""
    if file.suffix.lower() == ".onnx":
        from ecflow.interop import describe_onnx

        summary = describe_onnx(file).to_dict()
    else:
        summary = networks.describe_file(file)
    console = Console()
    table = Table(show_header=False, box=None)
    for key, value in summary.items():
        name = cell(key)
        name.stylize("bold")
        table.add_row(name, cell(value))
    console.print(table)


@teacher_app.command("synthetic")
def teacher_synthetic(
    d_in: int = typer.Option(..., "--d-in", help="Input dimension."),
    r: Optional[int] = typer.Option(None, "--r", help="Hidden neurons (one hidden layer)."),
    hidden: Optional[str] = typer.Option(None, "--hidden", help="Hidden sizes, e.g. 8,4,2."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    activation: str = typer.Option(
        _TEACHER_DEFAULTS["activation"], "--activation", help="Hidden activation."
    ),
    d_out: int = typer.Option(_TEACHER_DEFAULTS["d_out"], "--d-out", help="Output dimension."),
    out: Path = typer.Option(..., "--out", help="Output network file."),
) -> None:
    """Draw a synthetic teacher of the paper (appendix A.4) and write it."""
    if (r is None) == (hidden is None):
        raise InputError("give exactly one of --r (one hidden layer) or --hidden (e.g. 8,4,2)")
    sizes = (r,) if r is not None else teachers.parse_hidden(hidden)
    if r is not None and r < 1:
        raise InputError(f"--r must be positive, got {r}")
    check_outputs({}, {"--out": out})
    config = teachers.TeacherConfig(d_in=d_in, hidden=sizes, activation=activation, d_out=d_out)
    net = teachers.synthetic_teacher(config, seed)
    networks.write_network(
        out, net, attrs={"teacher": "synthetic", "seed": seed, "activation": activation}
    )
    typer.echo(f"wrote {out}: {net.describe()}")


@teacher_app.command("train")
def teacher_train(
    dataset: str = typer.Option(..., "--dataset", help="digits, mnist or fashion."),
    hidden: str = typer.Option(
        ..., "--hidden", help="Hidden sizes: r (one hidden layer) or one per layer, e.g. 16,16."
    ),
    activation: str = typer.Option("tanh", "--activation", help="Hidden activation."),
    seed: int = typer.Option(0, "--seed", help="Seeds the split, initialisation and batches."),
    max_epochs: int = typer.Option(2000, "--max-epochs", help="Upper bound on epochs."),
    out: Path = typer.Option(..., "--out", help="Output network file (logits, with queries)."),
) -> None:
    """Train a classifier on a data set and write its logits network with its training inputs."""
    try:
        sizes = tuple(int(part) for part in hidden.split(","))
    except ValueError:
        raise InputError(
            f"--hidden must be a positive integer or comma-separated ones (16,16), got {hidden!r}"
        ) from None
    check_outputs({}, {"--out": out})
    check_width("--hidden", sizes, _LARGEST_IMAGE, 10)
    config = teachers.ClassifierConfig(max_epochs=max_epochs)
    trained = teachers.train_classifier(dataset, sizes, activation, seed, config)
    net = trained.network
    networks.write_network(
        out, net, x=trained.x_train, y=net.forward(trained.x_train), attrs=trained.file_attrs()
    )
    typer.echo(
        f"test accuracy {trained.test_accuracy:.4f} (train {trained.train_accuracy:.4f}, "
        f"validation {trained.val_accuracy:.4f}); {trained.message}; {trained.seconds:.1f} s"
    )
    typer.echo(f"wrote {out}: {net.describe()}, {len(trained.x_train)} training inputs as queries")


@app.command()
def query(
    teacher: Path = typer.Option(
        ..., "--teacher", help="Network file (HDF5) or ONNX model, queried as a black box."
    ),
    n: int = typer.Option(..., "--n", help="Number of queries."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the query inputs."),
    out: Path = typer.Option(..., "--out", help="Output pairs file."),
) -> None:
    """Query a network at N inputs uniform in [-√3, √3]^d_in and write the pairs.

    An ONNX model is run by onnxruntime; a float32 model sees (and the pairs hold) the inputs
    rounded to float32."""
    if n < 1:
        raise InputError(f"--n must be positive, got {n}")
    if seed < 0:
        raise InputError(f"--seed must be non-negative, got {seed}")
    check_outputs({"--teacher": teacher}, {"--out": out})
    if teacher.suffix.lower() == ".onnx":
        box = blackbox.from_onnx(teacher)
    else:
        box = blackbox.from_network(networks.read_network(teacher))
    check_rows("--n", n, box.d_in)
    x, y = box.query(teachers.sample_inputs(n, box.d_in, seed))
    networks.write_pairs(out, x, y, attrs={"seed": seed, "source": str(Path(teacher).name)})
    typer.echo(f"wrote {out}: {n} pairs, d_in {box.d_in}, d_out {box.d_out}")
