"""CSV export of session records: column order, cell formatting and the formula guard.

Format: RFC 4180 (comma-separated, text cells `"`-quoted, CRLF line ends), one header row
with CSV_COLUMNS, then one row per session ordered by (started_at, id).

The database writes each line (store/cells.py `CsvLine`) but for its duration_s, which Python
formats (`_lines`), so Python's work per row is one string format and a join (issue 21).
A range leaves the process that read it as UTF-8 bytes, which the CLI writes and the API
sends as they are: text would be decoded from the worker's pipe and encoded again.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import functools
import multiprocessing as mp
import os
import signal
import sys
import threading
from collections.abc import AsyncGenerator, Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, BinaryIO

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    Engine,
    Integer,
    Select,
    Table,
    literal_column,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from tunnelacct.config.model import Config
from tunnelacct.config.orgs import configured_org_ids
from tunnelacct.errors import UnknownOrgError
from tunnelacct.query.filters import Filter
from tunnelacct.query.pages import Key, bound_after, first_and_last, in_range, sessions_table
from tunnelacct.query.records import CSV_COLUMNS
from tunnelacct.store.backend import StoreBackend
from tunnelacct.store.cells import CellKind, CsvCell, CsvLine
from tunnelacct.store.engine import backend_of, make_engine, make_sync_engine
from tunnelacct.store.inventory import stored_org_ids
from tunnelacct.store.schema import check_schema

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
_DURATION = CSV_COLUMNS.index("duration_s")

_HEADER = (",".join(CSV_COLUMNS) + "\r\n").encode()  # no name needs quoting

PAGE_SIZE = 20_000  # rows per range read in this process (~7 MB of CSV)
WORKER_RANGE_SIZE = 20_000  # rows per range read by an export worker (~7 MB of CSV back)
FETCH_ROWS = 2000  # rows fetched at once by a worker, so that it holds text, not rows


def _cells(backend: StoreBackend) -> list[CsvCell]:
    """The CSV_COLUMNS cells in `backend`'s SQL; integer columns are numbers, written bare.
    Whether a column can be NULL comes from the table: a cell that never is needs no
    coalesce(), and SQLite cuts some of those by printf()'s format (store/sqlite/cells.py)."""
    table = sessions_table()
    cells = []
    for name in CSV_COLUMNS:
        column = _SOURCES.get(name, name)
        kind = _KINDS.get(name, CellKind.PLAIN)
        sql = backend.cell_sql(column, kind, FORMULA_PREFIXES)
        stored = table.c[column]
        number = kind is CellKind.PLAIN and isinstance(stored.type, Integer)
        cells.append(CsvCell(column, kind, sql, number, bool(stored.nullable)))
    return cells


def _line_columns(backend: StoreBackend) -> list[ColumnElement[Any]]:
    """What a range reads per session: its line's text before duration_s (with the comma),
    duration_s (a float), and the rest of the line (from the comma, with the CRLF).

    duration_s is formatted in Python (`_lines`), "%.6f" of the exact double: SQLite's printf
    rounds a 16-digit decimal (7278558.884838498 -> .884839) and PostgreSQL's float-to-numeric
    cast a 15-digit one, so neither gives Python's (and C's) digits.
    """
    cells = _cells(backend)
    duration = cells[_DURATION]
    return [
        CsvLine(cells[:_DURATION], trail=",").label("head"),
        literal_column(duration.sql).label("duration_s"),
        CsvLine(cells[_DURATION + 1 :], lead=",", trail="\r\n").label("tail"),
    ]


def _lines(rows: Iterable[Sequence[Any]]) -> str:
    """The CSV text of `rows` read by `_line_columns` (and the key after them, which orders
    the read): the one piece of each line that Python writes is duration_s, a number (not
    quoted)."""
    return "".join(
        [f"{head}{duration_s:.6f}{tail}" for head, duration_s, tail, _started, _id in rows]
    )


@dataclass(frozen=True, slots=True)
class _Range:
    """Sessions of one org with lo <= key < hi, or lo <= key <= last when hi is None."""

    org_id: str
    flt: Filter | None
    lo: Key
    hi: Key | None
    last: Key

    @property
    def upper(self) -> Key:
        """The highest key the range can hold (hi itself is not in it)."""
        return self.hi if self.hi is not None else self.last

    def select(
        self, backend: StoreBackend, tables: list[Table] | None
    ) -> Select[Any] | CompoundSelect[Any]:
        """The read of the range's lines, from the sessions table or from `tables` united."""
        columns = _line_columns(backend)
        return in_range(columns, self.org_id, self.flt, self.lo, self.hi, self.last, tables)


@functools.cache
def _worker_engine(url: str) -> Engine:
    """This worker process's own sync engine for `url` (one per process, kept for its life)."""
    return make_sync_engine(url)


def _read_range(engine: Engine, part: _Range) -> tuple[bytes, int]:
    """The CSV rows of `part` (UTF-8) read on the sync `engine`, and how many there are
    (blocking)."""
    chunks = []
    count = 0
    backend = backend_of(engine)
    with engine.connect() as conn:
        tables = backend.range_tables(conn, part.org_id, part.lo[0], part.upper[0])
        result = conn.execute(part.select(backend, tables))
        # the driver's own rows: plain tuples of text and a float cost less than Row objects,
        # and no column needs a result processor
        while rows := result.cursor.fetchmany(FETCH_ROWS):
            chunks.append(_lines(rows).encode())
            count += len(rows)
    return b"".join(chunks), count


def _encode_range(url: str, part: _Range) -> tuple[bytes, int]:
    """In a worker process: the CSV rows of `part` and how many there are."""
    return _read_range(_worker_engine(url), part)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _worker_start(parent_pid: int) -> None:
    """In a new worker: die with the parent (a `kill -9` of serve leaves no worker behind)."""
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


class ExportWorkers:
    """Processes that read export ranges in parallel, started on first use (or at once).

    Python's row objects hold the GIL, and the sqlite3 module lets go of it for every row it
    steps to, so threads reading at once mostly wait for each other (2 threads: 20% slower
    than 1); processes spread an export over cores. `close()` stops them; an ExportWorkers
    must be closed by whoever created it.

    `fork_now`: fork the processes now, for a process that has no other thread yet (the CLI,
    before its engine exists). A forked worker is ready at once, where a spawned one imports
    tunnelacct again first (0.5 s of CPU each, as long as 60,000 rows take). With another
    thread running they are spawned on first use, as always.
    """

    def __init__(self, size: int, *, fork_now: bool = False) -> None:
        if size < 1:
            raise ValueError(f"export workers: expected >= 1, not {size}")
        self.size = size
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        if fork_now and threading.active_count() == 1:
            self._start("fork")

    def _start(self, method: str) -> ProcessPoolExecutor:
        # spawn by default: the service has threads (capture readers, aiosqlite), which a fork
        # would copy the locks of but not the threads that release them
        pool = ProcessPoolExecutor(
            self.size,
            mp_context=mp.get_context(method),
            initializer=_worker_start,
            initargs=(os.getpid(),),
        )
        if method == "fork":
            # a forked worker flushes its copy of stdout's buffer when it exits
            sys.stdout.flush()
            sys.stderr.flush()
            pool.submit(os.getpid).result()  # forks every worker, before any thread starts
        self._pool = pool
        return pool

    def submit(self, url: str, part: _Range) -> asyncio.Future[tuple[bytes, int]]:
        if self._closed:
            raise RuntimeError("ExportWorkers used after close()")
        pool = self._pool if self._pool is not None else self._start("spawn")
        return asyncio.wrap_future(pool.submit(_encode_range, url, part))

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
) -> AsyncGenerator[tuple[bytes, int]]:
    """Yield the CSV of `org_id`'s sessions as (UTF-8 bytes, rows) chunks: the header, then
    a range each.

    The matching sessions as of the start, from the first to the last key, are cut into
    ranges of `page_size` sessions of the org (default PAGE_SIZE, or WORKER_RANGE_SIZE with
    workers) by an index-only walk; each range is its own short read, so memory stays constant
    however many rows there are and a long export never pins old database versions. Without
    `workers`, ranges are read one at a time in a thread; with them, 2 ranges per worker are
    in flight, yielded in order.
    """
    if page_size is None:
        page_size = PAGE_SIZE if workers is None else WORKER_RANGE_SIZE
    yield _HEADER, 0
    ends = await _first_last(engine, org_id, flt)
    if ends is None:
        return
    first, last = ends
    url = engine.url.render_as_string(hide_password=False)
    # This process reads a range in a thread on a sync engine of its own: the async drivers
    # step through rows in a thread of theirs, which then waits for the event loop's GIL
    # at every row. One range at a time: two threads stepping at once wait for each other.
    inline_engine = make_sync_engine(url)

    async def inline(part: _Range) -> tuple[bytes, int]:
        return await asyncio.to_thread(_read_range, inline_engine, part)

    window = 2 * workers.size if workers is not None else 1
    pending: collections.deque[asyncio.Future[tuple[bytes, int]]] = collections.deque()
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
        inline_engine.dispose()  # closes idle connections only: no wait, even when cut short


async def export_org_csv(
    engine: AsyncEngine,
    org_id: str,
    out: BinaryIO,
    *,
    page_size: int | None = None,
    flt: Filter | None = None,
    progress: Callable[[int], None] | None = None,
    workers: ExportWorkers | None = None,
) -> int:
    """Write the header and every session of `org_id` (matching `flt`) as CSV (UTF-8) to the
    binary `out`; return the rows.

    `progress(rows_so_far)` is called after each range.
    """
    count = 0
    pages = csv_pages(engine, org_id, flt=flt, page_size=page_size, workers=workers)
    async for chunk, rows in pages:
        out.write(chunk)
        count += rows
        if rows and progress is not None:
            progress(count)
    return count


def export_org(
    config: Config,
    org_id: str,
    out: BinaryIO,
    *,
    flt: Filter | None = None,
    progress: Callable[[int], None] | None = None,
    workers: int = 0,
) -> int:
    """Blocking `export_org_csv` against the configured store (for the CLI); returns rows.

    `workers` > 0 spreads the work over that many processes (0: this process only).
    """

    # forked before the engine starts its threads
    pool = ExportWorkers(workers, fork_now=True) if workers > 0 else None

    async def export() -> int:
        engine = make_engine(config.database.url)
        try:
            await check_schema(engine)
            known = configured_org_ids(config) | await stored_org_ids(engine)
            if org_id not in known:
                raise UnknownOrgError(org_id, sorted(known))
            return await export_org_csv(
                engine, org_id, out, flt=flt, progress=progress, workers=pool
            )
        finally:
            await engine.dispose()

    try:
        return asyncio.run(export())
    finally:
        if pool is not None:
            pool.close()
