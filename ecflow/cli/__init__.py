"""Command-line interface: ``ecflow <command>``. Each command lives in a module of this package."""

from ecflow.cli._app import app, error, main
from ecflow.cli import network_cmds  # noqa: F401  (registers info, teacher, query)
from ecflow.cli import train_cmds  # noqa: F401  (registers train)
from ecflow.cli import job_cmds  # noqa: F401  (registers make-job, train-job)
from ecflow.cli import sweep_cmd  # noqa: F401  (registers synthetic-sweep)
from ecflow.cli import recover_cmd  # noqa: F401  (registers recover)
from ecflow.cli import symmetry_cmds  # noqa: F401  (registers symmetry reduce, symmetry map)
from ecflow.cli import interop_cmds  # noqa: F401  (registers import, export)

__all__ = ["app", "error", "main"]
