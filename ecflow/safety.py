"""Defences against untrusted files and shared folders: size bounds, printable text, folder locks,
destination checks.

Users point ecflow at model files that other people give them, and at folders that other
processes (or other people) may use too. The helpers here follow what ``h5py``, ``onnx`` and
``git`` do with untrusted input:

* every array a file or an option declares is checked against :func:`max_array_bytes` before it
  is allocated (compressed data counts at its decompressed float64 size);
* text taken from a file is made :func:`printable` (terminal control characters replaced)
  before it is shown;
* a folder that one process writes (a recovery's work folder, a sweep folder) is held with
  :func:`lock_folder`, an exclusive ``flock`` on a lock file opened without following links;
* output paths are checked before any work (:func:`check_outputs`): writable (a temporary file
  is created there), distinct from every input and from each other.

This module imports nothing of ecflow but its error type, so that every stage may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path

from ecflow.errors import InputError

__all__ = [
    "DEFAULT_MAX_ARRAY_BYTES",
    "max_array_bytes",
    "check_array_bytes",
    "printable",
    "lock_folder",
    "holds_lock",
    "check_outputs",
    "check_free_space",
    "remove_temporaries",
    "is_disk_full",
    "Interrupted",
    "stop_on_signals",
    "finish_before_interrupt",
]

DEFAULT_MAX_ARRAY_BYTES = 1 << 30
"""Largest array ecflow allocates from a file or an option, in bytes of float64 (1 GiB).

All 70,000 MNIST images as float64 take 0.44 GB; a declared shape beyond this is far more
likely a damaged or hostile file than a network. ``ECFLOW_MAX_ARRAY_BYTES`` raises it."""

_ENV_MAX = "ECFLOW_MAX_ARRAY_BYTES"


def max_array_bytes() -> int:
    """The array bound in bytes: ``ECFLOW_MAX_ARRAY_BYTES`` when set, else 1 GiB.

    Raises
    ------
    InputError
        The variable is set but is not a positive integer.
    """
    text = os.environ.get(_ENV_MAX)
    if text is None or not text.strip():
        return DEFAULT_MAX_ARRAY_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{_ENV_MAX} must be a positive integer (bytes), got {text!r}")
    return value


def check_array_bytes(shape, what: str, *, itemsize: int = 8) -> int:
    """Raise :class:`InputError` when an array of ``shape`` would exceed :func:`max_array_bytes`.

    Parameters
    ----------
    shape : sequence of int
        Declared dimensions; a negative one is bad input too.
    what : str
        The file item or option, as the message names it (``"file.h5: /queries/x"``).
    itemsize : int, default=8
        Bytes per element once read (float64, whatever the stored type).

    Returns
    -------
    int
        The array's size in bytes.
    """
    dims = [int(d) for d in shape]
    if any(d < 0 for d in dims):
        raise InputError(f"{what}: negative dimension in shape {tuple(dims)}")
    n = 1
    for d in dims:
        n *= d  # Python ints: 10^9 x 10^9 does not overflow
    size = n * int(itemsize)
    bound = max_array_bytes()
    if size > bound:
        raise InputError(
            f"{what}: shape {tuple(dims)} needs {size / 2**30:.3g} GiB, more than the "
            f"{bound / 2**30:.3g} GiB ecflow allows for one array (set {_ENV_MAX} to allow more)"
        )
    return size


# C0 and C1 control characters (ESC among them) and DEL; tab is kept as a space.
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` with every terminal control character replaced by ``?`` and tabs by spaces.

    A name or attribute read from a file can carry ESC sequences that would move the cursor,
    retitle the terminal or hide what follows; shown this way it is inert text.
    """
    return _CONTROL.sub("?", str(text).replace("\t", " "))


# --- folder locks --------------------------------------------------------------------------------

LOCK_NAME = ".lock"
_held: dict[tuple[int, int], list] = {}
_held_guard = threading.Lock()


@contextlib.contextmanager
def lock_folder(
    folder: str | os.PathLike, what: str, *, busy: str | None = None
) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` for as long as the block runs.

    The lock file ``folder/.lock`` is opened with ``O_NOFOLLOW`` (a planted symlink is refused,
    never written through) and locked with ``flock(LOCK_EX | LOCK_NB)``: a second process gets
    :class:`InputError` at once, and the kernel releases the lock when the holder dies, SIGKILL
    included. Within one process the lock is re-entrant, so nested users share it.

    Parameters
    ----------
    folder : path-like
        An existing folder (not a symlink to one).
    what : str
        How the message names the folder (``"--work-dir W"``).
    busy : str, optional
        The message when another process holds the lock.
    """
    import fcntl

    p = Path(folder)
    if p.is_symlink():
        raise InputError(f"{what}: is a symbolic link; give the folder itself")
    if not p.is_dir():
        raise InputError(f"{what}: not a folder")
    st = p.stat()
    key = (st.st_dev, st.st_ino)
    with _held_guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is not None:
        try:
            yield p
        finally:
            with _held_guard:
                entry[1] -= 1
        return
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p / LOCK_NAME, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{what}: {LOCK_NAME} is a symbolic link; remove it") from None
        raise InputError(f"{what}: cannot create its lock file ({exc.strerror})") from None
    try:
        if not os.path.samestat(os.fstat(fd), os.lstat(p / LOCK_NAME)):
            raise InputError(f"{what}: {LOCK_NAME} changed while it was opened; retry")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise InputError(
                busy or f"{what}: another ecflow process is using this folder; wait for it "
                "to finish or use another folder"
            ) from None
        entry = [fd, 1]
        with _held_guard:
            _held[key] = entry
        try:
            yield p
        finally:
            with _held_guard:
                _held.pop(key, None)
    finally:
        os.close(fd)


def holds_lock(folder: str | os.PathLike) -> bool:
    """Whether this process holds :func:`lock_folder` on ``folder``."""
    try:
        st = Path(folder).stat()
    except OSError:
        return False
    with _held_guard:
        return (st.st_dev, st.st_ino) in _held


def remove_temporaries(folder: str | os.PathLike) -> int:
    """Delete the hidden ``.*.tmp`` files that killed atomic writes left in ``folder``.

    Only safe while the folder's lock is held (another writer's temporaries look the same).
    Returns how many were removed.
    """
    p = Path(folder)
    n = 0
    if not p.is_dir() or p.is_symlink():
        return n
    for tmp in p.glob(".*.tmp*"):
        if tmp.is_file() or tmp.is_symlink():
            with contextlib.suppress(OSError):
                tmp.unlink()
                n += 1
    return n


# --- destinations --------------------------------------------------------------------------------


def _identity(path: Path) -> tuple:
    """What makes two paths the same file: device and inode when it exists, else its resolved
    path (so ``a/../b`` and ``b`` are one file even before either is written)."""
    try:
        st = path.stat()
        return ("inode", st.st_dev, st.st_ino)
    except OSError:
        return ("path", str(path.resolve()))


def _probe(folder: Path, what: str) -> None:
    try:
        fd, tmp = tempfile.mkstemp(prefix=".ecflow-probe-", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"{what}: cannot write in {folder} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    check_free_space(folder, MIN_FREE_BYTES, what)


MIN_FREE_BYTES = 1 << 20
"""Free space a destination needs before any work starts (1 MiB): every output is larger than
a few kB, and a disk this full is better reported before the training than after."""


def check_outputs(
    inputs: Mapping[str, str | os.PathLike | None],
    files: Mapping[str, str | os.PathLike | None],
    folders: Mapping[str, str | os.PathLike | None] | None = None,
) -> None:
    """Check every destination before any work.

    A file destination must sit in an existing, writable folder (a temporary file is created
    there and removed), must not be a folder, and must differ from every input and from every
    other destination; a folder destination (``--plots``, ``--work-dir``) must be a folder or
    creatable, writable, and hold none of the file destinations' inputs.

    Parameters
    ----------
    inputs : mapping of str to path-like or None
        Option name -> an input file (None: not given).
    files : mapping of str to path-like or None
        Option name -> an output file.
    folders : mapping of str to path-like or None, optional
        Option name -> an output folder.

    Raises
    ------
    InputError
        Naming the option.
    """
    seen: dict[tuple, str] = {}
    for option, path in inputs.items():
        if path is not None:
            seen.setdefault(_identity(Path(path)), option)
    for option, path in files.items():
        if path is None:
            continue
        p = Path(path)
        ident = _identity(p)
        if ident in seen:
            raise InputError(
                f"{option} {p}: is the same file as {seen[ident]}; give a different path"
            )
        seen[ident] = option
        if p.is_dir():
            raise InputError(f"{option} {p}: is a directory")
        folder = p.parent if str(p.parent) else Path(".")
        if not folder.is_dir():
            raise InputError(f"{option} {p}: folder {folder} does not exist")
        _probe(folder, f"{option} {p}")
    for option, path in (folders or {}).items():
        if path is None:
            continue
        p = Path(path)
        ident = _identity(p)
        if ident in seen:
            raise InputError(f"{option} {p}: is the same path as {seen[ident]}")
        seen[ident] = option
        if p.exists() and not p.is_dir():
            raise InputError(f"{option} {p}: exists and is not a directory")
        if p.is_dir():
            # ecflow writes its own files there: a symlink among them was planted
            links = sorted(q.name for q in p.iterdir() if q.is_symlink())
            if links:
                raise InputError(
                    f"{option} {p}: holds symbolic links ({', '.join(links[:3])}); ecflow "
                    "writes only its own files there"
                )
        target = p
        while not target.exists():
            target = target.parent if str(target.parent) else Path(".")
            if target == target.parent:
                break
        if not target.is_dir():
            raise InputError(f"{option} {p}: {target} is not a directory")
        _probe(target, f"{option} {p}")


def check_free_space(folder: str | os.PathLike, n_bytes: int, what: str) -> None:
    """Raise :class:`InputError` when ``folder``'s file system has fewer than ``n_bytes`` free.

    Writing into a full file system can crash the HDF5 library outright (a segfault, not an
    error), so a write checks the space first; 64 KiB are added for file metadata.
    """
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # the write itself reports an unusable folder
    need = int(n_bytes) + (64 << 10)
    if free < need:
        raise InputError(
            f"{what}: not enough disk space ({free} bytes free, {need} needed); free some "
            "space and rerun"
        )


_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is an ``OSError`` of a full disk or quota (h5py often puts the errno only
    in its message)."""
    if not isinstance(exc, OSError):
        return False
    if exc.errno in _FULL:
        return True
    text = str(exc)
    return "No space left on device" in text or "errno = 28" in text or "Disk quota" in text


# --- signals -------------------------------------------------------------------------------------


class Interrupted(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM under :func:`stop_on_signals`.

    A ``BaseException`` like ``KeyboardInterrupt``, so that no ``except Exception`` swallows
    it and every ``finally`` (worker shutdown, removal of temporary files) runs on the way out;
    not a ``KeyboardInterrupt``, so that click does not turn it into an ``Abort``.

    Attributes
    ----------
    signum : int
    exit_code : int
        ``128 + signum``: 130 for SIGINT, 143 for SIGTERM, as a shell reports them.
    """

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.exit_code = 128 + int(signum)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`Interrupted` while the block runs.

    After the first signal both are ignored, so that a second Ctrl-C cannot cut the cleanup
    short (workers left running, temporary files left behind). Outside the main thread this
    does nothing (Python delivers signals only there).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    signums = (signal.SIGINT, signal.SIGTERM)

    def handler(signum, frame):
        for s in signums:
            signal.signal(s, signal.SIG_IGN)
        if _deferred["depth"]:
            _deferred["pending"] = signum  # raised when the write in progress is complete
            return
        raise Interrupted(signum)

    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


_deferred: dict[str, int | None] = {"depth": 0, "pending": None}


@contextlib.contextmanager
def finish_before_interrupt() -> Iterator[None]:
    """Hold back :class:`Interrupted` until the block is done.

    For short steps that belong together, such as writing a student and then vouching for it
    in the manifest: a signal between the two would throw away a finished student.
    """
    _deferred["depth"] += 1
    try:
        yield
    finally:
        _deferred["depth"] -= 1
        pending = _deferred["pending"]
        if not _deferred["depth"] and pending is not None:
            _deferred["pending"] = None
            raise Interrupted(pending)
