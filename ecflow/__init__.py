"""ecflow: parameter recovery of neural networks with Expand-and-Cluster.

Martinelli, Şimşek, Gerstner, Brea, "Expand-and-Cluster: Parameter Recovery of Neural
Networks", ICML 2024.

The main names live here (``docs/python-api.md``)::

    import ecflow

    teacher = ecflow.synthetic_teacher(ecflow.TeacherConfig(d_in=4, hidden=(4,)), seed=1)
    result = ecflow.recover(teacher=teacher, config=ecflow.RecoverConfig(rho=4))
    ecflow.save_network("recovered.h5", result.network)

They are imported on first use, so that ``import ecflow`` (and the command line's ``--help``)
stays fast. ``ecflow.recover`` is the function; its module is ``sys.modules["ecflow.recover"]``
(``from ecflow.recover import ...`` works as usual).
"""

from __future__ import annotations

import importlib
import sys
import types

__version__ = "0.1.0"

_PUBLIC = {
    "recover": ("ecflow.recover", "recover"),
    "RecoverConfig": ("ecflow.recover", "RecoverConfig"),
    "Recovery": ("ecflow.recover", "Recovery"),
    "RecoverStatus": ("ecflow.recover", "RecoverStatus"),
    "cluster_saved": ("ecflow.recover", "cluster_saved"),
    "MLP": ("ecflow.networks", "MLP"),
    "load_network": ("ecflow.networks", "read_network"),
    "save_network": ("ecflow.networks", "write_network"),
    "load_pairs": ("ecflow.networks", "read_pairs"),
    "save_pairs": ("ecflow.networks", "write_pairs"),
    "synthetic_teacher": ("ecflow.teachers", "synthetic_teacher"),
    "TeacherConfig": ("ecflow.teachers", "TeacherConfig"),
    "sample_inputs": ("ecflow.teachers", "sample_inputs"),
    "from_callable": ("ecflow.blackbox", "from_callable"),
    "from_onnx": ("ecflow.blackbox", "from_onnx"),
    "OracleConfig": ("ecflow.oracle", "OracleConfig"),
    "run_sweep": ("ecflow.sweep", "run_sweep"),
    "SweepConfig": ("ecflow.sweep", "SweepConfig"),
    "profile_config": ("ecflow.sweep", "profile_config"),
    "TrainConfig": ("ecflow.engines", "TrainConfig"),
    "InputError": ("ecflow.errors", "InputError"),
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    try:
        module, attr = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'ecflow' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # the next access is a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


class _Package(types.ModuleType):
    """The package module; importing a submodule never hides a public name it shares."""

    def __setattr__(self, name: str, value) -> None:
        # Importing ecflow.recover binds the submodule to the package attribute 'recover',
        # which would replace the function of the same name (or shadow it, unloaded).
        if (name in _PUBLIC and isinstance(value, types.ModuleType)
                and value.__name__ == f"{__name__}.{name}"):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
