"""The work folder of a recovery: its queries and each student the moment it finishes.

``ecflow recover --work-dir DIR`` keeps everything a recovery needs to be resumed or
re-clustered without training::

    DIR/recovery.json           what the students are: width, activation, seeds, training
                                settings and a fingerprint of the queries (checked on reuse)
    DIR/queries.h5              training pairs (a pairs file)
    DIR/fresh.h5                held-out pairs, when there are some (a pairs file)
    DIR/teacher.h5              the teacher, when known (for the neuron match in reports)
    DIR/students/student-007.h5 student 7, a result file of the job protocol
                                (:func:`ecflow.engines.jobs.write_result_file`), root
                                attributes ``student`` and ``seed`` added

Every file is written atomically, so a SIGKILL loses only the students still training: a rerun
with the same folder reads the finished ones back (:meth:`WorkDir.finished_students`) and
trains the rest. A student stopped early by the recovery (it could no longer change the
outcome) is not written: it did not end by itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ecflow import networks
from ecflow.engines.base import TrainResult
from ecflow.engines.jobs import config_to_settings, result_from_file, write_result_file
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError
from ecflow.networks import MLP

__all__ = ["WorkDir", "Manifest", "fingerprint"]

FORMAT = "ecflow-recovery-workdir"
VERSION = 1


def fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 of the training pairs (shapes and float64 bytes): students trained on other
    queries are never mixed in."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a, dtype=np.float64)
        h.update(str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    """What the students of a work folder are (``recovery.json``).

    Attributes
    ----------
    hidden : tuple of int
        Student hidden widths.
    activation : str
    seeds : tuple of int
        Initialisation seed of each student, by index.
    engine : str
    train : mapping
        Training settings (:func:`ecflow.engines.jobs.config_to_settings`).
    queries : str
        :func:`fingerprint` of the training pairs.
    """

    hidden: tuple[int, ...]
    activation: str
    seeds: tuple[int, ...]
    engine: str
    train: Mapping[str, Any]
    queries: str

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "version": VERSION,
            "hidden": list(self.hidden),
            "activation": self.activation,
            "seeds": list(self.seeds),
            "engine": self.engine,
            "train": dict(self.train),
            "queries": self.queries,
        }

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{path}: not an ecflow recovery work folder manifest")
        try:
            return cls(
                hidden=tuple(int(h) for h in data["hidden"]),
                activation=str(data["activation"]),
                seeds=tuple(int(s) for s in data["seeds"]),
                engine=str(data["engine"]),
                train=dict(data["train"]),
                queries=str(data["queries"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"{path}: malformed manifest ({exc})") from None

    def differences(self, other: Manifest) -> list[str]:
        """Fields that differ, named for a message (training budgets may differ: a rerun with
        a longer budget still reuses what finished)."""
        out = []
        for name in ("hidden", "activation", "engine", "queries"):
            if getattr(self, name) != getattr(other, name):
                out.append(name if name != "queries" else "queries (other teacher, data or seed)")
        n = min(len(self.seeds), len(other.seeds))
        if self.seeds[:n] != other.seeds[:n]:
            out.append("student seeds")
        return out


class WorkDir:
    """A recovery's work folder (see the module docstring). Creating it writes nothing."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"work folder {self.path} exists and is not a folder")

    @property
    def manifest_path(self) -> Path:
        return self.path / "recovery.json"

    @property
    def students_path(self) -> Path:
        return self.path / "students"

    def student_path(self, index: int) -> Path:
        return self.students_path / f"student-{index:03d}.h5"

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    # --- writing ------------------------------------------------------------------------------

    def start(
        self,
        manifest: Manifest,
        x: np.ndarray,
        y: np.ndarray,
        *,
        x_fresh: np.ndarray | None = None,
        y_fresh: np.ndarray | None = None,
        teacher: MLP | None = None,
    ) -> None:
        """Create the folder for ``manifest``, or check that an existing one holds the same
        recovery (then its queries and finished students are kept).

        Raises
        ------
        InputError
            The folder holds another recovery's students.
        """
        if self.exists():
            old = self.read_manifest()
            diff = old.differences(manifest)
            if diff:
                raise InputError(
                    f"work folder {self.path} holds another recovery's students "
                    f"({', '.join(diff)} differ): use a new --work-dir"
                )
            if len(manifest.seeds) > len(old.seeds):
                self._write_manifest(manifest)
            return
        self.students_path.mkdir(parents=True, exist_ok=True)
        networks.write_pairs(self.path / "queries.h5", x, y)
        if x_fresh is not None:
            networks.write_pairs(self.path / "fresh.h5", x_fresh, y_fresh)
        if teacher is not None:
            networks.write_network(self.path / "teacher.h5", teacher)
        # the manifest last: a folder without it is an unfinished start, redone next time
        self._write_manifest(manifest)

    def _write_manifest(self, manifest: Manifest) -> None:
        with networks.atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")

    def save_student(self, index: int, seed: int, result: TrainResult) -> Path:
        """Write student ``index`` (a result file) atomically."""
        return write_result_file(
            self.student_path(index), result, attrs={"student": np.int64(index), "seed": np.int64(seed)}
        )

    # --- reading ------------------------------------------------------------------------------

    def read_manifest(self) -> Manifest:
        p = self.manifest_path
        if not p.is_file():
            raise InputError(f"{self.path}: no recovery.json (not a recovery work folder?)")
        try:
            data = json.loads(p.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{p}: unreadable manifest ({exc})") from None
        return Manifest.from_json(data, p)

    def read_queries(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = networks.read_pairs(self.path / "queries.h5")
        if fingerprint(pairs.x, pairs.y) != self.read_manifest().queries:
            raise InputError(f"{self.path / 'queries.h5'}: does not match the manifest's queries")
        return pairs.x, pairs.y

    def read_fresh(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        p = self.path / "fresh.h5"
        if not p.is_file():
            return None, None
        pairs = networks.read_pairs(p)
        return pairs.x, pairs.y

    def read_teacher(self) -> MLP | None:
        p = self.path / "teacher.h5"
        return networks.read_network(p) if p.is_file() else None

    def finished_students(self, manifest: Manifest) -> dict[int, TrainResult]:
        """The saved students of ``manifest``, by index, each checked against it.

        Raises
        ------
        InputError
            A corrupt student file, or one that does not belong to this recovery.
        """
        out: dict[int, TrainResult] = {}
        if not self.students_path.is_dir():
            return out
        for p in sorted(self.students_path.glob("student-*.h5")):
            nf = networks.read_network_file(p)
            res = result_from_file(nf, p)
            attrs = nf.attrs
            index = _int_attr(attrs, "student", p)
            seed = _int_attr(attrs, "seed", p)
            if not 0 <= index < len(manifest.seeds) or manifest.seeds[index] != seed:
                raise InputError(f"{p}: student {index} with seed {seed} is not in this recovery")
            sizes = res.network.sizes
            if tuple(sizes[1:-1]) != manifest.hidden or any(
                a.name != manifest.activation for a in res.network.activations[:-1]
            ):
                raise InputError(
                    f"{p}: a {'-'.join(map(str, sizes))} network, expected hidden "
                    f"{manifest.hidden} with {manifest.activation}"
                )
            out[index] = res
        return out


def _int_attr(attrs: Mapping[str, Any], key: str, p: Path) -> int:
    v = attrs.get(key)
    if isinstance(v, np.ndarray) and v.shape == ():
        v = v.item()
    if isinstance(v, (np.integer,)):
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise InputError(f"{p}: missing integer attribute {key!r} (not a recovery student?)")
    return v


def manifest_for(
    *, hidden: tuple[int, ...], activation: str, seeds, engine: str, train: TrainConfig,
    x: np.ndarray, y: np.ndarray,
) -> Manifest:
    """The manifest of a recovery about to train its students."""
    return Manifest(
        hidden=tuple(int(h) for h in hidden),
        activation=activation,
        seeds=tuple(int(s) for s in seeds),
        engine=engine,
        train=config_to_settings(train),
        queries=fingerprint(x, y),
    )
