"""What every stage of a recovery shares, as small frozen values (with :mod:`ecflow.budget`).

- :class:`Queries`: the training pairs, the held-out pairs and the teacher when it is known.
- :class:`Run`: where and how the work runs: the engine, the executor of the students, the one
  progress callback, the work folder, and whether students are trained or only read back.

A stage takes these values and returns a result; it never changes them.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ecflow.errors import InputError
from ecflow.networks import MLP, check_xy

__all__ = ["Progress", "Queries", "Run"]

Progress = Callable[[str, int, int], None]
"""``progress(phase, done, total)``, the package's one shape of progress callback; phases:
``students`` (``layer <l>`` for a deep network), ``clustering``, ``fine-tune``, ``pruning``."""


@dataclass(frozen=True, eq=False)
class Queries:
    """The pairs a recovery learns from and is judged on.

    Parameters
    ----------
    x : ndarray of shape (n_samples, d_in), float64
        Training inputs (the teacher's queries, or the given pairs).
    y : ndarray of shape (n_samples, d_out), float64
    x_fresh : ndarray of shape (n_fresh, d_in), float64, optional
    y_fresh : ndarray of shape (n_fresh, d_out), float64, optional
        Held-out pairs for the reported RMSE; both or neither.
    teacher : MLP, optional
        The teacher's network when it is known (its neurons are matched with the recovered
        ones).
    """

    x: np.ndarray
    y: np.ndarray
    x_fresh: np.ndarray | None = None
    y_fresh: np.ndarray | None = None
    teacher: MLP | None = None

    def __post_init__(self):
        x, y = check_xy(self.x, self.y)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y)
        if (self.x_fresh is None) != (self.y_fresh is None):
            raise InputError("fresh queries need both x_fresh and y_fresh")
        if self.x_fresh is None:
            return
        xf, yf = check_xy(self.x_fresh, self.y_fresh)
        if xf.shape[1] != x.shape[1] or yf.shape[1] != y.shape[1]:
            raise InputError(
                f"fresh pairs x {xf.shape}, y {yf.shape} do not match the training "
                f"pairs x {x.shape}, y {y.shape}"
            )
        object.__setattr__(self, "x_fresh", xf)
        object.__setattr__(self, "y_fresh", yf)

    @property
    def has_fresh(self) -> bool:
        return self.x_fresh is not None

    @property
    def d_in(self) -> int:
        return self.x.shape[1]

    @property
    def d_out(self) -> int:
        return self.y.shape[1]

    @property
    def n_samples(self) -> int:
        return self.x.shape[0]


@dataclass(frozen=True, eq=False)
class Run:
    """How a recovery runs.

    Parameters
    ----------
    engine : str, default="native"
        Engine of the students and of the fine-tunes (:mod:`ecflow.engines`).
    executor : concurrent.futures.Executor, optional
        Trains the students in parallel (:func:`ecflow.parallel.make_executor`).
    progress : callable, optional
        ``progress(phase, done, total)``.
    work_dir : path-like, optional
        Work folder (:mod:`ecflow.workdir`): each student is saved the moment it finishes, and
        a rerun reuses them.
    train : bool, default=True
        False: train nothing, read the students back from ``work_dir`` (``ecflow cluster``).
    """

    engine: str = "native"
    executor: cf.Executor | None = None
    progress: Progress | None = None
    work_dir: Path | None = None
    train: bool = True

    def __post_init__(self):
        if self.work_dir is not None and not isinstance(self.work_dir, Path):
            object.__setattr__(self, "work_dir", Path(os.fspath(self.work_dir)))
        if not self.train and self.work_dir is None:
            raise InputError("reading the students back needs a work folder")

    def tick(self, phase: str, done: int, total: int) -> None:
        """Report progress, when someone listens."""
        if self.progress is not None:
            self.progress(phase, done, total)

    def ticker(self, phase: str) -> Callable[[int, int], None] | None:
        """``ticker(done, total)`` for ``phase``, or None without a progress callback."""
        if self.progress is None:
            return None
        return lambda done, total: self.progress(phase, done, total)
