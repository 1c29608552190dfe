"""CSV cells and lines in SQLite's SQL (store/cells.py).

SQLite keeps times as fixed-width naive UTC text "2026-11-23 10:40:45.123456", UUIDs as 32 hex
digits (models.UtcDateTime, sqlalchemy.Uuid) and addresses as inet_ntop's text, so cells are
cut from that text in SQL. A line is one printf() (`_csv_line_printf`), and where a cell can be
cut by printf's own format (a precision, literal characters) it is, rather than by substr() and
`||`: SQLite's cost per row is in its function calls, and the export is mostly that cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

from tunnelacct.store.cells import (
    CellKind,
    CsvCell,
    CsvLine,
    as_sql,
    concatenated_sql,
    flag_sql,
    guarded_text_sql,
    string_literal,
)


def cell_sql(column: str, kind: CellKind, formula_prefixes: Sequence[str]) -> str:
    """SQL rendering `column` as its CSV cell on SQLite (NULL stays NULL: an empty cell)."""
    if kind is CellKind.SESSION_ID:
        spans = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
        groups = [f"substr({column}, {start}, {length})" for start, length in spans]
        return "(" + " || '-' || ".join(groups) + ")"
    if kind is CellKind.UNIX_TIME:
        return f"({_epoch_seconds_sql(column)} || substr({column}, 20))"
    if kind is CellKind.TIME:
        return f"(substr({column}, 1, 10) || 'T' || substr({column}, 12) || 'Z')"
    if kind is CellKind.FLAG:
        return flag_sql(column)
    if kind is CellKind.FREE_TEXT:
        return _guarded_text_sql(column, formula_prefixes)
    return column  # PLAIN, and ADDRESS: the text as written


def _epoch_seconds_sql(column: str) -> str:
    # whole seconds only: SQLite's date functions round to milliseconds (.9995 -> +1 s)
    return f"strftime('%s', substr({column}, 1, 19))"


def _guarded_text_sql(column: str, formula_prefixes: Sequence[str]) -> str:
    """The formula guard (store/cells.py) behind one comparison that most text passes.

    The guarded first characters (one each) leave gaps between them; text whose first
    character lies in the widest gap ("A" up to the fullwidth "+", so letters and most of
    Unicode) is compared with the gap's ends only: SQLite compares text bytewise (BINARY), and
    UTF-8's byte order is the code points' order. Any other text takes the guard's
    `substr() IN (...)`, which alone cost 0.15 µs a cell.
    """
    firsts = sorted({ord(prefix) for prefix in formula_prefixes})
    gaps = zip(firsts, firsts[1:], strict=False)
    below, above = max(gaps, key=lambda gap: gap[1] - gap[0])
    unguarded = f"{column} >= char({below + 1}) AND {column} < char({above})"
    guarded = guarded_text_sql(column, "char", formula_prefixes)
    return f"(CASE WHEN {unguarded} THEN {column} ELSE {guarded} END)"


def _printf_piece(cell: CsvCell) -> tuple[str, list[str]]:
    """`cell`'s part of the line's printf(): its format (quotes included) and its arguments.

    A number is written bare by %s, NULL as ""; a text between double quotes, its quotes
    doubled by %w, NULL as nothing between them. A session id and a time, never NULL and
    never holding a quote, are cut by the format itself: a precision of %s takes the first
    characters, literal characters go between.
    """
    column = cell.column
    if cell.kind is CellKind.SESSION_ID and not cell.nullable:
        tails = [f"substr({column}, {start})" for start in (9, 13, 17, 21)]
        return '"%.8s-%.4s-%.4s-%.4s-%s"', [column, *tails]
    if cell.kind is CellKind.TIME and not cell.nullable:
        return '"%.10sT%sZ"', [column, f"substr({column}, 12)"]
    if cell.kind is CellKind.UNIX_TIME and not cell.nullable:
        return '"%s%s"', [_epoch_seconds_sql(column), f"substr({column}, 20)"]
    if cell.number:
        return "%s", [f"""coalesce({cell.sql}, '""')""" if cell.nullable else cell.sql]
    return '"%w"', [f"coalesce({cell.sql}, '')" if cell.nullable else cell.sql]


@compiles(CsvLine, "sqlite")
def _csv_line_printf(element: CsvLine, compiler: SQLCompiler, **kw: Any) -> str:
    """The line as one printf() (a `||` per cell costs SQLite more than the cell itself: a row
    of 32 cells took 3x as long).

    printf() ends a text at its first NUL, which SQLite text (unlike PostgreSQL's) can hold: a
    row whose free text holds one is concatenated instead. The store's own text (ids, times,
    addresses, enums) never holds one.
    """
    formats = []
    arguments = []
    for cell in element.cells:
        cell_format, cell_arguments = _printf_piece(cell)
        formats.append(cell_format)
        arguments += cell_arguments
    template = (
        element.lead.replace("%", "%%") + ",".join(formats) + element.trail.replace("%", "%%")
    )
    printed = f"printf({string_literal(template)}, {', '.join(arguments)})"
    free_text = [cell.column for cell in element.cells if cell.kind is CellKind.FREE_TEXT]
    if not free_text:
        return as_sql(printed, compiler, **kw)
    # one instr() over the row's free text costs less than one per cell
    joined = " || ".join(f"coalesce({column}, '')" for column in free_text)
    sql = (
        f"(CASE WHEN instr({joined}, char(0)) > 0 THEN {concatenated_sql(element)}"
        f" ELSE {printed} END)"
    )
    return as_sql(sql, compiler, **kw)
