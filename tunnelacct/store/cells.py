"""CSV cells rendered in SQL: what kind of value a column holds, the formula guard that both
engines apply to free text the same way (each backend renders the rest its own way), and a
row's cells joined into CSV text by the database (`CsvLine`, compiled per dialect).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, String, literal_column
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.visitors import InternalTraversal


class CellKind(enum.Enum):
    """What a CSV column holds, which decides how its cell is rendered as text in SQL."""

    PLAIN = "plain"  # numbers and enums: the stored value as it is
    FREE_TEXT = "free_text"  # ids and names: behind the formula guard
    ADDRESS = "address"  # an IP address, as inet_ntop writes it
    SESSION_ID = "session_id"  # a UUID, dashed lower-case hex
    UNIX_TIME = "unix_time"  # started_at as epoch seconds with microseconds
    TIME = "time"  # ISO 8601 UTC with microseconds and a Z
    FLAG = "flag"  # a boolean as true/false


def guarded_text_sql(column: str, char_function: str, formula_prefixes: Sequence[str]) -> str:
    """SQL for the free-text `column` behind the formula guard: a leading single quote when it
    starts with one of `formula_prefixes`; `char_function` is the engine's code-to-character
    function (SQLite's char(), PostgreSQL's chr())."""
    firsts = ", ".join(f"{char_function}({ord(p)})" for p in formula_prefixes)
    quoted = f"'''' || {column}"
    return f"(CASE WHEN substr({column}, 1, 1) IN ({firsts}) THEN {quoted} ELSE {column} END)"


def flag_sql(column: str) -> str:
    """SQL for the boolean `column` as its cell: true or false."""
    return f"(CASE WHEN {column} THEN 'true' ELSE 'false' END)"


@dataclass(frozen=True, slots=True)
class CsvCell:
    """One cell of a CSV line: `sql` renders stored `column` as text (NULL: an empty cell).

    A number (an integer column) is written bare; any other cell is text, written between
    double quotes with its double quotes doubled (RFC 4180), a NULL as "" (as Python's csv
    module writes them with QUOTE_NONNUMERIC).
    """

    column: str
    kind: CellKind
    sql: str
    number: bool
    nullable: bool


class CsvLine(ColumnElement[str]):
    """`cells` as one text of CSV: `lead`, the cells separated by commas, then `trail`.

    Compiled per dialect: SQLite's printf() writes the whole text at once (a `||` per cell
    costs SQLite more than the cell itself: a row of 32 cells took 3x as long; registered by
    store/sqlite/cells.py, which the SQLite backend imports), other engines concatenate. Never
    NULL.
    """

    __visit_name__ = "tunnelacct_csv_line"
    inherit_cache = True
    _traverse_internals = [
        ("cells", InternalTraversal.dp_plain_obj),
        ("lead", InternalTraversal.dp_string),
        ("trail", InternalTraversal.dp_string),
    ]
    type = String()

    def __init__(self, cells: Sequence[CsvCell], lead: str = "", trail: str = "") -> None:
        self.cells = tuple(cells)
        self.lead = lead
        self.trail = trail


def string_literal(text: str) -> str:
    """`text` as an SQL string literal (standard SQL: a single quote doubled)."""
    return "'" + text.replace("'", "''") + "'"


def concatenated_sql(line: CsvLine) -> str:
    """The line by `||`: standard SQL, and the text of any cell as it is (a NUL included)."""
    parts = [string_literal(line.lead)] if line.lead else []
    for index, cell in enumerate(line.cells):
        if index:
            parts.append("','")
        if cell.number:
            parts.append(f"""COALESCE(CAST({cell.sql} AS TEXT), '""')""")
        else:
            parts.append(f"""'"' || REPLACE(COALESCE({cell.sql}, ''), '"', '""') || '"'""")
    if line.trail:
        parts.append(string_literal(line.trail))
    return "(" + " || ".join(parts) + ")"


def as_sql(sql: str, compiler: SQLCompiler, **kw: Any) -> str:
    """`sql` as the compiler writes literal SQL (a "%" doubled where the driver wants it)."""
    return compiler.process(literal_column(sql), **kw)


@compiles(CsvLine)
def _csv_line_concatenated(element: CsvLine, compiler: SQLCompiler, **kw: Any) -> str:
    return as_sql(concatenated_sql(element), compiler, **kw)
