"""SQLite: sessions stored as a few tables per org, each holding the sessions that started in
a span of UTC days, behind a view, so that a retention purge empties or drops whole expired
tables instead of deleting their rows one by one (issue 5).

The layout (migration 0006):

- `sessions_pYYYYMMDD_<N>d_<org id as UTF-8 hex>` (a partition): the sessions of one org that
  started in the N UTC days from YYYY-MM-DD, with the indexes of sessions. N follows the org's
  retention (`period_days()`: 1 day up to 30 days of retention), so an org has about 30 of
  them; an org kept forever has none. serve creates the next days' partitions ahead
  (`store.keep_partitions_ahead`); the writer only routes rows to the partition covering
  their org and start day, and to sessions_default when there is none, so a flush never
  changes the schema.
- `sessions_default`: what the sessions table was before 0006, and the rows no partition
  covers (today's until serve has made partitions ahead, orgs kept forever, late rows of
  dropped days). `move_default_rows()` (`tunnelacct db partition`) moves them into partitions.
- `sessions`: a view, UNION ALL of all of them, rebuilt with every partition created or
  dropped. Rows inserted into it go to sessions_default; a DELETE of it deletes from the
  tables (INSTEAD OF triggers); UPDATE it cannot. SQLite caps a compound SELECT at 500
  terms, so past VIEW_CHUNK partitions it unites views `sessions_v0`, `sessions_v1`, ... of
  VIEW_CHUNK partitions each.

Everything that reads sessions reads the view. Functions here take a sync SQLAlchemy connection
inside the caller's transaction (`AsyncConnection.run_sync` from the service).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import CheckConstraint, Connection, Engine, Index, MetaData, Table, select, text
from sqlalchemy.schema import CreateIndex, CreateTable

from tunnelacct.enums import SessionStatus
from tunnelacct.store.models import Org, SessionRecord, table_of

VIEW = "sessions"
DEFAULT_TABLE = "sessions_default"
INSERT_TRIGGER = "sessions_insert"
DELETE_TRIGGER = "sessions_delete"
VIEW_CHUNK = 400  # partitions per view; SQLite's SQLITE_MAX_COMPOUND_SELECT is 500
_PARTITION = re.compile(r"sessions_p(\d{8})_(\d{1,5})d_((?:[0-9a-f]{2})+)")
TABLES_PER_ORG = 30  # tables an org keeps, about (period_days)
_CHUNK_VIEW = re.compile(r"sessions_v\d+")
OUTLIVING_SUFFIX = "org_id_ended_at_outliving"  # a partition's index of sessions past its days


@dataclass(frozen=True, order=True, slots=True)
class Partition:
    """One org's sessions that started in `days` UTC days from `start`."""

    start: date
    days: int
    org_id: str
    name: str

    @property
    def begins(self) -> datetime:
        """The start of the partition's first day (naive UTC, as sessions times are stored)."""
        return datetime(self.start.year, self.start.month, self.start.day)

    @property
    def end(self) -> datetime:
        """The end of the partition's last day (naive UTC)."""
        return self.begins + timedelta(days=self.days)

    def covers(self, day: date) -> bool:
        """Whether sessions that started on `day` belong here (the org aside)."""
        return self.start <= day < self.start + timedelta(days=self.days)


def period_days(retention_days: int | None) -> int | None:
    """How many days one table of an org kept `retention_days` days spans: 1 up to
    TABLES_PER_ORG days, more beyond, so that an org has about TABLES_PER_ORG tables whatever
    its retention. None for an org kept forever: its rows are never purged, and stay in
    sessions_default."""
    if retention_days is None:
        return None
    return max(1, -(-retention_days // TABLES_PER_ORG))


def partition_name(org_id: str, start: date, days: int = 1) -> str:
    """`sessions_p20261125_1d_61636d65` for org "acme" on 2026-11-25 (one day)."""
    return f"sessions_p{start:%Y%m%d}_{days}d_{org_id.encode().hex()}"


def parse_partition(name: str) -> Partition | None:
    """The Partition a table name stands for; None for any other name."""
    match = _PARTITION.fullmatch(name)
    if match is None:
        return None
    try:
        start = datetime.strptime(match.group(1), "%Y%m%d").date()
        org_id = bytes.fromhex(match.group(3)).decode()
    except ValueError:
        return None
    days = int(match.group(2))
    if days < 1:
        return None
    return Partition(start, days, org_id, name)


def is_layout_name(name: str) -> bool:
    """Whether `name` is a table or view of this layout that no model describes."""
    return bool(
        name == DEFAULT_TABLE or _CHUNK_VIEW.fullmatch(name) or parse_partition(name) is not None
    )


def columns() -> list[str]:
    """The sessions columns, in the model's order (the view's order)."""
    return [c.name for c in table_of(SessionRecord).columns]


def partitions(conn: Connection) -> list[Partition]:
    """Every partition in the store, by day, then org."""
    names = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'sessions\\_p%' "
        "ESCAPE '\\'"
    ).scalars()
    return sorted(p for name in names if (p := parse_partition(str(name))) is not None)


@functools.lru_cache(maxsize=4096)
def table_named(name: str) -> Table:
    """The sessions columns as the table `name` of this layout (sessions_default or a
    partition), for reading that table alone."""
    model = table_of(SessionRecord)
    return Table(name, MetaData(), *(c._copy() for c in model.columns))


def begin_read(conn: Connection) -> None:
    """Open the connection's transaction for reading, unless one is open: what it reads next
    is one version of the store, its tables included (a partition made or dropped meanwhile
    is not seen, nor the rows moved into one)."""
    if not conn.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
        conn.exec_driver_sql("BEGIN")


def org_tables(conn: Connection, org_id: str, first: datetime, last: datetime) -> list[str]:
    """sessions_default and the partitions of `org_id` that hold its sessions started from
    `first` to `last` (both included), in the caller's transaction."""
    pattern = f"sessions\\_p%\\_{org_id.encode().hex()}"
    names = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE ? ESCAPE '\\'",
        (pattern,),
    ).scalars()
    lowest = first.astimezone(UTC).replace(tzinfo=None)
    highest = last.astimezone(UTC).replace(tzinfo=None)
    holding = [DEFAULT_TABLE]
    for name in names:
        part = parse_partition(str(name))
        if part is None or part.org_id != org_id:
            continue
        if part.begins <= highest and part.end > lowest:
            holding.append(part.name)
    return holding


def _partition_table(name: str) -> Table:
    """The sessions table of the model under another name, its indexes renamed after it.

    One constraint more: status is one of SessionStatus, so that the partial index of ongoing
    sessions finds every row that is not completed (a purge counts and keeps them by it).
    """
    model = table_of(SessionRecord)
    statuses = ", ".join(f"'{s.value}'" for s in SessionStatus)
    table = Table(
        name,
        MetaData(),
        *(c._copy() for c in model.columns),
        CheckConstraint(f"status IN ({statuses})", name=f"ck_{name}_status"),
    )
    for index in model.indexes:
        cols = [table.c[c.name] for c in index.columns]
        suffix = "_".join(c.name for c in cols)
        if index.dialect_options["sqlite"]["where"] is not None:
            suffix = f"{suffix}_ongoing"
        Index(f"ix_{name}_{suffix}", *cols, unique=index.unique, **index.dialect_kwargs)
    part = parse_partition(name)
    if part is not None:
        Index(
            f"ix_{name}_{OUTLIVING_SUFFIX}",
            table.c.org_id,
            table.c.ended_at,
            sqlite_where=text(outliving_condition(part)),
        )
    return table


def outliving_condition(part: Partition) -> str:
    """SQL: a session of `part` that ended after the partition's last day; the condition of
    its partial index of them (migration 0015), as a literal, so that a query that states it
    word for word may read that index.

    A retention purge empties a partition whose days are all before the cutoff: the completed
    sessions it keeps are those that ended after the cutoff, so after the partition's end, all
    of them in this index, which holds only the sessions that ran past midnight at the end of
    the partition's last day; a write of any other session evaluates the condition and skips
    the index. (The index of every session's end it replaces cost every write 15-20%.)
    """
    return f"ended_at >= '{part.end.isoformat(' ', 'microseconds')}'"


def _create_partition(conn: Connection, name: str) -> None:
    table = _partition_table(name)
    conn.execute(CreateTable(table, if_not_exists=True))
    for index in table.indexes:
        conn.execute(CreateIndex(index, if_not_exists=True))


def begin_write(conn: Connection) -> None:
    """Open the connection's transaction with the write lock, unless one is open.

    Python's sqlite3 module begins a transaction by itself only before INSERT, UPDATE and
    DELETE: CREATE and DROP outside one commit each on their own, so readers would see the
    view dropped and not yet created again (`no such table: sessions`).
    """
    if not conn.connection.driver_connection.in_transaction:  # type: ignore[union-attr]
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def schema_version(conn: Connection) -> int:
    """SQLite's count of schema changes: a partition created or dropped changes it."""
    return int(conn.exec_driver_sql("PRAGMA schema_version").scalar_one())


def routes(parts: list[Partition]) -> dict[tuple[str, str], str]:
    """(org, ISO day) -> the partition its sessions belong to, for the days `parts` cover."""
    return {
        (p.org_id, (p.start + timedelta(days=i)).isoformat()): p.name
        for p in parts
        for i in range(p.days)
    }


def org_periods(conn: Connection, logging_only: bool = False) -> dict[str, int]:
    """org -> period_days() of its retention, for every org not kept forever."""
    t = table_of(Org)
    stmt = select(t.c.id, t.c.retention_days).where(t.c.retention_days.is_not(None))
    if logging_only:
        stmt = stmt.where(t.c.logging.is_(True))
    return {str(org): period_days(int(days)) or 1 for org, days in conn.execute(stmt)}


def _span(
    mine: list[Partition], day: date, period: int, not_before: date | None
) -> tuple[date, int]:
    """Where a new partition of an org for `day` starts and how many days it spans: its
    period's slot on a grid of `period` days from 0001-01-01, clipped to the org's partitions
    `mine` around it (none covers `day`) and to `not_before`."""
    first = date.fromordinal(day.toordinal() - (day.toordinal() - 1) % period)
    last = first + timedelta(days=period)  # exclusive
    for p in mine:
        if p.start + timedelta(days=p.days) <= day:
            first = max(first, p.start + timedelta(days=p.days))
        elif p.start > day:
            last = min(last, p.start)
    if not_before is not None:
        first = max(first, min(not_before, day))
    return first, (last - first).days


def cover_days(
    conn: Connection,
    keys: set[tuple[str, date]],
    periods: dict[str, int],
    not_before: date | None = None,
) -> tuple[list[str], int]:
    """Create partitions so that every (org, day) of `keys` whose org has a period has one,
    each spanning its org's period (`_span()`), not starting before `not_before`; move into
    each created one the rows of sessions_default it covers; rebuild the view if any was
    created. Returns the names created and the rows moved. All in the caller's transaction
    (begun here, with the write lock).

    A session's rows are in the partition covering its org and start day if there is one, else
    in sessions_default: the writer routes by that, so a partition is never created without
    the rows it covers.
    """
    wanted = sorted((day, org) for org, day in keys if org in periods)
    parts = partitions(conn)
    if all(any(p.org_id == org and p.covers(day) for p in parts) for day, org in wanted):
        return [], 0
    begin_write(conn)
    parts = partitions(conn)  # as of the write lock
    made: list[Partition] = []
    for day, org in wanted:
        mine = [p for p in parts if p.org_id == org]
        if any(p.covers(day) for p in mine):
            continue
        start, days = _span(mine, day, periods[org], not_before)
        part = Partition(start, days, org, partition_name(org, start, days))
        _create_partition(conn, part.name)
        parts.append(part)
        made.append(part)
    moved = sum(_move_default(conn, p, p.begins, p.end) for p in made)
    if made:
        rebuild_view(conn)
    return [p.name for p in made], moved


def _move_default(conn: Connection, part: Partition, lo: datetime, hi: datetime) -> int:
    """Move the rows of sessions_default of `part`'s org that started in [lo, hi) into it."""
    quote = conn.dialect.identifier_preparer.quote
    default, cols = quote(DEFAULT_TABLE), ", ".join(quote(c) for c in columns())
    where = "org_id = ? AND started_at >= ? AND started_at < ?"
    args = (part.org_id, lo.isoformat(" ", "microseconds"), hi.isoformat(" ", "microseconds"))
    moved = conn.exec_driver_sql(
        f"INSERT INTO {quote(part.name)} ({cols}) SELECT {cols} FROM {default} "
        f"WHERE {where} ORDER BY started_at, id",
        args,
    ).rowcount
    conn.exec_driver_sql(f"DELETE FROM {default} WHERE {where}", args)
    return int(moved)


def _select_all(conn: Connection, sources: list[str]) -> str:
    quote = conn.dialect.identifier_preparer.quote
    cols = ", ".join(quote(c) for c in columns())
    return " UNION ALL ".join(f"SELECT {cols} FROM {quote(s)}" for s in sources)


def rebuild_view(conn: Connection) -> None:
    """(Re)create the sessions view over sessions_default and every partition, and its
    INSTEAD OF triggers, in the caller's transaction (begun here)."""
    begin_write(conn)
    quote = conn.dialect.identifier_preparer.quote
    old = conn.exec_driver_sql(
        "SELECT name FROM sqlite_master WHERE type = 'view' AND name LIKE 'sessions%'"
    ).scalars()
    for name in [VIEW, *(str(n) for n in old if _CHUNK_VIEW.fullmatch(str(n)))]:
        conn.exec_driver_sql(f"DROP VIEW IF EXISTS {quote(name)}")  # drops its trigger too
    sources = [DEFAULT_TABLE, *(p.name for p in partitions(conn))]
    if len(sources) > VIEW_CHUNK:
        chunks = [sources[i : i + VIEW_CHUNK] for i in range(0, len(sources), VIEW_CHUNK)]
        sources = []
        for n, chunk in enumerate(chunks):
            conn.exec_driver_sql(f"CREATE VIEW sessions_v{n} AS {_select_all(conn, chunk)}")
            sources.append(f"sessions_v{n}")
    conn.exec_driver_sql(f"CREATE VIEW {quote(VIEW)} AS {_select_all(conn, sources)}")
    cols = columns()
    conn.exec_driver_sql(
        f"CREATE TRIGGER {quote(INSERT_TRIGGER)} INSTEAD OF INSERT ON {quote(VIEW)} BEGIN "
        f"INSERT INTO {quote(DEFAULT_TABLE)} ({', '.join(quote(c) for c in cols)}) "
        f"VALUES ({', '.join('NEW.' + quote(c) for c in cols)}); END"
    )
    # A DELETE of the view (by hand: an erasure request) deletes each row from its table by
    # primary key; the purge deletes from the tables themselves.
    tables = [DEFAULT_TABLE, *(p.name for p in partitions(conn))]
    deletes = " ".join(f"DELETE FROM {quote(t)} WHERE id = OLD.id;" for t in tables)
    conn.exec_driver_sql(
        f"CREATE TRIGGER {quote(DELETE_TRIGGER)} INSTEAD OF DELETE ON {quote(VIEW)} "
        f"BEGIN {deletes} END"
    )


def move_default_rows(engine: Engine) -> int:
    """Move the rows of sessions_default into partitions, one org and day per transaction
    (creating the partitions, `cover_days()`); returns how many moved.

    For stores upgraded from before 0006, and rows the writer put there (days that serve had
    not made a partition for). The rows of orgs kept forever (and of orgs not in the store)
    stay: they are never purged. Safe beside a running writer.
    """
    quote = engine.dialect.identifier_preparer.quote
    with engine.connect() as conn:
        periods = org_periods(conn)
        days = conn.exec_driver_sql(
            f"SELECT DISTINCT org_id, substr(started_at, 1, 10) FROM {quote(DEFAULT_TABLE)}"
        ).all()
    moved = 0
    for org, day_text in sorted((str(org), str(day_text)) for org, day_text in days):
        if org not in periods:
            continue
        day = date.fromisoformat(day_text)
        with engine.begin() as conn:
            moved += cover_days(conn, {(org, day)}, periods)[1]
            part = next(p for p in partitions(conn) if p.org_id == org and p.covers(day))
            begins = datetime(day.year, day.month, day.day)
            moved += _move_default(conn, part, begins, begins + timedelta(days=1))
    return moved
