"""``ecflow recover``: Expand-and-Cluster on a teacher network or on input-output pairs."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ecflow import blackbox, datasets, networks, teachers, workdir
from ecflow.cli._app import EXIT_NOT_RECOVERED, app, error
from ecflow.cli._output import add_row
from ecflow.cli._signals import set_resume_hint
from ecflow.cli._sizes import check_rho, check_scheduler, check_sizes, check_workers
from ecflow.config import check_width_choice
from ecflow.engines import ENGINES, get_engine
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError
from ecflow.oracle import OracleConfig, OutputKind
from ecflow.parallel import make_executor
from ecflow.recover import RecoverConfig, Recovery, cluster_saved, recover
from ecflow.safety import check_array_bytes, check_outputs
from ecflow.width_search import WidthSearchConfig


def _default_queries(path: Path, nf: networks.NetworkFile):
    """Query inputs of a teacher file when ``--queries`` is not given, and a note saying which.

    A teacher trained by ``ecflow teacher train`` names its data set: all of its images are
    queried. Its training images alone (``/queries/x``) are not enough: measured on 14 digits
    teachers (tanh, r 12), 4 training splits miss pixel directions that other digits images
    use, and the teacher's random initial weights there differ from any recovery by a logit
    RMSE of up to 2.3e-3 on those images. Otherwise the file's ``/queries/x``, else None
    (uniform inputs).
    """
    name = nf.attrs.get("dataset")
    if isinstance(name, str) and name in datasets.NAMES:
        try:
            x = datasets.query_inputs(name, nf.network.d_in)
        except InputError as exc:  # fashion not installed: the stored images will do
            if nf.x is not None:
                return nf.x, (f"queries: the {len(nf.x)} training images stored in {path.name} "
                              f"(data set {name} unavailable: {exc})")
        else:
            return x, (f"queries: all {len(x)} images of {name}, the data set {path.name} was "
                       "trained on (--queries chooses others)")
    if nf.x is not None:
        return nf.x, (f"queries: the {len(nf.x)} inputs stored in {path.name} (/queries/x); "
                      "--queries chooses others")
    return None, None


def _oracle_config(outputs, decimals, noise_std, max_queries, *, teacher: bool
                   ) -> OracleConfig:
    """The flags on the teacher's answers, each checked under its own name."""
    kinds = [k.value for k in OutputKind]
    if outputs is not None and outputs not in kinds:
        raise InputError(f"--outputs must be one of {', '.join(kinds)}, got {outputs!r}")
    if decimals is not None and decimals < 0:
        raise InputError(f"--output-decimals must be >= 0, got {decimals}")
    if noise_std is not None and not noise_std > 0:
        raise InputError(f"--noise-std must be positive, got {noise_std}")
    if max_queries is not None:
        if not teacher:
            raise InputError("--max-queries needs --teacher (with --data nothing is queried)")
        if max_queries < 1:
            raise InputError(f"--max-queries must be positive, got {max_queries}")
    return OracleConfig(outputs=outputs, output_decimals=decimals, noise_std=noise_std,
                        max_queries=max_queries)


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3g}"


def _print_report(console: Console, rec: Recovery) -> None:
    summary = Table(title="Expand-and-Cluster recovery", show_header=False)
    add_row(summary, "status", rec.status.name)
    add_row(summary, "reason", rec.reason)
    add_row(summary, "recovered hidden size", ", ".join(map(str, rec.hidden_sizes)) or "none")
    add_row(summary, "student width, activation", f"{rec.student_width}, {rec.activation}")
    add_row(summary, "RMSE train / fresh", f"{_fmt(rec.rmse_train)} / {_fmt(rec.rmse_fresh)}")
    if rec.max_cosine_distance is not None:
        mean = rec.to_report()["mean_cosine_distance"]
        add_row(summary, "max (mean) cosine distance to teacher",
                f"{_fmt(rec.max_cosine_distance)} ({_fmt(mean)})")
    losses = sorted(rec.student_losses)
    add_row(summary, "student losses", ", ".join(_fmt(v) for v in losses))
    add_row(summary, "kept clusters, pruned", f"{rec.n_kept_clusters}, {len(rec.pruned)}")
    add_row(
        summary,
        "seconds", f"{rec.seconds:.1f} (" + ", ".join(
            f"{k} {v:.1f}" for k, v in rec.phase_seconds.items()) + ")"
    )
    add_row(
        summary,
        "students trained, reused, stopped, not started",
        f"{rec.students_trained}, {rec.students_reused}, {rec.students_stopped}, "
        f"{rec.students_skipped}",
    )
    if rec.student_status:
        add_row(
            summary,
            "students ended", ", ".join(f"{k} {v}" for k, v in sorted(rec.student_status.items()))
        )
    if rec.stop_reason:
        add_row(summary, "early stop", rec.stop_reason)
    for item in rec.cut:
        add_row(summary, "cut by --max-minutes", item)
    if rec.precision:
        add_row(summary, "precision", rec.precision["precision_reason"])
        add_row(summary, "outputs", str(rec.precision.get("outputs", "logits")))
    if rec.precision.get("queries_used") is not None:
        limit = rec.precision.get("max_queries")
        add_row(summary, "queries used", f"{rec.precision['queries_used']}"
                + (f" of --max-queries {limit}" if limit is not None else ""))
    for note in rec.notes:
        add_row(summary, "note", note)
    console.print(summary)
    if rec.width_search is not None:
        _print_width_search(console, rec.width_search)
    if rec.layers:
        _print_layers(console, rec)
    if rec.neurons:
        _print_certificates(console, rec)


def _print_certificates(console: Console, rec: Recovery) -> None:
    table = Table(title="Identifiability certificate per recovered neuron")
    for col in ("layer", "neuron", "cluster size", "students", "median angle °",
                "max angle °", "symmetry", "from student"):
        table.add_column(col)
    n_students = {r.layer: len(r.student_losses) for r in rec.layers}
    for c in rec.neurons:
        add_row(
            table,
            str(c.layer), str(c.neuron), str(c.cluster_size),
            f"{c.n_students}/{n_students.get(c.layer, len(rec.student_losses))}",
            f"{c.median_angle_deg:.2e}", f"{c.max_angle_deg:.2e}", c.symmetry,
            str(c.source_student),
        )
    console.print(table)


def _print_layers(console: Console, rec: Recovery) -> None:
    """A deep recovery, layer by layer: size, students, clusters, bias rule, pruning, match."""
    table = Table(title="Layer by layer (students retrained on the layers below)")
    # short headers: the table has to fit an 80-column terminal
    for col in ("layer", "size", "students", "clustered", "best MSE", "clusters",
                "bias std", "dropped", "pruned", "cos dist"):
        table.add_column(col)
    for r in rec.layers:
        losses = sorted(r.student_losses)
        add_row(
            table,
            str(r.layer), str(r.size), "-".join(map(str, r.student_hidden)), str(len(losses)),
            _fmt(losses[0]) if losses else "n/a", str(r.n_kept_clusters),
            _fmt(max(r.bias_std)) if r.bias_std else "-",
            ",".join(map(str, r.dropped_below)) or "-", ",".join(map(str, r.pruned)) or "-",
            _fmt(r.max_cosine_distance),
        )
    console.print(table)
    console.print(
        "students: widths of the stage's students (frozen layers first); bias std: largest "
        "spread of a learned bias of the layer below; dropped: its neurons dropped by the bias "
        "rule; cos dist: largest cosine distance to the teacher's neurons"
    )


def _print_width_search(console: Console, search) -> None:
    """Candidates ranked, each with its loss-versus-width curve (paper Fig. A.2B); after a
    depth search, one row per depth and candidate: the loss against depth and width."""
    title = "Depth and width search" if search.depth_auto else "Width search"
    table = Table(title=f"{title}: {search.status.name}, {search.reason}")
    columns = ("activation", "near-zero at width", "best MSE", "best MSE per width")
    for col in (("depth",) if search.depth_auto else ()) + columns:
        table.add_column(col)
    for depth in search.depths if search.depth_auto else (None,):
        for rank in search.ranking:
            widths, best = search.curve(rank.activation, depth)
            if not widths.size:
                continue
            reached = [w for w, v in zip(widths, best) if v <= search.threshold]
            row = (rank.activation, str(min(reached)) if reached else "-",
                   _fmt(float(best.min())),
                   ", ".join(f"{w}: {v:.1e}" for w, v in zip(widths, best)))
            add_row(table, *(((str(depth),) if depth is not None else ()) + row))
    console.print(table)


_D = RecoverConfig()
_T = TrainConfig()


def _parse_depth(depth: Optional[str], hidden: Optional[str], rho: Optional[float]) -> int | str:
    """``--depth``: 1 when not given, ``"auto"`` or a positive number of hidden layers."""
    if depth is None:
        return 1
    if hidden not in ("auto", None) or rho is not None:
        raise InputError("--depth goes with --hidden auto or no width at all (with widths or "
                         "--rho given, the depth is theirs)")
    if depth == "auto":
        return "auto"
    try:
        value = int(depth)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"--depth must be a positive integer or 'auto', got {depth!r}")
    return value


@app.command("recover")
def recover_command(
    teacher: Optional[Path] = typer.Option(
        None, "--teacher",
        help="Teacher: a network file (HDF5), or an ONNX model queried as a black box.",
    ),
    data: Optional[Path] = typer.Option(None, "--data", help="Input-output pairs file."),
    out: Path = typer.Option(..., "--out", help="Output network file (the recovered network)."),
    rho: Optional[float] = typer.Option(
        None, "--rho", help="Student width = ceil(rho x teacher width) (needs --teacher)."
    ),
    hidden: Optional[str] = typer.Option(
        None, "--hidden",
        help="Student width, one per hidden layer ('16,8': a deep network, recovered layer by "
        "layer), or 'auto': found by the width search (paper step 1), as when neither --rho "
        "nor --hidden is given.",
    ),
    depth: Optional[str] = typer.Option(
        None, "--depth",
        help="With --hidden auto: the number of hidden layers, or 'auto': the smallest depth "
        "at which short students reach near-zero loss (searched with the width).",
    ),
    students: int = typer.Option(_D.n_students, "--students", help="Number of students N."),
    gamma: float = typer.Option(_D.gamma, "--gamma", help="Kept clusters hold >= gamma N students."),
    beta_deg: float = typer.Option(
        _D.beta_deg, "--beta-deg", help="Kept clusters have a median angle <= this (degrees)."
    ),
    n_queries: int = typer.Option(_D.n_queries, "--n-queries", help="Teacher queries for training."),
    n_fresh: int = typer.Option(
        _D.n_fresh, "--n-fresh", help="Fresh teacher queries for the reported RMSE (0: none)."
    ),
    queries: Optional[str] = typer.Option(
        None, "--queries",
        help="Query inputs: digits, mnist, fashion (all images of the data set), or a file "
        "(/queries/x of an .h5, or .npy). Default: all images of the data set a trained "
        "teacher file names, else the file's /queries/x, else --n-queries uniform inputs.",
    ),
    activation: Optional[str] = typer.Option(
        None, "--activation", help="Student activation (default: the teacher's, or g)."
    ),
    seed: int = typer.Option(_D.seed, "--seed", help="Seed of queries and students."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Local worker processes."),
    scheduler: Optional[str] = typer.Option(
        None, "--scheduler", help="Dask scheduler address (tcp://host:8786)."
    ),
    engine: str = typer.Option("native", "--engine", help="Training engine: native or julia."),
    max_seconds: Optional[float] = typer.Option(
        None, "--max-seconds",
        help=f"Time budget of each student (seconds; default {_T.total_seconds:g}).",
    ),
    student_loss: float = typer.Option(
        _D.student_loss, "--student-loss",
        help="MSE at which a student is good enough to cluster (0: train to zero loss).",
    ),
    stall_factor: float = typer.Option(
        _T.stall_factor, "--stall-factor",
        help="Give up on a student whose goal is out of reach at its recent rate (0: never).",
    ),
    early_stop: bool = typer.Option(
        _D.early_stop, "--early-stop/--no-early-stop",
        help="Stop the other students once gamma N have reached --student-loss.",
    ),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", help="One deadline for the whole recovery (minutes)."
    ),
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir",
        help="Save each student here as it finishes; a rerun with the same folder reuses them.",
    ),
    prune: bool = typer.Option(_D.prune, "--prune/--no-prune", help="Prune superfluous neurons."),
    outputs: Optional[str] = typer.Option(
        None, "--outputs",
        help="What the teacher or the pairs answer: logits, or probabilities (a softmax; "
        "p and 1 - p for a binary classifier). Default: read from an ONNX model, else logits.",
    ),
    output_decimals: Optional[int] = typer.Option(
        None, "--output-decimals",
        help="The answers are rounded to this many decimals (default: read from the values).",
    ),
    noise_std: Optional[float] = typer.Option(
        None, "--noise-std", help="Standard deviation of Gaussian noise on the answers."
    ),
    max_queries: Optional[int] = typer.Option(
        None, "--max-queries",
        help="Most inputs sent to the teacher, training and fresh queries together.",
    ),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the report as JSON."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG figures here."),
) -> None:
    """Recover a network's weights from a teacher (black box) or from its input-output pairs.

    Exit code 0: a network was written (status RECOVERED, or INEXACT when it misses the
    RMSE tolerance: the report says by how much); 3: the run finished but recovered no
    network (nothing is written to --out); 2: bad input.
    """
    if (teacher is None) == (data is None):
        raise InputError("give exactly one of --teacher or --data")
    check_width_choice(rho, hidden, teacher=teacher is not None, flags=True)
    if data is not None and queries is not None:
        raise InputError("--queries needs --teacher (with --data the pairs are the queries)")
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
    get_engine(engine)  # a missing optional engine (julia) fails here, before any work
    check_workers(workers)
    check_scheduler(scheduler)
    check_rho(rho)
    check_array_bytes((students,), f"--students {students}: the students' seeds")
    if student_loss < 0:
        raise InputError(f"--student-loss must be >= 0, got {student_loss}")
    answers = _oracle_config(outputs, output_decimals, noise_std, max_queries,
                             teacher=teacher is not None)
    width = hidden if hidden in (None, "auto") else teachers.parse_hidden(hidden)
    search = WidthSearchConfig(depth=_parse_depth(depth, hidden, rho))
    train = TrainConfig(max_seconds=max_seconds, stall_factor=stall_factor)
    config = RecoverConfig(
        n_students=students, gamma=gamma, beta_deg=beta_deg, n_queries=n_queries,
        n_fresh=n_fresh, rho=rho, hidden=width, activation=activation, seed=seed,
        prune=prune, train=train, student_loss=student_loss or None, early_stop=early_stop,
        max_minutes=max_minutes, oracle=answers, width_search=search,
    )
    query_file = Path(queries) if queries is not None and Path(queries).is_file() else None
    _check_outputs(out, report, plots, inputs={"--teacher": teacher, "--data": data,
                                               "--queries": query_file}, work_dir=work_dir)
    set_resume_hint(
        f"rerun with --work-dir {work_dir} to continue" if work_dir is not None
        else "nothing was saved (--work-dir keeps each finished student)"
    )

    inputs, note = _read_inputs(teacher, data, queries)
    check_sizes(inputs.get("x"), inputs.get("teacher"), width, rho, n_queries, n_fresh)
    with contextlib.ExitStack() as stack:
        repaired: list[str] = []
        if work_dir is not None:
            # one process per work folder; damaged students are set aside and trained again
            stack.enter_context(workdir.locked(work_dir))
            repaired = workdir.repair(work_dir)
        with _progress_bar() as progress:
            with make_executor(workers, scheduler) as executor:
                rec = recover(**inputs, config=config, engine=engine, executor=executor,
                              progress=progress, work_dir=work_dir)
        notes = ([note] if note is not None else []) + repaired
        if notes:
            rec = dataclasses.replace(rec, notes=(*notes, *rec.notes))
        _write_outputs(rec, out, report, plots, config)


def _read_inputs(teacher: Optional[Path], data: Optional[Path], queries: Optional[str]):
    """``(keyword arguments of recover, note on the queries or None)`` from the files given."""
    if teacher is None:
        pairs = networks.read_pairs(data)
        return dict(x=pairs.x, y=pairs.y), None
    x, note = None, None
    if teacher.suffix.lower() == ".onnx":
        net = blackbox.from_onnx(teacher)
    else:
        nf = networks.read_network_file(teacher)
        net = nf.network
        if queries is None:
            x, note = _default_queries(teacher, nf)
    if queries is not None:
        x = datasets.query_inputs(queries, net.d_in)
        note = f"queries: {len(x)} inputs from {queries}"
    return dict(teacher=net, x=x), note


@app.command("cluster")
def cluster_command(
    work_dir: Optional[Path] = typer.Option(
        None, "--work-dir", help="Work folder of a recovery (the --work-dir of ecflow recover)."
    ),
    out: Path = typer.Option(..., "--out", help="Output network file (the recovered network)."),
    # the earlier spelling of --work-dir, kept so that existing scripts run; hidden because in
    # ecflow recover --students is a count
    students: Optional[Path] = typer.Option(None, "--students", hidden=True),
    sweep_dir: Optional[Path] = typer.Option(
        None, "--sweep", help="A synthetic-sweep folder: re-cluster the students of its --unit."
    ),
    unit: Optional[str] = typer.Option(
        None, "--unit", help="With --sweep: the unit, as d4_r2_t0_rho4 (a row of recoveries.csv)."
    ),
    gamma: Optional[float] = typer.Option(
        None, "--gamma",
        help=f"Kept clusters hold >= gamma N students [default: {_D.gamma}, or the sweep's].",
    ),
    beta_deg: Optional[float] = typer.Option(
        None, "--beta-deg",
        help=f"Kept clusters have a median angle <= this, degrees [default: {_D.beta_deg:g}, "
        "or the sweep's].",
    ),
    engine: str = typer.Option("native", "--engine", help="Engine of the fine-tunes."),
    max_minutes: Optional[float] = typer.Option(
        None, "--max-minutes", help="Deadline for fine-tuning and pruning (minutes)."
    ),
    prune: bool = typer.Option(_D.prune, "--prune/--no-prune", help="Prune superfluous neurons."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write the report as JSON."),
    plots: Optional[Path] = typer.Option(None, "--plots", help="Write PNG figures here."),
) -> None:
    """Re-cluster, reconstruct, fine-tune and prune the saved students of a recovery (no
    training): try other --gamma and --beta-deg on students already trained.

    Exit codes as for ecflow recover: 0 a network was written, 3 no network.
    """
    if sweep_dir is not None or unit is not None:
        _cluster_sweep_unit(sweep_dir, unit, work_dir or students, out, gamma, beta_deg,
                            report, plots)
        return
    gamma = _D.gamma if gamma is None else gamma
    beta_deg = _D.beta_deg if beta_deg is None else beta_deg
    if (work_dir is None) == (students is None):
        raise InputError("give the work folder of a recovery as --work-dir")
    flag, work_dir = ("--work-dir", work_dir) if students is None else ("--students", students)
    if not work_dir.is_dir():
        raise InputError(f"{flag} {work_dir}: not a folder")
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
    get_engine(engine)
    config = RecoverConfig(gamma=gamma, beta_deg=beta_deg, prune=prune, max_minutes=max_minutes)
    _check_outputs(out, report, plots, inputs=_work_files(work_dir))
    with workdir.locked(work_dir):
        with _progress_bar() as progress:
            rec = cluster_saved(work_dir, config=config, engine=engine, progress=progress)
        _write_outputs(rec, out, report, plots, config)


def _cluster_sweep_unit(sweep_dir, unit, work_dir, out, gamma, beta_deg, report, plots) -> None:
    """``ecflow cluster --sweep DIR --unit NAME``: one sweep unit re-clustered as the sweep did,
    then set beside the sweep's own record of it."""
    from ecflow import sweep

    if work_dir is not None:
        raise InputError("--sweep and --work-dir are two sources of students: give one")
    if sweep_dir is None or unit is None:
        raise InputError("--sweep DIR and --unit NAME go together")
    _check_outputs(out, report, plots, inputs={})
    with _progress_bar() as progress:
        rec, record = sweep.recluster(
            sweep_dir, unit, gamma=gamma, beta_deg=beta_deg, progress=progress
        )
    config = sweep.read_sweep_config(sweep_dir)
    shown = RecoverConfig(gamma=config.gamma if gamma is None else gamma,
                          beta_deg=config.beta_deg if beta_deg is None else beta_deg)
    if record is None:
        typer.echo(f"{unit}: the sweep has not run this recovery yet")
    else:
        typer.echo(
            f"{unit} in the sweep's record: sizes {record['recovered_size']}, RMSE "
            f"{record['rmse_train']} (training), {record['rmse_fresh']} (fresh), {record['status']}"
        )
    _write_outputs(rec, out, report, plots, shown)


def _work_files(folder: Path) -> dict[str, Path]:
    """The files of a work folder, as inputs that no output may replace."""
    files = sorted(folder.glob("*.h5")) + sorted(folder.glob("*/*.h5")) + sorted(
        folder.glob("*/*/*.h5"))
    return {f"--work-dir ({f.relative_to(folder)})": f for f in files}


def _check_outputs(out: Path, report: Optional[Path], plots: Optional[Path], *,
                   inputs: dict, work_dir: Optional[Path] = None) -> None:
    # Fail before hours of training, not at the end when the output cannot be written.
    if work_dir is not None and work_dir.is_dir():
        inputs = {**inputs, **_work_files(work_dir)}
    check_outputs(inputs, {"--out": out, "--report": report},
                  {"--plots": plots, "--work-dir": work_dir})


@contextlib.contextmanager
def _progress_bar():
    # Started at the first report, so that bad input found before any work (a corrupt
    # student file, another recovery's folder) prints its one line without a bar around it.
    bar = Progress(
        TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), console=Console(stderr=True), transient=False,
    )
    tasks: dict[str, int] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if phase not in tasks:
            tasks[phase] = bar.add_task(phase, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    try:
        yield progress
    except BaseException:
        # an error or a signal ends with its one line alone, not under a last frame of bars
        bar.console.quiet = True
        raise
    finally:
        if tasks:
            bar.stop()


def _write_outputs(rec: Recovery, out: Path, report, plots, config: RecoverConfig) -> None:
    report_dict = rec.to_report()
    if rec.network is not None:
        networks.write_network(out, rec.network, attrs=rec.to_attrs())
    if report is not None:
        with networks.atomic_path(report, suffix=".json") as tmp:
            tmp.write_text(json.dumps(report_dict, indent=1) + "\n")
    if plots is not None:
        from ecflow.plots import write_recovery_plots

        write_recovery_plots(rec, plots, beta_deg=config.beta_deg,
                             bias_std_max=config.deep.bias_std_max)
    _print_report(Console(), rec)
    if rec.network is None:
        error(f"nothing reconstructed, {out} not written: {rec.reason}")
        raise typer.Exit(EXIT_NOT_RECOVERED)
    typer.echo(f"wrote {out}: {rec.network.describe()}")


__all__ = ["recover_command", "cluster_command"]
