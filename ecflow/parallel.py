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
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from ecflow._extras import require
from ecflow.errors import InputError

__all__ = [
    "make_executor",
    "pin_blas_threads",
    "default_workers",
    "StopFlag",
    "FileStopFlag",
    "DaskStopFlag",
    "make_stop_flag",
    "ThreadShare",
    "SharingStop",
    "spare_threads",
]

_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_blas_threads(n: int = 1) -> None:
    """Limit BLAS/OpenMP to ``n`` threads in this process (worker initialiser)."""
    for var in _THREAD_VARS:
        os.environ[var] = str(n)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)


_PARENT_POLL_SECONDS = 1.0


def _exit_with_parent(poll: float = _PARENT_POLL_SECONDS) -> None:
    """End this worker process once the process that started it is gone.

    A pool worker outlives a killed parent (SIGKILL, or SIGTERM, which skips the pool's
    shutdown): it finishes the student it was training for nobody and may wait for more work
    forever (measured: such orphans were still alive 47 minutes later). When the parent dies
    the worker is re-parented, so its parent pid changes; a daemon thread watches for that.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="ecflow-parent-watch", daemon=True).start()


def _init_worker(n_threads: int) -> None:
    pin_blas_threads(n_threads)
    _exit_with_parent()
    # Ctrl-C reaches the whole process group: the parent stops the workers itself, so a
    # worker printing its own KeyboardInterrupt traceback would only add noise.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop_workers(pool: cf.ProcessPoolExecutor) -> None:
    """Stop a pool at once (interrupted or failed): cancel queued work, terminate running
    workers.

    ``shutdown(wait=True)`` would wait for every running student to finish its budget.
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.terminate()
    for proc in processes:
        with contextlib.suppress(Exception):
            proc.join(timeout=10)
    # The pool's manager thread sees the broken pool and closes its wake-up pipe; left running,
    # it can do so while the interpreter's exit hook writes to that pipe ("Exception ignored
    # ... Bad file descriptor" with a traceback after the one-line message, seen once in three
    # SIGINTs of a two-worker recovery). Waiting for it here ends the race.
    if manager is not None:
        with contextlib.suppress(Exception):
            manager.join(timeout=10)


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
        Client = require("distributed", "dask", "--scheduler (a Dask cluster)").Client
        try:
            client = Client(scheduler, timeout="10s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"cannot connect to the Dask scheduler at {scheduler}: {exc}") from None
        try:
            client.run(pin_blas_threads, 1)
            yield client.get_executor()
        finally:
            client.close()
        return
    if workers is None:
        workers = default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise InputError(f"workers must be a positive integer, got {workers!r}")
    import multiprocessing

    # "spawn" avoids forking a process whose BLAS threads are already running.
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(1,)
    ) as pool:
        try:
            yield pool
        except BaseException:
            # a signal, or an error nobody will wait for results after (a full disk while
            # saving a student): stop now, not when the running students end their budgets
            _stop_workers(pool)
            raise


# --- cooperative stop flags ----------------------------------------------------------------------


class StopFlag(Protocol):
    """A flag that the submitting process sets and running tasks poll (``flag()`` is True once
    set). It must pickle, so that it travels with a task to a worker process or a Dask worker."""

    def set(self) -> None: ...

    def __call__(self) -> bool: ...

    def close(self) -> None: ...


def _signal_path(kind: str, folder: str | os.PathLike | None) -> str:
    """A fresh file name through which this process signals its workers (``folder``, default
    the temporary directory)."""
    folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
    return str(folder / f"ecflow-{kind}-{os.getpid()}-{uuid.uuid4().hex}")


class FileStopFlag:
    """A stop flag for workers on this machine: set means a file exists.

    A file needs no server and survives the spawn start method; polling it costs one ``stat``
    every 0.2 s per running task.
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        self.path = _signal_path("stop", folder)

    def set(self) -> None:
        Path(self.path).touch()

    def __call__(self) -> bool:
        return os.path.exists(self.path)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class DaskStopFlag:
    """A stop flag shared through the Dask scheduler (a ``distributed.Event``), so that it
    reaches workers on other machines. Looked up by name in the worker that polls it."""

    def __init__(self, client):
        from distributed import Event

        self.name = f"ecflow-stop-{uuid.uuid4().hex}"
        self._event = Event(self.name, client=client)

    def __getstate__(self):
        return {"name": self.name}

    def __setstate__(self, state):
        self.name = state["name"]
        self._event = None

    def _get(self):
        if self._event is None:
            from distributed import Event

            self._event = Event(self.name)
        return self._event

    def set(self) -> None:
        self._get().set()

    def __call__(self) -> bool:
        return bool(self._get().is_set())

    def close(self) -> None:
        pass


def make_stop_flag(executor: cf.Executor | None) -> StopFlag:
    """The stop flag that reaches the workers of ``executor``: a Dask event for the executor of
    a ``distributed.Client``, a file otherwise (process pools, threads, in-process)."""
    client = getattr(executor, "_client", None)
    if client is not None and type(executor).__module__.startswith("distributed"):
        return DaskStopFlag(client)
    return FileStopFlag()


# --- spare cores for the last students -----------------------------------------------------------


class ThreadShare:
    """BLAS threads per running task, set by the submitting process, applied by the tasks.

    Workers start pinned to one BLAS thread (many single-threaded students beat fewer
    multi-threaded ones). Once fewer students run than there are cores, the submitting process
    raises the share (:meth:`set`) and each running student applies it at its next stop-flag
    poll (:meth:`apply`), so the last students of an expansion use the cores the finished ones
    left idle. A file, like :class:`FileStopFlag`: local process pools only.
    """

    def __init__(self, folder: str | os.PathLike | None = None):
        self.path = _signal_path("threads", folder)
        self._applied: int | None = None

    def set(self, n: int) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        Path(tmp).write_text(str(int(n)))
        os.replace(tmp, self.path)

    def get(self) -> int | None:
        """The share set last, None before the first :meth:`set`."""
        try:
            return int(Path(self.path).read_text())
        except (OSError, ValueError):
            return None

    def apply(self) -> None:
        """Limit this process's BLAS to the current share when it changed."""
        n = self.get()
        if n is not None and n != self._applied:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=n)
            self._applied = n

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class SharingStop:
    """A stop flag that applies a :class:`ThreadShare` each time it is polled (it pickles
    with both, so it reaches the worker as the engine's ``stop``)."""

    def __init__(self, flag: StopFlag, share: ThreadShare):
        self.flag = flag
        self.share = share

    def __call__(self) -> bool:
        self.share.apply()
        return self.flag()


def spare_threads(running: int, cpus: int | None = None) -> int:
    """BLAS threads each of ``running`` tasks may use on ``cpus`` cores (default: this
    process's): one while every core has a task, the idle cores shared out once fewer run."""
    cpus = default_workers() if cpus is None else cpus
    return max(1, cpus // max(1, running))
