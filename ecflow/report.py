"""The outcome of a recovery, and its report (the ``--report`` file and the root attributes of
the recovered network's file).

:class:`Recovery` is built in one place, :func:`ecflow.recover.recover`'s pipeline; its
``status`` is a :class:`~ecflow.finish.RecoverStatus`, whose message says what to try.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ecflow.clustering import ClusterResult
from ecflow.finish import Finished, RecoverStatus, layer_neurons
from ecflow.layerwise import LayerReport
from ecflow.networks import MLP
from ecflow.reconstruction import NeuronCertificate
from ecflow.stage import Stage
from ecflow.width_search import WidthSearch

__all__ = ["Recovery", "RecoverStatus", "layer_reports", "stage_fields"]


@dataclass(frozen=True, eq=False)
class Recovery:
    """Outcome of a recovery.

    Attributes
    ----------
    network : MLP or None
        The recovered network; None when no cluster was kept.
    hidden_sizes : tuple of int
        Recovered hidden width(s); ``()`` without a network.
    rmse_train : float or None
        RMSE on the training queries.
    rmse_fresh : float or None
        RMSE on fresh queries; None without fresh data (``--data``: nothing is held out).
    student_losses : tuple of float
        Final MSE of each student.
    neurons : tuple of NeuronCertificate
        One per recovered hidden neuron.
    max_cosine_distance : float or None
        Largest cosine distance of a teacher neuron to its matched recovered neuron (teacher
        known), else None. Between ``[w, b]`` vectors, or, when the queries do not span the
        input space (:func:`ecflow.metrics.revealed_basis`), between the pre-activations over
        the queries; the notes say so. The report adds their mean (``mean_cosine_distance``).
    status : RecoverStatus
    reason : str
        ``status.message`` with the numbers behind it.
    seconds : float
        Wall-clock time of the whole recovery.
    phase_seconds : mapping of str to float
        Time per phase (students, clustering, reconstruction, fine-tune, pruning, metrics).
    student_width : int
    activation : str
    n_kept_clusters : int
        Clusters kept before pruning.
    pruned : tuple of int
        Reconstruction neurons removed by pruning (indices before pruning).
    teacher_distances : tuple of float
        Cosine distance of each teacher neuron to its match (teacher known), else ``()``.
    notes : tuple of str
    students_trained, students_reused, students_stopped, students_skipped : int
        Students trained by this run (to their end or stopped), read back from the work folder,
        stopped while training because they could no longer change the outcome, and never
        started (cancelled in the queue, or no time left).
    stop_reason : str or None
        Why the expansion stopped early, if it did.
    student_status : mapping of str to int
        How many students ended with each :class:`~ecflow.engines.base.TrainStatus` name.
    cut : tuple of str
        What the ``max_minutes`` deadline cut (students, fine-tune budgets, pruning tries).
    clustering : ClusterResult or None
        For the plots; not part of the report.
    width_search : WidthSearch or None
        The width search of ``hidden="auto"`` (its loss-versus-width curve is a figure).
    precision : mapping
        For a black-box teacher: its precision, its rounding floor and the RMSE it was judged
        against, with the reason (:meth:`BlackBox.precision_report`); what it answers
        (``outputs``), the floor of its rounding and noise (``output_floor``,
        ``output_decimals``), the rows dropped for a probability of 0 or 1
        (``saturated_rows_dropped``) and the queries sent (``queries_used``, ``max_queries``)
        (:mod:`ecflow.oracle`). Given pairs have the same lines but no queries.
    layers : tuple of LayerReport
        A deep (layer-wise) recovery: one report per hidden layer (size, certificates,
        retraining statistics, bias spreads, dropped and pruned neurons, teacher distances);
        ``()`` for one hidden layer. Then ``neurons`` and ``teacher_distances`` hold every
        layer's in order, and ``student_losses``, ``student_width`` and ``clustering`` are the
        first layer's.
    """

    network: MLP | None
    hidden_sizes: tuple[int, ...]
    rmse_train: float | None
    rmse_fresh: float | None
    student_losses: tuple[float, ...]
    neurons: tuple[NeuronCertificate, ...]
    max_cosine_distance: float | None
    status: RecoverStatus
    reason: str
    seconds: float
    phase_seconds: Mapping[str, float]
    student_width: int
    activation: str
    n_kept_clusters: int = 0
    pruned: tuple[int, ...] = ()
    teacher_distances: tuple[float, ...] = ()
    notes: tuple[str, ...] = ()
    students_trained: int = 0
    students_reused: int = 0
    students_stopped: int = 0
    students_skipped: int = 0
    stop_reason: str | None = None
    student_status: Mapping[str, int] = field(default_factory=dict)
    cut: tuple[str, ...] = ()
    clustering: ClusterResult | None = field(default=None, repr=False)
    width_search: WidthSearch | None = field(default=None, repr=False)
    precision: Mapping[str, object] = field(default_factory=dict)
    layers: tuple[LayerReport, ...] = ()

    @property
    def recovered(self) -> bool:
        return self.status is RecoverStatus.RECOVERED

    def to_report(self) -> dict:
        """JSON-serialisable summary (the ``--report`` file; also the output's root attributes)."""

        def num(v):
            return None if v is None or not math.isfinite(v) else float(v)

        return {
            "status": self.status.name,
            "reason": self.reason,
            "hidden_sizes": list(self.hidden_sizes),
            "sizes": list(self.network.sizes) if self.network is not None else [],
            "activation": self.activation,
            "student_width": self.student_width,
            "rmse_train": num(self.rmse_train),
            "rmse_fresh": num(self.rmse_fresh),
            "max_cosine_distance": num(self.max_cosine_distance),
            "mean_cosine_distance": (
                num(float(np.mean(self.teacher_distances))) if self.teacher_distances else None
            ),
            "teacher_distances": [num(d) for d in self.teacher_distances],
            "student_losses": [num(v) for v in self.student_losses],
            "n_students": len(self.student_losses),
            "n_kept_clusters": self.n_kept_clusters,
            "pruned": list(self.pruned),
            "neurons": [c.to_dict() for c in self.neurons],
            "seconds": self.seconds,
            "phase_seconds": dict(self.phase_seconds),
            "notes": list(self.notes),
            "students_trained": self.students_trained,
            "students_reused": self.students_reused,
            "students_stopped": self.students_stopped,
            "students_skipped": self.students_skipped,
            "stop_reason": self.stop_reason,
            "student_status": dict(self.student_status),
            "cut": list(self.cut),
            **dict(self.precision),
            "width_search": self.width_search.to_report() if self.width_search else None,
            "layers": [layer.to_dict() for layer in self.layers],
        }

    def to_attrs(self) -> dict:
        """The report as HDF5 root attributes: numbers and strings as they are, lists of
        numbers as arrays, anything nested as a JSON string; None values are left out."""
        out = {}
        for key, value in self.to_report().items():
            if value is None:
                continue
            if isinstance(value, (dict, list)) and not _flat_numbers(value):
                out[key] = json.dumps(value)
            elif isinstance(value, list):
                out[key] = np.asarray(value)
            else:
                out[key] = value
        return out


def _flat_numbers(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def stage_fields(stages: Sequence[Stage], widths, deep: bool, phases: dict) -> dict:
    """The report's student and clustering fields, summed over the stages; their seconds go
    to ``phases``."""
    status: dict[str, int] = {}
    for stage in stages:
        for name, n in stage.status_counts().items():
            status[name] = status.get(name, 0) + n
        if deep:
            phases[f"layer {stage.layer}"] = stage.seconds
        else:
            phases.update(stage.phase_seconds)
    first = stages[0]
    return dict(
        student_losses=first.student_losses, student_width=int(widths[0]),
        n_kept_clusters=sum(len(s.clustering.kept) for s in stages),
        students_trained=sum(s.count("n_trained") for s in stages),
        students_reused=sum(s.count("n_reused") for s in stages),
        students_stopped=sum(s.count("n_stopped") for s in stages),
        students_skipped=sum(s.count("n_skipped") for s in stages),
        stop_reason=first.rounds[-1].stop_reason if first.rounds else None,
        student_status=status, clustering=first.clustering,
    )


def layer_reports(stages: Sequence[Stage], finished: Finished | None
                   ) -> tuple[LayerReport, ...]:
    """One report per hidden layer reached by a deep recovery."""
    neurons = finished.neurons if finished is not None else layer_neurons(stages)
    reports = []
    for i, stage in enumerate(stages):
        dists = finished.teacher_distances[i] if finished and finished.teacher_distances else ()
        reports.append(LayerReport(
            layer=stage.layer, size=len(neurons[i]), n_kept_clusters=len(stage.clustering.kept),
            neurons=tuple(neurons[i]), student_hidden=stage.students[0].network.hidden_sizes,
            student_losses=stage.student_losses, students_trained=stage.count("n_trained"),
            students_reused=stage.count("n_reused"), students_stopped=stage.count("n_stopped"),
            students_skipped=stage.count("n_skipped"), stop_reason=stage.rounds[-1].stop_reason,
            bias_std=stage.bias_std, dropped_below=stage.dropped_below,
            pruned=finished.pruned[i] if finished else (), teacher_distances=dists,
            max_cosine_distance=finished.layer_max_distance[i] if dists else None,
            seconds=stage.seconds, clustering=stage.clustering,
        ))
    return tuple(reports)
