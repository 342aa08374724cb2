"""Range checks of the options whose values size arrays, before any array is allocated.

``--hidden 99999999999``, ``--n 100000000000`` or ``--rho 1e308`` are bad input, one line and exit
2, not a ``MemoryError`` in a worker or an ``OverflowError`` after the teacher was read. Each
check names the option and the array it would need (:func:`ecflow.safety.check_array_bytes`).
"""

from __future__ import annotations

import math
import re

from ecflow.errors import InputError
from ecflow.safety import check_array_bytes

__all__ = ["check_sizes", "check_rho", "check_width", "check_rows", "check_scheduler", "check_workers",
           "MAX_RHO", "MAX_WORKERS"]

MAX_RHO = 1e6
"""Largest ``--rho``: the paper uses up to 8; beyond a million the student is never trainable."""

MAX_WORKERS = 4096
"""Largest ``--workers``: more processes than any machine has cores."""


def check_rho(rho: float | None) -> None:
    """``--rho`` multiplies a width: beyond :data:`MAX_RHO` (or NaN) the width overflows."""
    if rho is not None and not (math.isfinite(rho) and 0 < rho <= MAX_RHO):
        raise InputError(f"--rho must be a positive number at most {MAX_RHO:g}, got {rho!r}")


def check_width(option: str, widths, d_in: int, d_out: int) -> None:
    """Each student layer's weight matrix must fit: ``(width, n_in)`` float64."""
    n_in = int(d_in)
    for w in widths:
        check_array_bytes((int(w), n_in), f"{option} {w}: a layer's weights")
        n_in = int(w)
    check_array_bytes((int(d_out), n_in), f"{option}: the output layer's weights")


def check_rows(option: str, n: int, d: int) -> None:
    """``n`` query rows of ``d`` columns must fit in memory."""
    check_array_bytes((int(n), int(d)), f"{option} {n}: the queries")


def check_sizes(x, teacher, width, rho, n_queries: int, n_fresh: int) -> None:
    """``ecflow recover``: queries, student widths and ``--rho`` against memory.

    Parameters
    ----------
    x : ndarray of shape (n_samples, d_in) or None
    teacher : MLP, BlackBox or None
    width : tuple of int, "auto" or None
    rho : float or None
    """
    d_in = x.shape[1] if x is not None else getattr(teacher, "d_in", None)
    d_out = getattr(teacher, "d_out", None) or 1
    if d_in is None:
        return
    if x is None:
        check_rows("--n-queries", n_queries, d_in)
    check_rows("--n-fresh", max(int(n_fresh), 0), d_in)
    n = x.shape[0] if x is not None else n_queries
    widths = tuple(width) if isinstance(width, tuple) else ()
    if rho is not None:
        sizes = getattr(teacher, "hidden_sizes", None) or ()
        widths = tuple(math.ceil(rho * s) for s in sizes)
    if widths:
        check_width("--hidden" if rho is None else "--rho", widths, d_in, d_out)
        for w in widths:
            check_array_bytes((int(n), int(w)), f"--hidden {w}: the hidden layer's activations")


_ADDRESS = re.compile(
    r"(?:(tcp|tls|inproc|ucx|ws|wss)://)?([A-Za-z0-9_.\-]+|\[[0-9A-Fa-f:.]+\]):(\d{1,5})"
)


def check_scheduler(address: str | None) -> None:
    """A Dask scheduler address, ``[protocol://]host:port``, checked before connecting (a
    malformed one otherwise costs a 30-second connection timeout)."""
    if address is None:
        return
    m = _ADDRESS.fullmatch(address.strip())
    if m is None or not 0 < int(m.group(3)) < 65536:
        raise InputError(
            f"--scheduler must be an address such as tcp://host:8786, got {address!r}"
        )


def check_workers(workers: int | None) -> None:
    if workers is not None and not 1 <= workers <= MAX_WORKERS:
        raise InputError(
            f"--workers must be a positive integer at most {MAX_WORKERS}, got {workers}"
        )
