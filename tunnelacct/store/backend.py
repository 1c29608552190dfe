"""One backend per store engine: what SQLite and PostgreSQL do differently, behind one protocol.

`store.engine.backend_of()` chooses the backend of an engine, a connection or a database URL,
once; nothing outside `store/` asks which engine it is talking to. A backend writes a batch of
session rows, creates the partitions of the coming days, takes the purge lock, drops expired
partitions and deletes expired rows in batches, renders CSV cells in SQL, bounds a reading
statement in time, names the tables a range of sessions is read from, and moves rows that no
partition holds. The implementations are `sqlite/backend.py` and `postgres/backend.py`;
address matching, which a filter builds before it knows its engine, is compiled per dialect
instead (`store/addresses.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date, datetime
from typing import Protocol

from sqlalchemy import Connection, Engine, Table
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.expression import Executable

from tunnelacct.store.cells import CellKind
from tunnelacct.store.purgelock import PurgeLock
from tunnelacct.store.purgework import PurgeWork
from tunnelacct.store.reimport import FreshSession, Reimport
from tunnelacct.store.usage import UsageChanges


class BatchWrite(Protocol):
    """How one writer writes batches of session rows (codec.session_values) to its store."""

    flights: int  # batches written at once, on as many connections

    async def write(
        self, rows: list[tuple[object, ...]], fresh: list[FreshSession], usage: UsageChanges
    ) -> int:
        """Write `rows` and add `usage` to the rollup in one transaction, after deleting the
        stored rows that `fresh` sessions of an import replace (whose share `usage` loses);
        return how many were replaced."""


class StoreBackend(Protocol):
    """What one store engine does its own way."""

    name: str  # the SQLAlchemy dialect's name
    label: str  # its name in messages
    # whether each batch of a purge's deletes takes the writer's lock (SQLite: one writer at a
    # time; PostgreSQL locks only the batch's rows)
    purge_batches_take_write_lock: bool

    def batch_write(self, engine: AsyncEngine, reimport: Reimport | None) -> BatchWrite:
        """A new writer's way to write batches to `engine`."""

    async def ensure_days_ahead(self, engine: AsyncEngine, days: list[date]) -> None:
        """Create the sessions partitions of `days` (today first, then the next ones) ahead of
        their rows, where the layout wants them."""

    def purge_lock(self, engine: AsyncEngine, holder: str) -> PurgeLock:
        """The purge lock of one purge run by `holder`."""

    async def drop_expired(self, work: PurgeWork) -> None:
        """Drop or empty the partitions whose rows have expired (store/purgework.py)."""

    async def expired_batches(
        self, engine: AsyncEngine, org_id: str, cutoff: datetime, batch_size: int, emptied: set[str]
    ) -> Sequence[Executable]:
        """The statements that each delete a batch of at most `batch_size` expired rows of
        `org_id`, to run until one deletes fewer; tables in `emptied` have none left."""

    def range_tables(
        self, conn: Connection, org_id: str, first: datetime, last: datetime
    ) -> list[Table] | None:
        """The tables to read the sessions of `org_id` started from `first` to `last` from,
        each on its own and united in key order by the reader, or None to read the sessions
        table; on the sync `conn`, whose transaction (begun here if need be) the read of
        those tables must stay in."""

    def cell_sql(self, column: str, kind: CellKind, formula_prefixes: Sequence[str]) -> str:
        """SQL rendering `column` of sessions as its CSV cell text (NULL stays NULL); a
        FREE_TEXT cell starting with one of `formula_prefixes` gets a leading single quote."""

    async def statement_interrupter(
        self, conn: AsyncConnection, timeout_s: float
    ) -> Callable[[], None] | None:
        """Bound the statements of `conn`'s transaction to `timeout_s`; return how to stop the
        running one from the event loop, or None when the server stops it itself."""

    def day_text_sql(self, time_column: str) -> str:
        """SQL of the UTC day of a sessions time column, as an ISO date text."""

    async def lock_usage(self, conn: AsyncConnection) -> None:
        """Make the transaction of `conn` the only one writing usage_days until it ends (a
        rebuild: the writer's changes wait, then apply to what it wrote)."""

    def week_start_sql(self, day_column: str) -> str:
        """SQL of the Monday that begins the week of `day_column`, an ISO date text column,
        as an ISO date text."""

    def place_unpartitioned_rows(self, engine: Engine) -> int | None:
        """Move the sessions that no partition holds into partitions, on the sync `engine`,
        returning how many; None when the layout has no such rows."""
