"""Executors for work that trains many students: a local process pool or a Dask cluster.

Everything parallel in ecflow goes through a :class:`concurrent.futures.Executor`, so one code
path serves a laptop and a cluster: :func:`make_executor` returns a process pool whose workers
pin BLAS to one thread (many single-threaded solves beat one multi-threaded one at these sizes,
and oversubscription slows both), or, given a scheduler address, the executor of a
``distributed.Client`` connected to it.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import os
from collections.abc import Iterator

__all__ = ["make_executor", "pin_blas_threads", "default_workers"]

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_blas_threads(n: int = 1) -> None:
    """Limit BLAS/OpenMP to ``n`` threads in this process (worker initialiser)."""
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)


def default_workers() -> int:
    """Number of local worker processes by default: the CPUs this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def make_executor(
    workers: int | None = None, scheduler: str | None = None
) -> Iterator[cf.Executor]:
    """Yield an executor and shut it down afterwards.

    Parameters
    ----------
    workers : int, optional
        Local worker processes (default: :func:`default_workers`). Ignored with ``scheduler``.
        ``workers=1`` still uses one worker process, so that BLAS pinning and pickling behave
        the same as with more.
    scheduler : str, optional
        Address of a Dask distributed scheduler (``tcp://host:8786``); its workers run the tasks.

    Raises
    ------
    ValueError
        ``workers < 1``, or a scheduler that cannot be reached.
    """
    if scheduler:
        try:
            from distributed import Client
        except ImportError:  # pragma: no cover - distributed is a dependency
            raise ValueError("--scheduler needs the 'distributed' package") from None
        try:
            client = Client(scheduler, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ValueError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
        try:
            client.run(pin_blas_threads, 1)
            yield client.get_executor()
        finally:
            client.close()
        return
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    import multiprocessing

    # "spawn" avoids forking a process whose BLAS threads are already running.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=pin_blas_threads, initargs=(1,)
    ) as pool:
        yield pool
