"""``ecflow import`` (a plain-MLP ONNX graph to a network file) and ``ecflow export`` (a network
file to ONNX)."""

from __future__ import annotations

from pathlib import Path

import typer

from ecflow import interop, networks
from ecflow.cli._app import app
from ecflow.errors import InputError
from ecflow.safety import check_outputs


@app.command("import")
def import_command(
    model: Path = typer.Argument(..., help="ONNX model of a plain MLP (Gemm or MatMul+Add)."),
    out: Path = typer.Option(..., "--out", help="Output network file (HDF5)."),
) -> None:
    """Convert an ONNX graph that is a plain MLP to an ecflow network file, exactly."""
    check_outputs({"MODEL": model}, {"--out": out})
    net = interop.read_onnx_network(model)
    networks.write_network(out, net, attrs={"source": model.name, "imported_from": "onnx"})
    typer.echo(f"wrote {out}: {net.describe()}")


@app.command("export")
def export_command(
    network: Path = typer.Argument(..., help="An ecflow network file (HDF5)."),
    onnx_path: Path = typer.Option(..., "--onnx", help="Output ONNX model."),
    float32: bool = typer.Option(
        False, "--float32", help="Store weights and compute in float32 (default float64)."
    ),
    softmax: bool = typer.Option(
        False, "--softmax",
        help="Answer probabilities (a softmax over the outputs; a sigmoid for one output): "
        "a network recovered from a classifier's probabilities then answers as it did.",
    ),
) -> None:
    """Write a network as ONNX (input 'input' (N, d_in), output 'output' (N, d_out)), for
    onnxruntime, PyTorch and the others."""
    if onnx_path.suffix.lower() != ".onnx":
        raise InputError(f"--onnx {onnx_path}: the file name must end in .onnx")
    check_outputs({"NETWORK": network}, {"--onnx": onnx_path})
    net = networks.read_network(network)
    interop.write_onnx(onnx_path, net, float32=float32, softmax=softmax)
    precision = "float32" if float32 else "float64"
    answers = ", probabilities" if softmax else ""
    typer.echo(f"wrote {onnx_path}: {net.describe()}, {precision}{answers}")


__all__ = ["import_command", "export_command"]
