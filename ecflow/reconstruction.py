"""Reconstruction of a hidden layer from its kept clusters, the output refit and pruning, for
any depth (paper section 5 step 3-4 and appendix A.3; the stages of :mod:`ecflow.stage` and the
finish of :mod:`ecflow.finish` call them).

Notation: a student with one hidden layer computes ``f(x) = A σ(W x + b) + c`` with ``A`` of
shape ``(d_out, m)``; neuron ``j`` is ``v_j = [w_j, b_j]`` and ``z_j = w_j·x + b_j``; in a deep
network ``x`` is the layer below and ``A`` the layer above.

**Collapse.** Each kept cluster becomes one hidden neuron (:func:`collapse_layer`; with the
output layer compensated, :func:`collapse_clusters`), taken from the lowest-loss student
among the cluster's contributors (or, for deep students, the student of the cluster's medoid): its member nearest to the cluster's medoid, averaged with its
other copies of that neuron when it holds several (members farther than ``_COPY_DEG`` are
strays let in by the loose ``β`` and left out). Copies are first brought to a common
orientation, ``s_j = sign(v_j · v_ref)``, and
the output weights of the student's members are summed with the compensation of the class
(the table of :mod:`ecflow.activations`, applied by
:meth:`~ecflow.activations.Activation.compensate`; for the scale-invariant class the neuron is
the unit mean direction and each member's norm moves into its output weight).

For the even+linear classes a flip leaves the linear term ``-2 c1 a_j z_j``, which a plain MLP
of the same width cannot hold (the paper keeps a separate affine map ``Θx + β``). The collapse
orients each neuron so that the flipped members' summed output weight is the smaller of the two
choices (zero when the cluster holds the linear-type pair that compensates a flip). Because the
teacher has no such term, the right orientation of each neuron is the one whose network fits
the queries: :func:`choose_orientations` tries the orientations (exhaustively up to
``2**max_exhaustive`` combinations, greedily beyond) and refits the output layer by linear
least squares for each.

**Output refit.** :func:`refit_output` solves ``min ‖[h_L(x), 1] [A c]^T - y‖`` exactly on the
last hidden layer; it absorbs constant-type neurons and the split of a teacher neuron over
several clusters.

**Prune.** :func:`prune_network` tries to remove each hidden neuron, top layer first, least
supported first (:func:`remove_hidden_neuron`: the layer above refit by least squares): the
smaller network, fine-tuned if the refit alone is not enough, replaces the current one when it
reaches the same precision, so the recovered widths are minimal.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ecflow.activations import Activation, Compensation
from ecflow.budget import Budget
from ecflow.clustering import ClusterResult, neuron_angles_deg
from ecflow.engines.base import Engine, TrainConfig, TrainResult
from ecflow.errors import InputError
# The package's one RMSE, under the name that recover and the tests import from here.
from ecflow.metrics import rmse as network_rmse
from ecflow.networks import MLP, Layer, check_xy

__all__ = [
    "default_finetune",
    "support_order",
    "NeuronCertificate",
    "Collapsed",
    "collapse_layer",
    "PruneConfig",
    "PruneResult",
    "collapse_clusters",
    "refit_output",
    "choose_orientations",
    "remove_neurons",
    "remove_hidden_neuron",
    "network_rmse",
    "prune_network",
]

logger = logging.getLogger(__name__)

_COPY_DEG = 1.0
"""Members of one student within this angle of the reference (``[w, b]``, modulo the class's
symmetries) are copies of one neuron: at zero loss they coincide, and on a g teacher
(d_in 4, r 4) the copies of a teacher neuron in different students were within 1e-4 degrees,
far below the angle to any other neuron."""


def default_finetune() -> TrainConfig:
    """The fine-tune of a reconstruction (shallow and layer-wise): near the optimum
    Levenberg-Marquardt converges in a few dozen steps; a minute bounds the rare fine-tune of a
    spurious reconstruction that stalls."""
    return TrainConfig(max_seconds=60.0)


@dataclass(frozen=True)
class NeuronCertificate:
    """Why a recovered neuron is trusted: the cluster it came from.

    Attributes
    ----------
    neuron : int
        Index in the recovered hidden layer.
    cluster : int
        Cluster label (:class:`~ecflow.clustering.ClusterResult`).
    cluster_size : int
        Neurons in the cluster.
    n_students : int
        Distinct students in the cluster.
    median_angle_deg, max_angle_deg : float
        Within-cluster angles between ``[w, b]`` vectors.
    symmetry : str
        Symmetry class of the activation (``Symmetry.value``).
    students : tuple of int
        Contributing students.
    source_student : int
        Student whose neuron(s) were taken (the lowest loss in the cluster).
    layer : int, default=1
        Hidden layer of the neuron (1 for the first; a deep recovery has several).
    """

    neuron: int
    cluster: int
    cluster_size: int
    n_students: int
    median_angle_deg: float
    max_angle_deg: float
    symmetry: str
    students: tuple[int, ...]
    source_student: int
    layer: int = 1

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "neuron": self.neuron,
            "cluster": self.cluster,
            "cluster_size": self.cluster_size,
            "n_students": self.n_students,
            "median_angle_deg": self.median_angle_deg,
            "max_angle_deg": self.max_angle_deg,
            "symmetry": self.symmetry,
            "students": list(self.students),
            "source_student": self.source_student,
        }


def support_order(certs: Sequence[NeuronCertificate]) -> list[int]:
    """Pruning order of a layer's neurons: least supported first (fewest students, then
    widest median angle)."""
    return sorted(
        range(len(certs)),
        key=lambda k: (certs[k].n_students, -certs[k].median_angle_deg, -k),
    )


@dataclass(frozen=True, eq=False)
class Collapsed:
    """A network rebuilt from kept clusters.

    Attributes
    ----------
    network : MLP
        ``d_in -> n_kept -> d_out``, hidden activation of the students, output ``identity``.
    cluster : tuple of int
        Label of the cluster behind each hidden neuron.
    source_student : tuple of int
        Student each hidden neuron was taken from.
    """

    network: MLP
    cluster: tuple[int, ...]
    source_student: tuple[int, ...]


def _check_one_hidden(net: MLP, name: str) -> None:
    if len(net.layers) != 2:
        raise InputError(
            f"{name} must have exactly one hidden layer (issue 5), got sizes {net.sizes}"
        )


def collapse_clusters(
    students: Sequence[MLP],
    losses: Sequence[float],
    clustering: ClusterResult,
    student: np.ndarray,
    neuron: np.ndarray,
) -> Collapsed:
    """One hidden neuron per kept cluster, output weights compensated per class (module docs).

    Parameters
    ----------
    students : sequence of MLP
        One-hidden-layer students with the same activation.
    losses : sequence of float
        Final training loss of each student (the lowest wins each cluster).
    clustering : ClusterResult
        From :func:`ecflow.clustering.cluster_neurons` on these students' neurons.
    student, neuron : ndarray of shape (n_neurons,), int
        Student and in-student index of each clustered neuron (:func:`neuron_vectors`).

    Returns
    -------
    Collapsed
        The output bias is the overall best student's, plus the ``ODD_CONSTANT`` compensation
        of every flipped neuron: exact when one zero-loss student supplies every kept cluster
        and holds no other neuron, a starting point for :func:`refit_output` otherwise.

    Raises
    ------
    InputError
        No kept cluster, or inconsistent inputs.
    """
    _check_collapse(students, losses, clustering)
    hidden, comps, sources = _collapse(
        [s.layers[0] for s in students], [s.layers[1].weight for s in students], losses,
        clustering, student, neuron, lowest_loss=True,
    )
    bias = students[int(np.argmin(np.asarray(losses, dtype=np.float64)))].layers[1].bias.copy()
    for comp in comps:
        bias = bias + comp.bias
    out_cols = [comp.output_weight.reshape(students[0].d_out) for comp in comps]
    output = Layer(np.column_stack(out_cols), bias, students[0].layers[1].activation)
    return Collapsed(
        network=MLP((hidden, output)),
        cluster=tuple(c.label for c in clustering.kept),
        source_student=sources,
    )


def collapse_layer(
    layers: Sequence[Layer],
    next_weights: Sequence[np.ndarray],
    losses: Sequence[float],
    clustering: ClusterResult,
    student: np.ndarray,
    neuron: np.ndarray,
    *,
    lowest_loss: bool = False,
) -> tuple[Layer, tuple[int, ...]]:
    """One neuron per kept cluster of one hidden layer of the students, incoming side only.

    Every stage (:mod:`ecflow.stage`) keeps only the incoming ``[w, b]`` of each cluster: the
    copies of the core neuron held by one student of the cluster (of its medoid, the member
    with the least median angle to the others, or of lowest loss), oriented and merged by the
    class's algebra as in :func:`collapse_clusters`; the layer above is retrained or refit on
    it, so no output weight is carried over.

    Parameters
    ----------
    layers : sequence of Layer
        The clustered layer of each student, ``(n_hidden, p)`` weights in a basis common to
        all students (the input, or the frozen reconstructed layer under it).
    next_weights : sequence of ndarray of shape (n_next, n_hidden), float64
        Each student's weights of the layer above (they orient an even+linear neuron).
    losses : sequence of float
        Final training loss of each student (one per student, checked).
    clustering : ClusterResult
        Of the ``[w, b]`` rows of ``layers``.
    student, neuron : ndarray of shape (n_neurons,), int
        Student and in-student index of each clustered neuron.
    lowest_loss : bool, default=False
        Take each neuron from the cluster's student of lowest loss (as
        :func:`collapse_clusters`: students at zero loss, one hidden layer) instead of the
        student of its medoid, whatever its loss.

    Returns
    -------
    layer : Layer
        ``(n_kept, p)`` weights, ``(n_kept,)`` biases, the students' activation.
    source_student : tuple of int
        Student each neuron was taken from.
    """
    if not (len(layers) == len(next_weights) == len(losses)):
        raise InputError(
            f"need one layer, next weight and loss per student, got {len(layers)}, "
            f"{len(next_weights)} and {len(losses)}"
        )
    if not clustering.kept:
        raise InputError(
            "no cluster is both big and aligned: lower gamma, raise beta_deg, or train the "
            "students longer or wider"
        )
    layer, _, sources = _collapse(layers, next_weights, losses, clustering, student, neuron,
                                  lowest_loss=lowest_loss)
    return layer, sources


def _collapse(layers, next_weights, losses, clustering: ClusterResult, student, neuron, *,
              lowest_loss: bool) -> tuple[Layer, list[Compensation], tuple[int, ...]]:
    """The collapse of both :func:`collapse_layer` and :func:`collapse_clusters`: per kept
    cluster, the chosen student's copies merged into one neuron, and the compensation of the
    weights above that the merge implies."""
    act: Activation = layers[0].activation
    losses_arr = np.asarray(losses, dtype=np.float64)
    rows, comps, sources = [], [], []
    for cl in clustering.kept:
        owners = student[cl.members]
        if lowest_loss:
            s_best = min(set(owners.tolist()), key=lambda s: (losses_arr[s], s))
        else:
            # The medoid's student, not the lowest-loss one: a deep student at MSE 1e-8 can
            # still hold one teacher neuron as a near pair of its own, ~5 degrees off (measured
            # on a g 8-4-2-1 teacher: 2 of 4 such students, among them the lowest-loss one),
            # while the cluster's centre is where the other students agree, within 1e-3
            # degrees.
            core = clustering.angles_deg[np.ix_(cl.members, cl.members)]
            s_best = int(owners[int(np.argmin(np.median(core, axis=1)))])
        hid = layers[s_best]
        idx, ref = _copies(clustering, cl.members, owners == s_best, neuron, hid)
        v = np.hstack([hid.weight[idx], hid.bias[idx, None]])
        new_v, comp = _merge_copies(act, v, ref, np.asarray(next_weights[s_best])[:, idx])
        rows.append(new_v)
        comps.append(comp)
        sources.append(s_best)
    V = np.vstack(rows)
    return Layer(V[:, :-1].copy(), V[:, -1].copy(), act), comps, tuple(sources)


def _check_collapse(
    students: Sequence[MLP], losses: Sequence[float], clustering: ClusterResult
) -> Activation:
    """Validate :func:`collapse_clusters`' inputs; return the students' hidden activation."""
    if len(students) != len(losses):
        raise InputError(f"need one loss per student, got {len(losses)} for {len(students)}")
    for s, net in enumerate(students):
        _check_one_hidden(net, f"student {s}")
    act: Activation = students[0].layers[0].activation
    # Compared by name: students trained in worker processes hold unpickled copies.
    if any(net.layers[0].activation.name != act.name for net in students):
        raise InputError("all students must share one hidden activation")
    if act.symmetry is not clustering.symmetry:
        raise InputError(
            f"clustering used symmetry {clustering.symmetry.value}, the students' activation "
            f"{act.name} has {act.symmetry.value}"
        )
    if not clustering.kept:
        raise InputError(
            "no cluster is both big and aligned: lower gamma, raise beta_deg, or train the "
            "students longer or wider"
        )
    return act


def _copies(
    clustering: ClusterResult,
    members: np.ndarray,
    chosen: np.ndarray,
    neuron: np.ndarray,
    hid: Layer,
) -> tuple[np.ndarray, np.ndarray]:
    """The chosen student's copies of a cluster's core neuron, and the reference ``[w, b]``.

    The medoid (least median angle to the other ``members``) marks the cluster's core. Of the
    chosen student's members (mask ``chosen``), the one nearest to it is the reference and only its
    copies are merged: a neuron that the loose beta let into the cluster (e.g. a relu
    linear-type pair at another hyperplane) must not be averaged in.

    Returns
    -------
    idx : ndarray of shape (k,), int
        In-student indices of the copies.
    ref : ndarray of shape (d_in + 1,), float64
    """
    mine = members[chosen]
    core = clustering.angles_deg[np.ix_(members, members)]
    medoid = members[int(np.argmin(np.median(core, axis=1)))]
    nearest = mine[int(np.argmin(clustering.angles_deg[medoid, mine]))]
    idx = neuron[mine]
    v = np.hstack([hid.weight[idx], hid.bias[idx, None]])
    ref = np.append(hid.weight[neuron[nearest]], hid.bias[neuron[nearest]])
    sym = clustering.symmetry
    copies = neuron_angles_deg(np.vstack([ref, v]), sym)[0, 1:] <= _COPY_DEG
    return idx[copies], ref


def _merge_copies(
    act: Activation, v: np.ndarray, ref: np.ndarray, a: np.ndarray
) -> tuple[np.ndarray, Compensation]:
    """One neuron for copies ``v`` (k, d_in + 1) with output weights ``a`` (d_out, k).

    Copies are brought to the orientation of ``ref`` (:meth:`Symmetry.signs`); for the
    even+linear classes the whole group is flipped when that leaves the smaller linear term
    (none at all when a linear-type pair sits in the cluster with a duplicate). The neuron is
    the mean copy (the mean direction for the scale-invariant class, with the scales moved
    into the output weight) and the class's algebra gives its output weight and bias.
    """
    sym = act.symmetry
    signs = sym.signs(v, ref)
    if sym.flip_leaves_linear:
        gain = act.output_weight(a, 1, np.linalg.norm(v, axis=1))
        against = gain[:, signs < 0].sum(axis=1)
        if np.linalg.norm(gain.sum(axis=1) - against) < np.linalg.norm(against):
            signs = -signs
    oriented = v * signs[:, None]
    norms = np.linalg.norm(oriented, axis=1)
    if sym.scale_invariant:
        unit = oriented / np.where(norms > 0, norms, 1.0)[:, None]
        mean = unit.mean(axis=0)
        new_v = mean / max(np.linalg.norm(mean), np.finfo(np.float64).tiny)
    else:
        new_v = oriented.mean(axis=0)
    return new_v, act.compensate(a, signs, norms, new_v)


def _design(h: np.ndarray) -> np.ndarray:
    """``[h, 1]``: hidden activations and a column of ones for the bias."""
    return np.hstack([h, np.ones((h.shape[0], 1))])


def _lstsq(h: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Coefficients ``(n_hidden + 1, n_targets)`` of ``min ‖[h, 1] C - target‖``."""
    coef, *_ = np.linalg.lstsq(_design(h), target, rcond=None)
    return coef


def refit_output(network: MLP, x: np.ndarray, y: np.ndarray) -> MLP:
    """Refit the output layer by linear least squares, every hidden layer fixed.

    Solves ``min_{A, c} ‖h_L(x) A^T + c - y‖_F`` with ``h_L(x)`` the activations of the last
    hidden layer, by SVD (``numpy.linalg.lstsq``; rank-deficient columns, such as a neuron
    that duplicates another or a constant neuron beside the bias, get the minimum-norm
    solution). The one output refit of the package, for any depth.

    Parameters
    ----------
    network : MLP
        At least one hidden layer, ``identity`` output.
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64

    Returns
    -------
    MLP
        Same hidden layers, new output weight ``(d_out, n_hidden)`` and bias ``(d_out,)``.
    """
    x, y = check_xy(x, y)
    if len(network.layers) < 2 or network.layers[-1].activation.name != "identity":
        raise InputError("refit_output needs at least one hidden layer and an identity output "
                         f"layer, got sizes {network.sizes}")
    top = len(network.layers) - 1
    coef = _lstsq(network.hidden(x, top - 1), y)
    out = Layer(coef[:-1].T.copy(), coef[-1].copy(), network.layers[-1].activation)
    return network.replace_layer(top, out)


def _flip(network: MLP, flips: Sequence[int], layer: int = 0) -> MLP:
    """``network`` with neurons ``flips`` of hidden layer index ``layer`` negated, ``±[w, b]``."""
    hid = network.layers[layer]
    sign = np.ones(hid.n_out)
    sign[list(flips)] = -1.0
    return network.replace_layer(
        layer, Layer(hid.weight * sign[:, None], hid.bias * sign, hid.activation)
    )


def choose_orientations(
    network: MLP,
    x: np.ndarray,
    y: np.ndarray,
    *,
    max_exhaustive: int = 10,
    max_samples: int = 5000,
) -> MLP:
    """Orient each neuron ``±[w, b]`` of the last hidden layer of an even+linear network to fit
    ``y`` best (the only hidden layer of a shallow network).

    For ``EVEN_LINEAR`` and ``EVEN_LINEAR_SCALING`` activations, ``σ(-z) = σ(z) - 2 c1 z``: the
    orientation of a neuron changes the function by a linear term that no output weight can
    undo, so each orientation is scored by the residual of :func:`refit_output` (on at most
    ``max_samples`` queries) and the best is returned, its output layer refit on all queries.
    Every ``2**n_hidden`` combination is tried when ``n_hidden <= max_exhaustive``; beyond,
    single flips are applied greedily while they lower the residual.

    Other classes are returned with a refit output layer and unchanged orientations. The
    layers below the last hidden one are left as they are: the layer above each of them decides
    their orientation (:mod:`ecflow.stage`).

    This is the second flip search of the package, on purpose: the first,
    :func:`ecflow.symmetry.flips.search_flips`, cancels the exact linear remainder Θ of one
    zero-loss student, whereas a collapsed network gathers neurons from several students that
    are not at zero loss, has no exact Θ, and can only be scored against the queries.

    Parameters
    ----------
    network : MLP
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    max_exhaustive : int, default=10
    max_samples : int, default=5000
        5000 queries pin a linear term of 1e-6 against noise-free targets; more only costs time.
    """
    x, y = check_xy(x, y)
    if len(network.layers) < 2:
        raise InputError(f"network must have a hidden layer, got sizes {network.sizes}")
    top = len(network.layers) - 2
    sym = network.layers[top].activation.symmetry
    if not sym.flip_leaves_linear:
        return refit_output(network, x, y)
    if x.shape[0] > max_samples:
        pick = np.linspace(0, x.shape[0] - 1, max_samples).astype(int)
        xs, ys = x[pick], y[pick]
    else:
        xs, ys = x, y
    m = network.layers[top].n_out

    def residual(flips: Sequence[int]) -> float:
        design = _design(_flip(network, flips, top).hidden(xs, top))
        coef, *_ = np.linalg.lstsq(design, ys, rcond=None)
        return float(np.sum((design @ coef - ys) ** 2))

    if m <= max_exhaustive:
        candidates = (
            flips for r in range(m + 1) for flips in itertools.combinations(range(m), r)
        )
        best = min(candidates, key=residual)
    else:
        current: set[int] = set()
        best_res = residual(())
        improved = True
        while improved:
            improved = False
            for k in range(m):
                trial = current ^ {k}
                res = residual(sorted(trial))
                if res < best_res:
                    current, best_res, improved = trial, res, True
        best = tuple(sorted(current))
    return refit_output(_flip(network, best, top), x, y)


def remove_neurons(network: MLP, drop: Sequence[int]) -> MLP:
    """The network without hidden neurons ``drop`` (their output columns removed too)."""
    _check_one_hidden(network, "network")
    hid, out = network.layers
    keep = np.setdiff1d(np.arange(hid.n_out), np.asarray(list(drop), dtype=int))
    if keep.size == 0:
        raise InputError("cannot remove every hidden neuron")
    return MLP(
        (
            Layer(hid.weight[keep], hid.bias[keep], hid.activation),
            Layer(out.weight[:, keep], out.bias, out.activation),
        )
    )


@dataclass(frozen=True)
class PruneConfig:
    """Settings of :func:`prune_network`.

    Parameters
    ----------
    rel_factor : float, default=10.0
        A smaller network is accepted when its RMSE is at most
        ``max(abs_rmse, rel_factor * RMSE before pruning)``: "the same precision", up to the
        jitter of fine-tuning at machine precision.
    abs_rmse : float, default=1e-13
        RMSE that counts as exact regardless of the current one (float64 round-off of outputs of
        order 1 is about 1e-16; fine-tuning ends within a few hundred ulps of it).
    skip_rmse : float, default=1e-2
        Do not fine-tune a removal whose refit RMSE, relative to ``std(y)``, exceeds this: a
        teacher neuron's removal costs a sizeable fraction of the output, and such a fine-tune
        only burns its time budget before stalling.
    """

    rel_factor: float = 10.0
    abs_rmse: float = 1e-13
    skip_rmse: float = 1e-2

    def __post_init__(self):
        for name in ("rel_factor", "abs_rmse", "skip_rmse"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (v > 0):
                raise InputError(f"{name} must be a positive number, got {v!r}")
        if self.rel_factor < 1:
            raise InputError(f"rel_factor must be at least 1, got {self.rel_factor!r}")


def remove_hidden_neuron(network: MLP, layer: int, neuron: int, x: np.ndarray,
                         y: np.ndarray) -> MLP:
    """The network without neuron ``neuron`` of hidden layer ``layer`` (0-based), the layer
    above refit by least squares.

    The output layer is refit on ``y`` (:func:`refit_output`; with one hidden layer through
    :func:`choose_orientations`, which also orients the even+linear classes). A hidden layer
    above is refit on its own pre-activations ``W_{l+1} h_l + b_{l+1}`` before the removal:
    exact when the removed neuron was a duplicate, a constant or a zero neuron.

    Parameters
    ----------
    network : MLP
    layer : int
        Hidden layer index, ``0 <= layer < len(network.layers) - 1``.
    neuron : int
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
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
        smaller = MLP(tuple(layers))
        return choose_orientations(smaller, x, y) if n_hidden == 1 else refit_output(smaller, x, y)
    h_full = network.hidden(x, layer)
    coef = _lstsq(h_full[:, keep], h_full @ above.weight.T + above.bias)
    layers[layer + 1] = Layer(coef[:-1].T.copy(), coef[-1].copy(), above.activation)
    return MLP(tuple(layers))


@dataclass(frozen=True, eq=False)
class PruneResult:
    """Outcome of :func:`prune_network`.

    Attributes
    ----------
    network : MLP
    rmse : float
        RMSE of ``network`` on the queries.
    kept : tuple of tuple of int
        Per hidden layer, the indices (into the input network's layer) of the neurons that
        remain.
    removed : tuple of tuple of int
        Per hidden layer, the indices removed, in removal order.
    tried : int
        Removals tried.
    finetunes : int
        Fine-tunes run while pruning.
    """

    network: MLP
    rmse: float
    kept: tuple[tuple[int, ...], ...]
    removed: tuple[tuple[int, ...], ...]
    tried: int
    finetunes: int

    @property
    def n_removed(self) -> int:
        return sum(len(r) for r in self.removed)


def _check_orders(orders, sizes: Sequence[int]) -> list[list[int]]:
    if orders is None:
        return [list(range(m - 1, -1, -1)) for m in sizes]
    orders = [[int(k) for k in o] for o in orders]
    if len(orders) != len(sizes) or any(
        sorted(o) != sorted(set(o)) or any(not 0 <= k < m for k in o)
        for o, m in zip(orders, sizes)
    ):
        raise InputError(
            f"orders must list distinct neuron indices per hidden layer {tuple(sizes)}, got "
            f"{orders}"
        )
    return orders


@dataclass(frozen=True, eq=False)
class _Pruning:
    """What :func:`prune_network`'s tries share: the queries, the tolerance, the fine-tune."""

    x: np.ndarray
    y: np.ndarray
    engine: Engine
    train_config: TrainConfig
    config: PruneConfig
    budget: Budget
    tol: float

    def attempt(self, current: MLP, layer: int, pos: int) -> tuple[MLP, float, bool] | None:
        """The network without that neuron, its RMSE, and whether it was fine-tuned; None when
        the budget ran out before its fine-tune."""
        smaller = remove_hidden_neuron(current, layer, pos, self.x, self.y)
        rmse = network_rmse(smaller, self.x, self.y)
        scale = float(np.std(self.y)) or 1.0
        if not self.tol < rmse <= self.config.skip_rmse * scale:
            return smaller, rmse, False
        if self.budget.expired():
            return None
        result: TrainResult = self.engine.train(
            self.x, self.y, smaller, self.budget.fit(self.train_config)
        )
        if result.rmse < rmse:
            smaller, rmse = result.network, network_rmse(result.network, self.x, self.y)
        return smaller, rmse, True


def prune_network(
    network: MLP,
    x: np.ndarray,
    y: np.ndarray,
    *,
    engine: Engine,
    train_config: TrainConfig,
    orders: Sequence[Sequence[int]] | None = None,
    config: PruneConfig = PruneConfig(),
    budget: Budget | None = None,
    on_try: Callable[[int, int], None] | None = None,
) -> PruneResult:
    """Remove every hidden neuron, in any layer, that the network can do without at the same
    precision: the one pruning of the package.

    Layers are visited from the top (where the refit is the exact output fit) down; in each,
    the neurons in ``orders[layer]`` (default last to first), each tried once. A removal
    (:func:`remove_hidden_neuron`) is fine-tuned with ``engine`` when the refit alone is not
    within tolerance but within ``config.skip_rmse`` of ``std(y)``, and accepted, replacing the
    current network, when its RMSE is at most ``max(abs_rmse, rel_factor * RMSE before
    pruning)`` (the starting precision, so that successive removals cannot drift).

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
        Per hidden layer, the neuron indices to try, first tried first (e.g. least supported
        cluster first, :func:`support_order`).
    config : PruneConfig
    budget : Budget, optional
        No removal is tried once it has expired; each fine-tune is fitted to it.
    on_try : callable, optional
        ``on_try(done, total)`` after each tried removal.
    """
    x, y = check_xy(x, y)
    sizes = list(network.hidden_sizes)
    orders = _check_orders(orders, sizes)
    budget = Budget() if budget is None else budget
    current, current_rmse = network, network_rmse(network, x, y)
    pruning = _Pruning(x, y, engine, train_config, config, budget,
                       max(config.abs_rmse, config.rel_factor * current_rmse))
    alive = [list(range(m)) for m in sizes]
    removed: list[list[int]] = [[] for _ in sizes]
    tried = finetunes = done = 0
    total = sum(len(o) for o in orders)
    for layer in range(len(sizes) - 1, -1, -1):
        for k in orders[layer]:
            if len(alive[layer]) == 1 or budget.expired():
                break
            tried += 1
            outcome = pruning.attempt(current, layer, alive[layer].index(k))
            if outcome is None:
                break
            smaller, rmse, tuned = outcome
            finetunes += tuned
            accepted = rmse <= pruning.tol
            logger.info("prune layer %d neuron %d: rmse %.3g (tolerance %.3g) %s", layer + 1,
                        k, rmse, pruning.tol, "removed" if accepted else "kept")
            if accepted:
                current, current_rmse = smaller, rmse
                alive[layer].remove(k)
                removed[layer].append(k)
            done += 1
            if on_try is not None:
                on_try(done, total)
    return PruneResult(current, current_rmse, tuple(tuple(a) for a in alive),
                       tuple(tuple(r) for r in removed), tried, finetunes)
