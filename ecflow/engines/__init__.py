"""Training engines behind one protocol (:class:`~ecflow.engines.base.Engine`).

``native`` (NumPy/SciPy, the default) and ``julia`` (MLPGradientFlow.jl through juliacall,
optional). :func:`get_engine` is the one front door; it imports an engine only when asked.
"""

from __future__ import annotations

import importlib

from ecflow.engines.base import (
    Engine,
    OdeMethod,
    Optimizer,
    Schedule,
    TrainConfig,
    TrainResult,
    TrainStatus,
)
from ecflow.errors import InputError, InputTypeError

__all__ = [
    "ENGINES",
    "Engine",
    "OdeMethod",
    "Optimizer",
    "Schedule",
    "TrainConfig",
    "TrainResult",
    "TrainStatus",
    "get_engine",
]

# name -> (module, class); modules are imported lazily so that juliacall is never touched
# unless the julia engine is selected.
ENGINES: dict[str, tuple[str, str]] = {
    "native": ("ecflow.engines.native", "NativeEngine"),
    "julia": ("ecflow.engines.julia", "JuliaEngine"),
}


def get_engine(name: str = "native") -> Engine:
    """Return an engine instance by name.

    Raises
    ------
    ValueError
        Unknown name, or an engine whose requirements are missing (the message says how to
        install them).
    """
    if isinstance(name, str) is False:
        raise InputTypeError(f"engine must be a string, got {type(name).__name__}")
    try:
        module, cls = ENGINES[name]
    except KeyError:
        raise InputError(f"unknown engine {name!r}; expected one of: {', '.join(ENGINES)}") from None
    return getattr(importlib.import_module(module), cls)()
