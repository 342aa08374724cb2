"""Command-line interface: ``ecflow <command>``. Each command lives in a module of this package."""

from ecflow.cli._app import app, error, main
from ecflow.cli import network_cmds  # noqa: F401  (registers info, teacher, query)

__all__ = ["app", "error", "main"]
