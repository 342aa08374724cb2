"""Scalar argument checks shared by the configs (one message style for every module)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ecflow.errors import InputError, InputTypeError

__all__ = ["check_int", "check_number", "check_in_range"]


def check_int(value: Any, name: str, minimum: int = 1) -> int:
    """Return ``value`` as an int, rejecting bools, non-integers and values below ``minimum``.

    Raises
    ------
    TypeError
        ``value`` is not an integer (``True`` and ``2.0`` are rejected too).
    ValueError
        ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputTypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{name} must be {what}, got {value}")
    return int(value)


def check_number(value: Any, name: str, *, positive: bool = False) -> float:
    """Return ``value`` as a finite float (strictly positive with ``positive=True``).

    Raises
    ------
    TypeError
        ``value`` is not a real number.
    ValueError
        ``value`` is NaN or infinite, or not positive when required.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise InputError(f"{name} must be finite, got {value!r}")
    if positive and value <= 0.0:
        raise InputError(f"{name} must be a positive finite number, got {value}")
    return value


def check_in_range(value: Any, name: str, low: float, high: float, *, unit: str = "") -> float:
    """Return ``value`` as a float in the half-open interval ``(low, high]``.

    Parameters
    ----------
    value : Any
    name : str
        The argument's name, as the message shows it.
    low, high : float
        Bounds: ``low`` excluded, ``high`` included.
    unit : str, default=""
        Shown after the interval (``" degrees"``).

    Raises
    ------
    InputTypeError
        ``value`` is not a real number.
    InputError
        ``value`` is NaN, infinite or outside ``(low, high]``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputTypeError(f"{name} must be a number in ({low:g}, {high:g}]{unit}, got {value!r}")
    v = float(value)
    if not (low < v <= high):
        raise InputError(f"{name} must be in ({low:g}, {high:g}]{unit}, got {value!r}")
    return v
