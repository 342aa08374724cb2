"""What the one line says when a command is interrupted or its disk fills up.

A command that can be continued names how (:func:`set_resume_hint`): ``ecflow recover`` with
``--work-dir W`` says "rerun with --work-dir W to continue"; the line printed on SIGINT or SIGTERM
and on a full disk ends with it.
"""

from __future__ import annotations

import errno

from ecflow.safety import is_disk_full

__all__ = ["set_resume_hint", "interrupted_message", "os_error_message"]

_hint: dict[str, str] = {"text": ""}


def set_resume_hint(text: str) -> None:
    """How the running command continues after an interruption (``""``: it cannot)."""
    _hint["text"] = text


def interrupted_message() -> str:
    return "interrupted" + (f"; {_hint['text']}" if _hint["text"] else "")


_USER_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}


def os_error_message(exc: OSError) -> str | None:
    """The one line for an ``OSError`` of the environment (full disk, read-only or forbidden
    destination), None for any other (a bug: it keeps its traceback)."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if is_disk_full(exc):
        what = f"disk full ({exc.filename}: {exc.strerror})" if exc.filename else "disk full"
        tail = f"; {_hint['text']}" if _hint["text"] else ""
        return f"{what}: free some space and rerun{tail} ({first})"
    if exc.errno in _USER_ERRNOS:
        return f"cannot write: {first}"
    return None
