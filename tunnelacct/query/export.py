"""CSV export of session records: column order, cell formatting and the formula guard.

Format: RFC 4180 (comma-separated, text cells `"`-quoted, CRLF line ends), one header row
with CSV_COLUMNS, then one row per session ordered by (started_at, id).
"""

from __future__ import annotations

import asyncio
import collections
import csv
import ctypes
import functools
import io
import multiprocessing as mp
import os
import signal
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TextIO

from sqlalchemy import (
    ColumnElement,
    Engine,
    Select,
    String,
    literal_column,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.model import Config
from tunnelacct.config.orgs import configured_org_ids
from tunnelacct.errors import UnknownOrgError
from tunnelacct.query.filters import Filter
from tunnelacct.query.pages import Key, bound_after, first_and_last, in_range
from tunnelacct.query.records import CSV_COLUMNS
from tunnelacct.store.backend import StoreBackend
from tunnelacct.store.cells import CellKind
from tunnelacct.store.engine import backend_of, make_engine, make_sync_engine
from tunnelacct.store.inventory import stored_org_ids
from tunnelacct.store.migrate import check_schema

# Spreadsheets run a cell starting with one of these as a formula (CSV injection, OWASP), some
# after leading blanks or a line break, some for the fullwidth forms too; a leading single
# quote makes them show it as text. Free text is guarded: ids, names, gateway and interface.
# Numbers are never negative, and times, addresses and enums never start so. Every text cell
# is quoted besides (_encode): a spreadsheet that splits at ";" keeps "a;=1+1" one cell.
FORMULA_PREFIXES = (
    "=",
    "+",
    "-",
    "@",
    "\t",
    "\r",
    "\n",
    " ",
    "\uff1d",
    "\uff0b",
    "\uff0d",
    "\uff20",
)
_FREE_TEXT = frozenset(
    {
        "org_id",
        "client_id",
        "client_name",
        "user_id",
        "resource_id",
        "resource_name",
        "community_id",
        "gateway",
        "interface",
    }
)
# CSV columns read from a stored column of another name, and what kind of cell each is
_SOURCES = {"session_id": "id", "started_at_unix": "started_at"}
_KINDS = {
    "session_id": CellKind.SESSION_ID,
    "started_at_unix": CellKind.UNIX_TIME,
    "started_at": CellKind.TIME,
    "ended_at": CellKind.TIME,
    "last_seen_at": CellKind.TIME,
    "src_addr": CellKind.ADDRESS,
    "dst_addr": CellKind.ADDRESS,
    "midstream": CellKind.FLAG,
    "estimated": CellKind.FLAG,
    "incomplete": CellKind.FLAG,
    **dict.fromkeys(_FREE_TEXT, CellKind.FREE_TEXT),
}
_STARTED_AT = CSV_COLUMNS.index("started_at")
_DURATION = CSV_COLUMNS.index("duration_s")

_HEADER = ",".join(CSV_COLUMNS) + "\r\n"  # no name needs quoting

PAGE_SIZE = 5000  # rows per range quoted in this process (~10 MB of row objects)
WORKER_RANGE_SIZE = 20_000  # rows per range quoted by an export worker (~7 MB of CSV back)


def _cells(backend: StoreBackend) -> list[ColumnElement[Any]]:
    """The CSV_COLUMNS cells as SQL expressions of `backend`'s engine (duration_s left a float)."""
    cells: list[ColumnElement[Any]] = []
    for name in CSV_COLUMNS:
        kind = _KINDS.get(name, CellKind.PLAIN)
        sql = backend.cell_sql(_SOURCES.get(name, name), kind, FORMULA_PREFIXES)
        cells.append(literal_column(sql, String).label(name))
    return cells


def _encode(rows: Sequence[Sequence[Any]]) -> str:
    """The CSV text of cell `rows`: every text cell quoted, numbers not (a spreadsheet reads
    them as numbers, and one splitting at ";" or "\t" still sees one cell per column).

    duration_s is formatted here, "%.6f" of the exact double: SQLite's printf rounds a
    16-digit decimal (7278558.884838498 -> .884839) and PostgreSQL's float-to-numeric cast a
    15-digit one, so neither gives Python's (and C's) digits. A Decimal of those digits is a
    number to the csv module, so it is not quoted.
    """
    d = _DURATION
    buf = io.StringIO(newline="")
    csv.writer(buf, lineterminator="\r\n", quoting=csv.QUOTE_NONNUMERIC).writerows(
        (*r[:d], Decimal(f"{r[d]:.6f}"), *r[d + 1 :]) for r in rows
    )
    return buf.getvalue()


@dataclass(frozen=True, slots=True)
class _Range:
    """Sessions of one org with lo <= key < hi, or lo <= key <= last when hi is None."""

    org_id: str
    flt: Filter | None
    lo: Key
    hi: Key | None
    last: Key

    def select(self, backend: StoreBackend) -> Select[Any]:
        return in_range(_cells(backend), self.org_id, self.flt, self.lo, self.hi, self.last)


@functools.cache
def _worker_engine(url: str) -> Engine:
    """This worker process's own sync engine for `url` (one per process, kept for its life)."""
    return make_sync_engine(url)


def _encode_range(url: str, part: _Range) -> tuple[str, int]:
    """In a worker process: the CSV rows of `part` and how many there are."""
    engine = _worker_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(part.select(backend_of(engine))).all()
    return _encode(rows), len(rows)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _worker_start(parent_pid: int) -> None:
    """In a new worker: die with the parent (a `kill -9` of serve leaves no worker behind)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


class ExportWorkers:
    """Processes that read and quote export ranges in parallel, started on first use.

    The csv module and Python's row objects hold the GIL, so threads cannot spread an export
    over cores; processes can (2 workers: 1.9x on 2 cores, README "Performance").
    `close()` stops them; an ExportWorkers must be closed by whoever created it.
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"export workers: expected >= 1, not {size}")
        self.size = size
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False

    def submit(self, url: str, part: _Range) -> asyncio.Future[tuple[str, int]]:
        if self._closed:
            raise RuntimeError("ExportWorkers used after close()")
        if self._pool is None:
            # spawn, not fork: the service has threads (capture readers, aiosqlite)
            self._pool = ProcessPoolExecutor(
                self.size,
                mp_context=mp.get_context("spawn"),
                initializer=_worker_start,
                initargs=(os.getpid(),),
            )
        return asyncio.wrap_future(self._pool.submit(_encode_range, url, part))

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


async def _first_last(
    engine: AsyncEngine, org_id: str, flt: Filter | None
) -> tuple[Key, Key] | None:
    first_read, last_read = first_and_last(org_id, flt)
    async with engine.connect() as conn:
        first = (await conn.execute(first_read)).first()
        if first is None:
            return None
        last = (await conn.execute(last_read)).one()
    return (first[0], first[1]), (last[0], last[1])


async def _next_bound(
    engine: AsyncEngine, org_id: str, lo: Key, last: Key, size: int
) -> Key | None:
    """The key `size` sessions of the org after `lo` (an index-only walk), None past `last`."""
    async with engine.connect() as conn:
        row = (await conn.execute(bound_after(org_id, lo, last, size))).first()
    return None if row is None else (row[0], row[1])


async def csv_pages(
    engine: AsyncEngine,
    org_id: str,
    *,
    flt: Filter | None = None,
    page_size: int | None = None,
    workers: ExportWorkers | None = None,
) -> AsyncGenerator[tuple[str, int]]:
    """Yield the CSV of `org_id`'s sessions as (text, rows) chunks: the header, then a range each.

    The matching sessions as of the start, from the first to the last key, are cut into
    ranges of `page_size` sessions of the org (default PAGE_SIZE, or WORKER_RANGE_SIZE with
    workers) by an index-only walk; each range is its own short read, so memory stays constant
    however many rows there are and a long export never pins old database versions. Without
    `workers`, a range is quoted in a thread while the next is read; with them, 2 ranges per
    worker are in flight, yielded in order.
    """
    if page_size is None:
        page_size = PAGE_SIZE if workers is None else WORKER_RANGE_SIZE
    yield _HEADER, 0
    ends = await _first_last(engine, org_id, flt)
    if ends is None:
        return
    first, last = ends
    url = engine.url.render_as_string(hide_password=False)
    backend = backend_of(engine)

    async def inline(part: _Range) -> tuple[str, int]:
        async with engine.connect() as conn:
            rows = (await conn.execute(part.select(backend))).all()
        return await asyncio.to_thread(_encode, rows), len(rows)

    window = 2 * workers.size if workers is not None else 2
    pending: collections.deque[asyncio.Future[tuple[str, int]]] = collections.deque()
    lo: Key | None = first
    try:
        while lo is not None or pending:
            while lo is not None and len(pending) < window:
                hi = await _next_bound(engine, org_id, lo, last, page_size)
                part = _Range(org_id, flt, lo, hi, last)
                if workers is not None and not (lo == first and hi is None):  # not for 1 range
                    pending.append(workers.submit(url, part))
                else:
                    pending.append(asyncio.ensure_future(inline(part)))
                lo = hi
            yield await pending.popleft()
    finally:
        for future in pending:
            future.cancel()  # the consumer stopped or failed: leave no read behind


async def export_org_csv(
    engine: AsyncEngine,
    org_id: str,
    out: TextIO,
    *,
    page_size: int | None = None,
    flt: Filter | None = None,
    progress: Callable[[int], None] | None = None,
    workers: ExportWorkers | None = None,
) -> int:
    """Write the header and every session of `org_id` (matching `flt`) as CSV; return the rows.

    `progress(rows_so_far)` is called after each range.
    """
    count = 0
    pages = csv_pages(engine, org_id, flt=flt, page_size=page_size, workers=workers)
    async for text, rows in pages:
        out.write(text)
        count += rows
        if rows and progress is not None:
            progress(count)
    return count


def export_org(
    config: Config,
    org_id: str,
    out: TextIO,
    *,
    flt: Filter | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
) -> int:
    """Blocking `export_org_csv` against the configured store (for the CLI); returns rows.

    `workers` > 0 spreads the work over that many processes (0: this process only).
    """

    async def export() -> int:
        engine = make_engine(config.database.url)
        pool = ExportWorkers(workers) if workers > 0 else None
        try:
            await check_schema(engine)
            known = configured_org_ids(config) | await stored_org_ids(engine)
            if org_id not in known:
                raise UnknownOrgError(org_id, sorted(known))
            return await export_org_csv(
                engine, org_id, out, flt=flt, progress=progress, workers=pool
            )
        finally:
            if pool is not None:
                await asyncio.to_thread(pool.close)
            await engine.dispose()

    return asyncio.run(export())
