"""Expand-and-Cluster for one hidden layer, end to end (paper section 5, appendix A.3).

:func:`recover` runs the whole procedure; :func:`reconstruct_from_students` runs everything
after the students are trained (the sweep trains its students itself):

1. **Queries** — a teacher is queried at ``n_queries`` inputs uniform in ``[-√3, √3]^d_in``
   (or at given inputs); with ``--data`` the pairs are given.
2. **Students** — ``n_students`` students of width ``ceil(rho r)`` or ``hidden`` are trained
   (:mod:`ecflow.expansion`).
3. **Clustering** — their hidden neurons are clustered and the big, aligned clusters kept
   (:mod:`ecflow.clustering`).
4. **Reconstruction** — one neuron per kept cluster, with the symmetry compensation of its class,
   orientations chosen and output layer refit by least squares, fine-tuned with the engine, then
   pruned to the smallest width at the same precision (:mod:`ecflow.reconstruction`).
5. **Metrics** — RMSE on the queries and on fresh inputs (teacher path), and the match of the
   recovered neurons to the teacher's when the teacher is known (:mod:`ecflow.metrics`).

The result is a :class:`Recovery` whose ``status`` says whether the network was recovered to
``rmse_tol`` and, if not, what to try; every recovered neuron carries a certificate (cluster
size, within-cluster angles, symmetry class, contributing students).
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import enum
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ecflow._checks import check_in_range, check_int, check_number
from ecflow import metrics, teachers
from ecflow.activations import get_activation
from ecflow.blackbox import BlackBox, from_callable, from_network
from ecflow.clustering import ClusterConfig, ClusterResult, cluster_neurons, neuron_vectors
from ecflow.engines import get_engine
from ecflow.engines.base import NEAR_ZERO_LOSS, TrainConfig, TrainResult, TrainStatus
from ecflow.errors import InputError, InputTypeError
from ecflow.expansion import (
    STUDENT_SHARE,
    Expansion,
    expand,
    quorum_rule,
    student_seeds,
    student_width,
)
from ecflow.layerwise import (
    LayerReport,
    LayerwiseConfig,
    is_deep_work_dir,
    layer_dir,
    match_layers,
    recover_layers,
)
from ecflow.networks import MLP, check_xy
from ecflow.width_search import WidthSearch, WidthSearchConfig, search_black_box
from ecflow.workdir import WorkDir, manifest_for
from ecflow.reconstruction import (
    NeuronCertificate,
    PruneConfig,
    choose_orientations,
    collapse_clusters,
    default_finetune,
    network_rmse,
    prune_network,
    support_order,
    within_deadline,
)

__all__ = [
    "RecoverConfig",
    "RecoverStatus",
    "NeuronCertificate",
    "Recovery",
    "reconstruct_from_students",
    "recover",
    "run_students",
    "cluster_saved",
    "STUDENT_SHARE",
]

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``; phases: students, clustering, fine-tune, pruning, metrics."""


@dataclass(frozen=True)
class RecoverConfig:
    """Settings of a recovery (defaults: the paper's, appendix A.6, and issue 5).

    Parameters
    ----------
    n_students : int, default=10
        Students trained (``N``).
    gamma : float, default=0.5
        Minimum fraction of students in a kept cluster, ``0 < gamma <= 1``.
    beta_deg : float, default=30.0
        Maximum median within-cluster angle of a kept cluster, ``0 < beta_deg <= 90``.
    n_queries : int, default=30000
        Teacher queries used for training (the paper's 30k, A.6.1).
    n_fresh : int, default=10000
        Fresh teacher queries on which the RMSE is reported (0: none).
    rho : float, optional
        Overparameterisation: student width ``ceil(rho * r)`` for a teacher of width ``r``.
        Needs a teacher. Exclusive with ``hidden``.
    hidden : int, tuple of int or "auto", optional
        Explicit student width, one per hidden layer (two or more: the layer-wise recovery of
        a deep network, :mod:`ecflow.layerwise`), or ``"auto"``: the width search (paper step
        1, :mod:`ecflow.width_search`) finds one width, and the activation too when neither
        ``activation`` nor the teacher names one. Exclusive with ``rho``.
    activation : str, optional
        Student activation; default the teacher's (the paper assumes it known), or ``g`` when
        only pairs are given.
    seed : int, default=0
        Seeds the query inputs (``teachers.sample_inputs(n_queries, d_in, seed)``) and the
        students (:func:`ecflow.expansion.student_seeds`).
    prune : bool, default=True
        Remove neurons the network can do without at the same precision.
    train : TrainConfig
        Training of each student.
    finetune : TrainConfig, default=TrainConfig(max_seconds=60.0)
        Fine-tuning of the reconstruction and of each pruning attempt.
    pruning : PruneConfig
        Tolerances of pruning.
    rmse_tol : float, default=1e-10
        RMSE (fresh queries when there are some) at or below which the status is RECOVERED.
    student_loss : float or None, default=1e-14
        MSE at which a student is good enough to cluster and stops (``TrainConfig.target_loss``
        of its training; a ``train`` config that sets its own ``target_loss`` keeps it): the
        paper's near-zero loss. Students that reach it do so fast and carry every teacher
        neuron; the fine-tune of the reconstruction gives the machine precision. Measured on
        g teachers (d_in 4, r 4): students that creep down to 1e-10 can still stand in for a
        teacher neuron with several of theirs, so 1e-10 failed when only γN students were
        clustered, and 1e-6 failed outright. None: students train to ``loss_tol``.
    first_order_above : float, default=4e7
        Students whose parameters × residuals exceed this are too large for LM steps: they
        train with L-BFGS on the exact gradient (``TrainConfig.first_order_above``), without
        the stall rule, whose creep test is made for LM (L-BFGS always creeps), to
        ``first_order_student_loss``. 4e7 sends a ρ = 4 student of a digits teacher with
        r = 12 there (3 610 parameters × 12 590 or 17 970 residuals) and keeps the synthetic
        ones of the paper's sweep at ρ 4 on LM (d_in 32, r 8: 1 089 × 30 000), which must reach
        zero loss. A ``train`` config that sets its own ``first_order_above`` keeps it.
    first_order_student_loss : float, default=1e-6
        The student loss of students past ``first_order_above``, when ``student_loss`` is
        lower.
    finetune_rounds : int, default=5
        The fine-tune of the reconstruction (and the final one after pruning) runs again, up
        to this many rounds of ``finetune``, while a round ends on its time budget with the
        RMSE above ``rmse_tol`` and at least halved: a reconstruction from students far from
        zero loss needs more than one minute of LM steps on a loaded machine (digits g r 16,
        1 610 parameters × 17 970 residuals at load 7-10: ~20 s a step, logit RMSE 2.6e-3
        after one round). A synthetic reconstruction converges within the first.
        Measured on digits, tanh r 12, ρ 4: L-BFGS reaches RMSE 1.7e-3 at 40 s and 1e-4 at
        400 s on a loaded core; at RMSE 1e-4 every teacher neuron had a student neuron within
        0.43° of it (pre-activations), and even students stopped at RMSE ~1e-2 gave the 12
        teacher neurons after the dense fine-tune of the small reconstruction.
    early_stop : bool, default=True
        Stop the students still queued or training once ``ceil(gamma N)`` have reached
        ``student_loss``: every teacher neuron then already has a big cluster, and later
        students could only add members to it or form small clusters.
    width_search : WidthSearchConfig
        Settings of the width search (``hidden="auto"``).
    bias_std_max : float, default=0.01
        Deep networks: a reconstructed neuron whose learned bias varies across the students
        retrained on it by more than this (standard deviation) is dropped (the paper's rule,
        appendix A.3, with its 0.1 tightened: see
        :class:`ecflow.layerwise.LayerwiseConfig`; :mod:`ecflow.layerwise`).
    deep_student_loss : float or None, default=1e-10
        Deep networks: the ``student_loss`` of every stage's students. Measured on g 8-4-2-1
        teachers at rho 4: deep students reach MSE 1e-8 in 10 to 200 s and 1e-14 rarely within
        their budget; at 1e-8 most first-layer neurons are within cosine distance 1e-8 of the
        teacher's, but a weak teacher neuron was pinned by only 3 of 8 students (the others
        held it ~5 degrees off), too few for a big cluster, and that recovery failed; at 1e-10
        4 of 7 pinned it (see ``deep_gamma``). The fine-tune of the assembled network supplies
        the machine precision. None: ``student_loss``. Deep students are not judged by the
        creep part of the stall rule (``TrainConfig.creep_factor`` 0).
    deep_gamma : float or None, default=0.3
        Deep networks: ``gamma`` of every layer's clustering (a stage still waits for
        ``ceil(gamma N)`` students at the student loss before it stops the others). Measured on
        that g 8-4-2-1 teacher with 7 students at MSE 1e-10: gamma 0.5 kept 2 of the teacher's
        4 first-layer neurons, 0.4 kept 3, 0.3 all 4 (within cosine distance 4e-10). The
        spurious clusters a low gamma lets in are dropped by the next stage's bias rule or by
        pruning. The paper used 0.4 and 1/3 for its deep synthetic teachers (A.6.4). None:
        ``gamma``.
    deep_student_seconds : float or None, default=120
        Deep networks: each student's wall-clock budget when ``train`` sets none (shallow
        students get the engine's 300 s). Measured on g 8-4-2-1 teachers (16-8 students,
        standardised start): the students that reached MSE 1e-10 did so within 4-100 s, while
        others crept for 230-250 s to 1e-9 and 1e-8, holding a stage of 10 students on 2
        workers for over 10 minutes; clustering uses the students cut at the budget too.
        None: the engine's budget.
    max_minutes : float or None, default=None
        One deadline for the whole recovery, shared by the width search (at most
        ``SEARCH_SHARE`` of it), students (at most
        ``STUDENT_SHARE`` of it), fine-tuning and pruning; the report says what it cut.
    """

    n_students: int = 10
    gamma: float = 0.5
    beta_deg: float = 30.0
    n_queries: int = 30000
    n_fresh: int = 10000
    rho: float | None = None
    hidden: int | tuple[int, ...] | str | None = None
    activation: str | None = None
    seed: int = 0
    prune: bool = True
    train: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=default_finetune)
    pruning: PruneConfig = field(default_factory=PruneConfig)
    rmse_tol: float = 1e-10
    student_loss: float | None = NEAR_ZERO_LOSS
    first_order_above: float = 4e7
    first_order_student_loss: float = 1e-6
    finetune_rounds: int = 5
    early_stop: bool = True
    max_minutes: float | None = None
    width_search: WidthSearchConfig = field(default_factory=WidthSearchConfig)
    bias_std_max: float = 0.01
    deep_student_loss: float | None = 1e-10
    deep_gamma: float | None = 0.3
    deep_student_seconds: float | None = 120.0

    def __post_init__(self):
        check_int(self.n_students, "n_students", 1)
        check_int(self.n_queries, "n_queries", 1)
        check_int(self.n_fresh, "n_fresh", 0)
        check_int(self.seed, "seed", 0)
        ClusterConfig(gamma=self.gamma, beta_deg=self.beta_deg)  # validates both, names them
        if self.rho is not None:
            rho = check_number(self.rho, "rho")
            if rho <= 0:
                raise InputError(f"rho must be positive, got {self.rho!r}")
            object.__setattr__(self, "rho", rho)
        if isinstance(self.hidden, str) and self.hidden != "auto":
            raise InputError(f"hidden must be a positive width or 'auto', got {self.hidden!r}")
        if self.hidden is not None and self.hidden != "auto":
            hidden = (self.hidden,) if isinstance(self.hidden, (int, np.integer)) else self.hidden
            hidden = tuple(hidden)
            if isinstance(self.hidden, bool) or len(hidden) == 0:
                raise InputError(
                    f"hidden must be positive widths, one per hidden layer, got {self.hidden!r}"
                )
            object.__setattr__(self, "hidden", tuple(check_int(h, "hidden", 1) for h in hidden))
        if self.rho is not None and self.hidden is not None:
            raise InputError("give rho or hidden, not both")
        if self.activation is not None:
            get_activation(self.activation)
        if not isinstance(self.width_search, WidthSearchConfig):
            raise InputTypeError(f"width_search must be a WidthSearchConfig, got "
                                 f"{self.width_search!r}")
        if not isinstance(self.prune, bool):
            raise InputTypeError(f"prune must be a bool, got {self.prune!r}")
        for name in ("train", "finetune"):
            if not isinstance(getattr(self, name), TrainConfig):
                raise InputTypeError(f"{name} must be a TrainConfig, got {getattr(self, name)!r}")
        if not isinstance(self.pruning, PruneConfig):
            raise InputTypeError(f"pruning must be a PruneConfig, got {self.pruning!r}")
        if check_number(self.rmse_tol, "rmse_tol") <= 0:
            raise InputError(f"rmse_tol must be positive, got {self.rmse_tol!r}")
        if self.student_loss is not None:
            check_number(self.student_loss, "student_loss", positive=True)
        check_number(self.first_order_student_loss, "first_order_student_loss", positive=True)
        check_int(self.finetune_rounds, "finetune_rounds", 1)
        check_number(self.first_order_above, "first_order_above")
        if self.first_order_above < 0:
            raise InputError(f"first_order_above must be >= 0, got {self.first_order_above!r}")
        if self.max_minutes is not None:
            check_number(self.max_minutes, "max_minutes", positive=True)
        if not isinstance(self.early_stop, bool):
            raise InputTypeError(f"early_stop must be a bool, got {self.early_stop!r}")
        check_number(self.bias_std_max, "bias_std_max", positive=True)
        if self.deep_student_loss is not None:
            check_number(self.deep_student_loss, "deep_student_loss", positive=True)
        if self.deep_gamma is not None:
            check_in_range(self.deep_gamma, "deep_gamma", 0.0, 1.0)
        if self.deep_student_seconds is not None:
            check_number(self.deep_student_seconds, "deep_student_seconds", positive=True)

    @property
    def student_train(self) -> TrainConfig:
        """The students' training: ``train`` with ``student_loss`` as its target."""
        if self.student_loss is None or self.train.target_loss is not None:
            return self.train
        return dataclasses.replace(self.train, target_loss=float(self.student_loss))

    def students_train(self, d_in: int, width: int, d_out: int, n_samples: int
                       ) -> tuple[TrainConfig, str | None]:
        """The students' training for students ``d_in -> width -> d_out`` on ``n_samples``
        pairs: :attr:`student_train`, or, past ``first_order_above``, L-BFGS without the stall
        rule to ``first_order_student_loss``; the second value says so (None otherwise)."""
        train = self.student_train
        n_params = (d_in + 1) * width + (width + 1) * d_out
        size = float(n_params) * n_samples * d_out
        if size <= self.first_order_above or train.first_order_above is not None:
            return train, None
        train = dataclasses.replace(
            train, first_order_above=self.first_order_above, stall_factor=0.0
        )
        target = ""
        if (
            self.student_loss is not None
            and self.train.target_loss is None
            and self.first_order_student_loss > train.goal
        ):
            target = (f", to the student loss {self.first_order_student_loss:g} instead of "
                      f"{train.goal:g}")
            train = dataclasses.replace(train, target_loss=self.first_order_student_loss)
        note = (
            f"students of {n_params} parameters on {n_samples * d_out} residuals are trained "
            f"with L-BFGS (over first_order_above = {self.first_order_above:g}){target} and "
            "without the stall rule: their neurons align with the teacher's long before zero "
            "loss, and the fine-tune of the reconstruction gives the precision"
        )
        return train, note

    @property
    def quorum(self) -> int:
        """Distinct students a cluster needs to be big: ``ceil(gamma N)``."""
        return max(1, math.ceil(self.gamma * self.n_students - 1e-9))

    @property
    def cluster_config(self) -> ClusterConfig:
        return ClusterConfig(gamma=self.gamma, beta_deg=self.beta_deg)


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
        against, with the reason (:meth:`BlackBox.precision_report`).
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


def _finetune(eng, x, y, net: MLP, config: RecoverConfig, deadline, cut: list[str],
              what: str) -> MLP:
    """``net`` fine-tuned in rounds of ``config.finetune`` (``config.finetune_rounds``):
    another round only while the last one ran out of time, halved the RMSE at least, and left
    it above ``config.rmse_tol``. Returns the best network (``net`` if nothing improved)."""
    best = network_rmse(net, x, y)
    for _ in range(config.finetune_rounds):
        if deadline is not None and deadline - time.monotonic() <= 1.0:
            break
        tuned = eng.train(x, y, net, within_deadline(config.finetune, deadline, cut, what))
        if not tuned.rmse < best:
            break
        gain = best / max(tuned.rmse, np.finfo(np.float64).tiny)
        net, best = tuned.network, tuned.rmse
        if tuned.status is not TrainStatus.MAX_TIME or best <= config.rmse_tol or gain < 2.0:
            break
    return net


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
    deadline: float | None = None,
    n_planned: int | None = None,
) -> Recovery:
    """Clustering, reconstruction, fine-tuning, pruning and metrics from trained students.

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
    x_fresh : ndarray of shape (n_fresh, d_in), float64, optional
    y_fresh : ndarray of shape (n_fresh, d_out), float64, optional
        Held-out pairs for the reported RMSE.
    teacher : MLP, optional
        When known, the recovered neurons are matched to its hidden neurons.
    progress : callable, optional
        ``progress(phase, done, total)``.
    deadline : float, optional
        ``time.monotonic()`` value by which fine-tuning and pruning must end; what it cuts
        is listed in ``Recovery.cut``.
    n_planned : int, optional
        The ``N`` of ``gamma N`` when the students are a subset of those planned (an expansion
        stopped early); default ``len(students)``.

    Returns
    -------
    Recovery
    """
    t_start = time.monotonic()
    x, y = check_xy(x, y)
    if (x_fresh is None) != (y_fresh is None):
        raise InputError("fresh queries need both x_fresh and y_fresh")
    if x_fresh is not None:
        x_fresh, y_fresh = check_xy(x_fresh, y_fresh)
        if x_fresh.shape[1] != x.shape[1] or y_fresh.shape[1] != y.shape[1]:
            raise InputError(
                f"fresh pairs x {x_fresh.shape}, y {y_fresh.shape} do not match the training "
                f"pairs x {x.shape}, y {y.shape}"
            )
    students = list(students)
    if not students:
        raise InputError("need at least one student")
    nets = [s.network for s in students]
    for i, net in enumerate(nets):
        if len(net.layers) != 2:
            raise InputError(
                f"student {i} must have one hidden layer (issue 5), got sizes {net.sizes}"
            )
        if net.d_in != x.shape[1] or net.d_out != y.shape[1]:
            raise InputError(
                f"student {i} is {net.d_in} -> {net.d_out}, the pairs are "
                f"{x.shape[1]} -> {y.shape[1]}"
            )
    act = nets[0].layers[0].activation
    # Compared by name: students trained in worker processes hold unpickled copies.
    if any(n.layers[0].activation.name != act.name for n in nets):
        raise InputError("all students must share one hidden activation")
    if teacher is not None and (teacher.d_in != x.shape[1] or len(teacher.layers) != 2):
        raise InputError(
            f"teacher must be a one-hidden-layer network with d_in = {x.shape[1]}, got "
            f"sizes {teacher.sizes}"
        )
    eng = get_engine(engine)
    # A failed student (NaN loss) must never win a cluster.
    losses = tuple(float(s.loss) for s in students)
    rank_losses = [v if math.isfinite(v) else math.inf for v in losses]
    width = nets[0].layers[0].n_out
    phases: dict[str, float] = {}

    def tick(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    t = time.monotonic()
    tick("clustering", 0, 1)
    basis = metrics.revealed_basis(x)
    if basis is not None:
        # Weights along directions the queries never reveal (pixels that never vary) keep the
        # students' random initial values and change no output: drop them (minimum-norm
        # weights), and compare neurons by their pre-activations over the queries.
        nets = [basis.project_network(n) for n in nets]
    vectors, sid, nid = neuron_vectors(nets)
    if basis is not None:
        vectors = basis.coordinates(vectors)
    clustering = cluster_neurons(
        vectors, sid, act.symmetry, n_students=max(len(nets), n_planned or 0),
        config=config.cluster_config, revealed=basis is not None,
    )
    tick("clustering", 1, 1)
    phases["clustering"] = time.monotonic() - t
    kept = clustering.kept
    base = dict(
        student_losses=losses,
        student_width=width,
        activation=act.name,
        n_kept_clusters=len(kept),
        clustering=clustering,
    )
    if not kept:
        n_big = sum(c.big for c in clustering.clusters)
        return Recovery(
            network=None,
            hidden_sizes=(),
            rmse_train=None,
            rmse_fresh=None,
            neurons=(),
            max_cosine_distance=None,
            status=RecoverStatus.NO_CLUSTERS,
            reason=(
                f"{RecoverStatus.NO_CLUSTERS.message} ({n_big} big clusters, none with a "
                f"median angle <= {config.beta_deg}°; best student loss {min(rank_losses):.3g})"
            ),
            seconds=time.monotonic() - t_start,
            phase_seconds=phases,
            **base,
        )

    t = time.monotonic()
    collapsed = collapse_clusters(nets, rank_losses, clustering, sid, nid)
    net = choose_orientations(collapsed.network, x, y)
    phases["reconstruction"] = time.monotonic() - t
    by_label = {c.label: c for c in clustering.clusters}
    certs = [
        NeuronCertificate(
            neuron=k,
            cluster=lab,
            cluster_size=by_label[lab].size,
            n_students=len(by_label[lab].students),
            median_angle_deg=by_label[lab].median_angle_deg,
            max_angle_deg=by_label[lab].max_angle_deg,
            symmetry=act.symmetry.value,
            students=by_label[lab].students,
            source_student=src,
        )
        for k, (lab, src) in enumerate(zip(collapsed.cluster, collapsed.source_student))
    ]

    t = time.monotonic()
    tick("fine-tune", 0, 1)
    cut: list[str] = []
    net = _finetune(eng, x, y, net, config, deadline, cut, "fine-tune")
    tick("fine-tune", 1, 1)
    phases["fine-tune"] = time.monotonic() - t

    pruned: tuple[int, ...] = ()
    notes: list[str] = []
    if config.prune and len(certs) > 1:
        t = time.monotonic()
        order = support_order(certs)
        tick("pruning", 0, len(order))
        result = prune_network(
            net,
            x,
            y,
            engine=eng,
            train_config=config.finetune,
            order=order,
            config=config.pruning,
            deadline=deadline,
            on_try=lambda done, total: tick("pruning", done, total),
        )
        if result.tried < len(order) - 1 and len(result.kept) > 1:
            cut.append(
                f"pruning: {len(order) - 1 - result.tried} of {len(order) - 1} removals not "
                "tried (deadline)"
            )
        pruned = result.removed
        if pruned:
            net = result.network
            net = _finetune(eng, x, y, net, config, deadline, cut, "final fine-tune")
            notes.append(
                f"pruning removed {len(pruned)} of {len(certs)} neurons "
                f"({result.finetunes} fine-tunes)"
            )
        certs = [
            NeuronCertificate(**{**c.__dict__, "neuron": i})
            for i, c in enumerate(certs[k] for k in result.kept)
        ]
        phases["pruning"] = time.monotonic() - t

    t = time.monotonic()
    if basis is not None:
        net = basis.project_network(net)
        notes.append(
            f"the queries reveal {basis.rank} of the {x.shape[1] + 1} directions of a "
            "neuron's weights and bias (the inputs with a column of ones have a lower "
            "rank): weights along the others cannot be identified, so "
            "neurons were clustered, and are compared with the teacher's, on their "
            "pre-activations over the query inputs; the recovered weights are the revealed "
            "part (minimum norm)"
        )
    rmse_train = metrics.rmse(net, x, y)
    rmse_fresh = metrics.rmse(net, x_fresh, y_fresh) if x_fresh is not None else None
    if x_fresh is None:
        notes.append("no held-out queries: the RMSE is on the training queries only")
    max_cos, dists = None, ()
    if teacher is not None:
        match = metrics.match_neurons(net, teacher, basis)
        max_cos = match.max_distance
        per_teacher = np.full(teacher.layers[0].n_out, metrics.max_distance_of(
            teacher.layers[0].activation.symmetry))
        per_teacher[match.teacher] = match.distances
        dists = tuple(float(d) for d in per_teacher)
    phases["metrics"] = time.monotonic() - t

    judged = rmse_fresh if rmse_fresh is not None else rmse_train
    where = "fresh" if rmse_fresh is not None else "training"
    if judged <= config.rmse_tol:
        status = RecoverStatus.RECOVERED
        reason = f"{status.message} ({where} RMSE {judged:.3g} <= {config.rmse_tol:.3g})"
    else:
        status = RecoverStatus.INEXACT
        reason = (
            f"{status.message} ({where} RMSE {judged:.3g} > {config.rmse_tol:.3g}; best "
            f"student loss {min(rank_losses):.3g})"
        )
    return Recovery(
        network=net,
        hidden_sizes=net.hidden_sizes,
        rmse_train=rmse_train,
        rmse_fresh=rmse_fresh,
        neurons=tuple(certs),
        max_cosine_distance=max_cos,
        status=status,
        reason=reason,
        seconds=time.monotonic() - t_start,
        phase_seconds=phases,
        pruned=tuple(int(k) for k in pruned),
        teacher_distances=dists,
        notes=tuple(notes),
        cut=tuple(cut),
        **base,
    )


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
    """Recover a one-hidden-layer network from a teacher or from input-output pairs.

    Teacher path: ``teacher`` (an ecflow network or a :class:`~ecflow.blackbox.BlackBox`,
    e.g. an ONNX model) or ``query`` (any function from ``(n, d_in)`` arrays to
    ``(n, d_out)`` arrays, with ``d_in``) given, ``y`` not; it is queried at ``x`` when given,
    else at ``config.n_queries`` inputs ``teachers.sample_inputs(n_queries, d_in,
    config.seed)``, and at ``config.n_fresh`` fresh inputs for the reported RMSE; a float32
    model is judged against its rounding floor (:meth:`BlackBox.rmse_tolerance`). The student
    width is ``ceil(rho r)`` (a teacher whose width is known), ``hidden``, or found by the
    width search (``hidden="auto"``), which also finds the activation when neither
    ``config.activation`` nor the model names it.

    Data path: ``x`` and ``y`` given, no teacher; ``config.hidden`` is required (a width or
    ``"auto"``), nothing is held out.

    Parameters
    ----------
    teacher : MLP or BlackBox, optional
        One hidden layer (an MLP).
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
        width, no width, a deep teacher, a query function that answers badly.
    """
    t_start = time.monotonic()
    if not isinstance(config, RecoverConfig):
        raise InputTypeError(f"config must be a RecoverConfig, got {type(config).__name__}")
    notes: list[str] = []
    x_fresh = y_fresh = None
    precision: dict = {}
    deadline = None if config.max_minutes is None else t_start + 60.0 * config.max_minutes
    box = _black_box(teacher, query, d_in)
    if box is not None:
        if y is not None:
            raise InputError("give a teacher or pairs (x, y), not both")
        given = x is not None
        if x is None:
            x = teachers.sample_inputs(config.n_queries, box.d_in, config.seed)
        x, y = box.query(x)
        if config.n_fresh > 0 and given and metrics.revealed_basis(x) is not None:
            # Fresh inputs uniform in the cube would probe directions the given queries
            # (images) never reveal, where no recovery can match the teacher.
            notes.append(
                "the given query inputs do not span the input space: no fresh uniform "
                "queries, the RMSE is on the given inputs"
            )
        elif config.n_fresh > 0:
            x_fresh, y_fresh = box.query(teachers.sample_inputs(
                config.n_fresh, box.d_in, np.random.default_rng([config.seed, 1])
            ))
        precision = box.precision_report(y, config.rmse_tol)
        if precision["rmse_tol"] != config.rmse_tol:
            config = dataclasses.replace(config, rmse_tol=precision["rmse_tol"])
            notes.append(precision["precision_reason"])
        teacher = box.network
        deep_teacher = teacher is not None and len(teacher.layers) > 2
        if config.rho is not None:
            known = teacher.hidden_sizes if deep_teacher else (box.known_width(),)
            widths = tuple(student_width(r, config.rho) for r in known)
        elif config.hidden is None:
            raise InputError(
                "give rho (a multiple of the teacher's width) or hidden (a width, or 'auto')"
            )
        elif config.hidden != "auto":
            widths = config.hidden
        elif deep_teacher:
            raise InputError(
                f"the width search finds one hidden layer's width, the teacher has "
                f"{len(teacher.layers) - 1}: give rho, or hidden with one width per layer"
            )
        activation = config.activation or box.activation
    else:
        if x is None or y is None:
            raise InputError("give a teacher, or input-output pairs x and y")
        x, y = check_xy(x, y)
        if config.rho is not None:
            raise InputError("rho needs a teacher (its width); with pairs give hidden")
        if config.hidden is None:
            raise InputError("with pairs, give hidden (the student width, or 'auto')")
        if config.hidden != "auto":
            widths = config.hidden
        activation = config.activation

    search = None
    if config.hidden == "auto":
        t = time.monotonic()
        search = search_black_box(
            box, x, y, activation=config.activation, near_zero=config.student_loss,
            config=config.width_search,
            seed=config.seed, engine=engine, executor=executor, progress=progress,
            deadline=None if deadline is None else t + SEARCH_SHARE * (deadline - t),
        )
        t_search = time.monotonic() - t
        if not search.found:
            return _no_width(search, config=config, precision=precision, notes=notes,
                             t_start=t_start, t_search=t_search)
        widths, activation = (search.student_width,), search.activation
        notes.append(f"width search: {search.reason}")
    elif activation is None:
        activation = "g"
        notes.append("no activation given: students use g, the paper's default")

    if len(widths) > 1:
        rec = _recover_deep(
            x, y, widths=widths, activation=activation, config=config, engine=engine,
            executor=executor, progress=progress, deadline=deadline, work_dir=work_dir,
            x_fresh=x_fresh, y_fresh=y_fresh, teacher=teacher, notes=notes, t_start=t_start,
        )
        return dataclasses.replace(rec, precision=precision) if precision else rec
    if teacher is not None and len(teacher.layers) != 2:
        notes.append(
            f"the teacher has {len(teacher.layers) - 1} hidden layers, the students one: "
            "their neurons are not matched with the teacher's"
        )
        teacher = None
    width = widths[0]
    seeds = student_seeds(config.seed, config.n_students)
    _, first_order = config.students_train(x.shape[1], width, y.shape[1], x.shape[0])
    if first_order is not None:
        notes.append(first_order)
    t = time.monotonic()
    expansion = run_students(
        x, y, hidden=(width,), activation=activation, seeds=seeds, config=config,
        engine=engine, executor=executor, progress=progress, deadline=deadline,
        work_dir=work_dir, x_fresh=x_fresh, y_fresh=y_fresh, teacher=teacher,
    )
    t_students = time.monotonic() - t
    rec = _finish(
        x, y, expansion, config=config, engine=engine, x_fresh=x_fresh, y_fresh=y_fresh,
        teacher=teacher, progress=progress, deadline=deadline, notes=notes,
        t_start=t_start, t_students=t_students,
    )
    if search is None and not precision:
        return rec
    phases = dict(rec.phase_seconds)
    if search is not None:
        phases = {"width search": t_search, **phases}
    return dataclasses.replace(
        rec, width_search=search, precision=precision, phase_seconds=phases
    )


SEARCH_SHARE = 0.4
"""Share of ``max_minutes`` the width search may use; the students and what follows keep the
rest (a search that finishes sooner leaves more)."""


def _black_box(teacher, query, d_in) -> BlackBox | None:
    """The teacher as a black box: an MLP (one hidden layer) keeps its weights for the
    metrics; a query function is checked on a probe; None on the data path."""
    if query is not None:
        if teacher is not None:
            raise InputError("give a teacher or a query function, not both")
        if d_in is None:
            raise InputError("a query function needs d_in, the width of its inputs")
        return from_callable(query, d_in)
    if teacher is None or isinstance(teacher, BlackBox):
        return teacher
    if not isinstance(teacher, MLP):
        raise InputTypeError(
            f"teacher must be an MLP or a BlackBox, got {type(teacher).__name__}"
        )
    if len(teacher.layers) < 2:
        raise InputError(f"the teacher must have a hidden layer, got sizes {teacher.sizes}")
    return from_network(teacher)


def _no_width(search: WidthSearch, *, config, precision, notes, t_start, t_search) -> Recovery:
    """The recovery that stops after a width search that found no width."""
    return Recovery(
        network=None,
        hidden_sizes=(),
        rmse_train=None,
        rmse_fresh=None,
        student_losses=(),
        neurons=(),
        max_cosine_distance=None,
        status=RecoverStatus.NO_WIDTH,
        reason=f"{RecoverStatus.NO_WIDTH.message} ({search.reason})",
        seconds=time.monotonic() - t_start,
        phase_seconds={"width search": t_search},
        student_width=0,
        activation=search.activation or (config.activation or ""),
        notes=tuple(notes),
        width_search=search,
        precision=precision,
    )


def run_students(
    x: np.ndarray,
    y: np.ndarray,
    *,
    hidden: tuple[int, ...],
    activation: str,
    seeds: Sequence[int],
    config: RecoverConfig,
    engine: str = "native",
    executor: cf.Executor | None = None,
    progress: Progress | None = None,
    deadline: float | None = None,
    work_dir: str | os.PathLike | None = None,
    x_fresh: np.ndarray | None = None,
    y_fresh: np.ndarray | None = None,
    teacher: MLP | None = None,
) -> Expansion:
    """The expansion of a recovery: students trained to ``config.student_loss``, stopped once
    ``config.quorum`` of them reached it (``early_stop``), saved to and reused from
    ``work_dir``, all within the students' share of the deadline (``time.monotonic()``).

    Returns
    -------
    Expansion
    """
    train, _ = config.students_train(x.shape[1], hidden[0], y.shape[1], x.shape[0])
    store = None
    reuse: dict[int, TrainResult] = {}
    if work_dir is not None:
        store = WorkDir(work_dir)
        manifest = manifest_for(
            hidden=hidden, activation=activation, seeds=seeds, engine=engine, train=train,
            x=x, y=y,
        )
        store.start(manifest, x, y, x_fresh=x_fresh, y_fresh=y_fresh, teacher=teacher)
        reuse = store.finished_students(manifest)
    wall_deadline = None
    if deadline is not None:
        wall_deadline = time.time() + STUDENT_SHARE * (deadline - time.monotonic())
    enough = quorum_rule(config.quorum, "(gamma N) a cluster needs") if config.early_stop else None
    return expand(
        x, y, hidden=hidden, activation=activation, seeds=seeds, config=train, engine=engine,
        executor=executor, reuse=reuse, enough=enough,
        on_result=(lambda i, r: store.save_student(i, seeds[i], r)) if store else None,
        deadline=wall_deadline,
        progress=(lambda d, n: progress("students", d, n)) if progress is not None else None,
    )


def _finish(
    x, y, expansion: Expansion, *, config, engine, x_fresh, y_fresh, teacher, progress,
    deadline, notes, t_start, t_students,
) -> Recovery:
    """Reconstruction from the students of an expansion, with its bookkeeping in the report."""
    finished = [expansion.results[i] for i in expansion.finished]
    if not finished:
        raise InputError(
            "no student finished training (the deadline came first): give more --max-minutes"
        )
    status_counts: dict[str, int] = {}
    for r in expansion.results:
        if r is not None:
            status_counts[r.status.name] = status_counts.get(r.status.name, 0) + 1
    cut = []
    if expansion.stop_reason is None and expansion.n_skipped:
        cut.append(f"students: {expansion.n_skipped} not trained (deadline)")
    rec = reconstruct_from_students(
        x, y, finished, config=config, engine=engine, x_fresh=x_fresh, y_fresh=y_fresh,
        teacher=teacher, progress=progress, deadline=deadline, n_planned=config.n_students,
    )
    phases = {"students": t_students, **rec.phase_seconds}
    stopped = expansion.n_stopped
    if stopped or expansion.n_skipped:
        notes = [*notes, (
            f"{len(finished)} students clustered; {stopped} stopped while training and "
            f"{expansion.n_skipped} never started"
            + (f": {expansion.stop_reason}" if expansion.stop_reason else "")
        )]
    return Recovery(
        **{
            **rec.__dict__,
            "phase_seconds": phases,
            "seconds": time.monotonic() - t_start,
            "notes": tuple(notes) + rec.notes,
            "student_losses": tuple(float(r.loss) for r in finished),
            "students_trained": expansion.n_trained,
            "students_reused": expansion.n_reused,
            "students_stopped": stopped,
            "students_skipped": expansion.n_skipped,
            "stop_reason": expansion.stop_reason,
            "student_status": status_counts,
            "cut": tuple(cut) + rec.cut,
        }
    )


def _recover_deep(
    x, y, *, widths, activation, config: RecoverConfig, engine, executor, progress, deadline,
    work_dir, x_fresh, y_fresh, teacher, notes, t_start, train: bool = True,
) -> Recovery:
    """The layer-wise recovery of a deep network (:func:`ecflow.layerwise.recover_layers`),
    measured and reported as a :class:`Recovery` with one :class:`LayerReport` per layer."""
    student_train = config.student_train
    if config.deep_student_loss is not None and config.train.target_loss is None:
        student_train = dataclasses.replace(
            config.train, target_loss=float(config.deep_student_loss)
        )
    # deep students advance in bursts after plateaus: only the time left judges them
    student_train = dataclasses.replace(student_train, creep_factor=0.0)
    if config.train.max_seconds is None and config.deep_student_seconds is not None:
        student_train = dataclasses.replace(
            student_train, max_seconds=float(config.deep_student_seconds)
        )
    cluster = config.cluster_config
    if config.deep_gamma is not None:
        cluster = ClusterConfig(gamma=config.deep_gamma, beta_deg=config.beta_deg)
    layered = LayerwiseConfig(
        n_students=config.n_students, cluster=cluster, train=student_train,
        stop_after=config.quorum,
        finetune=config.finetune, pruning=config.pruning, prune=config.prune,
        early_stop=config.early_stop, bias_std_max=config.bias_std_max,
    )
    res = recover_layers(
        x, y, widths=widths, activation=activation,
        seeds=student_seeds(config.seed, config.n_students), config=layered, engine=engine,
        executor=executor, progress=progress, deadline=deadline, work_dir=work_dir, train=train,
        x_fresh=x_fresh, y_fresh=y_fresh, teacher=teacher,
    )
    reports = list(res.layers)
    first = reports[0]
    status_counts: dict[str, int] = {}
    base = dict(
        student_losses=first.student_losses,
        student_width=int(widths[0]),
        activation=activation,
        n_kept_clusters=sum(r.n_kept_clusters for r in reports),
        notes=tuple(notes) + res.notes,
        students_trained=sum(r.students_trained for r in reports),
        students_reused=sum(r.students_reused for r in reports),
        students_stopped=sum(r.students_stopped for r in reports),
        students_skipped=sum(r.students_skipped for r in reports),
        stop_reason=first.stop_reason,
        student_status=status_counts,
        cut=res.cut,
        clustering=first.clustering,
        phase_seconds=dict(res.phase_seconds),
    )
    if res.network is None:
        return Recovery(
            network=None, hidden_sizes=(), rmse_train=None, rmse_fresh=None, neurons=(),
            max_cosine_distance=None, status=RecoverStatus.NO_CLUSTERS,
            reason=(
                f"{RecoverStatus.NO_CLUSTERS.message} (layer {res.failed_layer}; best student "
                f"loss {min(reports[-1].student_losses):.3g})"
            ),
            seconds=time.monotonic() - t_start, layers=tuple(reports), **base,
        )
    net = res.network
    t = time.monotonic()
    rmse_train = metrics.rmse(net, x, y)
    rmse_fresh = metrics.rmse(net, x_fresh, y_fresh) if x_fresh is not None else None
    if x_fresh is None:
        base["notes"] += ("no held-out queries: the RMSE is on the training queries only",)
    max_cos, dists = None, ()
    if teacher is not None and len(teacher.layers) == len(net.layers):
        matches = match_layers(net, teacher)
        all_dists = []
        for i, match in enumerate(matches):
            sym = teacher.layers[i].activation.symmetry
            per_teacher = np.full(teacher.layers[i].n_out, metrics.max_distance_of(sym))
            per_teacher[match.teacher] = match.distances
            reports[i] = dataclasses.replace(
                reports[i], teacher_distances=tuple(float(d) for d in per_teacher),
                max_cosine_distance=match.max_distance,
            )
            all_dists.extend(float(d) for d in per_teacher)
        max_cos, dists = max(m.max_distance for m in matches), tuple(all_dists)
    base["phase_seconds"]["metrics"] = time.monotonic() - t
    judged = rmse_fresh if rmse_fresh is not None else rmse_train
    where = "fresh" if rmse_fresh is not None else "training"
    sizes = ", ".join(str(r.size) for r in reports)
    if judged <= config.rmse_tol:
        status = RecoverStatus.RECOVERED
        reason = (f"{status.message} (sizes {sizes}, {where} RMSE {judged:.3g} <= "
                  f"{config.rmse_tol:.3g})")
    else:
        status = RecoverStatus.INEXACT
        reason = (
            f"{status.message} (sizes {sizes}, {where} RMSE {judged:.3g} > "
            f"{config.rmse_tol:.3g}; best first-layer student loss "
            f"{min(first.student_losses):.3g})"
        )
    return Recovery(
        network=net,
        hidden_sizes=net.hidden_sizes,
        rmse_train=rmse_train,
        rmse_fresh=rmse_fresh,
        neurons=tuple(c for r in reports for c in r.neurons),
        max_cosine_distance=max_cos,
        status=status,
        reason=reason,
        seconds=time.monotonic() - t_start,
        pruned=(),
        teacher_distances=dists,
        layers=tuple(reports),
        **base,
    )


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
    N is the number of students the recovery planned.

    Raises
    ------
    InputError
        Not a work folder, no saved student, or a corrupt or foreign student file.
    """
    t_start = time.monotonic()
    if is_deep_work_dir(work_dir):
        # A deep recovery: one work folder per layer (ecflow.layerwise); the students of each
        # layer are reused when they were retrained on the layers reconstructed now.
        store = WorkDir(layer_dir(work_dir, 1))
        manifest = store.read_manifest()
        x, y = store.read_queries()
        x_fresh, y_fresh = store.read_fresh()
        config = dataclasses.replace(config, n_students=len(manifest.seeds))
        deadline = None if config.max_minutes is None else t_start + 60.0 * config.max_minutes
        return _recover_deep(
            x, y, widths=manifest.hidden, activation=manifest.activation, config=config,
            engine=engine, executor=None, progress=progress, deadline=deadline,
            work_dir=work_dir, x_fresh=x_fresh, y_fresh=y_fresh, teacher=store.read_teacher(),
            notes=[], t_start=t_start, train=False,
        )
    store = WorkDir(work_dir)
    manifest = store.read_manifest()
    x, y = store.read_queries()
    x_fresh, y_fresh = store.read_fresh()
    teacher = store.read_teacher()
    students = store.finished_students(manifest)
    if not students:
        raise InputError(f"{store.path}: no saved student to cluster")
    config = dataclasses.replace(config, n_students=len(manifest.seeds))
    results = tuple(students.get(i) for i in range(len(manifest.seeds)))
    expansion = Expansion(results, tuple(r is not None for r in results), None, 0.0)
    deadline = None if config.max_minutes is None else t_start + 60.0 * config.max_minutes
    return _finish(
        x, y, expansion, config=config, engine=engine, x_fresh=x_fresh, y_fresh=y_fresh,
        teacher=teacher, progress=progress, deadline=deadline, notes=[], t_start=t_start,
        t_students=0.0,
    )
