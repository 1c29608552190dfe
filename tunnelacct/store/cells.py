"""CSV cells rendered in SQL: what kind of value a column holds, and the formula guard that
both engines apply to free text the same way (each backend renders the rest its own way)."""

from __future__ import annotations

import enum
from collections.abc import Sequence


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
