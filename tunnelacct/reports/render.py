"""A usage report as CSV (one row per group and interval) or as a table for a terminal.

CSV columns: the interval's first day (`day` for daily reports, `period_start` otherwise), the
group columns by the dimension's name, then bytes_tx, bytes_rx, packets_tx, packets_rx,
sessions_started and sessions_completed. Cells are quoted as RFC 4180 wants, and a text cell
that a spreadsheet would run as a formula gets a leading single quote, as in the session export.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from typing import TextIO

from tunnelacct.reports.usage import UsageQuery, UsageRow
from tunnelacct.store.usage import FIGURE_COLUMNS

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def header(query: UsageQuery) -> list[str]:
    """The report's column names."""
    first = "day" if query.interval == "day" else "period_start"
    return [first, *query.by, *FIGURE_COLUMNS]


def cells(row: UsageRow) -> list[object]:
    """One report row's CSV cells, in header order: its values, a group value that starts
    like a formula quoted."""
    return [_guarded(value) if isinstance(value, str) else value for value in row]


def _guarded(text: str) -> str:
    return f"'{text}" if text.startswith(FORMULA_PREFIXES) else text


def write_csv(query: UsageQuery, rows: Sequence[UsageRow], out: TextIO) -> None:
    """The report as CSV on `out`."""
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(header(query))
    for row in rows:
        writer.writerow(cells(row))


def csv_chunks(query: UsageQuery, rows: Sequence[UsageRow]) -> Iterator[bytes]:
    """The report as CSV, UTF-8, in chunks (for an HTTP response)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header(query))
    for number, row in enumerate(rows, 1):
        writer.writerow(cells(row))
        if number % 1000 == 0:
            yield buffer.getvalue().encode()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue().encode()


def text_table(query: UsageQuery, rows: Sequence[UsageRow]) -> str:
    """The report as aligned columns for a terminal: numbers with thousands separators, right
    aligned; '-' for a group value a session did not have."""
    names = header(query)
    lines = [names]
    for row in rows:
        lines.append([_shown(value) for value in row])
    numeric = [False] * (1 + len(query.by)) + [True] * len(FIGURE_COLUMNS)
    widths = [max(len(line[column]) for line in lines) for column in range(len(names))]
    rendered = []
    for line in lines:
        padded = [
            text.rjust(width) if right else text.ljust(width)
            for text, width, right in zip(line, widths, numeric, strict=True)
        ]
        rendered.append("  ".join(padded).rstrip())
    if not rows:
        rendered.append("(no usage in this range)")
    return "\n".join(rendered) + "\n"


def _shown(value: object) -> str:
    """A cell for the eye: a count with thousands separators, '-' for no value."""
    if isinstance(value, int):
        return f"{value:,}"
    return str(value) or "-"
