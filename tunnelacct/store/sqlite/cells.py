"""CSV cells in SQLite's SQL (store/cells.py).

SQLite keeps times as fixed-width naive UTC text "2026-11-23 10:40:45.123456", UUIDs as 32 hex
digits (models.UtcDateTime, sqlalchemy.Uuid) and addresses as inet_ntop's text, so cells are
cut from that text in SQL and Python's per-row work is only the csv module's quoting (3x faster
than formatting SessionRecord objects in Python).
"""

from __future__ import annotations

from collections.abc import Sequence

from tunnelacct.store.cells import CellKind, flag_sql, guarded_text_sql


def cell_sql(column: str, kind: CellKind, formula_prefixes: Sequence[str]) -> str:
    """SQL rendering `column` as its CSV cell on SQLite (NULL stays NULL: an empty cell)."""
    if kind is CellKind.SESSION_ID:
        spans = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
        groups = [f"substr({column}, {start}, {length})" for start, length in spans]
        return "(" + " || '-' || ".join(groups) + ")"
    if kind is CellKind.UNIX_TIME:
        # whole seconds only: SQLite's date functions round to milliseconds (.9995 -> +1 s)
        return f"(strftime('%s', substr({column}, 1, 19)) || substr({column}, 20))"
    if kind is CellKind.TIME:
        return f"(substr({column}, 1, 10) || 'T' || substr({column}, 12) || 'Z')"
    if kind is CellKind.FLAG:
        return flag_sql(column)
    if kind is CellKind.FREE_TEXT:
        return guarded_text_sql(column, "char", formula_prefixes)
    return column  # PLAIN, and ADDRESS: the text as written
