"""The error types that separate what a user got wrong from a bug.

The CLI turns an :class:`InputError` into one line on stderr and exit code 2; any other exception
is a bug and keeps its traceback (exit 1). ``InputError`` subclasses ``ValueError`` so that code
written against the library's earlier ``ValueError`` keeps working, and :class:`InputTypeError`
also subclasses ``TypeError`` for the same reason.
"""

from __future__ import annotations

__all__ = ["InputError", "InputTypeError"]


class InputError(ValueError):
    """Bad input: a missing or corrupt file, a wrong schema or shape, NaN/Inf, an unknown name or
    an impossible option. The message is one sentence that says what to change."""


class InputTypeError(InputError, TypeError):
    """Bad input of the wrong type (a string where a number was expected, a config of the wrong
    class); a ``TypeError`` too, as these arguments raised before."""
