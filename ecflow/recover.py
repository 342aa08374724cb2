"""Expand-and-Cluster end to end, for any depth: the front door (paper section 5, appendix A.3).

:func:`recover` validates, wraps the teacher as a black box and queries it (or takes given
pairs), runs the width search when asked, then runs one stage per hidden layer and the finish:

1. **Queries** — a teacher is queried at ``n_queries`` inputs uniform in ``[-√3, √3]^d_in``
   (or at given inputs); with ``--data`` the pairs are given (:class:`ecflow.context.Queries`).
2. **Stages** — for each hidden layer ``l`` (:func:`ecflow.stage.run_stage`): ``n_students``
   students of widths ``ceil(rho r)`` or ``hidden`` are trained on the layers already
   reconstructed (frozen), the bias rule drops the unsteady neurons of the layer below, and
   the neurons of layer ``l`` are clustered and collapsed, one per big, aligned cluster. A
   network with one hidden layer is one stage with nothing below it.
3. **Finish** — output layer refit by least squares, fine-tune with the engine, pruning to the
   smallest width at the same precision, the RMSE on the queries and on fresh inputs, the
   match of the recovered neurons to the teacher's when it is known, and the verdict
   (:func:`ecflow.finish.finish`).

The context every stage shares is explicit: the queries, the run (engine, executor, progress,
work folder; :mod:`ecflow.context`) and the budget, which owns the clocks
(:mod:`ecflow.budget`). The result is a :class:`~ecflow.report.Recovery`, built in one place
(:func:`_recovery`), whose ``status`` says whether the network was recovered to ``rmse_tol`` and,
if not, what to try; every recovered neuron carries a certificate (cluster size,
within-cluster angles, symmetry class, contributing students).

:func:`cluster_saved` runs the same stages on the students saved in a work folder, without
training (``ecflow cluster``); :func:`reconstruct_from_students` clusters and finishes students
trained elsewhere (the sweep's).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ecflow import metrics, oracle, teachers
from ecflow.blackbox import BlackBox, as_black_box
from ecflow.budget import Budget
from ecflow.config import DeepConfig, RecoverConfig, check_width_choice
from ecflow.context import Progress, Queries, Run
from ecflow.engines.base import TrainResult
from ecflow.errors import InputError, InputTypeError
from ecflow.expansion import STUDENT_SHARE, student_seeds, student_width
from ecflow.finish import Finished, RecoverStatus, finish
from ecflow.layerwise import is_deep_work_dir, layer_dir
from ecflow.networks import MLP, check_xy
from ecflow.reconstruction import NeuronCertificate
from ecflow.report import Recovery, layer_reports, stage_fields
from ecflow.stage import Stage, StageConfig, cluster_stage, run_stage
from ecflow.width_search import WidthSearch, search_black_box
from ecflow.workdir import WorkDir

__all__ = [
    "RecoverConfig",
    "DeepConfig",
    "RecoverStatus",
    "NeuronCertificate",
    "Recovery",
    "reconstruct_from_students",
    "recover",
    "cluster_saved",
    "STUDENT_SHARE",
    "SEARCH_SHARE",
]

SEARCH_SHARE = 0.4
"""Share of ``max_minutes`` the width search may use; the students and what follows keep the
rest (a search that finishes sooner leaves more)."""


@dataclass(frozen=True, eq=False)
class _Problem:
    """What the front door made of its inputs: the queries, the widths (None: to be searched),
    the activation (None: to be searched or the default), and its notes."""

    queries: Queries
    config: RecoverConfig
    widths: tuple[int, ...] | None
    activation: str | None
    box: BlackBox | None
    notes: tuple[str, ...] = ()
    precision: dict = dataclasses.field(default_factory=dict)


def recover(
    *,
    teacher: MLP | BlackBox | None = None,
    query: Callable[[np.ndarray], np.ndarray] | None = None,
    d_in: int | None = None,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    config: RecoverConfig,
    engine: str = "native",
    executor: cf.Executor | None = None,
    progress: Progress | None = None,
    work_dir: str | os.PathLike | None = None,
) -> Recovery:
    """Recover a network, one hidden layer or several, from a teacher or from input-output pairs.

    Teacher path: ``teacher`` (an ecflow network or a :class:`~ecflow.blackbox.BlackBox`,
    e.g. an ONNX model) or ``query`` (any function from ``(n, d_in)`` arrays to
    ``(n, d_out)`` arrays, with ``d_in``) given, ``y`` not; it is queried at ``x`` when given,
    else at ``config.n_queries`` inputs ``teachers.sample_inputs(n_queries, d_in,
    config.seed)``, and at ``config.n_fresh`` fresh inputs for the reported RMSE; a float32
    model is judged against its rounding floor (:meth:`BlackBox.rmse_tolerance`). The student
    widths are ``ceil(rho r_l)`` (a teacher whose widths are known), ``hidden`` (one per
    hidden layer: two or more recover a deep network layer by layer), or found by the width
    search (``hidden="auto"``; one hidden layer, or ``config.width_search.depth`` of them, or
    the smallest depth that reaches near-zero loss with ``depth="auto"``), which also finds the
    activation when neither ``config.activation`` nor the model names it.

    Data path: ``x`` and ``y`` given, no teacher; ``config.hidden`` is required (widths or
    ``"auto"``), nothing is held out.

    Parameters
    ----------
    teacher : MLP or BlackBox, optional
    query : callable, optional
        ``query(x) -> y`` for ``x`` of shape ``(n, d_in)``, float64; exclusive with ``teacher``.
    d_in : int, optional
        Input dimension of ``query``.
    x : ndarray of shape (n_samples, d_in), float64, optional
    y : ndarray of shape (n_samples, d_out), float64, optional
    config : RecoverConfig
    engine : str, default="native"
    executor : concurrent.futures.Executor, optional
        Trains the students in parallel (:func:`ecflow.parallel.make_executor`).
    progress : callable, optional
        ``progress(phase, done, total)``.
    work_dir : path-like, optional
        Work folder (:mod:`ecflow.workdir`): each student is saved the moment it finishes, and
        a rerun with the same folder reuses them.

    Raises
    ------
    InputError
        Inconsistent inputs: neither or both of teacher and pairs, ``rho`` without a known
        width, a width search on a deep teacher, a query function that answers badly.
    """
    t_start = time.monotonic()
    if not isinstance(config, RecoverConfig):
        raise InputTypeError(f"config must be a RecoverConfig, got {type(config).__name__}")
    if config.rho is None and config.hidden is None:
        config = dataclasses.replace(config, hidden="auto")  # no width given: search it
    budget = Budget.minutes(config.max_minutes)
    run = Run(engine, executor, progress, work_dir)
    box = as_black_box(teacher, query, d_in)
    if box is not None:
        if y is not None:
            raise InputError("give a teacher or pairs (x, y), not both")
        box, counter = oracle.count_box(box, config.oracle.max_queries)
        problem = _teacher_problem(box, counter, x, config)
    else:
        problem = _pairs_problem(x, y, config)
    config, notes, phases = problem.config, list(problem.notes), {}
    widths, activation, search = problem.widths, problem.activation, None
    if config.hidden == "auto":
        t = time.monotonic()
        search = search_black_box(
            problem.box, problem.queries.x, problem.queries.y, activation=config.activation,
            near_zero=config.student_loss, config=config.width_search, seed=config.seed,
            engine=engine, executor=executor, progress=progress,
            budget=budget.share(SEARCH_SHARE),
        )
        phases["width search"] = time.monotonic() - t
        if not search.found:
            return _recovery((), None, widths=(), activation=search.activation or (
                config.activation or ""), config=config, notes=notes, budget=budget,
                t_start=t_start, phases=phases, width_search=search,
                precision=problem.precision)
        widths, activation = search.student_widths, search.activation
        notes.append(f"width search: {search.reason}")
    elif activation is None:
        activation = "g"
        notes.append("no activation given: students use g, the paper's default")
    return _pipeline(problem.queries, run, budget, widths=widths, activation=activation,
                     config=config, notes=notes, t_start=t_start, phases=phases,
                     width_search=search, precision=problem.precision)


def _teacher_problem(box: BlackBox, counter: oracle.QueryCounter, x,
                     config: RecoverConfig) -> _Problem:
    """The teacher's queries (given inputs or uniform ones, and fresh ones, within the query
    budget), what its answers are (:mod:`ecflow.oracle`), the floor they are judged against,
    and the student widths its known widths give."""
    notes = []
    given = x is not None
    n_queries, n_fresh, cut = oracle.split_budget(
        config.n_queries, config.n_fresh, counter.left if not given else None)
    if cut is not None:
        notes.append(cut)
    if x is None:
        x = teachers.sample_inputs(n_queries, box.d_in, config.seed)
    elif counter.left is not None:
        n_fresh = min(n_fresh, max(counter.left - len(x), 0))
    kind = config.oracle.kind(box.outputs)
    read = dict(kind=kind, eps=float(np.finfo(box.dtype).eps), config=config.oracle,
                name=box.name)
    answers = oracle.read_answers(*box.query(x), **read)
    x, y = answers.x, answers.y
    x_fresh = y_fresh = None
    n_dropped = answers.n_dropped
    if n_fresh > 0 and given and metrics.revealed_basis(x) is not None:
        # Fresh inputs uniform in the cube would probe directions the given queries (images)
        # never reveal, where no recovery can match the teacher.
        notes.append("the given query inputs do not span the input space: no fresh uniform "
                     "queries, the RMSE is on the given inputs")
    elif n_fresh > 0:
        fresh = oracle.read_answers(*box.query(teachers.sample_inputs(
            n_fresh, box.d_in, np.random.default_rng([config.seed, 1])
        )), step=answers.step, **read)
        x_fresh, y_fresh, n_dropped = fresh.x, fresh.y, n_dropped + fresh.n_dropped
    precision = oracle.answer_floor(answers, box.precision_report(y, config.rmse_tol),
                                    config.rmse_tol)
    precision.update(outputs=kind.value, queries_used=counter.used,
                     max_queries=counter.limit, saturated_rows_dropped=n_dropped)
    config, floor_notes = _judged_against(config, precision)
    notes += floor_notes + oracle.kind_notes(kind, n_dropped)
    teacher = box.network
    deep_teacher = teacher is not None and len(teacher.layers) > 2
    check_width_choice(config.rho, config.hidden, teacher=True)
    widths = None
    if config.rho is not None:
        known = teacher.hidden_sizes if deep_teacher else (box.known_width(),)
        widths = tuple(student_width(r, config.rho) for r in known)
    elif config.hidden != "auto":
        widths = config.hidden
    elif deep_teacher and config.width_search.depth == 1:
        raise InputError(
            f"the width search finds one hidden layer's width, the teacher has "
            f"{len(teacher.layers) - 1}: give rho, hidden with one width per layer, or "
            "depth 'auto' to search the depth too"
        )
    queries = Queries(x, y, x_fresh, y_fresh, teacher)
    return _Problem(queries, config, widths, config.activation or box.activation, box,
                    tuple(notes), precision)


def _judged_against(config: RecoverConfig, precision: dict) -> tuple[RecoverConfig, list]:
    """The config with the tolerance the answers allow (a float32 model, rounded or noisy
    answers), and the students' loss raised to the square of a rounding or noise floor, which
    no student can go below."""
    notes = []
    if precision["rmse_tol"] != config.rmse_tol:
        config = dataclasses.replace(config, rmse_tol=precision["rmse_tol"])
        notes.append(precision["precision_reason"])
    loss = oracle.student_loss_at_floor(precision)
    if loss is not None and config.student_loss is not None and loss > config.student_loss:
        config = dataclasses.replace(config, student_loss=loss)
        notes.append(f"students stop at MSE {loss:.3g}, the square of {oracle.NOISE_FACTOR:g} "
                     "x the floor of the answers")
    return config, notes


def _pairs_problem(x, y, config: RecoverConfig) -> _Problem:
    """Given pairs: the widths must be given (or searched); nothing is held out. Probability
    answers and rounding are read as for a teacher (:mod:`ecflow.oracle`)."""
    if x is None or y is None:
        raise InputError("give a teacher, or input-output pairs x and y")
    x, y = check_xy(x, y)
    check_width_choice(config.rho, config.hidden, teacher=False)
    if config.oracle.max_queries is not None:
        raise InputError("max_queries bounds the queries sent to a teacher; given pairs are "
                         "not queried")
    kind = config.oracle.kind(None)
    answers = oracle.read_answers(x, y, kind, eps=float(np.finfo(np.float64).eps),
                                  config=config.oracle, name="the pairs")
    base = {"precision": "float64", "rmse_floor": 0.0, "rmse_tol": config.rmse_tol,
            "precision_reason": f"given pairs: judged against rmse_tol {config.rmse_tol:.3g}"}
    precision = oracle.answer_floor(answers, base, config.rmse_tol)
    precision.update(outputs=kind.value, saturated_rows_dropped=answers.n_dropped)
    config, notes = _judged_against(config, precision)
    notes += oracle.kind_notes(kind, answers.n_dropped)
    widths = None if config.hidden == "auto" else config.hidden
    return _Problem(Queries(answers.x, answers.y), config, widths, config.activation, None,
                    tuple(notes), precision)


def _pipeline(queries: Queries, run: Run, budget: Budget, *, widths: tuple[int, ...],
              activation: str, config: RecoverConfig, notes: list[str], t_start: float,
              **extra) -> Recovery:
    """One stage per hidden layer, then the finish."""
    if len(widths) == 1 and queries.teacher is not None and len(queries.teacher.layers) != 2:
        notes.append(
            f"the teacher has {len(queries.teacher.layers) - 1} hidden layers, the students "
            "one: their neurons are not matched with the teacher's"
        )
        queries = dataclasses.replace(queries, teacher=None)
    stage_config, note = config.stage_config(queries, tuple(widths))
    if note is not None and run.train:
        notes.append(note)
    seeds = student_seeds(config.seed, config.n_students)
    stages: list[Stage] = []
    fixed = ()
    for layer in range(1, len(widths) + 1):
        stage = run_stage(queries, run, budget, layer=layer, fixed=fixed,
                          widths=widths[layer - 1:], activation=activation, seeds=seeds,
                          config=stage_config)
        stages.append(stage)
        if stage.layer_out is None:
            break
        fixed = stage.fixed + (stage.layer_out,)
    return _conclude(queries, run, budget, stages, widths=widths, activation=activation,
                     config=config, notes=notes, t_start=t_start, **extra)


def _conclude(queries, run, budget, stages, *, widths, config, **kwargs) -> Recovery:
    """The finish of stages that each kept a cluster, and the recovery either way."""
    finished = None
    if stages[-1].layer_out is not None:
        finished = finish(queries, run, budget, stages,
                          config.finish_config(deep=len(widths) > 1))
    return _recovery(stages, finished, widths=widths, config=config, budget=budget, **kwargs)


def _no_network_reason(stages: Sequence[Stage], widths, config: RecoverConfig) -> str:
    message = RecoverStatus.NO_CLUSTERS.message
    losses = [v if np.isfinite(v) else np.inf for v in stages[-1].student_losses]
    if len(widths) > 1:
        return f"{message} (layer {stages[-1].layer}; best student loss {min(losses):.3g})"
    n_big = sum(c.big for c in stages[-1].clustering.clusters)
    return (f"{message} ({n_big} big clusters, none with a median angle <= "
            f"{config.beta_deg}°; best student loss {min(losses):.3g})")


def _recovery(stages: Sequence[Stage], finished: Finished | None, *, widths, activation: str,
              config: RecoverConfig, notes: Sequence[str], budget: Budget, t_start: float,
              phases: dict | None = None, width_search: WidthSearch | None = None,
              precision: dict | None = None) -> Recovery:
    """The one place a :class:`Recovery` is built: from the stages reached and the finish (no
    stage: the width search found no width; no finish: a stage kept no cluster)."""
    deep, phases = len(widths) > 1, dict(phases or {})
    fields = dict(student_losses=(), student_width=0)
    if stages:
        fields.update(stage_fields(stages, widths, deep, phases))
        notes = [*notes, *(n for s in stages for n in s.notes)]
    if deep:
        fields["layers"] = layer_reports(stages, finished)
    if finished is not None:
        for key, seconds in finished.phase_seconds.items():
            phases[key] = phases.get(key, 0.0) + seconds
        fields.update(
            network=finished.network, hidden_sizes=finished.network.hidden_sizes,
            rmse_train=finished.rmse_train, rmse_fresh=finished.rmse_fresh,
            neurons=tuple(c for layer in finished.neurons for c in layer),
            max_cosine_distance=finished.max_cosine_distance, status=finished.status,
            reason=finished.reason, pruned=() if deep else finished.pruned[0],
            teacher_distances=tuple(d for layer in finished.teacher_distances for d in layer),
        )
        notes = [*notes, *finished.notes]
        hint = oracle.residual_note(fields["student_losses"], finished.rmse_fresh
                                    if finished.rmse_fresh is not None else finished.rmse_train,
                                    {"rmse_tol": config.rmse_tol, **(precision or {})})
        notes += [hint] if hint else []
    elif stages:
        fields.update(status=RecoverStatus.NO_CLUSTERS,
                      reason=_no_network_reason(stages, widths, config))
    else:
        fields.update(status=RecoverStatus.NO_WIDTH,
                      reason=f"{RecoverStatus.NO_WIDTH.message} ({width_search.reason})")
    base = dict(network=None, hidden_sizes=(), rmse_train=None, rmse_fresh=None, neurons=(),
                max_cosine_distance=None)
    return Recovery(**{**base, **fields}, seconds=time.monotonic() - t_start,
                    phase_seconds=phases, activation=activation, notes=tuple(notes),
                    cut=tuple(budget.cuts), width_search=width_search,
                    precision=dict(precision or {}))


def _check_students(students: Sequence[TrainResult], queries: Queries) -> list[TrainResult]:
    students = list(students)
    if not students:
        raise InputError("need at least one student")
    for i, net in enumerate(s.network for s in students):
        if len(net.layers) != 2:
            raise InputError(
                f"student {i} must have one hidden layer (issue 5), got sizes {net.sizes}"
            )
        if net.d_in != queries.d_in or net.d_out != queries.d_out:
            raise InputError(f"student {i} is {net.d_in} -> {net.d_out}, the pairs are "
                             f"{queries.d_in} -> {queries.d_out}")
    act = students[0].network.layers[0].activation
    # Compared by name: students trained in worker processes hold unpickled copies.
    if any(s.network.layers[0].activation.name != act.name for s in students):
        raise InputError("all students must share one hidden activation")
    teacher = queries.teacher
    if teacher is not None and (teacher.d_in != queries.d_in or len(teacher.layers) != 2):
        raise InputError(f"teacher must be a one-hidden-layer network with d_in = "
                         f"{queries.d_in}, got sizes {teacher.sizes}")
    return students


def reconstruct_from_students(
    x: np.ndarray,
    y: np.ndarray,
    students: Sequence[TrainResult],
    *,
    config: RecoverConfig,
    engine: str = "native",
    x_fresh: np.ndarray | None = None,
    y_fresh: np.ndarray | None = None,
    teacher: MLP | None = None,
    progress: Progress | None = None,
    budget: Budget | None = None,
    n_planned: int | None = None,
) -> Recovery:
    """Clustering, reconstruction, fine-tuning, pruning and metrics from trained students of
    one hidden layer: the stage's clustering (:func:`ecflow.stage.cluster_stage`) and the
    finish, for students trained elsewhere (the sweep's).

    Parameters
    ----------
    x : ndarray of shape (n_samples, d_in), float64
        Training queries (the students' training inputs).
    y : ndarray of shape (n_samples, d_out), float64
    students : sequence of TrainResult
        Trained one-hidden-layer students with a common activation.
    config : RecoverConfig
        ``gamma``, ``beta_deg``, ``prune``, ``finetune``, ``pruning`` and ``rmse_tol`` are used.
    engine : str, default="native"
        Engine of the fine-tunes.
    x_fresh, y_fresh : ndarray of shape (n_fresh, d_in) and (n_fresh, d_out), optional
        Held-out pairs for the reported RMSE.
    teacher : MLP, optional
        When known, the recovered neurons are matched to its hidden neurons.
    progress : callable, optional
        ``progress(phase, done, total)``.
    budget : Budget, optional
        Fine-tuning and pruning fit what is left of it; what it cuts is in ``Recovery.cut``.
    n_planned : int, optional
        The ``N`` of ``gamma N`` when the students are a subset of those planned (an expansion
        stopped early); default ``len(students)``.
    """
    t_start = time.monotonic()
    if not isinstance(config, RecoverConfig):
        raise InputTypeError(f"config must be a RecoverConfig, got {type(config).__name__}")
    queries = Queries(x, y, x_fresh, y_fresh, teacher)
    students = _check_students(students, queries)
    stage_config = StageConfig(n_students=max(len(students), n_planned or 0),
                               cluster=config.cluster_config, train=config.train)
    run = Run(engine, progress=progress)
    budget = Budget() if budget is None else budget
    stage = cluster_stage(queries, run, students, config=stage_config)
    hidden = students[0].network.layers[0]
    return _conclude(queries, run, budget, [stage], widths=(hidden.n_out,),
                     activation=hidden.activation.name, config=config, notes=[],
                     t_start=t_start)


def cluster_saved(
    work_dir: str | os.PathLike,
    *,
    config: RecoverConfig,
    engine: str = "native",
    progress: Progress | None = None,
) -> Recovery:
    """Re-cluster, reconstruct, fine-tune and prune the students saved in a work folder,
    without training (``ecflow cluster``): try other ``gamma`` and ``beta_deg`` on students
    already trained. ``config`` gives gamma, beta, pruning, fine-tuning and the deadline;
    N is the number of students the recovery planned. A deep recovery's folder holds one work
    folder per layer: the students of each layer are reused when they were retrained on the
    layers reconstructed now.

    Raises
    ------
    InputError
        Not a work folder, no saved student, or a corrupt or foreign student file.
    """
    t_start = time.monotonic()
    store = WorkDir(layer_dir(work_dir, 1) if is_deep_work_dir(work_dir) else work_dir)
    manifest = store.read_manifest()
    queries = Queries(*store.read_queries(), *store.read_fresh(), store.read_teacher())
    config = dataclasses.replace(config, n_students=len(manifest.seeds))
    run = Run(engine, None, progress, work_dir, train=False)
    return _pipeline(queries, run, Budget.minutes(config.max_minutes), widths=manifest.hidden,
                     activation=manifest.activation, config=config, notes=[],
                     t_start=t_start)
