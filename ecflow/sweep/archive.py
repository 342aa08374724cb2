"""The sweep's archive: one compact file per recovery unit, the part of a run a repository keeps.

The unit files of a sweep (``students/``, ``recoveries/``, ``teachers/``) are what a running
sweep reads and writes; at the paper's size they are thousands of files, mostly training
histories and queries. The archive keeps, per recovery unit (a teacher at one ρ), what the
tables, a resume and a re-clustering need, and nothing that can be recomputed:

    archive/d{d_in}_r{r}_t{t}_rho{ρ}.h5
        root attributes   ecflow_format "sweep-archive", version, d_in, r, teacher, rho
        students/index    (k,) int64, the finished students, ascending
        students/theta    (k, n_params) float64, their parameters (``MLP.flatten`` order)
        students/records  JSON, their records (as the unit records, less the file digests)
        students          attributes sizes and activations of the students' architecture
        recovery/record   JSON, the recovery's record, once it finished
        recovery/theta    its network's parameters, when it reconstructed one (attributes
                          sizes and activations)

About 8 bytes per student parameter plus some 20 kB of HDF5 structure per file: the paper grid at
every ρ is about 30 MB. The teachers and
their queries are regenerated from the seeds in ``sweep.json``. Files are rewritten whole,
atomically, each time a unit of their group finishes, so that the archive is never more than one
unit behind the unit files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecflow import networks
from ecflow.errors import InputError
from ecflow.networks import MLP
from ecflow.sweep.config import RecoveryUnit

__all__ = ["ARCHIVE_FORMAT", "ARCHIVE_VERSION", "ArchivedGroup", "write_group", "read_group"]

ARCHIVE_FORMAT = "sweep-archive"
ARCHIVE_VERSION = 1


@dataclass
class ArchivedGroup:
    """The archived units of one recovery unit.

    Attributes
    ----------
    students : dict of int to (dict, MLP)
        Finished students: their record and network, by student index.
    recovery : (dict, MLP or None) or None
        The recovery's record and network (None when it reconstructed none), once finished.
    """

    students: dict[int, tuple[dict[str, Any], MLP]] = field(default_factory=dict)
    recovery: tuple[dict[str, Any], MLP | None] | None = None


def _text(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _json_bytes(obj: Any) -> np.ndarray:
    return np.frombuffer(json.dumps(obj, sort_keys=True).encode(), dtype=np.uint8)


def _write_network(group: Any, nets: list[MLP]) -> None:
    group.attrs["sizes"] = np.asarray(nets[0].sizes, dtype=np.int64)
    group.attrs["activations"] = [a.name for a in nets[0].activations]
    theta = np.stack([n.flatten() for n in nets])
    group.create_dataset("theta", data=theta, compression="gzip", shuffle=True)


def _template(group: Any) -> MLP:
    sizes = [int(s) for s in group.attrs["sizes"]]
    acts = [_text(a) for a in group.attrs["activations"]]
    return MLP.from_arrays(
        [np.zeros((n_out, n_in)) for n_in, n_out in zip(sizes[:-1], sizes[1:])],
        [np.zeros(n_out) for n_out in sizes[1:]],
        acts,
    )


def write_group(path: str | os.PathLike, unit: RecoveryUnit, group: ArchivedGroup) -> Path:
    """Write the archive file of ``unit`` atomically."""
    import h5py

    with networks.atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["ecflow_format"] = ARCHIVE_FORMAT
            f.attrs["version"] = np.int64(ARCHIVE_VERSION)
            for key in ("d_in", "r", "teacher", "rho"):
                f.attrs[key] = np.int64(getattr(unit, key))
            if group.students:
                s = f.create_group("students")
                index = sorted(group.students)
                s.create_dataset("index", data=np.asarray(index, dtype=np.int64))
                _write_network(s, [group.students[i][1] for i in index])
                s.create_dataset(
                    "records", data=_json_bytes([group.students[i][0] for i in index]),
                    compression="gzip",
                )
            if group.recovery is not None:
                record, net = group.recovery
                g = f.create_group("recovery")
                g.create_dataset("record", data=_json_bytes(record), compression="gzip")
                if net is not None:
                    _write_network(g, [net])
    return Path(path)


def _records(dataset: Any) -> Any:
    return json.loads(bytes(np.asarray(dataset, dtype=np.uint8)).decode())


def read_group(path: str | os.PathLike, unit: RecoveryUnit) -> ArchivedGroup:
    """Read the archive file of ``unit``.

    Raises
    ------
    InputError
        Not an archive file, an archive of another unit, or a damaged one.
    """
    p = Path(path)
    try:
        with networks.open_for_reading(p) as f:
            if _text(f.attrs.get("ecflow_format")) != ARCHIVE_FORMAT:
                raise InputError(f"{p}: not a sweep archive file")
            if int(f.attrs.get("version", -1)) != ARCHIVE_VERSION:
                raise InputError(f"{p}: unsupported archive version {f.attrs.get('version')!r}")
            found = tuple(int(f.attrs[k]) for k in ("d_in", "r", "teacher", "rho"))
            if found != (unit.d_in, unit.r, unit.teacher, unit.rho):
                raise InputError(f"{p}: holds unit {found}, not {unit.name}")
            return _read_units(f, p)
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise InputError(f"{p}: damaged sweep archive ({exc})") from None


def _read_units(f: Any, p: Path) -> ArchivedGroup:
    out = ArchivedGroup()
    if "students" in f:
        s = f["students"]
        template = _template(s)
        index = [int(i) for i in s["index"][()]]
        theta = np.asarray(s["theta"][()], dtype=np.float64)
        records = _records(s["records"][()])
        if not (len(index) == theta.shape[0] == len(records)):
            raise InputError(f"{p}: students/index, theta and records differ in length")
        for i, row, record in zip(index, theta, records):
            if not isinstance(record, Mapping):
                raise InputError(f"{p}: a student record is not an object")
            out.students[i] = (dict(record), template.unflatten(row))
    if "recovery" in f:
        g = f["recovery"]
        net = _template(g).unflatten(np.asarray(g["theta"][()])[0]) if "theta" in g else None
        out.recovery = (dict(_records(g["record"][()])), net)
    return out
