"""The typer application, its exit codes, and the one place where library errors become exit 2.

Commands live in sibling modules (one per group) and only parse, call the library, write and
print. Exit codes:

- 0: the command did its job (``ecflow recover``: a network that reproduces the teacher);
- 1: a bug: any exception other than bad input, with its traceback;
- 2: bad input: an :class:`~ecflow.errors.InputError` (raised by the library's checks and at
  its file edges) or a usage error, printed as one stderr line ``ecflow: error: <message>``;
- 3: ``ecflow recover`` and ``ecflow cluster`` ran correctly but recovered no network
  (:data:`EXIT_NOT_RECOVERED`); an inexact network is written and exits 0, its status
  ``INEXACT`` in the summary and the report;
- 130 / 143: interrupted by SIGINT / SIGTERM: the same ``finally`` blocks stop the workers
  and remove temporary files, and one line is printed; a full disk or a read-only
  destination is bad input (2).

An ``InputError`` raised inside a command names the library's field (``n_students must be
...``); :class:`_Command` rewrites those names into the flags the user typed (``--students``).
"""

from __future__ import annotations

import re
import sys

import typer
from typer.core import TyperCommand

from ecflow.errors import InputError
from ecflow.cli._signals import interrupted_message, os_error_message
from ecflow.safety import Interrupted, printable, stop_on_signals

try:  # typer >= 0.20 vendors its own click; older typer uses the click package
    from typer._click import exceptions as _cx
except ImportError:  # pragma: no cover - depends on the installed typer
    from click import exceptions as _cx

EXIT_BAD_INPUT = 2
EXIT_NOT_RECOVERED = 3

# Config fields whose name differs from the command's parameter that sets them.
_FIELD_PARAMS = {
    "n_students": "students",
    "hidden sizes": "hidden",
}
# A field name at the head of a message ("gamma must be ..."); a plain word elsewhere in a
# sentence ("the students of ...") is prose and stays as written.
_HEAD = re.compile(r"^(?P<name>[a-z][a-z0-9_]*(?: sizes)?)(?= (?:must|is|are|has|needs)\b)")


def _flag_names(message: str, params) -> str:
    """``message`` with the library's field names replaced by the command's flags."""
    flags = {}
    for param in params:
        long = [o for o in param.opts if o.startswith("--")]
        if param.name and long:
            flags[param.name] = long[0]
    for field, name in _FIELD_PARAMS.items():
        if name in flags:
            flags.setdefault(field, flags[name])
    head = _HEAD.match(message)
    if head and head["name"] in flags:
        # "hidden sizes must be ..." reads "--hidden sizes must be ...".
        rest = " sizes" if head["name"].endswith(" sizes") else ""
        message = flags[head["name"]] + rest + message[head.end():]
    for field, flag in flags.items():
        if "_" in field:  # snake_case is a field name wherever it stands
            message = re.sub(rf"(?<![-\w]){re.escape(field)}\b", flag, message)
    return message


class _Command(TyperCommand):
    """A typer command whose bad-input messages name the flags, not the config fields."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InputError as exc:
            exc.args = (_flag_names(str(exc), self.params), *exc.args[1:])
            raise


# Plain help: rich's layout prints a type for every flag (``--resume <bool>``), reads
# ``[w, b]`` in a help text as markup, and prints the help twice when a group is run without
# a command.
_SETTINGS = dict(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


class Typer(typer.Typer):
    """``typer.Typer`` with ecflow's settings; its commands name flags in their errors."""

    def __init__(self, **kwargs):
        super().__init__(**{**_SETTINGS, **kwargs})

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = Typer(name="ecflow")

_NoArgsIsHelp = getattr(_cx, "NoArgsIsHelpError", ())
_Exit = (typer.Exit, getattr(_cx, "Exit", typer.Exit))
_Abort = (typer.Abort, getattr(_cx, "Abort", typer.Abort))


def _print_version(value: bool) -> None:
    if value:
        from ecflow import __version__

        typer.echo(f"ecflow {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True,
        callback=_print_version,
    ),
) -> None:
    """Recover a neural network's weights and layer sizes from its input-output behaviour
    (Expand-and-Cluster, Martinelli et al., ICML 2024).

    Exit codes: 0 done; 1 a bug (with its traceback); 2 bad input (one line on stderr);
    3 recover or cluster ran but recovered no network (an inexact one is written, exit 0,
    status INEXACT).
    """


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
        # Its message is the help of the group run without a command (plain text: no rich).
        typer.echo(exc.format_message())
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
