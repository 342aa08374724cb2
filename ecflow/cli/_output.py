"""Text from files, made safe to print: no rich markup, no terminal control characters.

A root attribute, a layer name or an ONNX tensor name comes from whoever wrote the file. Printed
as rich markup, ``"[/]"`` crashes the table and ``"[link=...]"`` plants a link; printed raw, an
ESC sequence reaches the terminal. Every table cell goes through :func:`cell`.
"""

from __future__ import annotations

from rich.text import Text

from ecflow.safety import printable

__all__ = ["cell", "add_row"]


def cell(value: object) -> Text:
    """``value`` as rich text that is never parsed as markup, control characters replaced."""
    return Text(printable(value))


def add_row(table, *values: object) -> None:
    """Add a row of :func:`cell` values to a rich table."""
    table.add_row(*(cell(v) for v in values))
