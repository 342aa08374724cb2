"""The optional julia engine: MLPGradientFlow.jl (Brea et al., 2023) through juliacall.

It trains exactly as the paper did (appendix A.6.1): the gradient flow
``dθ/dt = -∇L(θ)`` integrated with the stiff ODE solver KenCarp58 on the exact Hessian, then a
second-order optimizer (Optim.jl's NewtonTrustRegion, or BFGS) until the MSE is at most
``loss_tol`` or the gradient norm at most ``grad_tol``. The work is done by ``julia/worker.jl``;
this module is only the bridge:

1. :meth:`JuliaEngine.train` writes the pairs, initial network and config to a temporary job
   file (:mod:`ecflow.engines.jobs`);
2. the worker, loaded once per process through juliacall (the packages of the ``julia/``
   project are installed on first use), trains and writes a result file;
3. the result file is read back into a :class:`~ecflow.engines.base.TrainResult`.

Julia is never downloaded: before juliacall is imported, :func:`check_julia` looks for a
Julia >= 1.10 (``PYTHON_JULIACALL_EXE``, ``PYTHON_JULIAPKG_EXE`` or ``julia`` on PATH) and the
juliacall package, and pins juliapkg to the Julia it found. Constructing the engine runs that
check, so ``get_engine("julia")`` fails fast with one line of install advice.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ecflow.engines.base import TrainConfig, TrainResult, check_free, judge_training, loss_floor
from ecflow.engines.jobs import read_result_file, write_job_file
from ecflow.errors import InputError, InputTypeError
from ecflow.networks import MLP, check_xy

__all__ = [
    "JULIA_MISSING",
    "MIN_JULIA_VERSION",
    "JuliaEngine",
    "check_julia",
    "find_julia",
    "julia_available",
    "julia_project_dir",
]

MIN_JULIA_VERSION = (1, 10)

JULIA_MISSING = (
    "the julia engine needs Julia: install Julia >= 1.10 (e.g. with juliaup) and "
    "`pip install 'ecflow[julia]'`, or use --engine native"
)

# Environment variables through which juliacall / juliapkg are told which Julia to use.
_EXE_VARIABLES = ("PYTHON_JULIACALL_EXE", "PYTHON_JULIAPKG_EXE")


def find_julia() -> str | None:
    """Path of the Julia executable juliacall would use, or None; never installs anything.

    Looks at ``PYTHON_JULIACALL_EXE`` and ``PYTHON_JULIAPKG_EXE`` (juliacall's and juliapkg's
    settings), then at ``julia`` on PATH.
    """
    for var in _EXE_VARIABLES:
        value = os.environ.get(var, "").strip()
        if value:
            # a configured but broken path is not silently replaced by another Julia
            return shutil.which(value) or (value if os.access(value, os.X_OK) else None)
    return shutil.which("julia")


def _julia_version(exe: str) -> tuple[int, int, int] | None:
    try:
        out = subprocess.run(
            [exe, "--startup-file=no", "--version"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3))) if m else None


def check_julia() -> str:
    """Check that the julia engine can run here; return the Julia executable.

    Raises
    ------
    ValueError
        No Julia, a Julia older than 1.10, or no juliacall package; the one-line message says
        how to install them.
    """
    exe = find_julia()
    if exe is None:
        raise InputError(JULIA_MISSING)
    version = _julia_version(exe)
    if version is None or version[:2] < MIN_JULIA_VERSION:
        found = ".".join(map(str, version)) if version else "an unknown version"
        raise InputError(f"{JULIA_MISSING} (found {found} at {exe})")
    if importlib.util.find_spec("juliacall") is None:
        raise InputError(f"{JULIA_MISSING} (juliacall is not installed)")
    return exe


def julia_available() -> bool:
    """Whether :func:`check_julia` passes (used by the tests to skip julia cases)."""
    try:
        check_julia()
    except ValueError:
        return False
    return True


def julia_project_dir() -> Path:
    """The ``julia/`` project holding ``Project.toml`` and ``worker.jl``.

    ``ECFLOW_JULIA_PROJECT`` overrides the default, the ``julia/`` folder of the ecflow source
    tree (beside the ``ecflow`` package).
    """
    override = os.environ.get("ECFLOW_JULIA_PROJECT", "").strip()
    folder = Path(override) if override else Path(__file__).resolve().parents[2] / "julia"
    for name in ("Project.toml", "worker.jl"):
        if not (folder / name).is_file():
            raise InputError(
                f"the julia engine needs {folder / name}: run ecflow from its source tree, or "
                "set ECFLOW_JULIA_PROJECT to a copy of its julia/ folder"
            )
    return folder


_WORKER = None  # the Julia module ECFlowWorker, loaded once per process


def _load_worker(exe: str):
    """Start Julia through juliacall (once per process) and include ``julia/worker.jl``.

    Including the worker instantiates a copy of the ``julia/`` project (MLPGradientFlow.jl,
    HDF5.jl, ...) in the Julia depot and stacks it on Julia's LOAD_PATH after juliacall's own
    environment (``ecflow_instantiate`` in ``worker.jl``).
    """
    global _WORKER
    if _WORKER is not None:
        return _WORKER
    project = julia_project_dir()
    # pin juliapkg to the Julia found by check_julia: without it juliapkg may download one
    if not any(os.environ.get(v, "").strip() for v in _EXE_VARIABLES):
        os.environ["PYTHON_JULIAPKG_EXE"] = exe
    try:
        import juliacall  # noqa: PLC0415  (optional dependency, imported only here)

        jl = juliacall.newmodule("ECFlowJulia")
        # installs the julia/ project's packages on first use (see worker.jl)
        jl.seval(f"Base.include(@__MODULE__, {_julia_string(project / 'worker.jl')})")
        _WORKER = jl.seval("ECFlowWorker")
    except Exception as exc:  # juliacall's own errors (configuration, JuliaError) have no common base
        raise InputError(
            f"could not start the julia worker: {_first_line(exc)} (see docs/julia.md)"
        ) from None
    return _WORKER


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _julia_string(path: Path) -> str:
    text = str(path)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def _mse(net: MLP, x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((net.forward(x) - y) ** 2))


class JuliaEngine:
    """Training engine backed by MLPGradientFlow.jl (see the module docstring).

    Raises
    ------
    ValueError
        At construction, when Julia >= 1.10 or juliacall is missing.
    """

    name = "julia"

    def __init__(self) -> None:
        self._exe = check_julia()

    def train(
        self,
        x: np.ndarray,
        y: np.ndarray,
        init: MLP,
        config: TrainConfig,
        *,
        progress: Callable[[float, float], None] | None = None,
        free: np.ndarray | None = None,
    ) -> TrainResult:
        """Train ``init`` on ``x (n_samples, d_in)``, ``y (n_samples, d_out)`` in Julia.

        ``progress`` is called at the start and at the end only: the worker runs as one
        blocking Julia call. ``free`` (a mask of shape (n_params,), bool) is accepted only when
        it frees every parameter: the worker cannot freeze parameters yet.
        """
        x, y = check_xy(x, y)
        if not isinstance(init, MLP):
            raise InputTypeError(f"init must be an MLP, got {type(init).__name__}")
        if not isinstance(config, TrainConfig):
            raise InputTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if x.shape[1] != init.d_in or y.shape[1] != init.d_out:
            raise InputError(
                f"pairs x {x.shape}, y {y.shape} do not match the network "
                f"{init.d_in} -> {init.d_out}"
            )
        if check_free(free, init.n_params) is not None:
            raise InputError(
                "the julia engine cannot freeze parameters yet: train with engine 'native'"
            )
        if progress is not None:
            progress(0.0, _mse(init, x, y))
        worker = _load_worker(self._exe)
        with tempfile.TemporaryDirectory(prefix="ecflow-julia-") as tmp:
            job, out = Path(tmp) / "job.h5", Path(tmp) / "result.h5"
            write_job_file(job, x, y, init, config, engine="julia")
            try:
                worker.run_job(str(job), str(out))
            except Exception as exc:  # juliacall.JuliaError; the worker rejects bad jobs
                if type(exc).__name__ != "JuliaError":
                    raise
                raise ValueError(f"the julia worker failed: {_first_line(exc)}") from None
            result = read_result_file(out)
        if result.network.sizes != init.sizes or [a.name for a in result.network.activations] != [
            a.name for a in init.activations
        ]:
            raise InputError(
                f"the julia worker returned a {result.network.describe()} network for a "
                f"{init.describe()} job"
            )
        result = _judge(result, config, loss_floor(y, init.sizes))
        if progress is not None:
            progress(result.seconds, result.loss)
        return result


def _judge(result: TrainResult, config: TrainConfig, floor: float) -> TrainResult:
    """``result`` with the status the native engine would give it: the worker knows only its
    tolerances, not the Float64 floor of the targets (:func:`~ecflow.engines.base.loss_floor`)."""
    status, rule = judge_training(result.loss, result.grad_norm, config, floor, "")
    if status is None or status is result.status:
        return result
    phase = result.stopped_by.split(":", 1)[0]
    return dataclasses.replace(result, status=status, stopped_by=f"{phase}: {rule}")
