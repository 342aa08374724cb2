"""One stage of Expand-and-Cluster, for any hidden layer (paper section 5, Fig. 3 Algorithm 1).

A network ``d_in -> r_1 -> ... -> r_L -> d_out`` is rebuilt one hidden layer at a time; a
network with one hidden layer is the case ``L = 1``, one stage with nothing below it. Stage
``l`` takes the reconstructed layers ``1..l-1`` (``fixed``) and the student widths
``m_l, ..., m_L`` of the layers still to come, and:

1. **Students.** ``N`` students ``fixed + (m_l, ..., m_L) + output`` are trained
   (:func:`ecflow.expansion.expand`): the weights of ``fixed`` are frozen, their biases learn,
   everything above is fresh. All students share the frozen layers, so their layer ``l`` sits in
   one basis and can be clustered. They are saved to, and reused from, the work folder
   (``work_dir`` itself for one hidden layer, ``work_dir/layer-<l>`` for a deep network), and
   stopped once ``stop_after`` of them reached the student loss.
2. **Bias rule** (``l >= 2``; appendix A.3). A reconstructed neuron of layer ``l - 1`` that the
   teacher needs has one bias, so every student learns it; a spurious one has no preferred bias.
   A neuron whose learned bias varies across the students that reached the student loss by more
   than ``bias_std_max`` is dropped. When it drops any, the students are trained again on the
   steady neurons alone (``layer-<l>-steady``): a dropped neuron may have stood in for part of a
   kept one, and then the students split that neuron's weight each in its own way.
   For the smooth even+linear class (softplus, gelu, silu) the students see both orientations of every neuron of layer
   ``l - 1`` (:func:`ecflow.layerwise.doubled`), the bias rule drops none of them (pruning
   judges them), and after training the orientation that layer ``l`` needs is kept
   (:func:`ecflow.layerwise.orient_below`): a flip of these classes leaves a linear remainder
   that only the right orientation avoids, and only the layer above tells which it is.
3. **Clustering and collapse.** The neurons ``[w, b]`` of layer ``l`` are clustered
   (:func:`ecflow.clustering.cluster_neurons`) and each kept cluster becomes one neuron
   (:func:`ecflow.reconstruction.collapse_layer`), incoming side only: the layer above is
   retrained by the next stage, or refit by the finish (:mod:`ecflow.finish`). A student
   that stalled above the student loss may hold a hard teacher neuron as several neurons
   off its direction; when such students outnumber the ones at the student loss (two or
   more, fewer than the quorum ``ceil(gamma N)``), only the latter carry that neuron, and with
   ``zero_loss_quorum`` they are clustered alone (:func:`zero_loss_students`).

The stage returns a :class:`Stage`; it changes none of its inputs.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ecflow import metrics
from ecflow._checks import check_int, check_number
from ecflow.activations import Symmetry
from ecflow.budget import Budget
from ecflow.clustering import ClusterConfig, ClusterResult, cluster_neurons
from ecflow.context import Queries, Run
from ecflow.engines.base import TrainConfig, TrainResult
from ecflow.errors import InputError, InputTypeError
from ecflow.expansion import STUDENT_SHARE, Expansion, expand, quorum_rule
from ecflow.layerwise import doubled, layer_dir, orient_below
from ecflow.networks import MLP, Layer
from ecflow.reconstruction import NeuronCertificate, collapse_layer
from ecflow.workdir import WorkDir, manifest_for

__all__ = ["Source", "StageConfig", "Stage", "run_stage", "cluster_stage",
           "zero_loss_students"]


class Source(enum.Enum):
    """Which student of a kept cluster gives the reconstructed neuron."""

    LOWEST_LOSS = "lowest-loss"
    """The cluster's student of lowest loss: students at zero loss, each as good as the next,
    and the best carries the most precision (one hidden layer)."""
    MEDOID = "medoid"
    """The student of the cluster's medoid: a deep student at MSE 1e-8 can still hold a teacher
    neuron as a near pair of its own, ~5 degrees off, while the cluster's centre is where the
    students agree (:func:`ecflow.reconstruction.collapse_layer`)."""


@dataclass(frozen=True)
class StageConfig:
    """Settings of one stage (:func:`run_stage`), the same for every layer of a recovery.

    Parameters
    ----------
    n_students : int, default=10
        Students trained (``N``).
    cluster : ClusterConfig
        ``gamma`` and ``beta_deg``.
    train : TrainConfig
        Training of each student; its ``target_loss`` is the student loss.
    early_stop : bool, default=True
        Stop the students still queued or training once ``stop_after`` have reached the
        student loss.
    stop_after : int, optional
        Students a stage waits for; default :attr:`quorum`, ``ceil(gamma N)``. A low ``gamma``
        keeps the weak teacher neurons that few students pin, but must not also stop the stage
        after that few.
    bias_std_max : float, default=0.01
        The bias rule's threshold (module docstring; the paper's 0.1, tightened:
        :class:`ecflow.recover.RecoverConfig`).
    source : Source, default=Source.LOWEST_LOSS
    zero_loss_quorum : bool, default=False
        When two or more students, but fewer than :attr:`quorum`, reached the student loss,
        cluster those alone, a cluster needing ``max(2, ceil(gamma n))`` of the ``n`` (module
        docstring, step 3). Measured on a g teacher (d_in 4, r 4, seed 100, 3 998 queries):
        3 of 10 students reached MSE 1e-14, the only ones to hold one teacher neuron (within
        cosine distance 2e-14); the 7 stalled ones (MSE 6e-14 to 2e-6) held it as neurons at
        cosine distances 1.5e-4 to 6.4e-2 (about 1 to 21 degrees), which formed the big
        clusters instead, and the recovery ended INEXACT (7 neurons, RMSE 3.6e-4);
        clustering the 3 gave the 4 neurons exactly.
        Set for one hidden layer only: deep students stopped at MSE 1e-8 still pin most
        neurons (:class:`ecflow.config.DeepConfig`).
    """

    n_students: int = 10
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    early_stop: bool = True
    stop_after: int | None = None
    bias_std_max: float = 0.01
    source: Source = Source.LOWEST_LOSS
    zero_loss_quorum: bool = False

    def __post_init__(self):
        check_int(self.n_students, "n_students", 1)
        if not isinstance(self.cluster, ClusterConfig):
            raise InputTypeError(f"cluster must be a ClusterConfig, got {self.cluster!r}")
        if not isinstance(self.train, TrainConfig):
            raise InputTypeError(f"train must be a TrainConfig, got {self.train!r}")
        if not isinstance(self.early_stop, bool):
            raise InputTypeError(f"early_stop must be a bool, got {self.early_stop!r}")
        if self.stop_after is not None:
            check_int(self.stop_after, "stop_after", 1)
        check_number(self.bias_std_max, "bias_std_max", positive=True)
        if not isinstance(self.source, Source):
            raise InputTypeError(f"source must be a Source, got {self.source!r}")
        if not isinstance(self.zero_loss_quorum, bool):
            raise InputTypeError(f"zero_loss_quorum must be a bool, got "
                                 f"{self.zero_loss_quorum!r}")

    @property
    def quorum(self) -> int:
        """Distinct students a cluster needs to be big: ``ceil(gamma N)``."""
        return max(1, math.ceil(self.cluster.gamma * self.n_students - 1e-9))


@dataclass(frozen=True, eq=False)
class Stage:
    """Outcome of one stage.

    Attributes
    ----------
    layer : int
        1 for the first hidden layer.
    rounds : tuple of Expansion
        The students' training, and its second round on the steady neurons when the bias rule
        dropped any; ``()`` for students trained elsewhere (:func:`cluster_stage`).
    students : tuple of TrainResult
        The clustered students (those of the last round that ended by themselves).
    fixed : tuple of Layer
        The reconstructed layers below, with the bias rule applied, the biases of the
        lowest-loss student of the last round and, for the even+linear classes, the
        orientation the students of this stage needed.
    kept_below : tuple of int or None
        Neurons of layer ``l - 1`` that the bias rule kept (indices among its reconstructed
        neurons); None for layer 1.
    bias_std : tuple of float
        Spread of each neuron's learned bias of layer ``l - 1``; ``()`` when not measured.
    dropped_below : tuple of int
    clustering : ClusterResult
    layer_out : Layer or None
        The reconstructed layer ``l``; None when no cluster was both big and aligned.
    neurons : tuple of NeuronCertificate
        One per neuron of ``layer_out``.
    best : MLP
        The lowest-loss clustered student (its output activation ends the network).
    basis : DataBasis or None
        The queries' revealed directions when the students' first layers were projected on
        them (:func:`ecflow.metrics.revealed_basis`).
    notes : tuple of str
    phase_seconds : mapping of str to float
        ``students``, ``clustering``, ``reconstruction`` (the collapse).
    """

    layer: int
    rounds: tuple[Expansion, ...]
    students: tuple[TrainResult, ...]
    fixed: tuple[Layer, ...]
    kept_below: tuple[int, ...] | None
    bias_std: tuple[float, ...]
    dropped_below: tuple[int, ...]
    clustering: ClusterResult
    layer_out: Layer | None
    neurons: tuple[NeuronCertificate, ...]
    best: MLP
    basis: metrics.DataBasis | None = None
    notes: tuple[str, ...] = ()
    phase_seconds: dict = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return float(sum(self.phase_seconds.values()))

    @property
    def student_losses(self) -> tuple[float, ...]:
        return tuple(float(r.loss) for r in self.students)

    def count(self, what: str) -> int:
        """``n_trained``, ``n_reused``, ``n_stopped`` or ``n_skipped`` over the rounds."""
        return sum(getattr(e, what) for e in self.rounds)

    def status_counts(self) -> dict[str, int]:
        """How many of the stage's students ended with each TrainStatus name."""
        counts: dict[str, int] = {}
        for e in self.rounds:
            for r in e.results:
                if r is not None:
                    counts[r.status.name] = counts.get(r.status.name, 0) + 1
        return counts


# --- the students of a stage --------------------------------------------------------------------


def _label(layer: int, deep: bool) -> str:
    return f"layer {layer}: " if deep else ""


def _same_fixed(net: MLP, fixed: Sequence[Layer]) -> bool:
    """Whether a saved student was retrained on exactly these frozen layer weights."""
    return all(
        a.weight.shape == b.weight.shape and np.array_equal(a.weight, b.weight)
        for a, b in zip(net.layers, fixed)
    )


def _saved(store: WorkDir, queries: Queries, run: Run, manifest, *, layer, hidden, deep):
    """The seeds and the finished students of a stage's work folder: started (or checked
    against ``manifest``) when training, read back as saved otherwise."""
    if run.train:
        store.start(manifest, queries.x, queries.y, x_fresh=queries.x_fresh,
                    y_fresh=queries.y_fresh, teacher=queries.teacher)
    elif deep and not store.exists():
        raise InputError(f"{store.path}: no saved students for layer {layer}")
    else:
        saved = store.read_manifest()
        if saved.hidden != hidden:
            raise InputError(
                f"{store.path}: its students have hidden widths {saved.hidden}, layer "
                f"{layer} now needs {hidden} (the layers below came out otherwise): rerun "
                "ecflow recover with this --work-dir"
            )
        manifest = saved
    return manifest.seeds, store.finished_students(manifest)


def _students(queries: Queries, run: Run, budget: Budget, *, layer: int,
              fixed: tuple[Layer, ...], widths: tuple[int, ...], activation: str,
              seeds: Sequence[int], config: StageConfig, steady: bool = False
              ) -> tuple[Expansion, list[str]]:
    """The students of a stage: trained (reusing those saved in its work folder), or only read
    back (``run.train`` False); ``steady``: the second round, after the bias rule."""
    hidden = tuple(l.n_out for l in fixed) + tuple(widths)
    deep = len(hidden) > 1
    notes: list[str] = []
    reuse: dict[int, TrainResult] = {}
    store = None
    if run.work_dir is not None:
        store = WorkDir(layer_dir(run.work_dir, layer, steady) if deep else run.work_dir)
        manifest = manifest_for(hidden=hidden, activation=activation, seeds=seeds,
                                engine=run.engine, train=config.train, x=queries.x, y=queries.y)
        seeds, found = _saved(store, queries, run, manifest, layer=layer, hidden=hidden,
                              deep=deep)
        reuse = {i: r for i, r in found.items() if _same_fixed(r.network, fixed)}
        if len(reuse) < len(found):
            notes.append(f"layer {layer}: {len(found) - len(reuse)} saved students were "
                         "retrained on other reconstructed layers and are not reused")
    if not run.train:
        if not reuse and deep:
            raise InputError(
                f"{store.path}: no saved student of layer {layer} was retrained on the layers "
                "reconstructed now (other --gamma or --beta-deg change the layers below): "
                "rerun ecflow recover with this --work-dir to retrain them"
            )
        if not reuse:
            raise InputError(f"{store.path}: no saved student to cluster")
        results = tuple(reuse.get(i) for i in range(len(seeds)))
        return Expansion(results, tuple(r is not None for r in results), None, 0.0), notes
    enough = None
    if config.early_stop:
        enough = (quorum_rule(config.quorum, "(gamma N) a cluster needs")
                  if config.stop_after is None
                  else quorum_rule(config.stop_after, "the stage waits for"))
    phase = f"layer {layer}" + (" (steady)" if steady else "") if deep else "students"
    expansion = expand(
        queries.x, queries.y, hidden=tuple(widths), activation=activation, seeds=seeds,
        config=config.train, engine=run.engine, executor=run.executor, reuse=reuse,
        enough=enough, fixed=fixed,
        on_result=(lambda i, r: store.save_student(i, seeds[i], r)) if store else None,
        deadline=budget.wall_deadline(), progress=run.ticker(phase),
    )
    return expansion, notes


def _finished(expansion: Expansion, layer: int, deep: bool) -> tuple[TrainResult, ...]:
    results = tuple(expansion.results[i] for i in expansion.finished)
    if not results:
        raise InputError(
            f"{_label(layer, deep)}no student finished training (the deadline came first): "
            "give more --max-minutes"
        )
    return results


def _best(results: Sequence[TrainResult]) -> MLP:
    """The lowest-loss student (a failed student, NaN loss, never wins)."""
    return results[int(np.argmin(_rank_losses(results)))].network


def _rank_losses(results: Sequence[TrainResult]) -> list[float]:
    return [float(r.loss) if math.isfinite(r.loss) else math.inf for r in results]


def _with_biases(fixed: Sequence[Layer], net: MLP) -> tuple[Layer, ...]:
    """The frozen layers ``fixed`` with the biases ``net`` learned on top of them."""
    return tuple(Layer(l.weight, b.bias, l.activation) for l, b in zip(fixed, net.layers))


# --- the bias rule ------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _BiasRule:
    """The bias rule's verdict on the layer below: the neurons kept, their spreads, the notes."""

    keep: np.ndarray
    dropped: tuple[int, ...]
    spread: tuple[float, ...]
    notes: tuple[str, ...]


def _bias_spread(results: Sequence[TrainResult], below: int) -> np.ndarray | None:
    """Std across students of the learned biases of hidden layer index ``below`` (0-based),
    over the students that reached the student loss; None when fewer than two did.

    Only a student near zero loss has the bias a teacher neuron needs: students stuck higher
    compensate an imprecise neuron each in its own way (measured on a g 8-4-2-1 teacher whose
    stage-2 students all ended at MSE 1e-5 to 8e-5: a needed first-layer neuron had a spread
    of 0.17 and was dropped, and the recovery lost it).
    """
    good = [r for r in results if r.status.converged]
    if len(good) < 2:
        return None
    return np.array([r.network.layers[below].bias for r in good]).std(axis=0)


def _bias_rule(results: Sequence[TrainResult], layer: int, n_below: int,
               bias_std_max: float, *, pairs: bool = False) -> _BiasRule:
    """Which neurons of layer ``layer - 1`` keep a steady bias across the students; with
    ``pairs`` (a doubled layer, :func:`ecflow.layerwise.doubled`, of ``2 n_below`` rows) a
    neuron is steady when one of its two orientations is: the other one may be unused."""
    notes = []
    spread = _bias_spread(results, layer - 2)
    if spread is not None and pairs:
        spread = np.minimum(spread[:n_below], spread[n_below:])
    measured = spread is not None
    if spread is None:
        notes.append(
            f"layer {layer}: fewer than two students reached the student loss, so the "
            f"bias rule dropped no neuron of layer {layer - 1} (pruning judges them)"
        )
        spread = np.zeros(n_below)
    keep = np.flatnonzero(spread <= bias_std_max)
    dropped = tuple(int(k) for k in np.flatnonzero(spread > bias_std_max))
    if keep.size == 0:
        keep = np.array([int(np.argmin(spread))])
        dropped = tuple(k for k in dropped if k != int(keep[0]))
        notes.append(
            f"layer {layer - 1}: every neuron's bias varied across students by more "
            f"than {bias_std_max:g}; the steadiest one was kept"
        )
    return _BiasRule(keep, dropped, tuple(float(s) for s in spread) if measured else (),
                     tuple(notes))


# --- the stage ----------------------------------------------------------------------------------


def _keep_doubled(rule: _BiasRule, layer: int, n_below: int) -> _BiasRule:
    """The bias rule on a doubled (even + linear) layer below: it drops nothing. The free twin
    loosens a needed neuron's bias: on a softplus 8-4-2-1 teacher one spread 0.012 across
    students at the student loss, was dropped, and the students retrained without it stalled
    at MSE 0.22. Spurious neurons are left to pruning."""
    return dataclasses.replace(rule, keep=np.arange(n_below), dropped=(), notes=(
        *rule.notes, f"layer {layer}: the bias rule drops no neuron of layer {layer - 1}, read "
        f"in both orientations (spreads {_spreads(rule)}); pruning judges them"))


def _retrained_note(layer: int, n_kept: int) -> str:
    return (f"layer {layer}: its students were trained again on the {n_kept} neurons of "
            f"layer {layer - 1} that the bias rule kept")


def run_stage(
    queries: Queries,
    run: Run,
    budget: Budget,
    *,
    layer: int,
    fixed: Sequence[Layer],
    widths: Sequence[int],
    activation: str,
    seeds: Sequence[int],
    config: StageConfig,
) -> Stage:
    """Stage ``layer`` of Expand-and-Cluster (module docstring).

    Parameters
    ----------
    queries : Queries
    run : Run
    budget : Budget
        The recovery's budget: the stage's students take ``STUDENT_SHARE`` of the time left,
        split evenly between this stage and those still to come.
    layer : int
        1 for the first hidden layer; ``len(fixed) + 1``.
    fixed : sequence of Layer
        The reconstructed layers below (their weights are frozen in the students).
    widths : sequence of int
        Student widths ``m_l, ..., m_L`` of this layer and the ones above.
    activation : str
        Hidden activation of the students.
    seeds : sequence of int
        One initialisation seed per student; every stage uses the same seeds.
    config : StageConfig

    Returns
    -------
    Stage
    """
    fixed, widths = tuple(fixed), tuple(int(w) for w in widths)
    if layer != len(fixed) + 1 or not widths:
        raise InputError(f"stage {layer} needs {layer - 1} fixed layers and a width, got "
                         f"{len(fixed)} and {widths}")
    deep = len(fixed) + len(widths) > 1
    share = budget.share(STUDENT_SHARE / len(widths))
    t = time.monotonic()
    args = dict(layer=layer, widths=widths, activation=activation, seeds=seeds, config=config)
    # The layer above decides the orientation of even+linear neurons: its students see both.
    # Not for the piecewise-linear class (relu): measured on a relu 8-4-2-1 teacher (seed 101),
    # layer-2 students on the doubled layer stalled at MSE 1.7e-8 and the recovery went from
    # exact (sizes 4-3, RMSE 3.3e-16) to INEXACT (6-6, RMSE 2.3e-3); on softplus 8-4-2-1 it
    # went from INEXACT (6-2, RMSE 0.036) to exact (4-2, RMSE 3.1e-16).
    orient = bool(fixed) and fixed[-1].activation.symmetry is Symmetry.EVEN_LINEAR
    if orient:
        fixed = fixed[:-1] + (doubled(fixed[-1]),)
    expansion, notes = _students(queries, run, share, fixed=fixed, **args)
    results = _finished(expansion, layer, deep)
    rounds, rule, columns = [expansion], None, None
    if fixed:
        below = fixed[-1]
        n_below = below.n_out // 2 if orient else below.n_out
        rule = _bias_rule(results, layer, n_below, config.bias_std_max, pairs=orient)
        if orient and rule.dropped:
            rule = _keep_doubled(rule, layer, n_below)
        notes.extend(rule.notes)
        rows = np.concatenate([rule.keep, rule.keep + n_below]) if orient else rule.keep
        # The reconstructed layer below, with the bias rule applied; its biases (and those of
        # the layers under it) are the lowest-loss student's.
        best = _best(results)
        fixed = _with_biases(fixed, best)[:-1] + (Layer(
            below.weight[rows], best.layers[layer - 2].bias[rows], below.activation
        ),)
        columns = rows
        steady_dir = None if run.work_dir is None else layer_dir(run.work_dir, layer, True)
        if rule.dropped and (run.train or steady_dir is not None and WorkDir(steady_dir).exists()):
            again, again_notes = _students(queries, run, share, fixed=fixed, steady=True, **args)
            notes.extend(again_notes)
            retrained = tuple(again.results[i] for i in again.finished)
            if retrained:
                rounds.append(again)
                results, columns = retrained, None
                fixed = _with_biases(fixed, _best(results))
                notes.append(_retrained_note(layer, fixed[-1].n_out))
    if orient:
        results, fixed, note = _oriented(queries, results, fixed, columns, layer)
        notes.append(note)
        columns = None
    notes.extend(_stop_note(rounds[-1], len(results), layer, deep))
    if rounds[-1].stop_reason is None and rounds[-1].n_skipped:
        budget.note(f"{_label(layer, deep)}students: {rounds[-1].n_skipped} not trained "
                    "(deadline)")
    seconds = {"students": time.monotonic() - t}
    return cluster_stage(
        queries, run, results, layer=layer, fixed=fixed, columns=columns, config=config,
        rounds=tuple(rounds), rule=rule, notes=tuple(notes), phase_seconds=seconds,
        shallow=not deep,
    )


def _spreads(rule: _BiasRule) -> str:
    return ", ".join(f"{v:.2g}" for v in rule.spread)


def _oriented(queries: Queries, results: Sequence[TrainResult], fixed: tuple[Layer, ...],
              columns: np.ndarray | None, layer: int
              ) -> tuple[tuple[TrainResult, ...], tuple[Layer, ...], str]:
    """The students of a stage on one orientation of each neuron of the doubled layer below
    (:func:`ecflow.layerwise.orient_below`, decided by the lowest-loss student), and the layers
    below with that orientation."""
    below = layer - 2
    nets = []
    for r in results:
        net = r.network
        if columns is not None:  # students read back, trained before the bias rule dropped some
            lay, above = net.layers[below], net.layers[below + 1]
            layers = list(net.layers)
            layers[below] = Layer(lay.weight[columns], lay.bias[columns], lay.activation)
            layers[below + 1] = Layer(above.weight[:, columns], above.bias, above.activation)
            net = MLP(tuple(layers))
        nets.append(net)
    order = np.argsort(_rank_losses(results), kind="stable")
    chosen = orient_below([nets[i] for i in order], queries.x, below)
    oriented = [None] * len(nets)
    for i, net in zip(order, chosen.networks):
        oriented[i] = net
    students = tuple(dataclasses.replace(r, network=n) for r, n in zip(results, oriented))
    kept = chosen.networks[0].layers[below]
    n_above = chosen.networks[0].layers[below + 1].n_out
    flipped = ", ".join(map(str, chosen.flipped)) or "none"
    note = (f"layer {layer - 1}: orientation of its {kept.n_out} even+linear neurons decided by "
            f"layer {layer}'s students (flipped: {flipped}); {chosen.n_exact} of the best "
            f"student's {n_above} layer-{layer} neurons are exact combinations of them")
    return students, fixed[:-1] + (kept,), note


def _stop_note(expansion: Expansion, n_clustered: int, layer: int, deep: bool) -> list[str]:
    stopped, skipped = expansion.n_stopped, expansion.n_skipped
    if not (stopped or skipped):
        return []
    return [
        f"{_label(layer, deep)}{n_clustered} students clustered; {stopped} stopped while "
        f"training and {skipped} never started"
        + (f": {expansion.stop_reason}" if expansion.stop_reason else "")
    ]


def cluster_stage(
    queries: Queries,
    run: Run,
    students: Sequence[TrainResult],
    *,
    layer: int = 1,
    fixed: Sequence[Layer] = (),
    columns: np.ndarray | None = None,
    config: StageConfig,
    rounds: tuple[Expansion, ...] = (),
    rule: _BiasRule | None = None,
    notes: tuple[str, ...] = (),
    phase_seconds: dict | None = None,
    shallow: bool = True,
) -> Stage:
    """Cluster hidden layer ``layer`` of trained students and collapse its kept clusters.

    The second half of :func:`run_stage`, on its own for students trained elsewhere (the
    sweep's). ``columns`` selects the neurons of the layer below that stay (the bias rule).

    On layer 1, when the queries do not reveal every direction of ``[w, b]``
    (:func:`ecflow.metrics.revealed_basis`: images with pixels that are always blank), the
    students' first layers are projected on the revealed ones and neurons are compared by their
    pre-activations over the queries: weights along the others keep the students' random initial
    values, in a deep student as in a shallow one. With ``shallow`` (students of one hidden
    layer) the clustering reports its own progress phase; a deep stage's progress is its layer's
    students (re-clustering a deep folder reports nothing before its last stage's students
    are found, so that a missing layer is one line of error, not a bar and a line).
    """
    students = tuple(students)
    phases = dict(phase_seconds or {})
    t = time.monotonic()
    if shallow:
        run.tick("clustering", 0, 1)
    alone = zero_loss_students(students, config)
    index = layer - 1
    basis = metrics.revealed_basis(queries.x) if layer == 1 else None
    nets = [r.network if basis is None else basis.project_network(r.network) for r in students]
    layers, nexts = [], []
    for net in nets:
        lyr = net.layers[index]
        w = lyr.weight if columns is None else lyr.weight[:, columns]
        layers.append(Layer(w, lyr.bias, lyr.activation))
        nexts.append(net.layers[index + 1].weight)
    vectors = np.vstack([np.hstack([l.weight, l.bias[:, None]]) for l in layers])
    sid = np.concatenate([np.full(l.n_out, s) for s, l in enumerate(layers)])
    nid = np.concatenate([np.arange(l.n_out) for l in layers])
    if basis is not None:
        vectors = basis.coordinates(vectors)
    n_students, cluster = max(len(nets), config.n_students), config.cluster
    if alone is not None:
        rows = np.isin(sid, alone)
        vectors, sid, nid = vectors[rows], sid[rows], nid[rows]
        n_students = alone.size
        cluster = dataclasses.replace(cluster, gamma=max(cluster.gamma, 2.0 / alone.size))
        notes = (*notes, _zero_loss_note(alone.size, len(students), config.quorum,
                                         math.ceil(cluster.gamma * alone.size - 1e-9)))
    clustering = cluster_neurons(
        vectors, sid, layers[0].activation.symmetry, n_students=n_students, config=cluster,
        revealed=basis is not None,
    )
    if shallow:
        run.tick("clustering", 1, 1)
    phases["clustering"] = time.monotonic() - t
    t = time.monotonic()
    layer_out, sources = None, ()
    if clustering.kept:
        layer_out, sources = collapse_layer(
            layers, nexts, _rank_losses(students), clustering, sid, nid,
            lowest_loss=config.source is Source.LOWEST_LOSS,
        )
    phases["reconstruction"] = time.monotonic() - t
    return Stage(
        layer=layer, rounds=rounds, students=students, fixed=tuple(fixed),
        kept_below=None if rule is None else tuple(int(k) for k in rule.keep),
        bias_std=() if rule is None else rule.spread,
        dropped_below=() if rule is None else rule.dropped,
        clustering=clustering, layer_out=layer_out,
        neurons=_certificates(clustering, sources, layer), best=nets[int(np.argmin(
            _rank_losses(students)))], basis=basis, notes=notes, phase_seconds=phases,
    )


def zero_loss_students(students: Sequence[TrainResult], config: StageConfig
                       ) -> np.ndarray | None:
    """Indices of the students to cluster alone (``config.zero_loss_quorum``): those that
    reached the student loss, when at least two but fewer than the quorum did; None: cluster
    every student.

    Only a student at (near) zero loss holds every teacher neuron (paper section 5); a stalled
    one can hold a hard one as several neurons off its direction, and when the stalled
    students outnumber the others their copies, not the teacher's neuron, reach the quorum.
    """
    if not config.zero_loss_quorum:
        return None
    good = np.flatnonzero([r.status.converged for r in students])
    if 2 <= good.size < min(config.quorum, len(students)):
        return good
    return None


def _zero_loss_note(n_good: int, n_all: int, quorum: int, needed: int) -> str:
    return (f"{n_good} of {n_all} students reached the student loss, fewer than the {quorum} "
            f"(gamma N) a cluster needs: only they were clustered, a cluster needing {needed} "
            "of them (a stalled student may hold a teacher neuron as several neurons off its "
            "direction)")


def _certificates(clustering: ClusterResult, sources: Sequence[int], layer: int
                  ) -> tuple[NeuronCertificate, ...]:
    by_label = {c.label: c for c in clustering.clusters}
    return tuple(
        NeuronCertificate(
            neuron=k,
            cluster=c.label,
            cluster_size=c.size,
            n_students=len(c.students),
            median_angle_deg=c.median_angle_deg,
            max_angle_deg=c.max_angle_deg,
            symmetry=clustering.symmetry.value,
            students=c.students,
            source_student=src,
            layer=layer,
        )
        for k, (c, src) in enumerate(zip((by_label[c.label] for c in clustering.kept), sources))
    )
