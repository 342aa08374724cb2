"""The deep (layer-wise) recovery's own pieces: the report of one hidden layer, the work folder
of a stage, and the match with a teacher layer by layer (paper section 5, Fig. 3 Algorithm 1,
appendix A.3, A.5 and A.6.2).

A teacher ``d_in -> r_1 -> ... -> r_L -> d_out`` is rebuilt one hidden layer at a time by the
stages of :mod:`ecflow.stage` (the shallow network is the case ``L = 1``) and finished by
:mod:`ecflow.finish`. Notation: ``h_0 = x``, ``h_l = σ(W_l h_{l-1} + b_l)``; a neuron of layer
``l`` is ``v = [w, b]`` with ``w`` over the ``n_{l-1}`` neurons of the layer below.

**Symmetry compensation.** A flipped or rescaled neuron of layer ``l`` (``v = s λ v_t``) changes
what the layer above reads: :func:`match_layers` maps a recovered network onto its teacher layer
by layer, moving each matched neuron's sign and scale into the columns of the layer above and its
constant into that layer's bias (:meth:`ecflow.activations.Activation.compensate`), so that every
layer is compared with the teacher's in the teacher's basis.

**Orientation of the even+linear classes** (softplus, gelu, silu; relu only in the last hidden
layer, :mod:`ecflow.stage` says why). Their flip leaves a
linear remainder, ``σ(-z) = σ(z) - 2 c1 z``, that no layer above can absorb, and a neuron's own
layer does not say which orientation the teacher has: a wide student represents either one, its
other neurons supplying the linear term. The layer above decides it. So the students of stage
``l`` see both orientations of every reconstructed neuron of layer ``l - 1``
(:func:`doubled`): their span holds ``σ(z)``, ``σ(-z)`` and ``z``, so they can fit the teacher
whatever orientation each neuron came with. Then :func:`orient_below` keeps, per neuron, the
orientation in which the lowest-loss student's layer-``l`` pre-activations are a combination of
the layer below without any linear remainder (the teacher's neurons of layer ``l`` are exactly
that, in its orientation only), and rewrites every student on those neurons. The last hidden
layer is oriented by the output layer (:func:`ecflow.reconstruction.choose_orientations`).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ecflow import metrics
from ecflow.clustering import ClusterResult
from ecflow.errors import InputError
from ecflow.networks import MLP, Layer
from ecflow.reconstruction import NeuronCertificate
from ecflow.workdir import WorkDir

__all__ = ["LayerReport", "match_layers", "layer_dir", "is_deep_work_dir", "doubled",
           "Orientation", "orient_below"]


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


# --- the work folder of a stage -------------------------------------------------------------


def layer_dir(work_dir: str | os.PathLike, layer: int, steady: bool = False) -> Path:
    """Work folder of stage ``layer`` of a deep recovery: ``work_dir/layer-<layer>``, itself a
    :class:`~ecflow.workdir.WorkDir`; with ``steady``, ``layer-<layer>-steady``, the students
    retrained after the bias rule dropped neurons of the layer below."""
    return Path(work_dir) / (f"layer-{int(layer)}" + ("-steady" if steady else ""))


def is_deep_work_dir(work_dir: str | os.PathLike) -> bool:
    """Whether ``work_dir`` holds a deep (layer-wise) recovery: its ``layer-1`` is a work folder."""
    return WorkDir(layer_dir(work_dir, 1)).exists()


# --- the match with a teacher, layer by layer ----------------------------------------------------


def match_layers(recovered: MLP, teacher: MLP, basis: metrics.DataBasis | None = None
                 ) -> tuple[metrics.NeuronMatch, ...]:
    """Match every hidden layer of ``recovered`` to the teacher's, in the teacher's basis.

    Layer 1 is matched on ``[w, b]`` (:func:`ecflow.metrics.match_vectors`), or, with ``basis``
    (the queries' revealed directions, :func:`ecflow.metrics.revealed_basis`), on the
    pre-activations over the queries: its alignment on the data. Each matched
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
        # On layer 1 with a basis, the sign and scale of a match are as the data sees them:
        # along unrevealed directions the two neurons hold unrelated values.
        tv, rv = (basis.coordinates(vt), basis.coordinates(vr)) if basis is not None and i == 0 \
            else (vt, vr)
        match = metrics.match_vectors(tv, rv, act.symmetry)
        out.append(match)
        if i + 1 == depth:
            break
        above = recovered.layers[i + 1]
        w_next = np.zeros((above.n_out, t.n_out))
        b_next = above.bias.copy()
        for j, k in zip(match.teacher, match.recovered):
            c = float(rv[k] @ tv[j]) / float(tv[j] @ tv[j])
            sign = -1 if c < 0 and act.symmetry.sign_invariant else 1
            scale = abs(c) if act.symmetry.scale_invariant else 1.0
            comp = act.compensate(above.weight[:, [k]], np.array([sign]), np.array([scale]), vt[j])
            w_next[:, j] = comp.output_weight
            b_next = b_next + comp.bias
        w_rec, b_rec = w_next, b_next
    return tuple(out)


# --- orientation of the even+linear classes, decided by the layer above --------------------------


def doubled(layer: Layer) -> Layer:
    """``layer`` with every neuron in both orientations: rows ``[W; -W]``, biases ``[b; -b]``
    (neuron ``k`` and its flip ``k + n_out``)."""
    return Layer(np.vstack([layer.weight, -layer.weight]),
                 np.concatenate([layer.bias, -layer.bias]), layer.activation)


@dataclass(frozen=True, eq=False)
class Orientation:
    """What :func:`orient_below` decided.

    Attributes
    ----------
    rows : ndarray of shape (n_neurons,), int
        For each neuron of the doubled layer, the row kept: ``k`` (as reconstructed) or
        ``k + n_neurons`` (flipped).
    flipped : tuple of int
        The neurons whose flip was kept.
    networks : tuple of MLP
        Every student on the kept rows, its layer above refit to its own pre-activations.
    n_exact : int
        Neurons of the layer above, in the deciding student, that the kept rows fit to a
        relative residual below ``exact_tol``.
    """

    rows: np.ndarray
    flipped: tuple[int, ...]
    networks: tuple[MLP, ...]
    n_exact: int


def _inputs_and_targets(net: MLP, x: np.ndarray, below: int) -> tuple[np.ndarray, np.ndarray]:
    """The inputs of hidden layer index ``below`` and the pre-activations of the layer above."""
    h_in = x if below == 0 else net.hidden(x, below - 1)
    h = net.layers[below].activation(h_in @ net.layers[below].weight.T + net.layers[below].bias)
    above = net.layers[below + 1]
    return h_in, h @ above.weight.T + above.bias


def _fit(columns: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares ``targets ≈ [columns, 1] coef``: the coefficients and the relative residual
    of each target (to its spread around its mean)."""
    design = np.hstack([columns, np.ones((columns.shape[0], 1))])
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)
    resid = np.linalg.norm(design @ coef - targets, axis=0)
    scale = np.linalg.norm(targets - targets.mean(axis=0), axis=0)
    return coef, resid / np.maximum(scale, np.finfo(np.float64).tiny)


def orient_below(students: Sequence[MLP], x: np.ndarray, below: int, *,
                 max_exhaustive: int = 10, max_samples: int = 4000,
                 exact_tol: float = 1e-6) -> Orientation:
    """Keep one orientation of every neuron of the doubled hidden layer index ``below`` (module
    docstring) and rewrite the students on it.

    For an orientation ``s`` the kept columns are ``H_s = σ(x_in W_sᵀ + b_s)``, with the
    deciding (first) student's weights and learned biases; the layer above's pre-activations
    ``P`` of that student are fit by ``P ≈ [H_s, 1] C``, and ``s`` minimises
    ``Σ_j log10 max(ρ_j, 1e-15)`` over the relative residuals ``ρ_j`` of its neurons: a neuron
    of the teacher fits exactly in the right orientation only, while the student's spurious
    neurons fit in none and weigh little. Every ``2**n`` orientation is tried up to
    ``max_exhaustive`` neurons; beyond, single flips from the orientation with the larger
    outgoing weight, while they lower the score. Each student then keeps the same rows (with
    its own learned biases) and gets the layer above refit to its own pre-activations.

    Parameters
    ----------
    students : sequence of MLP
        The students of a stage, lowest loss first; hidden layer index ``below`` is doubled
        (``2 n`` neurons, :func:`doubled`).
    x : ndarray of shape (n_samples, d_in), float64
        The queries.
    below : int
        Index of the doubled hidden layer.
    max_exhaustive, max_samples : int
    exact_tol : float

    Returns
    -------
    Orientation
    """
    students = tuple(students)
    if not students:
        raise InputError("orient_below needs at least one student")
    if len(students[0].layers) < below + 3 or students[0].layers[below].n_out % 2:
        raise InputError(f"hidden layer {below} of the students must be doubled and have a "
                         "hidden layer above it")
    if x.shape[0] > max_samples:
        x = x[np.linspace(0, x.shape[0] - 1, max_samples).astype(int)]
    lay = students[0].layers[below]
    n = lay.n_out // 2
    h_in, targets = _inputs_and_targets(students[0], x, below)
    h_all = lay.activation(h_in @ lay.weight.T + lay.bias)

    def rows_of(flips) -> np.ndarray:
        rows = np.arange(n)
        rows[list(flips)] += n
        return rows

    def score(flips) -> float:
        _, rel = _fit(h_all[:, rows_of(flips)], targets)
        return float(np.sum(np.log10(np.maximum(rel, 1e-15))))

    if n <= max_exhaustive:
        best = min((f for r in range(n + 1) for f in itertools.combinations(range(n), r)),
                   key=score)
        flips = set(best)
    else:
        w_above = np.linalg.norm(students[0].layers[below + 1].weight, axis=0)
        flips = {k for k in range(n) if w_above[k + n] > w_above[k]}
        current = score(flips)
        improved = True
        while improved:
            improved = False
            for k in range(n):
                trial = flips ^ {k}
                value = score(trial)
                if value < current:
                    flips, current, improved = trial, value, True
    rows = rows_of(sorted(flips))
    _, rel = _fit(h_all[:, rows], targets)
    return Orientation(rows=rows, flipped=tuple(sorted(flips)),
                       networks=tuple(_on_rows(net, x, below, rows) for net in students),
                       n_exact=int(np.sum(rel <= exact_tol)))


def _on_rows(net: MLP, x: np.ndarray, below: int, rows: np.ndarray) -> MLP:
    """``net`` with hidden layer index ``below`` cut to ``rows`` and the layer above refit, by
    least squares, to the pre-activations it had."""
    lay, above = net.layers[below], net.layers[below + 1]
    h_in, targets = _inputs_and_targets(net, x, below)
    kept = Layer(lay.weight[rows], lay.bias[rows], lay.activation)
    coef, _ = _fit(kept.activation(h_in @ kept.weight.T + kept.bias), targets)
    refit = Layer(coef[:-1].T.copy(), coef[-1].copy(), above.activation)
    layers = list(net.layers)
    layers[below], layers[below + 1] = kept, refit
    return MLP(tuple(layers))
