"""The engine job protocol: one HDF5 job file in, one HDF5 result file out.

A *job* is everything an engine needs to train one student: the pairs ``x (n_samples, d_in)``,
``y (n_samples, d_out)``, the initial network and the :class:`~ecflow.engines.base.TrainConfig`
(stored as root attributes, enums as their string values). A *result* is a normal network file
(``ecflow_format = "mlp"``, readable by :func:`~ecflow.networks.read_network`) holding the trained
network, with the :class:`~ecflow.engines.base.TrainResult` fields as root attributes.

Both engines speak it: the native engine through :func:`run_job` (``ecflow train-job``), the
julia engine because its worker (``julia/worker.jl``) reads job files and writes result files,
so a job can be moved to another machine and trained there with either engine. The layouts are
documented in ``docs/formats.md``; all HDF5 I/O stays in :mod:`ecflow.networks`.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ecflow import networks
from ecflow.engines import ENGINES, get_engine
from ecflow.engines.base import TrainConfig, TrainResult, TrainStatus
from ecflow.errors import InputError, InputTypeError
from ecflow.networks import MLP

__all__ = [
    "HISTORY_MAX_ROWS",
    "config_to_settings",
    "settings_to_config",
    "write_job_file",
    "read_job_file",
    "write_result_file",
    "result_attrs",
    "read_result_file",
    "result_from_file",
    "thin_history",
    "run_job",
]

HISTORY_MAX_ROWS = 1000
"""Most rows of the loss history kept in a result file: HDF5 attributes live in the object
header, whose compact storage holds 64 KiB; 1000 rows of two float64 are 16 KiB."""

_CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))
_RESULT_SCALARS = ("loss", "rmse", "grad_norm", "seconds")


# --- settings <-> TrainConfig --------------------------------------------------------------------


def config_to_settings(config: TrainConfig) -> dict[str, Any]:
    """The settings dict stored in a job file: every field, enums as their string values.

    ``max_seconds`` is omitted when it is None (HDF5 attributes have no null).

    Parameters
    ----------
    config : TrainConfig

    Returns
    -------
    dict of str to str, float or int
    """
    if not isinstance(config, TrainConfig):
        raise InputTypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    settings: dict[str, Any] = {}
    for name in _CONFIG_FIELDS:
        value = getattr(config, name)
        if value is None:
            continue
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, (bool, np.bool_)):
            value = bool(value)
        elif isinstance(value, (int, np.integer)):
            value = int(value)
        elif isinstance(value, (float, np.floating)):
            value = float(value)
        settings[name] = value
    return settings


def settings_to_config(settings: Mapping[str, Any]) -> TrainConfig:
    """Rebuild a :class:`TrainConfig` from a job file's settings.

    Raises
    ------
    ValueError
        An unknown setting (most likely a typo), or a value the config rejects (the message names
        the field).
    """
    if not isinstance(settings, Mapping):
        raise InputTypeError(f"settings must be a mapping, got {type(settings).__name__}")
    unknown = sorted(set(settings) - set(_CONFIG_FIELDS))
    if unknown:
        raise InputError(
            f"unknown training setting(s) {', '.join(map(repr, unknown))}; "
            f"expected some of: {', '.join(_CONFIG_FIELDS)}"
        )
    kwargs = {}
    for name, value in settings.items():
        if isinstance(value, np.generic):
            value = value.item()
        kwargs[name] = value
    try:
        return TrainConfig(**kwargs)
    except TypeError as exc:
        raise InputError(f"invalid training settings: {exc}") from None


# --- job files -----------------------------------------------------------------------------------


def _check_engine_name(engine: str) -> str:
    if not isinstance(engine, str) or engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of: {', '.join(ENGINES)}")
    return engine


def write_job_file(
    path: str | os.PathLike,
    x: np.ndarray,
    y: np.ndarray,
    init: MLP,
    config: TrainConfig,
    engine: str = "native",
) -> Path:
    """Write a job file atomically.

    Parameters
    ----------
    path : path-like
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    init : MLP
        Initial student, ``d_in -> ... -> d_out``.
    config : TrainConfig
    engine : {"native", "julia"}, default="native"
        Engine that ``ecflow train-job`` uses unless told otherwise.
    """
    if not isinstance(init, MLP):
        raise InputTypeError(f"init must be an MLP, got {type(init).__name__}")
    settings = config_to_settings(config)
    settings["engine"] = _check_engine_name(engine)
    return networks.write_job(path, x, y, init, settings)


def read_job_file(
    path: str | os.PathLike,
) -> tuple[np.ndarray, np.ndarray, MLP, TrainConfig, str]:
    """Read and validate a job file.

    Returns
    -------
    x : ndarray of shape (n_samples, d_in), float64
    y : ndarray of shape (n_samples, d_out), float64
    init : MLP
    config : TrainConfig
    engine : str
        The job's engine (``"native"`` when the file names none).
    """
    job = networks.read_job(path)
    settings = dict(job.settings)
    engine = settings.pop("engine", "native")
    try:
        engine = _check_engine_name(engine)
        config = settings_to_config(settings)
    except ValueError as exc:
        raise InputError(f"{path}: {exc}") from None
    return job.x, job.y, job.init, config, engine


# --- result files --------------------------------------------------------------------------------


def thin_history(history: np.ndarray, max_rows: int = HISTORY_MAX_ROWS) -> np.ndarray:
    """Keep at most ``max_rows`` rows of a loss history, always the first and the last.

    Parameters
    ----------
    history : ndarray of shape (n_records, 2), float64
        ``(elapsed seconds, loss)`` rows.
    max_rows : int, default=1000

    Returns
    -------
    ndarray of shape (min(n_records, max_rows), 2), float64
    """
    h = np.asarray(history, dtype=np.float64)
    if h.size == 0:
        return np.zeros((0, 2))
    if h.ndim != 2 or h.shape[1] != 2:
        raise InputError(f"history must have shape (n_records, 2), got {h.shape}")
    if max_rows < 2:
        raise InputError(f"max_rows must be at least 2, got {max_rows}")
    if h.shape[0] <= max_rows:
        return h.copy()
    # evenly spaced in record index; rounding keeps 0 and n-1 and never repeats a row
    idx = np.unique(np.round(np.linspace(0, h.shape[0] - 1, max_rows)).astype(np.int64))
    return h[idx]


def result_attrs(result: TrainResult) -> dict[str, Any]:
    """The root attributes of a result file for ``result`` (see :func:`write_result_file`)."""
    if not isinstance(result, TrainResult):
        raise InputTypeError(f"result must be a TrainResult, got {type(result).__name__}")
    if not isinstance(result.status, TrainStatus):
        raise InputTypeError(f"result.status must be a TrainStatus, got {result.status!r}")
    attrs: dict[str, Any] = {name: float(getattr(result, name)) for name in _RESULT_SCALARS}
    attrs.update(
        steps=np.int64(result.steps),
        status=result.status.name,
        stopped_by=str(result.stopped_by),
        engine=str(result.engine),
        history=thin_history(result.history),
    )
    notes = [str(n) for n in result.notes]
    if notes:
        attrs["notes"] = notes
    return attrs


def write_result_file(
    path: str | os.PathLike, result: TrainResult, *, attrs: Mapping[str, Any] | None = None
) -> Path:
    """Write a result file atomically: the trained network plus the result fields as root attrs.

    Attributes written: ``loss``, ``rmse``, ``grad_norm``, ``seconds`` (float64), ``steps``
    (int64), ``status`` (the :class:`TrainStatus` member *name*, e.g. ``"CONVERGED_LOSS"``),
    ``stopped_by``, ``engine`` (strings), ``history`` (float64, shape (n, 2), thinned to at most
    1000 rows) and ``notes`` (array of strings, omitted when there are none), then any extra
    ``attrs`` (e.g. the seed of the initialisation), which may not replace a result field.
    """
    fields = result_attrs(result)
    clash = sorted(set(attrs or {}) & (set(fields) | {"notes"}))
    if clash:
        raise InputError(f"extra attributes may not replace result fields: {', '.join(clash)}")
    return networks.write_network(path, result.network, attrs={**fields, **(attrs or {})})


def _number(attrs: Mapping[str, Any], key: str, p: Path, *, integer: bool = False) -> float | int:
    if key not in attrs:
        raise InputError(f"{p}: missing root attribute {key!r} (not a result file?)")
    value = attrs[key]
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{p}: attribute {key!r} must be a number, got {value!r}")
    if integer:
        if isinstance(value, float) and not value.is_integer():
            raise InputError(f"{p}: attribute {key!r} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def _text(attrs: Mapping[str, Any], key: str, p: Path) -> str:
    if key not in attrs:
        raise InputError(f"{p}: missing root attribute {key!r} (not a result file?)")
    value = attrs[key]
    if not isinstance(value, str):
        raise InputError(f"{p}: attribute {key!r} must be a string, got {value!r}")
    return value


def read_result_file(path: str | os.PathLike) -> TrainResult:
    """Read and validate a result file written by :func:`write_result_file` or the julia worker.

    Raises
    ------
    ValueError
        Not a network file, a missing or mistyped result attribute, an unknown status name, or
        a history that is not a (n, 2) float array.
    """
    p = Path(path)
    return result_from_file(networks.read_network_file(p), p)


def result_from_file(nf: networks.NetworkFile, p: Path) -> TrainResult:
    """The :class:`TrainResult` of a network file already read (``nf``, read from ``p``), for
    callers that also need the file's other attributes; validation as :func:`read_result_file`."""
    attrs = nf.attrs
    scalars = {key: _number(attrs, key, p) for key in _RESULT_SCALARS}
    steps = _number(attrs, "steps", p, integer=True)
    status_name = _text(attrs, "status", p)
    try:
        status = TrainStatus[status_name]
    except KeyError:
        known = ", ".join(s.name for s in TrainStatus)
        raise InputError(
            f"{p}: unknown status {status_name!r}; expected one of: {known}"
        ) from None
    if "history" not in attrs:
        raise InputError(f"{p}: missing root attribute 'history' (not a result file?)")
    history = np.asarray(attrs["history"])
    if history.size == 0:
        history = np.zeros((0, 2))
    if history.dtype.kind != "f" or history.ndim != 2 or history.shape[1] != 2:
        raise InputError(
            f"{p}: attribute 'history' must be a float array of shape (n, 2), "
            f"got {history.dtype} {history.shape}"
        )
    notes = attrs.get("notes", ())
    if isinstance(notes, str):
        notes = (notes,)
    elif isinstance(notes, np.ndarray) and notes.size == 0:
        notes = ()
    if not all(isinstance(n, str) for n in notes):
        raise InputError(f"{p}: attribute 'notes' must be an array of strings, got {notes!r}")
    return TrainResult(
        network=nf.network,
        loss=scalars["loss"],
        rmse=scalars["rmse"],
        grad_norm=scalars["grad_norm"],
        status=status,
        stopped_by=_text(attrs, "stopped_by", p),
        steps=steps,
        seconds=scalars["seconds"],
        history=history.astype(np.float64),
        engine=_text(attrs, "engine", p),
        notes=tuple(notes),
    )


# --- running a job -------------------------------------------------------------------------------


def run_job(
    job_path: str | os.PathLike,
    out_path: str | os.PathLike,
    engine: str | None = None,
    *,
    progress: Callable[[float, float], None] | None = None,
) -> TrainResult:
    """Train the student of a job file and write the result file atomically.

    Parameters
    ----------
    job_path : path-like
        A job file (:func:`write_job_file`).
    out_path : path-like
        Destination of the result file; written only when training returns, so a failed run
        leaves no file.
    engine : {"native", "julia"} or None, default=None
        Overrides the job's engine.
    progress : callable, optional
        ``progress(elapsed_seconds, loss)``, passed to the engine.

    Returns
    -------
    TrainResult
    """
    dest = networks.check_destination(out_path)
    x, y, init, config, job_engine = read_job_file(job_path)
    # get_engine raises (ValueError, with install advice) before any training starts
    trainer = get_engine(engine if engine is not None else job_engine)
    result = trainer.train(x, y, init, config, progress=progress)
    write_result_file(dest, result)
    return result
