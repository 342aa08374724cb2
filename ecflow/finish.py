"""The finish of a recovery, for any depth: fine-tune, prune, measure, judge (paper section 5
step 4, appendix A.3).

After the last stage (:mod:`ecflow.stage`) the network is the reconstructed hidden layers with
an output layer refit by linear least squares (:func:`ecflow.reconstruction.refit_output`,
through :func:`~ecflow.reconstruction.choose_orientations`, which also orients the last hidden
layer's even+linear neurons: the output layer is the one that decides them). Then:

1. **Fine-tune** with the engine, in rounds of ``finetune`` (:func:`finetune`).
2. **Prune** (:func:`ecflow.reconstruction.prune_network`): every hidden neuron, top layer first,
   least supported first, is removed when the network keeps its precision; the result is
   fine-tuned again.
3. **Measure**: the RMSE on the training and fresh queries and, with a known teacher of the same
   depth, the cosine distance of each teacher neuron to its match (:mod:`ecflow.metrics`,
   :func:`ecflow.layerwise.match_layers`).
4. **Judge**: RECOVERED when the RMSE (fresh when there is some) is at most ``rmse_tol``.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ecflow import metrics
from ecflow._checks import check_int, check_number
from ecflow.budget import Budget
from ecflow.context import Queries, Run
from ecflow.engines import get_engine
from ecflow.engines.base import Engine, TrainConfig, TrainStatus
from ecflow.errors import InputError, InputTypeError
from ecflow.layerwise import match_layers
from ecflow.networks import MLP, Layer
from ecflow.reconstruction import (
    NeuronCertificate,
    PruneConfig,
    choose_orientations,
    default_finetune,
    prune_network,
    support_order,
)
from ecflow.stage import Stage

__all__ = ["RecoverStatus", "FinishConfig", "Finished", "finish", "finetune", "layer_neurons"]


class RecoverStatus(enum.Enum):
    """Outcome of a recovery; ``message`` says what to do about it."""

    RECOVERED = "recovered: the network reproduces the queries within rmse_tol"
    INEXACT = (
        "reconstructed, but the RMSE is above rmse_tol: train more students (--students), "
        "wider ones (--rho/--hidden) or longer (--max-seconds)"
    )
    NO_CLUSTERS = (
        "no cluster is both big and aligned: lower --gamma, raise --beta-deg, or train the "
        "students longer or wider"
    )
    NO_WIDTH = (
        "the width search found no width at which students reach near-zero loss: give "
        "--activation if it is known, more --max-minutes, or --hidden"
    )

    @property
    def message(self) -> str:
        return self.value


@dataclass(frozen=True)
class FinishConfig:
    """Settings of the finish (:func:`finish`).

    Parameters
    ----------
    finetune : TrainConfig, default=TrainConfig(max_seconds=60.0)
        Each round of fine-tuning, and the fine-tune of each pruning attempt.
    finetune_rounds : int, default=5
        See :class:`ecflow.recover.RecoverConfig`.
    rmse_tol : float, default=1e-10
    prune : bool, default=True
    pruning : PruneConfig
    prune_max_rmse : float or None, default=None
        Prune only when the fine-tuned RMSE is at most this fraction of ``std(y)`` (None:
        always). Pruning's tolerance is relative to that RMSE (``PruneConfig.rel_factor``), so
        on a network far from exact it lets every removal through: measured on deep networks,
        two g 8-4-2-1 recoveries whose fine-tune ended far from exact were pruned to one neuron
        per layer. A shallow reconstruction from students far from zero loss (digits) still
        prunes to its teacher's width.
    """

    finetune: TrainConfig = field(default_factory=default_finetune)
    finetune_rounds: int = 5
    rmse_tol: float = 1e-10
    prune: bool = True
    pruning: PruneConfig = field(default_factory=PruneConfig)
    prune_max_rmse: float | None = None

    def __post_init__(self):
        if not isinstance(self.finetune, TrainConfig):
            raise InputTypeError(f"finetune must be a TrainConfig, got {self.finetune!r}")
        check_int(self.finetune_rounds, "finetune_rounds", 1)
        check_number(self.rmse_tol, "rmse_tol", positive=True)
        if not isinstance(self.prune, bool):
            raise InputTypeError(f"prune must be a bool, got {self.prune!r}")
        if not isinstance(self.pruning, PruneConfig):
            raise InputTypeError(f"pruning must be a PruneConfig, got {self.pruning!r}")
        if self.prune_max_rmse is not None:
            check_number(self.prune_max_rmse, "prune_max_rmse", positive=True)


@dataclass(frozen=True, eq=False)
class Finished:
    """Outcome of :func:`finish`.

    Attributes
    ----------
    network : MLP
    neurons : tuple of tuple of NeuronCertificate
        Per hidden layer, one certificate per neuron of ``network``.
    pruned : tuple of tuple of int
        Per hidden layer, the neurons removed by pruning (indices among the reconstructed ones).
    rmse_train : float
    rmse_fresh : float or None
    teacher_distances : tuple of tuple of float
        Per hidden layer, the cosine distance of each teacher neuron to its match; ``()``
        without a teacher of the same depth.
    layer_max_distance : tuple of float
        Per hidden layer, the largest of them (:attr:`ecflow.metrics.NeuronMatch.max_distance`).
    status : RecoverStatus
        RECOVERED or INEXACT.
    reason : str
    notes : tuple of str
    phase_seconds : mapping of str to float
        ``reconstruction``, ``fine-tune``, ``pruning`` (when it ran) and ``metrics``.
    """

    network: MLP
    neurons: tuple[tuple[NeuronCertificate, ...], ...]
    pruned: tuple[tuple[int, ...], ...]
    rmse_train: float
    rmse_fresh: float | None
    teacher_distances: tuple[tuple[float, ...], ...]
    layer_max_distance: tuple[float, ...]
    status: RecoverStatus
    reason: str
    notes: tuple[str, ...]
    phase_seconds: dict

    @property
    def max_cosine_distance(self) -> float | None:
        return max(self.layer_max_distance) if self.layer_max_distance else None


def _renumbered(certs: Sequence[NeuronCertificate], keep: Sequence[int]
                ) -> tuple[NeuronCertificate, ...]:
    """The certificates ``certs[k]`` for ``k`` in ``keep``, numbered as the neurons left."""
    return tuple(
        NeuronCertificate(**{**certs[k].__dict__, "neuron": i}) for i, k in enumerate(keep)
    )


def layer_neurons(stages: Sequence[Stage]) -> list[tuple[NeuronCertificate, ...]]:
    """Per hidden layer, the certificates of the neurons the next stage's bias rule kept."""
    out = []
    for i, stage in enumerate(stages):
        certs = stage.neurons
        if i + 1 < len(stages) and stages[i + 1].kept_below is not None:
            certs = _renumbered(certs, stages[i + 1].kept_below)
        out.append(certs)
    return out


def finetune(engine: Engine, queries: Queries, net: MLP, config: FinishConfig, budget: Budget,
             what: str) -> MLP:
    """``net`` fine-tuned in rounds of ``config.finetune`` (``config.finetune_rounds``):
    another round only while the last one ran out of time, halved the RMSE at least, and left
    it above ``config.rmse_tol``. Returns the best network (``net`` if nothing improved)."""
    x, y = queries.x, queries.y
    best = metrics.rmse(net, x, y)
    for _ in range(config.finetune_rounds):
        if budget.expired(1.0):
            break
        tuned = engine.train(x, y, net, budget.fit(config.finetune, what, floor=0.5))
        if not tuned.rmse < best:
            break
        gain = best / max(tuned.rmse, np.finfo(np.float64).tiny)
        net, best = tuned.network, tuned.rmse
        if tuned.status is not TrainStatus.MAX_TIME or best <= config.rmse_tol or gain < 2.0:
            break
    return net


def _assemble(stage: Stage, queries: Queries) -> MLP:
    """The last stage's layers under an output layer fit by least squares."""
    top = stage.layer_out
    out_act = stage.best.layers[-1].activation
    output = Layer(np.zeros((queries.d_out, top.n_out)), np.zeros(queries.d_out), out_act)
    # The output layer decides the orientation of the last hidden layer's even+linear neurons.
    return choose_orientations(MLP((*stage.fixed, top, output)), queries.x, queries.y)


@dataclass(frozen=True, eq=False)
class _Pruned:
    network: MLP
    neurons: tuple[tuple[NeuronCertificate, ...], ...]
    removed: tuple[tuple[int, ...], ...]
    notes: tuple[str, ...] = ()


def _prune(engine: Engine, queries: Queries, run: Run, budget: Budget, net: MLP,
           neurons: Sequence[tuple[NeuronCertificate, ...]], config: FinishConfig) -> _Pruned:
    """Pruning of every layer, its final fine-tune and the certificates of what is left."""
    orders = [support_order(certs) for certs in neurons]
    total = sum(len(o) for o in orders)
    run.tick("pruning", 0, total)
    result = prune_network(
        net, queries.x, queries.y, engine=engine, train_config=config.finetune, orders=orders,
        config=config.pruning, budget=budget, on_try=run.ticker("pruning"),
    )
    possible = sum(len(o) - 1 for o in orders)
    if result.tried < possible and any(len(k) > 1 for k in result.kept):
        budget.note(f"pruning: {possible - result.tried} of {possible} removals not tried "
                    "(deadline)")
    notes = ()
    if result.n_removed:
        net = finetune(engine, queries, result.network, config, budget, "final fine-tune")
        if len(neurons) == 1:
            what = f"{result.n_removed} of {len(neurons[0])} neurons"
        else:
            what = ", ".join(f"{len(r)} of layer {i + 1}"
                             for i, r in enumerate(result.removed) if r)
        notes = (f"pruning removed {what} ({result.finetunes} fine-tunes)",)
    kept = tuple(_renumbered(c, k) for c, k in zip(neurons, result.kept))
    return _Pruned(net, kept, result.removed, notes)


def _match(net: MLP, teacher: MLP | None, basis
           ) -> tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]:
    """Per layer, each teacher neuron's distance to its match, and the largest of them."""
    if teacher is None or len(teacher.layers) != len(net.layers):
        return (), ()
    if len(net.layers) == 2:
        matches = (metrics.match_neurons(net, teacher, basis),)
    else:
        matches = match_layers(net, teacher, basis)
    dists = []
    for layer, match in zip(teacher.layers, matches):
        per_teacher = np.full(layer.n_out, metrics.max_distance_of(layer.activation.symmetry))
        per_teacher[match.teacher] = match.distances
        dists.append(tuple(float(d) for d in per_teacher))
    return tuple(dists), tuple(float(m.max_distance) for m in matches)


def _judge(net: MLP, rmse_train: float, rmse_fresh: float | None, best_loss: float,
           rmse_tol: float) -> tuple[RecoverStatus, str]:
    judged = rmse_fresh if rmse_fresh is not None else rmse_train
    where = "fresh" if rmse_fresh is not None else "training"
    deep = len(net.layers) > 2
    sizes = f"sizes {', '.join(map(str, net.hidden_sizes))}, " if deep else ""
    if judged <= rmse_tol:
        status = RecoverStatus.RECOVERED
        return status, f"{status.message} ({sizes}{where} RMSE {judged:.3g} <= {rmse_tol:.3g})"
    status = RecoverStatus.INEXACT
    return status, (
        f"{status.message} ({sizes}{where} RMSE {judged:.3g} > {rmse_tol:.3g}; best "
        f"{'first-layer ' if deep else ''}student loss {best_loss:.3g})"
    )


_BASIS_NOTE = (
    "the queries reveal {rank} of the {n} directions of a neuron's weights and bias (the inputs "
    "with a column of ones have a lower rank): weights along the others cannot be identified, "
    "so neurons were clustered, and are compared with the teacher's, on their pre-activations "
    "over the query inputs; the recovered weights are the revealed part (minimum norm)"
)


def finish(queries: Queries, run: Run, budget: Budget, stages: Sequence[Stage],
           config: FinishConfig) -> Finished:
    """Fine-tune, prune, measure and judge the network of ``stages`` (module docstring).

    Parameters
    ----------
    queries : Queries
    run : Run
        Its engine fine-tunes; its progress hears ``fine-tune`` and ``pruning``.
    budget : Budget
        Fine-tunes and pruning fit what is left; their cuts go to its log.
    stages : sequence of Stage
        One per hidden layer, each with a reconstructed layer.
    config : FinishConfig
    """
    if not stages or any(s.layer_out is None for s in stages):
        raise InputError("the finish needs a reconstructed layer from every stage")
    engine, phases = get_engine(run.engine), {}
    t = time.monotonic()
    net = _assemble(stages[-1], queries)
    phases["reconstruction"] = time.monotonic() - t
    t = time.monotonic()
    run.tick("fine-tune", 0, 1)
    net = finetune(engine, queries, net, config, budget, "fine-tune")
    run.tick("fine-tune", 1, 1)
    phases["fine-tune"] = time.monotonic() - t
    neurons, pruned, notes = tuple(layer_neurons(stages)), tuple(() for _ in stages), []
    rel_rmse = metrics.rmse(net, queries.x, queries.y) / (float(np.std(queries.y)) or 1.0)
    if config.prune and config.prune_max_rmse is not None and rel_rmse > config.prune_max_rmse:
        notes.append(
            f"not pruned: the fine-tuned network is far from exact (RMSE {rel_rmse:.2g} of "
            f"std(y) > {config.prune_max_rmse:g}), and a neuron is superfluous only at the "
            "same precision"
        )
    elif config.prune and sum(net.hidden_sizes) > len(net.hidden_sizes):
        t = time.monotonic()
        done = _prune(engine, queries, run, budget, net, neurons, config)
        net, neurons, pruned = done.network, done.neurons, done.removed
        notes.extend(done.notes)
        phases["pruning"] = time.monotonic() - t
    return _measure(queries, stages, net, neurons, pruned, notes, phases, config)


def _measure(queries, stages, net, neurons, pruned, notes, phases, config) -> Finished:
    """The metrics and the verdict of the finished network."""
    t = time.monotonic()
    basis = stages[0].basis
    if basis is not None:
        net = basis.project_network(net)
        notes.append(_BASIS_NOTE.format(rank=basis.rank, n=queries.d_in + 1))
    rmse_train = metrics.rmse(net, queries.x, queries.y)
    rmse_fresh = (metrics.rmse(net, queries.x_fresh, queries.y_fresh)
                  if queries.has_fresh else None)
    if not queries.has_fresh:
        notes.append("no held-out queries: the RMSE is on the training queries only")
    dists, layer_max = _match(net, queries.teacher, basis)
    phases["metrics"] = time.monotonic() - t
    best_loss = min(v if np.isfinite(v) else np.inf for v in stages[0].student_losses)
    status, reason = _judge(net, rmse_train, rmse_fresh, best_loss, config.rmse_tol)
    return Finished(
        network=net, neurons=tuple(neurons), pruned=tuple(pruned), rmse_train=rmse_train,
        rmse_fresh=rmse_fresh, teacher_distances=dists, layer_max_distance=layer_max,
        status=status, reason=reason, notes=tuple(notes), phase_seconds=phases,
    )
