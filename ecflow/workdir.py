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

The manifest records the SHA-256 of every file it vouches for (``checksums``). A student whose
file is missing, truncated or edited does not match: :func:`repair` sets it aside
(``student-007.h5.damaged``) so that the rerun trains it again, and says so; reading one
unrepaired is bad input, never a silent reuse. A damaged ``queries.h5``, ``fresh.h5`` or
``teacher.h5`` is rewritten by the next :meth:`WorkDir.start` (a rerun has the arrays) and
refused by a reader. The folder is used by one process at a time (:func:`locked`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecflow import networks
from ecflow.engines.base import TrainResult
from ecflow.engines.jobs import config_to_settings, result_from_file, write_result_file
from ecflow.engines.base import TrainConfig
from ecflow.errors import InputError
from ecflow.networks import MLP
from ecflow.safety import finish_before_interrupt, lock_folder, remove_temporaries

__all__ = ["WorkDir", "Manifest", "fingerprint", "file_digest", "locked", "repair"]

_log = logging.getLogger(__name__)

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


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
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
    checksums : mapping of str to str
        SHA-256 of each file written, by its path relative to the folder
        (``"students/student-007.h5"``, ``"queries.h5"``).
    legacy : bool
        Read from a manifest written before manifests carried checksums: its files are
        checked by reading them.
    """

    hidden: tuple[int, ...]
    activation: str
    seeds: tuple[int, ...]
    engine: str
    train: Mapping[str, Any]
    queries: str
    checksums: Mapping[str, str] = field(default_factory=dict)
    legacy: bool = False

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
            "checksums": dict(sorted(self.checksums.items())),
        }

    @classmethod
    def from_json(cls, data: Any, path: Path) -> Manifest:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise InputError(f"{path}: not an ecflow recovery work folder manifest")
        checksums = data.get("checksums")
        if checksums is not None and not (
            isinstance(checksums, dict)
            and all(isinstance(k, str) and isinstance(v, str) for k, v in checksums.items())
        ):
            raise InputError(f"{path}: malformed manifest (checksums must map names to digests)")
        try:
            return cls(
                hidden=tuple(int(h) for h in data["hidden"]),
                activation=str(data["activation"]),
                seeds=tuple(int(s) for s in data["seeds"]),
                engine=str(data["engine"]),
                train=dict(data["train"]),
                queries=str(data["queries"]),
                checksums=dict(checksums or {}),
                legacy=checksums is None,
            )
        except (KeyError, TypeError, ValueError, OverflowError) as exc:
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
        self._manifest: Manifest | None = None
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
        self._check_own_folders()
        if self.exists():
            old = self.read_manifest()
            diff = old.differences(manifest)
            if diff:
                raise InputError(
                    f"work folder {self.path} holds another recovery's students "
                    f"({', '.join(diff)} differ): use a new --work-dir"
                )
            # a rerun trains again what it cannot trust (done already when the CLI repaired)
            self.set_aside_damaged()
            old = self.read_manifest()
            current = dataclasses.replace(
                manifest if len(manifest.seeds) > len(old.seeds) else old,
                checksums=dict(old.checksums), legacy=False,
            )
            # a rerun has the arrays: a missing, emptied or edited data file is written again
            self.students_path.mkdir(parents=True, exist_ok=True)
            rebuilt = self._write_data(current, x, y, x_fresh, y_fresh, teacher, old)
            if old.legacy:  # vouch from now on for the students that read back
                for p in self.students_path.glob("student-*.h5"):
                    name = f"students/{p.name}"
                    if self._intact(old, name):
                        current.checksums[name] = file_digest(p)
            if rebuilt or current != old:
                self._write_manifest(current)
            return
        self.students_path.mkdir(parents=True, exist_ok=True)
        current = dataclasses.replace(manifest, checksums={}, legacy=False)
        self._write_data(current, x, y, x_fresh, y_fresh, teacher, None)
        # the manifest last: a folder without it is an unfinished start, redone next time
        self._write_manifest(current)

    def _check_own_folders(self) -> None:
        # a planted symlink must not make the recovery write into another folder
        if self.students_path.is_symlink():
            raise InputError(
                f"{self.students_path}: is a symbolic link; a work folder writes only its own "
                "folders"
            )

    def set_aside_damaged(self) -> list[str]:
        """Rename the student files the manifest does not vouch for to ``*.h5.damaged`` and
        drop their checksums, so that they are trained again (see :func:`repair`).

        Returns
        -------
        list of str
            One note per student set aside or missing.
        """
        self._check_own_folders()
        manifest = self.read_manifest()
        checksums = dict(manifest.checksums)
        names = {f"students/{p.name}" for p in self.students_path.glob("student-*.h5")}
        names |= {n for n in checksums if n.startswith("students/")}
        notes = []
        for name in sorted(names):
            if self._intact(manifest, name):
                continue
            checksums.pop(name, None)
            p = self.path / name
            if p.exists() or p.is_symlink():
                p.replace(p.with_name(p.name + ".damaged"))
                notes.append(f"{name}: damaged, set aside as {p.name}.damaged and trained again")
            else:
                notes.append(f"{name}: missing, trained again")
            _log.warning("%s: %s", self.path, notes[-1])
        if checksums != manifest.checksums:
            self._write_manifest(dataclasses.replace(manifest, checksums=checksums))
        return notes

    def _write_data(self, current: Manifest, x, y, x_fresh, y_fresh, teacher,
                    old: Manifest | None) -> list[str]:
        """Write each data file that the manifest does not vouch for; returns their names."""
        writers = {"queries.h5": lambda p: networks.write_pairs(p, x, y)}
        if x_fresh is not None:
            writers["fresh.h5"] = lambda p: networks.write_pairs(p, x_fresh, y_fresh)
        if teacher is not None:
            writers["teacher.h5"] = lambda p: networks.write_network(p, teacher)
        rebuilt = []
        for name, write in writers.items():
            path = self.path / name
            if old is not None and self._intact(old, name):
                current.checksums.setdefault(name, file_digest(path))
                continue
            if old is not None:
                rebuilt.append(name)
                _log.warning("%s: missing or damaged, written again", path)
            write(path)
            current.checksums[name] = file_digest(path)
        return rebuilt

    def _intact(self, manifest: Manifest, name: str) -> bool:
        """Whether ``name`` is the file the manifest vouches for (a legacy one: readable)."""
        path = self.path / name
        if not path.is_file() or path.is_symlink():
            return False
        if not manifest.legacy:
            return manifest.checksums.get(name) == file_digest(path)
        try:
            if name.startswith("students/"):
                result_from_file(networks.read_network_file(path), path)
            elif name == "teacher.h5":
                networks.read_network(path)
            else:
                pairs = networks.read_pairs(path)
                if name == "queries.h5" and fingerprint(pairs.x, pairs.y) != manifest.queries:
                    return False
        except InputError:
            return False
        return True

    def _write_manifest(self, manifest: Manifest) -> None:
        with networks.atomic_path(self.manifest_path) as tmp:
            tmp.write_text(json.dumps(manifest.to_json(), indent=2) + "\n")
        self._manifest = manifest

    def save_student(self, index: int, seed: int, result: TrainResult) -> Path:
        """Write student ``index`` (a result file) atomically, then its checksum in the
        manifest (a student killed between the two is retrained: it is not vouched for)."""
        with finish_before_interrupt():
            path = write_result_file(
                self.student_path(index), result,
                attrs={"student": np.int64(index), "seed": np.int64(seed)},
            )
            manifest = self._manifest or self.read_manifest()
            checksums = dict(manifest.checksums)
            checksums[self._name(index)] = file_digest(path)
            self._write_manifest(dataclasses.replace(manifest, checksums=checksums))
        return path

    def _name(self, index: int) -> str:
        return f"students/{self.student_path(index).name}"

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

    def _check_data(self, name: str) -> Path:
        manifest = self.read_manifest()
        if not manifest.legacy and not self._intact(manifest, name):
            raise InputError(
                f"{self.path / name}: missing or damaged (its checksum does not match "
                "recovery.json); rerun ecflow recover with this --work-dir to write it again"
            )
        return self.path / name

    def read_queries(self) -> tuple[np.ndarray, np.ndarray]:
        pairs = networks.read_pairs(self._check_data("queries.h5"))
        if fingerprint(pairs.x, pairs.y) != self.read_manifest().queries:
            raise InputError(f"{self.path / 'queries.h5'}: does not match the manifest's queries")
        return pairs.x, pairs.y

    def read_fresh(self) -> tuple[np.ndarray, np.ndarray] | tuple[None, None]:
        if not self._recorded("fresh.h5"):
            return None, None
        pairs = networks.read_pairs(self._check_data("fresh.h5"))
        return pairs.x, pairs.y

    def read_teacher(self) -> MLP | None:
        if not self._recorded("teacher.h5"):
            return None
        return networks.read_network(self._check_data("teacher.h5"))

    def _recorded(self, name: str) -> bool:
        manifest = self.read_manifest()
        return name in manifest.checksums if not manifest.legacy else (self.path / name).is_file()

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
        on_disk = self.read_manifest() if self.exists() else manifest
        for p in sorted(self.students_path.glob("student-*.h5")):
            name = f"students/{p.name}"
            digest = None if on_disk.legacy else on_disk.checksums.get(name)
            if not on_disk.legacy and digest is None:
                # written, but the process died before vouching for it: trained again
                _log.warning("%s: not in recovery.json, trained again", p)
                continue
            if digest is not None and digest != file_digest(p):
                raise InputError(
                    f"{p}: damaged or not written by this recovery (its checksum does not match "
                    "recovery.json); rerun ecflow recover with this --work-dir to retrain it"
                )
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


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[Path]:
    """Hold the work folder ``path`` for this process (creating it), so that a second recovery
    on it is refused at once instead of mixing students; the temporaries of killed writers are
    removed once the lock is held. Re-entrant within a process."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise InputError(f"--work-dir {p}: exists and is not a directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"--work-dir {p}: cannot create it ({exc.strerror})") from None
    with lock_folder(p, f"--work-dir {p}"):
        for folder in _folders(p):
            remove_temporaries(folder)
            remove_temporaries(folder / "students")
        yield p


def _folders(path: Path) -> list[Path]:
    """``path`` and the stage folders of a deep recovery inside it."""
    return [path] + sorted(q for q in path.glob("layer-*") if q.is_dir() and not q.is_symlink())


def repair(path: str | os.PathLike) -> list[str]:
    """Set aside the students of a work folder that its manifest does not vouch for.

    A missing, truncated or edited student file (checksum not that of ``recovery.json``; in a
    folder written before checksums, unreadable) is renamed ``student-NNN.h5.damaged`` and its
    checksum dropped, so that the rerun trains that student again; stage folders of a deep
    recovery are repaired too. Call it holding :func:`locked`.

    Returns
    -------
    list of str
        One note per student set aside or missing, for the report.
    """
    notes: list[str] = []
    for folder in _folders(Path(path)):
        wd = WorkDir(folder)
        if wd.exists():
            notes += [f"{folder.name}/{n}" for n in wd.set_aside_damaged()]
    return notes
