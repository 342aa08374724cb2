"""What the benchmark scripts share: the machine a result was measured on, the ``ecflow``
command, and reading and atomically writing their result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def machine() -> dict[str, Any]:
    """Platform, CPUs and the load average when the run started (other jobs on a shared machine
    stretch every wall time: the load says by how much)."""
    try:
        load = dict(zip(("1min", "5min", "15min"), os.getloadavg()))
    except OSError:  # pragma: no cover - not on Linux
        load = None
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
    }


def ecflow(*args: str) -> subprocess.CompletedProcess:
    """Run the real ``ecflow`` command line (what a user runs), output captured."""
    return subprocess.run(
        [sys.executable, "-m", "ecflow", *args], capture_output=True, text=True, check=False
    )


def read_json(path: Path) -> dict[str, Any]:
    """A result file's content; empty when it does not exist yet or cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def write_json(data: dict[str, Any], out: Path, *, indent: int = 2) -> None:
    """Write atomically: a reader never sees half a file, a killed run leaves the last whole one."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=indent) + "\n")
    os.replace(tmp, out)


def merge_case(
    out: Path, key: str, section: dict[str, Any], *, targets: dict[str, Any], note: str | None
) -> dict[str, Any]:
    """Put one case's section into the result file under ``cases[key]`` (re-read just before
    writing, so parts run at different times or side by side keep each other's cases), with the
    targets and the note; returns the file's new content."""
    data = read_json(out)
    data.setdefault("cases", {})[key] = section
    data["targets"] = targets
    if note is not None:
        data["notes"] = note
    write_json(data, out)
    return data
