"""``ecflow symmetry reduce`` and ``ecflow symmetry map``: the exact zero-loss mapping (issue 6)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ecflow import networks, symmetry
from ecflow.cli._app import Typer, app
from ecflow.cli._output import cell
from ecflow.safety import check_outputs

symmetry_app = Typer(
    help="Neuron types of a zero-loss student and its minimal network (paper section 4)."
)
app.add_typer(symmetry_app, name="symmetry")


def _config(param_rtol: float, output_rtol: float, verify_rtol: float, n_verify: int, seed: int):
    return symmetry.SymmetryConfig(
        param_rtol=param_rtol,
        output_rtol=output_rtol,
        verify_rtol=verify_rtol,
        n_verify=n_verify,
        seed=seed,
    )


def _domain(queries: Optional[Path]):
    return None if queries is None else networks.read_pairs(queries).x


_D = symmetry.SymmetryConfig()
_PARAM = typer.Option(_D.param_rtol, "--param-rtol", help="Relative tolerance on [w, b].")
_OUTPUT = typer.Option(
    _D.output_rtol, "--output-rtol", help="Negligible contribution, relative to the output rms."
)
_VERIFY = typer.Option(_D.verify_rtol, "--verify-rtol", help="Allowed RMSE / output rms.")
_NVERIFY = typer.Option(_D.n_verify, "--n-verify", help="Verification points in the box.")
_SEED = typer.Option(_D.seed, "--seed", help="Seed of the verification points.")
_QUERIES = typer.Option(
    None, "--queries", help="Pairs file whose inputs define the domain (default: the box)."
)


@symmetry_app.command("reduce")
def reduce(
    student: Path = typer.Option(..., "--student", help="Student network file (HDF5)."),
    out: Path = typer.Option(..., "--out", help="Output file for the reduced network."),
    report: Optional[Path] = typer.Option(None, "--report", help="JSON report of neuron types."),
    queries: Optional[Path] = _QUERIES,
    param_rtol: float = _PARAM,
    output_rtol: float = _OUTPUT,
    verify_rtol: float = _VERIFY,
    n_verify: int = _NVERIFY,
    seed: int = _SEED,
) -> None:
    """Classify each hidden neuron and write the minimal network computing the same function."""
    config = _config(param_rtol, output_rtol, verify_rtol, n_verify, seed)
    net = networks.read_network(student)
    x = _domain(queries)
    check_outputs({"--student": student, "--queries": queries}, {"--out": out, "--report": report})
    result = symmetry.reduce_network(net, x, config=config)
    attrs = {
        "source": Path(student).name,
        "symmetry_status": result.status.name.lower(),
        "symmetry_rmse": result.rmse,
    }
    if report is not None:
        with networks.atomic_path(report, suffix=".json") as tmp:
            tmp.write_text(json.dumps(result.report(), indent=1) + "\n")
    networks.write_network(out, result.network, attrs=attrs)
    counts = {t.value: 0 for t in symmetry.NeuronType}
    for n in result.neurons:
        counts[n.type.value] += 1
    summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v)
    typer.echo(f"{result.status.name.lower()}: {result.reason}")
    typer.echo(f"neurons: {summary}")
    typer.echo(f"wrote {out}: {result.network.describe()}")


def _fmt(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


@symmetry_app.command("map")
def map_(
    student: Path = typer.Option(..., "--student", help="Student network file (HDF5)."),
    teacher: Path = typer.Option(..., "--teacher", help="Teacher network file (HDF5)."),
    report: Optional[Path] = typer.Option(None, "--report", help="JSON report with the mapping."),
    queries: Optional[Path] = _QUERIES,
    param_rtol: float = _PARAM,
    output_rtol: float = _OUTPUT,
    verify_rtol: float = _VERIFY,
    n_verify: int = _NVERIFY,
    seed: int = _SEED,
) -> None:
    """Print which teacher neuron each student neuron copies, with sign, scale and share."""
    config = _config(param_rtol, output_rtol, verify_rtol, n_verify, seed)
    s_net = networks.read_network(student)
    t_net = networks.read_network(teacher)
    x = _domain(queries)
    check_outputs({"--student": student, "--teacher": teacher, "--queries": queries},
                  {"--report": report})
    result = symmetry.reduce_network(s_net, x, teacher=t_net, config=config)
    mapping = result.mapping
    table = Table(title=cell(f"{Path(student).name} → {Path(teacher).name}"))
    for col in ("neuron", "type", "group", "teacher", "sign", "scale", "share", "cos dist", "note"):
        table.add_column(col, justify="left" if col in ("type", "note") else "right")
    for n, m in zip(result.neurons, mapping.neurons):
        table.add_row(
            str(n.index),
            n.type.value,
            "" if n.group is None else str(n.group),
            "" if m.teacher is None else str(m.teacher),
            f"{m.sign:+d}" if m.teacher is not None else "",
            _fmt(m.scale) if m.teacher is not None else "",
            _fmt(m.share) if m.teacher is not None else "",
            _fmt(m.cosine_distance),
            n.note.value,
        )
    # Piped output defaults to 80 columns, too narrow for the nine columns of the table.
    console = Console(width=max(Console().width, 120))
    console.print(table)
    console.print(f"{result.status.name.lower()}: {result.reason}")
    console.print(
        f"student {s_net.hidden_sizes[0]} → reduced {result.network.hidden_sizes[0]} neurons; "
        f"teacher {t_net.hidden_sizes[0]}; max cosine distance "
        f"{mapping.max_cosine_distance:.3g}"
        + (f"; unmatched teacher neurons {list(mapping.unmatched_teacher)}"
           if mapping.unmatched_teacher else "")
    )
    if report is not None:
        with networks.atomic_path(report, suffix=".json") as tmp:
            tmp.write_text(json.dumps(result.report(), indent=1) + "\n")
