"""The time budget of a recovery: one owner of the clocks (``--max-minutes``).

A :class:`Budget` is an end time on the process's monotonic clock (``time.monotonic()``,
which no change of the system clock moves), or no end. Every stage of a recovery receives the
budget, or a share of it (:meth:`Budget.share`), and fits its engines' time limits to what is
left (:meth:`Budget.fit`); what it cuts is written in one log shared by the budget and all its
shares, which becomes the report's ``cut``.

Students may train in other processes or on other machines, where this process's monotonic
clock means nothing: for them the budget is converted, once, to a wall-clock deadline
(:meth:`Budget.wall_deadline`, a ``time.time()`` value), and back to a budget on the worker's
own monotonic clock where it arrives (:meth:`Budget.until_wall`). These two methods are the only
places where the wall clock is read.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

from ecflow._checks import check_number
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError

__all__ = ["Budget"]

_LEAST_SECONDS = 1e-3


@dataclass(frozen=True, eq=False)
class Budget:
    """An end on the monotonic clock, and the log of what it cut.

    Parameters
    ----------
    end : float or None
        ``time.monotonic()`` value by which the work must end; None: no limit.
    cuts : list of str
        What was cut to fit the budget, one sentence each. Shared, on purpose, with every
        share of this budget (:meth:`share`): one recovery has one log.
    """

    end: float | None = None
    cuts: list[str] = field(default_factory=list)

    @classmethod
    def minutes(cls, max_minutes: float | None) -> Budget:
        """A budget of ``max_minutes`` from now (None: no limit)."""
        if max_minutes is None:
            return cls()
        check_number(max_minutes, "max_minutes", positive=True)
        return cls(time.monotonic() + 60.0 * float(max_minutes))

    @classmethod
    def until_wall(cls, deadline: float | None) -> Budget:
        """The budget of a wall-clock ``deadline`` (``time.time()``, from
        :meth:`wall_deadline`), on this process's monotonic clock."""
        if deadline is None:
            return cls()
        return cls(time.monotonic() + (float(deadline) - time.time()))

    @property
    def limited(self) -> bool:
        return self.end is not None

    def left(self) -> float:
        """Seconds left (``inf`` without a limit; negative once past the end)."""
        return math.inf if self.end is None else self.end - time.monotonic()

    def expired(self, margin: float = 0.0) -> bool:
        """Whether at most ``margin`` seconds are left."""
        return self.left() <= margin

    def share(self, fraction: float) -> Budget:
        """A budget ending after ``fraction`` of the time left, sharing this one's log: a stage
        that finishes sooner leaves the rest to the stages after it."""
        if not 0.0 < fraction <= 1.0:
            raise InputError(f"a budget share must be in (0, 1], got {fraction!r}")
        if self.end is None:
            return Budget(None, self.cuts)
        now = time.monotonic()
        return Budget(now + max(fraction * (self.end - now), 0.0), self.cuts)

    def wall_deadline(self) -> float | None:
        """The end as a wall-clock ``time.time()`` value, for workers in other processes or on
        other machines (the one conversion; :meth:`until_wall` is its inverse)."""
        if self.end is None:
            return None
        return time.time() + (self.end - time.monotonic())

    def fit(self, config: TrainConfig, what: str | None = None, *,
            floor: float = 0.0) -> TrainConfig:
        """``config`` with its time limit cut to what is left, at least ``floor`` seconds.

        Parameters
        ----------
        config : TrainConfig
        what : str, optional
            Names the cut in the log (:attr:`cuts`); None: the cut is not logged (the many
            small cuts of one pruning, or of one student).
        floor : float, default=0.0
            The least budget given: a fine-tune cut to nothing would return its start.
        """
        left = self.left()
        if left >= config.total_seconds:
            return config
        if what is not None:
            self.cuts.append(
                f"{what}: budget cut from {config.total_seconds:.0f} s to {max(left, 0):.0f} s"
            )
        # A caller checks expired() first; the clock moves on between the two reads, and a
        # TrainConfig needs a positive limit.
        return dataclasses.replace(config, max_seconds=max(left, floor, _LEAST_SECONDS))

    def note(self, cut: str) -> None:
        """Log a cut made by the caller (students never started, removals not tried)."""
        self.cuts.append(cut)
