"""Optional dependencies: import one, or say in one line which extra of ecflow installs it.

``pip install ecflow`` installs what a recovery on HDF5 teachers needs; ONNX models, Dask
clusters, scikit-learn's digits and the Julia engine come with extras
(``pip install 'ecflow[onnx]'``, ``[dask]``, ``[datasets]``, ``[julia]``, or ``[all]``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ecflow.errors import InputError

__all__ = ["MissingExtraError", "require"]


class MissingExtraError(InputError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def require(module: str, extra: str, purpose: str, *, package: str | None = None) -> ModuleType:
    """Import ``module``, or raise :class:`MissingExtraError` naming ``extra``.

    Parameters
    ----------
    module : str
        Dotted module name, e.g. ``"onnxruntime"``.
    extra : str
        The ecflow extra that installs it, e.g. ``"onnx"``.
    purpose : str
        What needs it, for the message: ``"ONNX support"``.
    package : str, optional
        The name pip installs it under, when it differs from the module's (``scikit-learn``).
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs the {package or module.split('.')[0]!r} package, which is not "
            f"installed: pip install 'ecflow[{extra}]'"
        ) from None
