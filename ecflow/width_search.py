"""Expansion phase, step 1: find the student width of an unknown teacher (paper section 5,
figure A.2B).

A teacher of hidden width ``r`` is fitted to near-zero loss only by students of width at least
``r``, and in practice only by mildly wider ones (a student of width ``r`` rarely escapes its
local minima, Fig. A.2A). So short students of growing width ``m`` are trained on the teacher's
queries and the smallest ``m`` at which the best of a few of them reaches near-zero loss
(MSE <= :data:`~ecflow.engines.base.NEAR_ZERO_LOSS`, or a float32 model's floor) is found:

* doubling ``m = 1, 2, 4, ...`` up to ``max_width`` until a width reaches near-zero loss;
* if none does, a second chance with new seeds at the width of the lowest loss and at 1.5
  times it;
* then bisection between the last failing and the first succeeding width, assuming that
  success is monotone in ``m`` over that interval.

The Expand-and-Cluster students then get ``ceil(multiple * m)`` neurons: ``m`` itself is where
short students *just* succeed, and the E&C students need most of them to succeed.

The depth of a black box may be unknown as well (``depth="auto"``). A network with too few
hidden layers cannot reach near-zero loss at any moderate width: it approximates the teacher,
it does not represent it. So the width search runs at depth 1, 2, ... (every hidden layer of a
short student of width ``m`` has ``m`` neurons) and the smallest depth at which some width
reaches near-zero loss is kept, with that width; the E&C students get ``ceil(multiple * m)``
neurons in every layer.

The activation of a black box is unknown too, and students with the wrong activation do not
reach near-zero loss at any width (they approximate, they do not represent). So every candidate
activation is trained at each doubling width, and the one that reaches near-zero loss at the
smallest width, then at the lowest loss, is kept; the others are ranked by the best loss they
reached.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import enum
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ecflow._checks import check_int, check_number
from ecflow.activations import ACTIVATIONS, get_activation
from ecflow.budget import Budget
from ecflow.context import Progress
from ecflow.engines.base import NEAR_ZERO_LOSS, TrainConfig, TrainResult
from ecflow.errors import InputError
from ecflow.expansion import train_student
from ecflow.networks import check_xy

__all__ = [
    "WidthSearchConfig",
    "WidthStatus",
    "WidthTrial",
    "ActivationRank",
    "WidthSearch",
    "search_width",
    "search_depth",
    "search_black_box",
    "doubling_widths",
]


PHASE = "width search"


def _short_training() -> TrainConfig:
    # Students stop at near-zero loss (search_width sets target_loss) or when the engine's stall
    # rule finds them hopeless, within 1-12 s at 4000 queries for most of them. The stall rule
    # weighs the time left: measured on g d_in 8 r 4, a student given 20 s was given up at
    # 5.6 s, the same one given 60 s reached 6e-15 at 12 s.
    return TrainConfig(max_seconds=60.0)


@dataclass(frozen=True)
class WidthSearchConfig:
    """Settings of the width search.

    Parameters
    ----------
    n_seeds : int, default=3
        Short students per width and activation; a width succeeds when the best one does.
    max_width : int, default=64
        Largest width tried.
    multiple : float, default=2.0
        The E&C width is ``ceil(multiple * found)``. At the found width about one short student
        in three succeeds; at twice that (about ``4 r`` on the paper's teachers, the paper's
        ``ρ = 4``) most do.
    n_queries : int or None, default=4000
        Queries the short students train on (the first ones given); None: all. Their few
        hundred parameters are determined many times over by 4000 queries.
    bisect : bool, default=True
        Bisect between the last failing and the first succeeding doubling width.
    train : TrainConfig, default=TrainConfig(max_seconds=60.0)
        Training of each short student; without a ``target_loss`` of its own it stops at the
        near-zero threshold of the search.
    depth : int or "auto", default=1
        Hidden layers of the short students (each of the searched width); ``"auto"`` searches
        the depths ``1, ..., max_depth`` and keeps the smallest that reaches near-zero loss.
    max_depth : int, default=3
        Deepest network ``depth="auto"`` tries.
    """

    n_seeds: int = 3
    max_width: int = 64
    multiple: float = 2.0
    n_queries: int | None = 4000
    bisect: bool = True
    train: TrainConfig = field(default_factory=_short_training)
    depth: int | str = 1
    max_depth: int = 3

    def __post_init__(self):
        check_int(self.n_seeds, "n_seeds")
        check_int(self.max_width, "max_width")
        if check_number(self.multiple, "multiple") < 1.0:
            raise InputError(f"multiple must be at least 1, got {self.multiple!r}")
        if self.n_queries is not None:
            check_int(self.n_queries, "n_queries")
        if not isinstance(self.bisect, bool):
            raise InputError(f"bisect must be a bool, got {self.bisect!r}")
        if not isinstance(self.train, TrainConfig):
            raise InputError(f"train must be a TrainConfig, got {self.train!r}")
        check_int(self.max_depth, "max_depth")
        if self.depth != "auto":
            if isinstance(self.depth, str):
                raise InputError(f"depth must be a positive integer or 'auto', got {self.depth!r}")
            check_int(self.depth, "depth")


class WidthStatus(enum.Enum):
    """Outcome of a width search; ``message`` says what to do about it."""

    FOUND = "found the smallest width at which short students reach near-zero loss"
    NOT_FOUND = (
        "no width up to max_width reached near-zero loss: give --activation if it is known, "
        "train the short students longer, or raise the largest width (or depth)"
    )
    DEADLINE = "the time budget ran out before a width reached near-zero loss: raise --max-minutes"

    @property
    def message(self) -> str:
        return self.value


@dataclass(frozen=True)
class WidthTrial:
    """Short students of one width and activation.

    Attributes
    ----------
    activation : str
    width : int
    losses : tuple of float
        Final MSE of each student (NaN for a failed one).
    seconds : float
        Wall-clock time of this width's training (all activations of the round share it).
    depth : int, default=1
        Hidden layers of the short students, each ``width`` wide.
    """

    activation: str
    width: int
    losses: tuple[float, ...]
    seconds: float
    depth: int = 1

    @property
    def best_loss(self) -> float:
        finite = [v for v in self.losses if math.isfinite(v)]
        return min(finite) if finite else math.inf

    def reached(self, threshold: float) -> bool:
        return self.best_loss <= threshold

    def to_dict(self) -> dict:
        return {
            "activation": self.activation,
            "depth": self.depth,
            "width": self.width,
            "losses": [v if math.isfinite(v) else None for v in self.losses],
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "seconds": self.seconds,
        }


@dataclass(frozen=True)
class ActivationRank:
    """How well one candidate activation did: the smallest width that reached near-zero loss
    (None if none did) and the lowest loss at any width."""

    activation: str
    width: int | None
    best_loss: float
    best_width: int

    def to_dict(self) -> dict:
        return {
            "activation": self.activation,
            "width": self.width,
            "best_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_width": self.best_width,
        }


@dataclass(frozen=True)
class WidthSearch:
    """Outcome of :func:`search_width`.

    Attributes
    ----------
    width : int or None
        Smallest width at which a short student reached near-zero loss.
    student_width : int or None
        Width for the Expand-and-Cluster students, ``ceil(multiple * width)``.
    activation : str or None
        Chosen activation (the best-ranked candidate; None without any candidate trained).
    ranking : tuple of ActivationRank
        Candidates, best first.
    trials : tuple of WidthTrial
        Every width and activation tried, in order: the loss-versus-width curve (Fig. A.2B).
    threshold : float
        MSE counted as near-zero loss.
    status : WidthStatus
    reason : str
        ``status.message`` with the numbers behind it and why the activation was chosen.
    seconds : float
    depth : int or None, default=1
        Hidden layers of the network found (None: a depth search that found none).
    depth_reasons : tuple of str
        A depth search: why each depth tried below the one found (or every depth, when none was
        found) did not reach near-zero loss; ``()`` otherwise.
    depth_auto : bool, default=False
        Whether the depth was searched (:func:`search_depth`) rather than given.
    """

    width: int | None
    student_width: int | None
    activation: str | None
    ranking: tuple[ActivationRank, ...]
    trials: tuple[WidthTrial, ...]
    threshold: float
    status: WidthStatus
    reason: str
    seconds: float
    depth: int | None = 1
    depth_reasons: tuple[str, ...] = ()
    depth_auto: bool = False

    @property
    def found(self) -> bool:
        return self.status is WidthStatus.FOUND

    @property
    def student_widths(self) -> tuple[int, ...] | None:
        """Widths of the E&C students, one per hidden layer; None when nothing was found."""
        if self.student_width is None or self.depth is None:
            return None
        return (self.student_width,) * self.depth

    @property
    def depths(self) -> tuple[int, ...]:
        """The depths tried, increasing."""
        return tuple(sorted({t.depth for t in self.trials}))

    def depth_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """Depths tried (increasing) and the best loss any short student reached at each, over
        every width and activation: the loss against depth.

        Returns
        -------
        depths : ndarray of shape (n_depths,), int
        best_losses : ndarray of shape (n_depths,), float64
        """
        depths = self.depths
        best = [min((t.best_loss for t in self.trials if t.depth == d), default=math.inf)
                for d in depths]
        return np.array(depths, dtype=int), np.array(best, dtype=np.float64)

    def curve(self, activation: str, depth: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Widths (increasing) and best loss at each, for one activation and depth.

        Parameters
        ----------
        activation : str
        depth : int, optional
            Default: the depth found, else the deepest tried.

        Returns
        -------
        widths : ndarray of shape (n_widths,), int
        best_losses : ndarray of shape (n_widths,), float64
        """
        if depth is None:
            depth = self.depth if self.depth is not None else max(self.depths, default=1)
        pts = sorted((t.width, t.best_loss) for t in self.trials
                     if t.activation == activation and t.depth == depth)
        return (np.array([w for w, _ in pts], dtype=int),
                np.array([v for _, v in pts], dtype=np.float64))

    def to_report(self) -> dict:
        """JSON-serialisable summary, for the recovery report."""
        return {
            "status": self.status.name,
            "reason": self.reason,
            "width": self.width,
            "student_width": self.student_width,
            "depth": self.depth,
            "student_widths": list(self.student_widths) if self.student_widths else None,
            "depth_auto": self.depth_auto,
            "depths_tried": list(self.depths),
            "depth_reasons": list(self.depth_reasons),
            "activation": self.activation,
            "threshold": self.threshold,
            "ranking": [r.to_dict() for r in self.ranking],
            "trials": [t.to_dict() for t in self.trials],
            "seconds": self.seconds,
        }


def doubling_widths(max_width: int) -> list[int]:
    """``1, 2, 4, ...`` up to ``max_width``, ending with ``max_width`` itself."""
    max_width = check_int(max_width, "max_width")
    widths = [1]
    while widths[-1] * 2 < max_width:
        widths.append(widths[-1] * 2)
    if widths[-1] != max_width:
        widths.append(max_width)
    return widths


def _seeds(seed: int, width: int, n: int, attempt: int = 0, depth: int = 1) -> list[int]:
    # A stream of its own per width, attempt and depth, apart from the E&C students'
    # (SeedSequence([seed, 2])); depth 1 keeps the key it always had.
    key = [int(seed), 3, int(width)] + ([int(attempt)] if attempt or depth > 1 else [])
    key += [int(depth)] if depth > 1 else []
    return [int(s) for s in np.random.SeedSequence(key).generate_state(n)]


def _merge(trials: list[WidthTrial], new: WidthTrial) -> list[WidthTrial]:
    """``trials`` with ``new`` added to the trial of the same activation and width, if any."""
    for i, t in enumerate(trials):
        if t.activation == new.activation and t.width == new.width and t.depth == new.depth:
            merged = WidthTrial(t.activation, t.width, t.losses + new.losses,
                                t.seconds + new.seconds, t.depth)
            return trials[:i] + [merged] + trials[i + 1:]
    return trials + [new]


def _round_config(budget: Budget, train: TrainConfig) -> TrainConfig | None:
    """A round's training fitted to the budget; None when less than a second is left."""
    return None if budget.expired(1.0) else budget.fit(train)


def _train_round(
    x: np.ndarray,
    y: np.ndarray,
    width: int,
    activations: Sequence[str],
    *,
    seed: int,
    config: WidthSearchConfig,
    train: TrainConfig,
    engine: str,
    executor: cf.Executor | None,
    progress: Progress | None,
    counter: list[int],
    attempt: int = 0,
    depth: int = 1,
) -> list[WidthTrial]:
    """Train ``n_seeds`` students of ``depth`` layers of ``width`` per activation, in parallel
    when possible."""
    t = time.monotonic()
    jobs = [(a, s) for a in activations
            for s in _seeds(seed, width, config.n_seeds, attempt, depth)]
    kwargs = dict(hidden=(width,) * depth, config=train, engine=engine)

    results: list[TrainResult | None] = [None] * len(jobs)

    def tick():
        counter[0] += 1
        if progress is not None:
            remaining = sum(r is None for r in results)
            progress(PHASE, counter[0], counter[0] + remaining)

    if executor is None:
        for i, (a, s) in enumerate(jobs):
            results[i] = train_student(x, y, activation=a, seed=s, **kwargs)
            tick()
    else:
        futures = {executor.submit(train_student, x, y, activation=a, seed=s, **kwargs): i
                   for i, (a, s) in enumerate(jobs)}
        try:
            for fut in cf.as_completed(futures):
                results[futures[fut]] = fut.result()
                tick()
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    seconds = time.monotonic() - t
    return [
        WidthTrial(a, width, tuple(float(r.loss) for r, (b, _) in zip(results, jobs) if b == a),
                   seconds, depth)
        for a in activations
    ]


def _rank(trials: Sequence[WidthTrial], activations: Sequence[str], threshold: float):
    ranks = []
    for a in activations:
        mine = [t for t in trials if t.activation == a]
        if not mine:
            continue
        ok = [t.width for t in mine if t.reached(threshold)]
        best = min(mine, key=lambda t: (t.best_loss, t.width))
        ranks.append(ActivationRank(a, min(ok) if ok else None, best.best_loss, best.width))
    return tuple(sorted(
        ranks, key=lambda r: (r.width is None, r.width or 0, r.best_loss, r.activation)
    ))


def _explain(ranking: Sequence[ActivationRank], n_candidates: int) -> str:
    top = ranking[0]
    if n_candidates == 1:
        return f"activation {top.activation} (given)"
    others = list(ranking[1:])
    if top.width is None:
        why = "no candidate reached near-zero loss; it reached the lowest loss"
    elif not others or others[0].width is None:
        why = "the only candidate that reached near-zero loss"
    else:
        why = "reached near-zero loss at the smallest width, then the lowest loss"
    runner = (f"; next {others[0].activation}: best MSE {others[0].best_loss:.2g} at width "
              f"{others[0].best_width}" if others else "")
    if others and top.width is not None and others[0].width == top.width:
        # tanh(z) = 2 sigmoid(2z) - 1: some pairs represent the same networks neuron by neuron.
        runner += (f"; {others[0].activation} reached near-zero loss at the same width: both "
                   "represent the teacher, the lower loss decided")
    return f"activation {top.activation} chosen of {n_candidates} candidates: {why}{runner}"


def search_width(
    x: np.ndarray,
    y: np.ndarray,
    *,
    activations: Sequence[str] | str | None = None,
    config: WidthSearchConfig | None = None,
    threshold: float = NEAR_ZERO_LOSS,
    seed: int = 0,
    engine: str = "native",
    executor: cf.Executor | None = None,
    budget: Budget | None = None,
    progress: Progress | None = None,
    depth: int | None = None,
) -> WidthSearch:
    """Find the smallest student width, and the activation, at which short students of a teacher
    reach near-zero loss (paper section 5, step 1; Fig. A.2B).

    Parameters
    ----------
    x : ndarray of shape (n_samples, d_in), float64
        Teacher queries; the first ``config.n_queries`` are used.
    y : ndarray of shape (n_samples, d_out), float64
    activations : str or sequence of str, optional
        Candidate hidden activations; default every activation of the spec.
    config : WidthSearchConfig, optional
    threshold : float, default=NEAR_ZERO_LOSS
        MSE that counts as near-zero (a float32 teacher: ``BlackBox.near_zero_loss``).
    seed : int, default=0
        Seeds the short students.
    engine : str, default="native"
    executor : concurrent.futures.Executor, optional
        Trains the students of a round in parallel.
    budget : Budget, optional
        No round starts with less than a second left; each student's time limit is fitted
        to what is left.
    progress : callable, optional
        ``progress("width search", done, total)``.
    depth : int, optional
        Hidden layers of the short students; default ``config.depth`` (``"auto"`` there:
        :func:`search_depth`).

    Returns
    -------
    WidthSearch
    """
    t_start = time.monotonic()
    config = WidthSearchConfig() if config is None else config
    if not isinstance(config, WidthSearchConfig):
        raise InputError(f"config must be a WidthSearchConfig, got {type(config).__name__}")
    depth = config.depth if depth is None else check_int(depth, "depth")
    if depth == "auto":
        return search_depth(x, y, activations=activations, config=config, threshold=threshold,
                            seed=seed, engine=engine, executor=executor, budget=budget,
                            progress=progress)
    x, y = check_xy(x, y)
    if config.n_queries is not None:
        x, y = x[: config.n_queries], y[: config.n_queries]
    candidates = _candidates(activations)
    threshold = check_number(threshold, "threshold", positive=True)
    if config.train.target_loss is None:
        # Polishing below near-zero loss would tell the search nothing more.
        config = dataclasses.replace(
            config, train=dataclasses.replace(config.train, target_loss=threshold)
        )
    rounds = _Rounds(x, y, config, threshold, Budget() if budget is None else budget,
                     dict(seed=seed, config=config, engine=engine, executor=executor,
                          progress=progress, counter=[0]), depth)
    state = _doubling(rounds, candidates)
    if state.hi is None and not state.out_of_time and state.trials:
        state = _second_chance(rounds, candidates, state)
    if state.hi is not None and config.bisect:
        state = _bisect(rounds, state)
    return _outcome(state, candidates, config, threshold, time.monotonic() - t_start, depth)


def search_depth(
    x: np.ndarray,
    y: np.ndarray,
    *,
    activations: Sequence[str] | str | None = None,
    config: WidthSearchConfig | None = None,
    threshold: float = NEAR_ZERO_LOSS,
    seed: int = 0,
    engine: str = "native",
    executor: cf.Executor | None = None,
    budget: Budget | None = None,
    progress: Progress | None = None,
) -> WidthSearch:
    """Find the smallest depth, and its width and activation, at which short students reach
    near-zero loss (module docstring): :func:`search_width` at depth ``1, ..., max_depth``.

    Each depth takes an even share of the time left for the depths still to try, so a depth
    that fails early leaves its time to the deeper ones. Parameters as :func:`search_width`.

    Returns
    -------
    WidthSearch
        The search at the depth found, with the trials of every depth tried
        (``depth_reasons`` says why each shallower depth failed); without a depth that reached
        near-zero loss, ``width``, ``student_width`` and ``depth`` are None, its status is
        ``DEADLINE`` when the time ran out before the last depth was searched in full, and
        ``depth_reasons`` holds every depth's failure.
    """
    t_start = time.monotonic()
    config = WidthSearchConfig() if config is None else config
    if not isinstance(config, WidthSearchConfig):
        raise InputError(f"config must be a WidthSearchConfig, got {type(config).__name__}")
    budget = Budget() if budget is None else budget
    trials: list[WidthTrial] = []
    failures: list[str] = []
    last: WidthSearch | None = None
    for depth in range(1, config.max_depth + 1):
        last = search_width(
            x, y, activations=activations, config=config, threshold=threshold, seed=seed,
            engine=engine, executor=executor, progress=progress, depth=depth,
            budget=budget.share(1.0 / (config.max_depth - depth + 1)),
        )
        trials += last.trials
        if last.found:
            why = "".join(f"; {f}" for f in failures)
            return dataclasses.replace(
                last, trials=tuple(trials), depth_reasons=tuple(failures), depth_auto=True,
                reason=f"depth {depth} (the smallest that reached near-zero loss): "
                f"{last.reason}{why}", seconds=time.monotonic() - t_start,
            )
        failures.append(f"depth {depth}: {last.reason}")
        if last.status is WidthStatus.DEADLINE and budget.expired(1.0):
            break
    status = WidthStatus.DEADLINE if last.status is WidthStatus.DEADLINE else WidthStatus.NOT_FOUND
    reason = (f"{status.message}; no depth up to {last.depth} reached it: "
              + "; ".join(failures))
    return dataclasses.replace(
        last, status=status, reason=reason, trials=tuple(trials), depth=None, width=None,
        student_width=None, depth_reasons=tuple(failures), seconds=time.monotonic() - t_start,
        depth_auto=True,
        ranking=_rank(trials, list(dict.fromkeys(t.activation for t in trials)), threshold)
        if trials else last.ranking,
    )


def _candidates(activations) -> list[str]:
    if activations is None:
        candidates = list(ACTIVATIONS)
    elif isinstance(activations, str):
        candidates = [activations]
    else:
        candidates = list(dict.fromkeys(activations))
    if not candidates:
        raise InputError("activations must name at least one candidate")
    for a in candidates:
        get_activation(a)
    return candidates


@dataclass(frozen=True, eq=False)
class _Rounds:
    """What every round of one search shares: the pairs, the settings, the budget."""

    x: np.ndarray
    y: np.ndarray
    config: WidthSearchConfig
    threshold: float
    budget: Budget
    kwargs: dict
    depth: int = 1

    def train(self, width: int, activations: Sequence[str], attempt: int = 0
              ) -> list[WidthTrial] | None:
        """One round at ``width``; None when the budget has no second left for it."""
        train = _round_config(self.budget, self.config.train)
        if train is None:
            return None
        return _train_round(self.x, self.y, width, activations, train=train, attempt=attempt,
                            depth=self.depth, **self.kwargs)


@dataclass(frozen=True, eq=False)
class _State:
    """The search so far: its trials, the widest width known to fail (``lo``) and the
    narrowest known to reach near-zero loss (``hi``, None: none yet)."""

    trials: list[WidthTrial]
    lo: int = 0
    hi: int | None = None
    out_of_time: bool = False


def _doubling(rounds: _Rounds, candidates: Sequence[str]) -> _State:
    """Widths 1, 2, 4, ... until one reaches near-zero loss."""
    trials: list[WidthTrial] = []
    lo = 0
    for width in doubling_widths(rounds.config.max_width):
        found = rounds.train(width, candidates)
        if found is None:
            return _State(trials, lo, None, True)
        trials += found
        if any(t.reached(rounds.threshold) for t in trials if t.width == width):
            return _State(trials, lo, width)
        lo = width
    return _State(trials, lo)


def _second_chance(rounds: _Rounds, candidates: Sequence[str], state: _State) -> _State:
    """A second chance near the lowest loss: a short student escapes a plateau by luck, and
    wider ones converge more slowly in a fixed time (Fig. A.2B), so a width just right can fail
    with its first seeds while every wider one fails too."""
    best = _rank(state.trials, candidates, rounds.threshold)[0]
    trials = state.trials
    for width in sorted({best.best_width, min(rounds.config.max_width,
                                              math.ceil(1.5 * best.best_width))}):
        found = rounds.train(width, [best.activation], attempt=1)
        if found is None:
            return _State(trials, state.lo, None, True)
        trials = _merge(trials, found[0])
        if found[0].reached(rounds.threshold):
            lo = max((t.width for t in trials if t.activation == best.activation
                      and t.width < width), default=0)
            return _State(trials, lo, width)
    return _State(trials, state.lo)


def _bisect(rounds: _Rounds, state: _State) -> _State:
    """Bisection between ``lo`` and ``hi``. Candidates that tie at the doubling width are
    bisected together: an activation that is only the right one up to a linear change of
    variables (relu by two leaky_relu neurons) needs more neurons and drops out here."""
    trials, lo, hi = list(state.trials), state.lo, state.hi
    winners = [t.activation for t in trials if t.width == hi and t.reached(rounds.threshold)]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        found = rounds.train(mid, winners)
        if found is None:
            break
        trials += found
        ok = [t.activation for t in found if t.reached(rounds.threshold)]
        if ok:
            hi, winners = mid, ok
        else:
            lo = mid
    return _State(trials, lo, hi, state.out_of_time)


def _outcome(state: _State, candidates, config: WidthSearchConfig, threshold: float,
             seconds: float, depth: int = 1) -> WidthSearch:
    trials, lo, hi = state.trials, state.lo, state.hi
    ranking = _rank(trials, candidates, threshold)
    chosen = ranking[0].activation if ranking else None
    if hi is None:
        status = WidthStatus.DEADLINE if state.out_of_time else WidthStatus.NOT_FOUND
        best = f"; best MSE {ranking[0].best_loss:.2g}" if ranking else ""
        widest = max((t.width for t in trials), default=0)
        reason = f"{status.message} (widths up to {widest}{best})"
        if ranking:
            reason += "; " + _explain(ranking, len(candidates))
        return WidthSearch(None, None, chosen, ranking, tuple(trials), threshold, status,
                           reason, seconds, depth)
    student = int(math.ceil(config.multiple * hi - 1e-9))
    best = min(t.best_loss for t in trials if t.activation == chosen and t.width == hi)
    below = f"; width {lo} did not" if lo > 0 else ""
    layers = f" x {depth} hidden layers" if depth > 1 else ""
    reason = (
        f"width {hi}{layers}: the smallest at which the best of {config.n_seeds} short students "
        "reached "
        f"MSE <= {threshold:.2g} (best {best:.2g}{below}); E&C width {student} = "
        f"ceil({config.multiple:g} x {hi}); {_explain(ranking, len(candidates))}"
    )
    return WidthSearch(hi, student, chosen, ranking, tuple(trials), threshold,
                       WidthStatus.FOUND, reason, seconds, depth)


def search_black_box(
    teacher,
    x: np.ndarray,
    y: np.ndarray,
    *,
    activation: str | None = None,
    near_zero: float | None = None,
    config: WidthSearchConfig | None = None,
    seed: int = 0,
    engine: str = "native",
    executor: cf.Executor | None = None,
    budget: Budget | None = None,
    progress: Progress | None = None,
) -> WidthSearch:
    """:func:`search_width` for ``--hidden auto``: the candidates come from ``activation``
    (``--activation``), else from the model when it names one, else all of the spec;
    near-zero loss is the model's own (:meth:`BlackBox.near_zero_loss`, above the paper's
    1e-14 for a float32 model); the reason says where the activation came from.

    Parameters
    ----------
    teacher : ecflow.blackbox.BlackBox or None
        None for given pairs (``--data``): the activation is ``activation`` or searched, and
        near-zero loss is the paper's.
    x : ndarray of shape (n_samples, d_in), float64
        Queries as the model saw them (:meth:`BlackBox.query`).
    y : ndarray of shape (n_samples, d_out), float64
        Its answers.
    activation : str, optional
    near_zero : float, optional
        MSE that counts as near-zero, when looser than the model's own (a recovery passes
        the loss at which its students are good enough to cluster, ``student_loss``).
    config, seed, engine, executor, budget, progress
        As :func:`search_width`.

    Returns
    -------
    WidthSearch
    """
    if teacher is not None:
        candidates, source = teacher.candidate_activations(activation)
        threshold = teacher.near_zero_loss(y)
    elif activation is not None:
        candidates, source = [get_activation(activation).name], "given (--activation)"
        threshold = NEAR_ZERO_LOSS
    else:
        candidates, source = list(ACTIVATIONS), "unknown (pairs): the width search tries all"
        threshold = NEAR_ZERO_LOSS
    if near_zero is not None:
        threshold = max(threshold, check_number(near_zero, "near_zero", positive=True))
    result = search_width(
        x, y, activations=candidates, config=config, threshold=threshold,
        seed=seed, engine=engine, executor=executor, budget=budget, progress=progress,
    )
    if len(candidates) == 1:
        return dataclasses.replace(
            result, reason=result.reason.replace("(given)", f"({source})")
        )
    return dataclasses.replace(result, reason=f"{result.reason}; activation {source}")
