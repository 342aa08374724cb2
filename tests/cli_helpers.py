"""Running the real ``ecflow`` command line from tests (imported by the test_cli_* modules:
pytest puts this folder on ``sys.path``, as it has no ``__init__.py``)."""

from __future__ import annotations

import subprocess
import sys


def run(*args, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m ecflow ARGS`` in ``cwd``, output captured as text."""
    return subprocess.run([sys.executable, "-m", "ecflow", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
