"""CSV cells in PostgreSQL's SQL (store/cells.py): the text SQLite's give.

Times are `timestamptz`, rendered at UTC whatever the connection's TimeZone; the epoch seconds
are whole seconds (exact: extract() returns numeric) then the microseconds. Addresses are
`inet`: host() prints them as inet_ntop does (tests/test_inet.py), without the /32 or /128 a
text cast would add, and as text whatever the driver does with inet.
"""

from __future__ import annotations

from collections.abc import Sequence

from tunnelacct.store.cells import CellKind, flag_sql, guarded_text_sql


def cell_sql(column: str, kind: CellKind, formula_prefixes: Sequence[str]) -> str:
    """SQL rendering `column` as its CSV cell on PostgreSQL (NULL stays NULL: an empty cell)."""
    if kind is CellKind.ADDRESS:
        return f"host({column})"
    if kind is CellKind.SESSION_ID:
        return f"CAST({column} AS TEXT)"  # dashed lower-case hex
    if kind is CellKind.UNIX_TIME:
        utc = f"({column} AT TIME ZONE 'UTC')"
        whole = f"CAST(CAST(extract(epoch FROM date_trunc('second', {utc})) AS BIGINT) AS TEXT)"
        return f"({whole} || to_char({utc}, '.US'))"
    if kind is CellKind.TIME:
        return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')"""
    if kind is CellKind.FLAG:
        return flag_sql(column)
    if kind is CellKind.FREE_TEXT:
        return guarded_text_sql(column, "chr", formula_prefixes)
    return column
