"""Layer-by-layer Expand-and-Cluster for deep teachers (paper section 5, Fig. 3 Algorithm 1,
appendix A.3, A.5 and A.6.2; issue 14).

A teacher ``d_in -> r_1 -> ... -> r_L -> d_out`` with ``L >= 2`` hidden layers is rebuilt one
hidden layer at a time. Notation: ``h_0 = x``, ``h_l = σ(W_l h_{l-1} + b_l)``; a neuron of layer
``l`` is ``v = [w, b]`` with ``w`` over the ``n_{l-1}`` neurons of the layer below.

1. **Layer 1.** ``N`` students of widths ``m_1, ..., m_L`` (``ceil(ρ r_l)`` or given) are trained
   with every parameter free. Their first hidden layers sit in the common basis of the input, so
   they are clustered as in the shallow case (:func:`ecflow.clustering.cluster_neurons`) and one
   neuron per kept cluster gives reconstructed layer 1
   (:func:`ecflow.reconstruction.collapse_layer`: incoming ``[w, b]`` only, oriented by the
   class's symmetry; nothing above is carried over).
2. **Layers above, one at a time.** ``N`` new students are trained on top of the reconstructed
   layers ``1..l``: their weights are frozen (the engine's ``free`` mask), their biases learn, and
   layers ``l+1..L`` (widths ``m_{l+1}, ...``) and the output are fresh and free. All these
   students share layers ``1..l``, so their layer ``l+1`` sits in one basis and can be
   clustered; in the paper's reference code the students of the second layer had first layers
   in different bases, which cannot cluster.

   *Bias rule.* A reconstructed neuron of layer ``l`` that the teacher needs has one bias, so
   every student learns it; a spurious one (a neuron few students agreed on, a zero- or
   constant-type neuron) has no preferred bias. A neuron whose learned bias varies across the
   students, ``std_n(b_k^n) > bias_std_max`` (the paper's 0.1; 0.01 here, measured), is
   dropped, and its column is left out of the vectors of layer ``l+1`` before they are
   clustered. The spread is measured over the students that reached the student loss (a
   stalled student's biases are not informative).
3. **Output and fine-tune.** After the last hidden layer, the lower layers take the biases of
   the lowest-loss student of the last retraining, the output layer is the linear least-squares
   fit on ``h_L`` (:func:`refit_top`), and the whole network is fine-tuned by the engine
   (Levenberg–Marquardt to machine precision).
4. **Pruning per layer** (:func:`prune_layers`): each hidden neuron, top layer first, least
   supported first, is removed when the network keeps its precision. The layer above it is
   first refit by least squares: the output on ``y``, a hidden layer on its own pre-activations
   ``W_{l+1} h_l + b_{l+1}`` before the removal (exact when the removed neuron was a duplicate, a
   constant or a zero neuron), then fine-tuned when that is not enough.

**Symmetry compensation.** A flipped or rescaled neuron of layer ``l`` (``v = s λ v_t``) changes
what the layer above reads: :func:`match_layers` maps a recovered network onto its teacher layer
by layer, moving each matched neuron's sign and scale into the columns of the layer above and its
constant into that layer's bias (:meth:`ecflow.activations.Activation.compensate`), so that every
layer is compared with the teacher's in the teacher's basis.

Limitations: the even+linear classes (softplus, gelu, silu, relu) leave a linear remainder when a
neuron is flipped, which a layer above cannot absorb; each reconstructed neuron keeps the
orientation of the student it came from, and the fine-tune has to supply the rest.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecflow import metrics
from ecflow._checks import check_int, check_number
from ecflow.activations import get_activation
from ecflow.clustering import ClusterConfig, ClusterResult, cluster_neurons
from ecflow.engines import get_engine
from ecflow.engines.base import Engine, TrainConfig, TrainResult
from ecflow.errors import InputError, InputTypeError
from ecflow.expansion import STUDENT_SHARE, Expansion, expand, quorum_rule
from ecflow.networks import MLP, Layer, check_xy
from ecflow.reconstruction import (
    NeuronCertificate,
    PruneConfig,
    collapse_layer,
    default_finetune,
    support_order,
    within_deadline,
)
from ecflow.workdir import WorkDir, manifest_for

__all__ = [
    "LayerwiseConfig",
    "LayerReport",
    "LayerwiseResult",
    "LayerPruneResult",
    "recover_layers",
    "refit_top",
    "remove_hidden_neuron",
    "prune_layers",
    "match_layers",
    "layer_dir",
    "is_deep_work_dir",
]

logger = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]



_PRUNE_MAX_RMSE = 1e-6
"""Pruning runs only when the fine-tuned RMSE is at most this fraction of ``std(y)``: its
tolerance is relative to that RMSE (``PruneConfig.rel_factor``), so on a network far from exact
it let every removal through (measured: two g 8-4-2-1 recoveries whose fine-tune ended far
from exact were pruned to one neuron per layer)."""


@dataclass(frozen=True)
class LayerwiseConfig:
    """Settings of a layer-wise recovery (:func:`recover_layers`).

    Parameters
    ----------
    n_students : int, default=10
        Students per stage (``N``).
    cluster : ClusterConfig
        ``gamma`` and ``beta_deg``, the same for every layer: with retraining each layer is
        clustered in a common basis, so no per-layer β is needed (paper A.6.4, deep MNIST).
    train : TrainConfig
        Training of each student (its ``target_loss`` is the student loss).
    finetune : TrainConfig, default=TrainConfig(max_seconds=60.0)
        The fine-tune of the whole network and of each pruning attempt.
    pruning : PruneConfig
    prune : bool, default=True
    early_stop : bool, default=True
        Stop a stage's other students once ``ceil(gamma N)`` have reached the student loss.
    bias_std_max : float, default=0.01
        A reconstructed neuron whose learned bias has a larger standard deviation across the
        retrained students is dropped. The paper's rule is 0.1 (appendix A.3); at Float64 a
        tighter one serves better: measured on g 8-4-2-1 and tanh 6-6-4-1 teachers (students
        at MSE 1e-10), the teacher's neurons had spreads <= 1.7e-5 and the spurious ones 0.039
        to 0.96, so 0.1 let two spurious neurons through to pruning, while 0.01 drops every one
        of them with a margin of 500 on the teacher's side (with students at 1e-8 the teacher's
        spreads were up to 2e-4, still 50 below).
    stop_after : int, optional
        Students that must reach the student loss before a stage stops the others
        (``early_stop``); default :attr:`quorum`. A low ``gamma`` keeps the weak teacher
        neurons that few students pin, but must not also stop the stage after that few.
    """

    n_students: int = 10
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=default_finetune)
    pruning: PruneConfig = field(default_factory=PruneConfig)
    prune: bool = True
    early_stop: bool = True
    bias_std_max: float = 0.01
    stop_after: int | None = None

    def __post_init__(self):
        check_int(self.n_students, "n_students", 1)
        if not isinstance(self.cluster, ClusterConfig):
            raise InputTypeError(f"cluster must be a ClusterConfig, got {self.cluster!r}")
        for name in ("train", "finetune"):
            if not isinstance(getattr(self, name), TrainConfig):
                raise InputTypeError(f"{name} must be a TrainConfig, got {getattr(self, name)!r}")
        if not isinstance(self.pruning, PruneConfig):
            raise InputTypeError(f"pruning must be a PruneConfig, got {self.pruning!r}")
        for name in ("prune", "early_stop"):
            if not isinstance(getattr(self, name), bool):
                raise InputTypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        check_number(self.bias_std_max, "bias_std_max", positive=True)
        if self.stop_after is not None:
            check_int(self.stop_after, "stop_after", 1)

    @property
    def quorum(self) -> int:
        """Distinct students a cluster needs to be big: ``ceil(gamma N)``."""
        return max(1, math.ceil(self.cluster.gamma * self.n_students - 1e-9))


@dataclass(frozen=True, eq=False)
class LayerReport:
    """One hidden layer of a layer-wise recovery: its students, clusters and fate.

    Attributes
    ----------
    layer : int
        1 for the first hidden layer.
    size : int
        Neurons of this layer in the recovered network (after the bias rule and pruning).
    n_kept_clusters : int
        Clusters kept for this layer (before the bias rule of the next stage and pruning).
    neurons : tuple of NeuronCertificate
        One per neuron of this layer in the recovered network (``layer`` set).
    student_hidden : tuple of int
        Hidden widths of this stage's students, frozen layers included.
    student_losses : tuple of float
        Final MSE of each clustered student of this stage.
    students_trained, students_reused, students_stopped, students_skipped : int
        As :class:`ecflow.recover.Recovery`, for this stage.
    stop_reason : str or None
    bias_std : tuple of float
        Standard deviation across this stage's students (those that reached the student loss)
        of the learned bias of each neuron of the layer below; ``()`` for layer 1, whose
        students have nothing frozen, and when fewer than two students reached it.
    dropped_below : tuple of int
        Neurons of the layer below (indices among its kept clusters) dropped by the bias rule.
    pruned : tuple of int
        Neurons of this layer (indices among its reconstructed neurons) removed by pruning.
    teacher_distances : tuple of float
        Cosine distance of each teacher neuron of this layer to its match, in the teacher's
        basis (:func:`match_layers`); ``()`` without a teacher.
    max_cosine_distance : float or None
    seconds : float
        Students and clustering of this stage.
    clustering : ClusterResult or None
        For the plots; not part of the report.
    """

    layer: int
    size: int
    n_kept_clusters: int
    neurons: tuple[NeuronCertificate, ...]
    student_hidden: tuple[int, ...]
    student_losses: tuple[float, ...]
    students_trained: int = 0
    students_reused: int = 0
    students_stopped: int = 0
    students_skipped: int = 0
    stop_reason: str | None = None
    bias_std: tuple[float, ...] = ()
    dropped_below: tuple[int, ...] = ()
    pruned: tuple[int, ...] = ()
    teacher_distances: tuple[float, ...] = ()
    max_cosine_distance: float | None = None
    seconds: float = 0.0
    clustering: ClusterResult | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        def num(v):
            return None if v is None or not math.isfinite(v) else float(v)

        return {
            "layer": self.layer,
            "size": self.size,
            "n_kept_clusters": self.n_kept_clusters,
            "student_hidden": list(self.student_hidden),
            "n_students": len(self.student_losses),
            "student_losses": [num(v) for v in self.student_losses],
            "students_trained": self.students_trained,
            "students_reused": self.students_reused,
            "students_stopped": self.students_stopped,
            "students_skipped": self.students_skipped,
            "stop_reason": self.stop_reason,
            "bias_std": [num(v) for v in self.bias_std],
            "dropped_below": list(self.dropped_below),
            "pruned": list(self.pruned),
            "teacher_distances": [num(d) for d in self.teacher_distances],
            "max_cosine_distance": num(self.max_cosine_distance),
            "seconds": self.seconds,
            "neurons": [c.to_dict() for c in self.neurons],
        }


@dataclass(frozen=True, eq=False)
class LayerwiseResult:
    """Outcome of :func:`recover_layers`.

    Attributes
    ----------
    network : MLP or None
        The recovered network; None when a layer kept no cluster.
    layers : tuple of LayerReport
        One per hidden layer reached (all of them unless ``failed_layer`` is set).
    failed_layer : int or None
        The layer where no cluster was both big and aligned.
    rmse_train : float or None
    phase_seconds : mapping of str to float
    notes, cut : tuple of str
    """

    network: MLP | None
    layers: tuple[LayerReport, ...]
    failed_layer: int | None
    rmse_train: float | None
    phase_seconds: dict
    notes: tuple[str, ...] = ()
    cut: tuple[str, ...] = ()


# --- students of one stage -----------------------------------------------------------------------


def layer_dir(work_dir: str | os.PathLike, layer: int, steady: bool = False) -> Path:
    """Work folder of stage ``layer`` of a deep recovery: ``work_dir/layer-<layer>``, itself a
    :class:`~ecflow.workdir.WorkDir`; with ``steady``, ``layer-<layer>-steady``, the students
    retrained after the bias rule dropped neurons of the layer below."""
    return Path(work_dir) / (f"layer-{int(layer)}" + ("-steady" if steady else ""))


def is_deep_work_dir(work_dir: str | os.PathLike) -> bool:
    """Whether ``work_dir`` holds a deep (layer-wise) recovery: its ``layer-1`` is a work folder."""
    return WorkDir(layer_dir(work_dir, 1)).exists()


def _same_fixed(net: MLP, fixed: Sequence[Layer]) -> bool:
    """Whether a saved student was retrained on exactly these frozen layer weights."""
    return all(
        a.weight.shape == b.weight.shape and np.array_equal(a.weight, b.weight)
        for a, b in zip(net.layers, fixed)
    )


def _stage_students(
    x, y, *, layer: int, fixed: tuple[Layer, ...], widths: tuple[int, ...], activation: str,
    seeds: Sequence[int], config: LayerwiseConfig, engine: str, executor, progress,
    deadline: float | None, work_dir, train: bool, x_fresh, y_fresh, teacher,
    steady: bool = False,
) -> tuple[Expansion, list[str]]:
    """Students of stage ``layer``: trained (reusing those saved in its work folder), or only
    read back from the work folder (``train=False``, ``ecflow cluster``); ``steady``: the
    stage's second round, on the layers left by the bias rule."""
    notes: list[str] = []
    hidden = tuple(l.n_out for l in fixed) + tuple(widths)
    reuse: dict[int, TrainResult] = {}
    store = None
    if work_dir is not None:
        store = WorkDir(layer_dir(work_dir, layer, steady))
        manifest = manifest_for(
            hidden=hidden, activation=activation, seeds=seeds, engine=engine,
            train=config.train, x=x, y=y,
        )
        if train:
            store.start(manifest, x, y, x_fresh=x_fresh, y_fresh=y_fresh, teacher=teacher)
        elif not store.exists():
            raise InputError(f"{store.path}: no saved students for layer {layer}")
        else:
            saved = store.read_manifest()
            if saved.hidden != hidden:
                raise InputError(
                    f"{store.path}: its students have hidden widths {saved.hidden}, layer "
                    f"{layer} now needs {hidden} (the layers below came out otherwise): rerun "
                    "ecflow recover with this --work-dir"
                )
            seeds = saved.seeds
            manifest = saved
        found = store.finished_students(manifest)
        reuse = {i: r for i, r in found.items() if _same_fixed(r.network, fixed)}
        if len(reuse) < len(found):
            notes.append(
                f"layer {layer}: {len(found) - len(reuse)} saved students were retrained on "
                "other reconstructed layers and are not reused"
            )
    if not train:
        if not reuse:
            raise InputError(
                f"{layer_dir(work_dir, layer, steady)}: no saved student of layer {layer} was retrained "
                "on the layers reconstructed now (other --gamma or --beta-deg change the "
                "layers below): rerun ecflow recover with this --work-dir to retrain them"
            )
        results = tuple(reuse.get(i) for i in range(len(seeds)))
        return Expansion(results, tuple(r is not None for r in results), None, 0.0), notes
    wall_deadline = None
    if deadline is not None:
        wall_deadline = time.time() + (deadline - time.monotonic())
    enough = None
    if config.early_stop:
        enough = quorum_rule(config.stop_after or config.quorum, "the stage waits for")
    expansion = expand(
        x, y, hidden=tuple(widths), activation=activation, seeds=seeds, config=config.train,
        engine=engine, executor=executor, reuse=reuse, enough=enough, fixed=fixed,
        on_result=(lambda i, r: store.save_student(i, seeds[i], r)) if store else None,
        deadline=wall_deadline,
        progress=(
            (lambda d, n: progress(f"layer {layer}" + (" (steady)" if steady else ""), d, n))
            if progress is not None else None
        ),
    )
    return expansion, notes


def _stage_nets(results: Sequence[TrainResult]) -> tuple[list[MLP], list[float], MLP]:
    """A stage's student networks, their losses (inf where not finite) and the best one."""
    nets = [r.network for r in results]
    losses = [float(r.loss) if math.isfinite(r.loss) else math.inf for r in results]
    return nets, losses, nets[int(np.argmin(losses))]


def _with_biases(fixed: Sequence[Layer], net: MLP) -> tuple[Layer, ...]:
    """The frozen layers ``fixed`` with the biases ``net`` learned on top of them."""
    return tuple(Layer(l.weight, b.bias, l.activation) for l, b in zip(fixed, net.layers))


# --- the bias rule and the clustering of one layer -----------------------------------------------


def _bias_spread(
    nets: Sequence[MLP], results: Sequence[TrainResult], below: int
) -> np.ndarray | None:
    """Std across students of the learned biases of hidden layer index ``below`` (0-based),
    over the students that reached the student loss; None when fewer than two did.

    Only a student near zero loss has the bias a teacher neuron needs: students stuck higher
    compensate an imprecise neuron each in its own way (measured on a g 8-4-2-1 teacher whose
    stage-2 students all ended at MSE 1e-5 to 8e-5: a needed first-layer neuron had a spread
    of 0.17 and was dropped, and the recovery lost it).

    Returns
    -------
    ndarray of shape (n_below,), float64, or None
    """
    good = [i for i, r in enumerate(results) if r.status.converged]
    if len(good) < 2:
        return None
    return np.array([nets[i].layers[below].bias for i in good]).std(axis=0)


def _cluster_layer(
    nets: Sequence[MLP], losses: Sequence[float], index: int, keep_below: np.ndarray | None,
    config: LayerwiseConfig, n_planned: int,
) -> tuple[ClusterResult, Layer | None, tuple[int, ...]]:
    """Cluster hidden layer ``index`` (0-based) of the students and collapse its kept clusters.

    ``keep_below`` selects the columns (neurons of the layer below) that stay.
    """
    layers, nexts = [], []
    for net in nets:
        lyr = net.layers[index]
        w = lyr.weight if keep_below is None else lyr.weight[:, keep_below]
        layers.append(Layer(w, lyr.bias, lyr.activation))
        nexts.append(net.layers[index + 1].weight)
    vectors = np.vstack([np.hstack([l.weight, l.bias[:, None]]) for l in layers])
    sid = np.concatenate([np.full(l.n_out, s) for s, l in enumerate(layers)])
    nid = np.concatenate([np.arange(l.n_out) for l in layers])
    act = layers[0].activation
    clustering = cluster_neurons(
        vectors, sid, act.symmetry, n_students=max(len(nets), n_planned), config=config.cluster
    )
    if not clustering.kept:
        return clustering, None, ()
    layer, sources = collapse_layer(layers, nexts, losses, clustering, sid, nid)
    return clustering, layer, sources


def _certificates(clustering: ClusterResult, sources: Sequence[int], layer: int):
    by_label = {c.label: c for c in clustering.clusters}
    return [
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
    ]


# --- output layer, pruning ----------------------------------------------------------------------


def refit_top(network: MLP, x: np.ndarray, y: np.ndarray) -> MLP:
    """Refit the output layer by linear least squares on the last hidden layer.

    Solves ``min_{A, c} ‖h_L(x) A^T + c - y‖_F`` (``numpy.linalg.lstsq``, minimum norm when
    columns are dependent), every hidden layer fixed: :func:`ecflow.reconstruction.refit_output`
    for any depth.

    Parameters
    ----------
    network : MLP
        At least one hidden layer, ``identity`` output.
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    """
    x, y = check_xy(x, y)
    if len(network.layers) < 2 or network.layers[-1].activation.name != "identity":
        raise InputError("refit_top needs a hidden layer and an identity output layer")
    h = network.hidden(x, len(network.layers) - 2)
    coef = _lstsq(h, y)
    out = Layer(coef[:-1].T.copy(), coef[-1].copy(), network.layers[-1].activation)
    return network.replace_layer(len(network.layers) - 1, out)


def _lstsq(h: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Coefficients ``(n_hidden + 1, n_targets)`` of ``min ‖[h, 1] C - target‖``."""
    design = np.hstack([h, np.ones((h.shape[0], 1))])
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    return coef


def remove_hidden_neuron(network: MLP, layer: int, neuron: int, x: np.ndarray,
                         y: np.ndarray) -> MLP:
    """The network without neuron ``neuron`` of hidden layer ``layer`` (0-based), the layer
    above refit by least squares (module docstring, step 4).

    Parameters
    ----------
    network : MLP
    layer : int
        Hidden layer index, ``0 <= layer < len(network.layers) - 1``.
    neuron : int
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
        The targets of the output refit (a hidden layer above is refit on its own
        pre-activations in ``network``).
    """
    n_hidden = len(network.layers) - 1
    if not 0 <= layer < n_hidden:
        raise InputError(f"layer must be a hidden layer index in [0, {n_hidden}), got {layer}")
    lyr, above = network.layers[layer], network.layers[layer + 1]
    if not 0 <= neuron < lyr.n_out:
        raise InputError(f"layer {layer} has {lyr.n_out} neurons, got neuron {neuron}")
    if lyr.n_out == 1:
        raise InputError(f"cannot remove the last neuron of hidden layer {layer}")
    keep = np.delete(np.arange(lyr.n_out), neuron)
    layers = list(network.layers)
    layers[layer] = Layer(lyr.weight[keep], lyr.bias[keep], lyr.activation)
    if layer + 1 == n_hidden:
        layers[layer + 1] = Layer(above.weight[:, keep], above.bias, above.activation)
        return refit_top(MLP(tuple(layers)), x, y)
    h_full = network.hidden(x, layer)
    target = h_full @ above.weight.T + above.bias
    coef = _lstsq(h_full[:, keep], target)
    layers[layer + 1] = Layer(coef[:-1].T.copy(), coef[-1].copy(), above.activation)
    return MLP(tuple(layers))


@dataclass(frozen=True, eq=False)
class LayerPruneResult:
    """Outcome of :func:`prune_layers`.

    Attributes
    ----------
    network : MLP
    rmse : float
        On the queries.
    kept : tuple of tuple of int
        Per hidden layer, the indices (into the input network's layer) that remain.
    removed : tuple of tuple of int
        Per hidden layer, the indices removed, in removal order.
    tried, finetunes : int
    """

    network: MLP
    rmse: float
    kept: tuple[tuple[int, ...], ...]
    removed: tuple[tuple[int, ...], ...]
    tried: int
    finetunes: int


def prune_layers(
    network: MLP,
    x: np.ndarray,
    y: np.ndarray,
    *,
    engine: Engine,
    train_config: TrainConfig,
    orders: Sequence[Sequence[int]] | None = None,
    config: PruneConfig = PruneConfig(),
    deadline: float | None = None,
) -> LayerPruneResult:
    """Remove every hidden neuron, in any layer, that the network can do without at the same
    precision: :func:`ecflow.reconstruction.prune_network` for any depth.

    Layers are visited from the top (where the refit is the exact output fit) down; in each,
    the neurons in ``orders[layer]`` (default last to first). A removal
    (:func:`remove_hidden_neuron`) is fine-tuned with ``engine`` when the refit alone is not
    within tolerance but within ``config.skip_rmse`` of ``std(y)``, and accepted when the RMSE
    is at most ``max(abs_rmse, rel_factor * RMSE before pruning)``.

    Parameters
    ----------
    network : MLP
        Typically fine-tuned.
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    engine : Engine
    train_config : TrainConfig
        Budget of each fine-tune.
    orders : sequence of sequence of int, optional
        Per hidden layer, the neuron indices to try, first tried first.
    config : PruneConfig
    deadline : float, optional
        ``time.monotonic()`` value after which no removal is tried.
    """
    x, y = check_xy(x, y)
    n_hidden = len(network.layers) - 1
    sizes = [network.layers[i].n_out for i in range(n_hidden)]
    if orders is None:
        orders = [list(range(m - 1, -1, -1)) for m in sizes]
    orders = [[int(k) for k in o] for o in orders]
    if len(orders) != n_hidden or any(
        sorted(o) != sorted(set(o)) or any(not 0 <= k < m for k in o)
        for o, m in zip(orders, sizes)
    ):
        raise InputError(f"orders must list distinct neuron indices per hidden layer {sizes}")
    scale = float(np.std(y)) or 1.0
    current, current_rmse = network, metrics.rmse(network, x, y)
    tol = max(config.abs_rmse, config.rel_factor * current_rmse)
    alive = [list(range(m)) for m in sizes]
    removed: list[list[int]] = [[] for _ in sizes]
    tried = finetunes = 0
    for layer in range(n_hidden - 1, -1, -1):
        for k in orders[layer]:
            if len(alive[layer]) == 1 or (deadline is not None and time.monotonic() > deadline):
                break
            tried += 1
            pos = alive[layer].index(k)
            smaller = remove_hidden_neuron(current, layer, pos, x, y)
            rmse = metrics.rmse(smaller, x, y)
            if tol < rmse <= config.skip_rmse * scale:
                budget = train_config
                if deadline is not None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    if left < budget.total_seconds:
                        budget = dataclasses.replace(budget, max_seconds=left)
                result = engine.train(x, y, smaller, budget)
                finetunes += 1
                if result.rmse < rmse:
                    smaller, rmse = result.network, metrics.rmse(result.network, x, y)
            accepted = rmse <= tol
            logger.info("prune layer %d neuron %d: rmse %.3g (tolerance %.3g) %s", layer + 1,
                        k, rmse, tol, "removed" if accepted else "kept")
            if accepted:
                current, current_rmse = smaller, rmse
                alive[layer].pop(pos)
                removed[layer].append(k)
    return LayerPruneResult(
        network=current,
        rmse=current_rmse,
        kept=tuple(tuple(a) for a in alive),
        removed=tuple(tuple(r) for r in removed),
        tried=tried,
        finetunes=finetunes,
    )


# --- the match with a teacher, layer by layer ----------------------------------------------------


def match_layers(recovered: MLP, teacher: MLP) -> tuple[metrics.NeuronMatch, ...]:
    """Match every hidden layer of ``recovered`` to the teacher's, in the teacher's basis.

    Layer 1 is matched on ``[w, b]`` (:func:`ecflow.metrics.match_vectors`). Each matched
    recovered neuron is ``v = s λ v_t`` of its teacher neuron (sign ``s``; scale ``λ`` for the
    scale-invariant class, else 1); its columns in the layer above are rewritten on the teacher
    neuron with the class's compensation (:meth:`~ecflow.activations.Activation.compensate`:
    sign and scale into the weight, the odd+constant constant into the bias), unmatched
    recovered neurons are left out and missing teacher neurons read as zero columns. The layer
    above is then in the teacher's basis and is matched the same way, up to the last hidden
    layer. (Exact for the classes without a linear remainder; for the even+linear classes the
    remainder of a flipped neuron is ignored.)

    Returns
    -------
    tuple of NeuronMatch
        One per hidden layer the two networks share.
    """
    if recovered.d_in != teacher.d_in:
        raise InputError(
            f"recovered has d_in = {recovered.d_in}, teacher has d_in = {teacher.d_in}"
        )
    depth = min(len(recovered.layers), len(teacher.layers)) - 1
    out = []
    w_rec, b_rec = recovered.layers[0].weight, recovered.layers[0].bias
    for i in range(depth):
        t = teacher.layers[i]
        act = t.activation
        vt = np.hstack([t.weight, t.bias[:, None]])
        vr = np.hstack([w_rec, b_rec[:, None]])
        match = metrics.match_vectors(vt, vr, act.symmetry)
        out.append(match)
        if i + 1 == depth:
            break
        above = recovered.layers[i + 1]
        w_next = np.zeros((above.n_out, t.n_out))
        b_next = above.bias.copy()
        for j, k in zip(match.teacher, match.recovered):
            c = float(vr[k] @ vt[j]) / float(vt[j] @ vt[j])
            sign = -1 if c < 0 and act.symmetry.sign_invariant else 1
            scale = abs(c) if act.symmetry.scale_invariant else 1.0
            comp = act.compensate(above.weight[:, [k]], np.array([sign]), np.array([scale]), vt[j])
            w_next[:, j] = comp.output_weight
            b_next = b_next + comp.bias
        w_rec, b_rec = w_next, b_next
    return tuple(out)


# --- the whole procedure -------------------------------------------------------------------------


def recover_layers(
    x: np.ndarray,
    y: np.ndarray,
    *,
    widths: Sequence[int],
    activation: str,
    seeds: Sequence[int],
    config: LayerwiseConfig,
    engine: str = "native",
    executor: cf.Executor | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
    work_dir: str | os.PathLike | None = None,
    train: bool = True,
    x_fresh: np.ndarray | None = None,
    y_fresh: np.ndarray | None = None,
    teacher: MLP | None = None,
) -> LayerwiseResult:
    """Layer-by-layer Expand-and-Cluster (module docstring) on pairs ``(x, y)``.

    Parameters
    ----------
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    widths : sequence of int
        Student widths ``m_1, ..., m_L`` of the hidden layers, ``L >= 2``.
    activation : str
        Hidden activation of the students.
    seeds : sequence of int
        One initialisation seed per student; every stage uses the same seeds.
    config : LayerwiseConfig
    engine : str, default="native"
    executor : concurrent.futures.Executor, optional
        Trains each stage's students in parallel.
    progress : callable, optional
        ``progress(phase, done, total)``; the phases are ``layer 1``, ``layer 2``, ...,
        ``fine-tune``, ``pruning``.
    deadline : float, optional
        ``time.monotonic()`` value by which everything ends.
    work_dir : path-like, optional
        Each stage's students go to ``work_dir/layer-<l>`` (a :class:`~ecflow.workdir.WorkDir`);
        a rerun reuses those that were retrained on the same reconstructed layers.
    train : bool, default=True
        False: train nothing, read every stage's students back from ``work_dir``
        (``ecflow cluster``).
    x_fresh, y_fresh : ndarray, optional
        Held-out pairs, saved in the work folder.
    teacher : MLP, optional
        Saved in the work folder.

    Returns
    -------
    LayerwiseResult
    """
    x, y = check_xy(x, y)
    widths = tuple(check_int(w, "widths", 1) for w in widths)
    if len(widths) < 2:
        raise InputError(f"a layer-wise recovery needs two hidden layers or more, got {widths}")
    if not isinstance(config, LayerwiseConfig):
        raise InputTypeError(f"config must be a LayerwiseConfig, got {type(config).__name__}")
    get_activation(activation)
    if not train and work_dir is None:
        raise InputError("reading the students back needs a work folder")
    eng = get_engine(engine)
    seeds = [int(s) for s in seeds]
    n_layers = len(widths)
    phases: dict[str, float] = {}
    notes: list[str] = []
    cut: list[str] = []
    reports: list[LayerReport] = []
    fixed: tuple[Layer, ...] = ()
    certs_below: list[NeuronCertificate] = []
    best_net: MLP | None = None
    top: Layer | None = None
    for layer in range(1, n_layers + 1):
        t = time.monotonic()
        stage_deadline = None
        if deadline is not None:
            share = STUDENT_SHARE * (deadline - t) / (n_layers - layer + 1)
            stage_deadline = t + max(share, 0.0)
        rounds: list[Expansion] = []
        expansion, stage_notes = _stage_students(
            x, y, layer=layer, fixed=fixed, widths=widths[layer - 1:], activation=activation,
            seeds=seeds, config=config, engine=engine, executor=executor, progress=progress,
            deadline=stage_deadline, work_dir=work_dir, train=train, x_fresh=x_fresh,
            y_fresh=y_fresh, teacher=teacher,
        )
        notes.extend(stage_notes)
        results = [expansion.results[i] for i in expansion.finished]
        if not results:
            raise InputError(
                f"layer {layer}: no student finished training (the deadline came first): give "
                "more --max-minutes"
            )
        nets, losses, best_net = _stage_nets(results)
        index = layer - 1
        spread: np.ndarray | None = None
        measured = False
        keep_below = None
        dropped: tuple[int, ...] = ()
        if fixed:
            spread = _bias_spread(nets, results, index - 1)
            measured = spread is not None
            if spread is None:
                notes.append(
                    f"layer {layer}: fewer than two students reached the student loss, so the "
                    f"bias rule dropped no neuron of layer {layer - 1} (pruning judges them)"
                )
                spread = np.zeros(fixed[-1].n_out)
            keep_below = np.flatnonzero(spread <= config.bias_std_max)
            dropped = tuple(int(k) for k in np.flatnonzero(spread > config.bias_std_max))
            if keep_below.size == 0:
                keep_below = np.array([int(np.argmin(spread))])
                dropped = tuple(k for k in dropped if k != int(keep_below[0]))
                notes.append(
                    f"layer {layer - 1}: every neuron's bias varied across students by more "
                    f"than {config.bias_std_max:g}; the steadiest one was kept"
                )
            below = fixed[-1]
            # The reconstructed layer below, with the bias rule applied; its biases (and
            # those of the layers under it) are the lowest-loss student's.
            new_fixed = list(_with_biases(fixed, best_net))
            new_fixed[-1] = Layer(
                below.weight[keep_below], best_net.layers[index - 1].bias[keep_below],
                below.activation,
            )
            fixed = tuple(new_fixed)
            certs_below = [
                NeuronCertificate(**{**certs_below[k].__dict__, "neuron": i})
                for i, k in enumerate(keep_below)
            ]
            reports[-1] = dataclasses.replace(
                reports[-1], neurons=tuple(certs_below), size=len(certs_below)
            )
            if dropped and (
                train or work_dir is not None and WorkDir(layer_dir(work_dir, layer, True)).exists()
            ):
                # A dropped neuron may have stood in for part of a kept one (a duplicate, or
                # for odd activations a flipped copy): then the students split that neuron's
                # outgoing weight between the two in their own ways, and this layer's neurons
                # differ across students in the kept columns too (measured on a tanh 6-6-4-1
                # teacher: one of the 4 second-layer neurons formed no big cluster). Students
                # retrained on the steady neurons alone have one way to use them.
                again, again_notes = _stage_students(
                    x, y, layer=layer, fixed=fixed, widths=widths[layer - 1:],
                    activation=activation, seeds=seeds, config=config, engine=engine,
                    executor=executor, progress=progress, deadline=stage_deadline,
                    work_dir=work_dir, train=train, x_fresh=x_fresh, y_fresh=y_fresh,
                    teacher=teacher, steady=True,
                )
                notes.extend(again_notes)
                retrained = [again.results[i] for i in again.finished]
                if retrained:
                    rounds.append(expansion)
                    expansion, results = again, retrained
                    nets, losses, best_net = _stage_nets(results)
                    keep_below = None
                    fixed = _with_biases(fixed, best_net)
                    notes.append(
                        f"layer {layer}: its students were trained again on the "
                        f"{fixed[-1].n_out} neurons of layer {layer - 1} that the bias rule kept"
                    )
        clustering, rebuilt, sources = _cluster_layer(
            nets, losses, index, keep_below, config, n_planned=config.n_students
        )
        report = LayerReport(
            layer=layer,
            size=0 if rebuilt is None else rebuilt.n_out,
            n_kept_clusters=len(clustering.kept),
            neurons=(),
            student_hidden=tuple(nets[0].hidden_sizes),
            student_losses=tuple(float(r.loss) for r in results),
            students_trained=sum(e.n_trained for e in (*rounds, expansion)),
            students_reused=sum(e.n_reused for e in (*rounds, expansion)),
            students_stopped=sum(e.n_stopped for e in (*rounds, expansion)),
            students_skipped=sum(e.n_skipped for e in (*rounds, expansion)),
            stop_reason=expansion.stop_reason,
            bias_std=tuple(float(s) for s in spread) if measured else (),
            dropped_below=dropped,
            seconds=time.monotonic() - t,
            clustering=clustering,
        )
        phases[f"layer {layer}"] = report.seconds
        if rebuilt is None:
            reports.append(report)
            return LayerwiseResult(None, tuple(reports), layer, None, phases, tuple(notes),
                                   tuple(cut))
        certs_below = _certificates(clustering, sources, layer)
        reports.append(dataclasses.replace(report, neurons=tuple(certs_below)))
        if layer < n_layers:
            fixed = fixed + (rebuilt,)
        else:
            top = rebuilt

    t = time.monotonic()
    _tick(progress, "fine-tune", 0, 1)
    # ``fixed`` holds the lowest-loss student's biases of the last stage (bias rule applied).
    out_act = best_net.layers[-1].activation
    start = MLP((*fixed, top, Layer(np.zeros((y.shape[1], top.n_out)), np.zeros(y.shape[1]),
                                    out_act)))
    net = refit_top(start, x, y)
    tuned = eng.train(x, y, net, within_deadline(config.finetune, deadline, cut, "fine-tune"))
    if tuned.rmse < metrics.rmse(net, x, y):
        net = tuned.network
    _tick(progress, "fine-tune", 1, 1)
    phases["fine-tune"] = time.monotonic() - t

    rel_rmse = metrics.rmse(net, x, y) / (float(np.std(y)) or 1.0)
    if config.prune and rel_rmse > _PRUNE_MAX_RMSE:
        notes.append(
            f"not pruned: the fine-tuned network is far from exact (RMSE {rel_rmse:.2g} of "
            f"std(y) > {_PRUNE_MAX_RMSE:g}), and a neuron is superfluous only at the same "
            "precision"
        )
    elif config.prune:
        t = time.monotonic()
        orders = [support_order(r.neurons) for r in reports]
        _tick(progress, "pruning", 0, 1)
        pruned = prune_layers(
            net, x, y, engine=eng, train_config=config.finetune, orders=orders,
            config=config.pruning, deadline=deadline,
        )
        if any(pruned.removed):
            net = pruned.network
            final = eng.train(
                x, y, net, within_deadline(config.finetune, deadline, cut, "final fine-tune")
            )
            if final.rmse < pruned.rmse:
                net = final.network
            notes.append(
                "pruning removed " + ", ".join(
                    f"{len(r)} of layer {i + 1}" for i, r in enumerate(pruned.removed) if r
                ) + f" ({pruned.finetunes} fine-tunes)"
            )
        reports = [
            dataclasses.replace(
                rep, size=len(kept), pruned=removed,
                neurons=tuple(
                    NeuronCertificate(**{**rep.neurons[k].__dict__, "neuron": i})
                    for i, k in enumerate(kept)
                ),
            )
            for rep, kept, removed in zip(reports, pruned.kept, pruned.removed)
        ]
        _tick(progress, "pruning", 1, 1)
        phases["pruning"] = time.monotonic() - t
    return LayerwiseResult(
        network=net, layers=tuple(reports), failed_layer=None,
        rmse_train=metrics.rmse(net, x, y), phase_seconds=phases, notes=tuple(notes),
        cut=tuple(cut),
    )


def _tick(progress: Progress | None, phase: str, done: int, total: int) -> None:
    if progress is not None:
        progress(phase, done, total)


