"""The settings of a recovery: :class:`RecoverConfig`, with the paper's defaults, and the stage
and finish settings it gives each depth (:meth:`RecoverConfig.stage_config`,
:meth:`RecoverConfig.finish_config`).

A network with one hidden layer and a deep one run the same stages (:mod:`ecflow.stage`) and the
same finish (:mod:`ecflow.finish`); what differs for a deep network is a handful of measured
overrides (:class:`DeepConfig`, the optional part of a :class:`RecoverConfig`), applied here
and nowhere else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from ecflow._checks import check_in_range, check_int, check_number
from ecflow.activations import get_activation
from ecflow.clustering import ClusterConfig
from ecflow.engines.base import NEAR_ZERO_LOSS, TrainConfig
from ecflow.errors import InputError, InputTypeError
from ecflow.finish import FinishConfig
from ecflow.oracle import OracleConfig
from ecflow.reconstruction import PruneConfig, default_finetune
from ecflow.stage import Source, StageConfig
from ecflow.width_search import WidthSearchConfig

__all__ = ["RecoverConfig", "DeepConfig", "DEEP_PRUNE_MAX_RMSE", "check_width_choice"]

DEEP_PRUNE_MAX_RMSE = 1e-6
"""A deep network is pruned only when its fine-tuned RMSE is at most this fraction of
``std(y)`` (:attr:`ecflow.finish.FinishConfig.prune_max_rmse`)."""


_WIDTH_RULE = {
    False: dict(
        rho_alone="rho needs a teacher (its width); with pairs give hidden",
        both="give rho or hidden, not both",
    ),
    True: dict(
        rho_alone="--rho needs --teacher (it multiplies the teacher's width); give --hidden",
        both="give --rho or --hidden, not both",
    ),
}
"""The width rule's messages, in the library's words and in the command line's flags."""


def check_width_choice(rho, hidden, *, teacher: bool | None, flags: bool = False) -> None:
    """The one rule of where the student widths come from: ``rho``, a multiple of the
    teacher's widths (so it needs a teacher), or ``hidden``, at most one of them; neither
    means the width search (``hidden="auto"``), since a black box's width is what a user
    usually does not know.

    Parameters
    ----------
    rho, hidden
        As :class:`RecoverConfig`; None when not given.
    teacher : bool or None
        Whether a teacher is given; None when not known yet (a :class:`RecoverConfig` alone):
        then only "not both" is checked.
    flags : bool, default=False
        Name the command line's flags (``--rho``) in the message, for the CLI, which checks
        the rule before it reads any file.

    Raises
    ------
    InputError
    """
    words = _WIDTH_RULE[bool(flags)]
    if teacher is False and rho is not None:
        raise InputError(words["rho_alone"])
    if rho is not None and hidden is not None:
        raise InputError(words["both"])


@dataclass(frozen=True)
class DeepConfig:
    """The overrides of a deep network's stages (two hidden layers or more), each measured.

    Parameters
    ----------
    student_loss : float or None, default=1e-10
        The ``student_loss`` of every stage's students. Measured on g 8-4-2-1
        teachers at rho 4: deep students reach MSE 1e-8 in 10 to 200 s and 1e-14 rarely within
        their budget; at 1e-8 most first-layer neurons are within cosine distance 1e-8 of the
        teacher's, but a weak teacher neuron was pinned by only 3 of 8 students (the others
        held it ~5 degrees off), too few for a big cluster, and that recovery failed; at 1e-10
        4 of 7 pinned it (see ``gamma``). The fine-tune of the assembled network supplies
        the machine precision. None: :attr:`RecoverConfig.student_loss`. Deep students are
        not judged by the creep part of the stall rule (``TrainConfig.creep_factor`` 0).
    gamma : float or None, default=0.3
        The ``gamma`` of every layer's clustering (a stage still waits for
        ``ceil(gamma N)`` students at the student loss before it stops the others). Measured on
        that g 8-4-2-1 teacher with 7 students at MSE 1e-10: gamma 0.5 kept 2 of the teacher's
        4 first-layer neurons, 0.4 kept 3, 0.3 all 4 (within cosine distance 4e-10). The
        spurious clusters a low gamma lets in are dropped by the next stage's bias rule or by
        pruning. The paper used 0.4 and 1/3 for its deep synthetic teachers (A.6.4). None:
        :attr:`RecoverConfig.gamma`.
    student_seconds : float or None, default=120
        Each student's wall-clock budget when ``train`` sets none (shallow
        students get the engine's 300 s). Measured on g 8-4-2-1 teachers (16-8 students,
        standardised start): the students that reached MSE 1e-10 did so within 4-100 s, while
        others crept for 230-250 s to 1e-9 and 1e-8, holding a stage of 10 students on 2
        workers for over 10 minutes; clustering uses the students cut at the budget too.
        None: the engine's budget.
    bias_std_max : float, default=0.01
        A reconstructed neuron whose learned bias varies across the students
        retrained on it by more than this (standard deviation) is dropped (the paper's rule,
        appendix A.3, with its 0.1 tightened: at Float64 a tighter one serves better: measured
        on g 8-4-2-1 and tanh 6-6-4-1 teachers (students at MSE 1e-10), the teacher's neurons
        had spreads <= 1.7e-5 and the spurious ones 0.039 to 0.96, so 0.1 let two spurious
        neurons through to pruning, while 0.01 drops every one of them with a margin of 500 on
        the teacher's side; with students at 1e-8 the teacher's spreads were up to 2e-4, still
        50 below; :mod:`ecflow.stage`).
    """

    student_loss: float | None = 1e-10
    gamma: float | None = 0.3
    student_seconds: float | None = 120.0
    bias_std_max: float = 0.01

    def __post_init__(self):
        if self.student_loss is not None:
            check_number(self.student_loss, "student_loss", positive=True)
        if self.gamma is not None:
            check_in_range(self.gamma, "gamma", 0.0, 1.0)
        if self.student_seconds is not None:
            check_number(self.student_seconds, "student_seconds", positive=True)
        check_number(self.bias_std_max, "bias_std_max", positive=True)


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
    cluster_counts : {"students", "neurons"}, default="students"
        What a cluster's size counts against ``gamma N``
        (:attr:`ecflow.clustering.ClusterConfig.counts`): distinct students, or neurons as
        the paper does.
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
        ``activation`` nor the teacher names one. Exclusive with ``rho``; with neither given,
        the width search runs.
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
    deep : DeepConfig
        The measured overrides of a deep network's stages (two hidden layers or more); a
        network with one hidden layer ignores them.
    oracle : OracleConfig
        What the black box answers (logits or probabilities, rounding, noise) and how many
        queries it may take (:mod:`ecflow.oracle`).
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
    deep: DeepConfig = field(default_factory=DeepConfig)
    oracle: OracleConfig = field(default_factory=OracleConfig)
    cluster_counts: str = "students"

    def __post_init__(self):
        check_int(self.n_students, "n_students", 1)
        check_int(self.n_queries, "n_queries", 1)
        check_int(self.n_fresh, "n_fresh", 0)
        check_int(self.seed, "seed", 0)
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
        check_width_choice(self.rho, self.hidden, teacher=None)
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
        if not isinstance(self.deep, DeepConfig):
            raise InputTypeError(f"deep must be a DeepConfig, got {self.deep!r}")
        if not isinstance(self.oracle, OracleConfig):
            raise InputTypeError(f"oracle must be an OracleConfig, got {self.oracle!r}")
        # built once: every stage of a shallow recovery reads it
        object.__setattr__(
            self, "_cluster", ClusterConfig(self.gamma, self.beta_deg, self.cluster_counts)
        )

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
        """Distinct students a cluster needs to be big: ``ceil(gamma N)``
        (:attr:`ecflow.stage.StageConfig.quorum`)."""
        return StageConfig(n_students=self.n_students, cluster=self.cluster_config).quorum

    @property
    def cluster_config(self) -> ClusterConfig:
        """``gamma`` and ``beta_deg`` as the clustering's settings (validated once)."""
        return self._cluster

    def stage_config(self, queries, widths: tuple[int, ...]) -> tuple[StageConfig, str | None]:
        """The settings of every stage of a recovery with student widths ``widths`` on
        ``queries``, and a note when the students train with L-BFGS (:meth:`students_train`).

        A deep network's students train to ``deep.student_loss``, for at most
        ``deep.student_seconds``, without the creep part of the stall rule (deep students
        advance in bursts after plateaus: only the time left judges them); its layers are
        clustered with ``deep.gamma``, a stage waits for :attr:`quorum` students, and each
        neuron is taken from its cluster's medoid.
        """
        if len(widths) == 1:
            train, note = self.students_train(queries.d_in, widths[0], queries.d_out,
                                              queries.n_samples)
            return StageConfig(
                n_students=self.n_students, cluster=self.cluster_config, train=train,
                early_stop=self.early_stop, zero_loss_quorum=True,
            ), note
        deep, train = self.deep, self.student_train
        if deep.student_loss is not None and self.train.target_loss is None:
            train = dataclasses.replace(self.train, target_loss=float(deep.student_loss))
        train = dataclasses.replace(train, creep_factor=0.0)
        if self.train.max_seconds is None and deep.student_seconds is not None:
            train = dataclasses.replace(train, max_seconds=float(deep.student_seconds))
        gamma = self.gamma if deep.gamma is None else deep.gamma
        return StageConfig(
            n_students=self.n_students,
            cluster=ClusterConfig(gamma, self.beta_deg, self.cluster_counts),
            train=train, early_stop=self.early_stop, stop_after=self.quorum,
            bias_std_max=deep.bias_std_max, source=Source.MEDOID,
        ), None

    def finish_config(self, deep: bool) -> FinishConfig:
        """The settings of the finish; a deep network is pruned only near exact
        (:data:`DEEP_PRUNE_MAX_RMSE`)."""
        return FinishConfig(
            # the layer-wise recovery was measured with one round of fine-tuning
            finetune=self.finetune, finetune_rounds=1 if deep else self.finetune_rounds,
            rmse_tol=self.rmse_tol, prune=self.prune, pruning=self.pruning,
            prune_max_rmse=DEEP_PRUNE_MAX_RMSE if deep else None,
        )
