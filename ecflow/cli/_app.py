"""The typer application and the one place where library errors become exit code 2.

Commands live in sibling modules (one per group) and only parse, call the library, write and
print. An :class:`~ecflow.errors.InputError` (bad input, raised by the library's checks and at
its file edges) or a usage error is printed as one line on stderr, ``ecflow: error: <message>``,
with exit code 2 and no traceback. Any other exception is a bug: it propagates with its
traceback and exit code 1, so that it never looks like a user mistake. SIGINT and SIGTERM stop
the command through the same ``finally`` blocks (workers stopped, temporary files removed) and
print one line, exit 130 and 143; a full disk or a read-only destination is one line, exit 2.
"""

from __future__ import annotations

import sys

import typer

from ecflow.errors import InputError
from ecflow.cli._signals import interrupted_message, os_error_message
from ecflow.safety import Interrupted, printable, stop_on_signals

try:  # typer >= 0.20 vendors its own click; older typer uses the click package
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _cx

app = typer.Typer(
    name="ecflow",
    help="Recover a neural network's weights and layer sizes from its input-output behaviour "
    "(Expand-and-Cluster, Martinelli et al., ICML 2024).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_BAD_INPUT = 2
_NoArgsIsHelp = getattr(_cx, "NoArgsIsHelpError", ())
_Exit = (typer.Exit, getattr(_cx, "Exit", typer.Exit))
_Abort = (typer.Abort, getattr(_cx, "Abort", typer.Abort))


def _one_line(text: str) -> str:
    # a message can quote a file's names: control characters are replaced, not sent raw
    return printable(" ".join(str(text).split()))


def error(message: str) -> None:
    """Print ``ecflow: error: message`` as one stderr line."""
    sys.stderr.write(f"ecflow: error: {_one_line(message)}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    """Console entry point: run the app, map bad input to one stderr line and exit 2.

    Exceptions other than :class:`~ecflow.errors.InputError` and click's usage errors are
    not caught: Python prints their traceback and exits 1.
    """
    try:
        with stop_on_signals():
            rv = app(args=argv, prog_name="ecflow", standalone_mode=False)
    except Interrupted as exc:
        # workers are stopped and temporary files removed on the way out (finally blocks)
        error(interrupted_message())
        rv = exc.exit_code
    except OSError as exc:
        message = os_error_message(exc)
        if message is None:
            raise
        error(message)
        rv = EXIT_BAD_INPUT
    except _NoArgsIsHelp as exc:
        typer.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        rv = 0
    except _cx.UsageError as exc:
        error(exc.format_message())
        rv = EXIT_BAD_INPUT
    except _Exit as exc:
        rv = getattr(exc, "exit_code", 0)
    except (*_Abort, KeyboardInterrupt):
        error("interrupted")
        rv = 130
    except _cx.ClickException as exc:
        error(exc.format_message())
        rv = EXIT_BAD_INPUT
    except InputError as exc:
        error(str(exc))
        rv = EXIT_BAD_INPUT
    if rv is None:
        rv = 0
    sys.exit(int(rv))
