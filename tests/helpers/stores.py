"""Stores for the query, export and API tests on either engine: `sqlite` (a file in a temp
dir) or `postgresql` (a fresh database, dropped afterwards), filled by the real CLI importer.

Module-scoped fixtures use these so that a file which only reads imports its capture once per
engine; tests that write get their own store.
"""

from __future__ import annotations

import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from alembic import command
from sqlalchemy import create_engine, pool, text
from sqlalchemy.engine import make_url

from tests.helpers.accuracy import run_cli
from tests.helpers.pg import ADMIN_URL, PREFIX, fresh_database, read_rows, require_postgresql
from tunnelacct.store.engine import sync_url
from tunnelacct.store.migrate import alembic_config, migrate
from tunnelacct.store.usage import FIGURE_COLUMNS

ENGINES = ("sqlite", "postgresql")
DATA = Path(__file__).resolve().parent.parent / "data"
CONFIG = DATA / "wg-small.toml"


@contextmanager
def empty_store(kind: str, tmp_dir: Path) -> Iterator[str]:
    """The URL of an empty, unmigrated store of `kind` (a PostgreSQL one is dropped after)."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp_dir / 'store.db'}"
        return
    with fresh_database() as url:
        yield url


@contextmanager
def migrated_store(kind: str, tmp_dir: Path) -> Iterator[str]:
    """The URL of a store of `kind` migrated to the newest schema."""
    with empty_store(kind, tmp_dir) as url:
        migrate(url)
        yield url


def import_capture(url: str, pcap: Path = DATA / "wg-small.pcap", config: Path = CONFIG) -> None:
    """Import `pcap` with the real CLI into the store at `url` ($TUNNELACCT_DATABASE_URL)."""
    run_cli("import", "--config", str(config), str(pcap), env={"TUNNELACCT_DATABASE_URL": url})


@contextmanager
def imported_store(
    kind: str, tmp_dir: Path, pcap: Path = DATA / "wg-small.pcap", config: Path = CONFIG
) -> Iterator[str]:
    """The URL of a store of `kind` filled by importing `pcap` with `config`."""
    with empty_store(kind, tmp_dir) as url:
        import_capture(url, pcap, config)
        yield url


@contextmanager
def copied_store(template_url: str, tmp_dir: Path) -> Iterator[str]:
    """A copy of the store at `template_url` (which nothing may be connected to), for a test
    that writes: a SQLite backup into tmp_dir, or `CREATE DATABASE ... TEMPLATE` (dropped
    after). Much faster than importing the capture again."""
    if not template_url.startswith("postgresql"):
        path = tmp_dir / "copy.db"
        source = make_url(template_url).database
        with closing(sqlite3.connect(str(source))) as src, closing(sqlite3.connect(path)) as dst:
            src.backup(dst)
        yield f"sqlite:///{path}"
        return
    require_postgresql()
    name = PREFIX + uuid.uuid4().hex[:12]
    template = make_url(template_url).database
    admin = create_engine(
        sync_url(ADMIN_URL), poolclass=pool.NullPool, isolation_level="AUTOCOMMIT"
    )
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        try:
            yield make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.dispose()


def _bound(url: str, sql: str, params: tuple[object, ...]) -> tuple[str, dict[str, object]]:
    """`?` placeholders as `:p0, :p1, ...`; aware datetimes as SQLite stores them there."""
    names = iter(range(len(params)))
    named = re.sub(r"\?", lambda _m: f":p{next(names)}", sql)
    sqlite_side = not url.startswith("postgresql")
    values: dict[str, object] = {}
    for i, value in enumerate(params):
        if sqlite_side and isinstance(value, datetime):
            value = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
        values[f"p{i}"] = value
    return named, values


def query(url: str, sql: str, *params: object) -> list[tuple[Any, ...]]:
    """Rows of `sql` (`?` parameters; times as aware datetimes) on the store at `url`, read
    without tunnelacct's types, values as SQLite stores them (pg.py `plain`): one oracle for
    both engines, as tests/helpers/sqlite.py `raw_query` is for SQLite."""
    named, values = _bound(url, sql, params)
    return read_rows(url, named, values)


def execute(url: str, sql: str, *params: object) -> None:
    """Run one statement (`?` parameters; times as aware datetimes) on `url` and commit."""
    named, values = _bound(url, sql, params)
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text(named), values)
    finally:
        engine.dispose()


REFUSED = "refused by a test trigger"


def refuse_writes(url: str, table: str, verb: str) -> None:
    """Make every `verb` ("INSERT", "UPDATE") of `table` fail from now on, as a store that
    refuses a write does: a trigger raising REFUSED, on either engine."""
    trigger = f"refuse_{verb.lower()}_{table}"
    if not url.startswith("postgresql"):
        execute(
            url,
            f"CREATE TRIGGER {trigger} BEFORE {verb} ON {table}"
            f" BEGIN SELECT RAISE(ABORT, '{REFUSED}'); END",
        )
        return
    execute(
        url,
        f"CREATE FUNCTION {trigger}() RETURNS trigger LANGUAGE plpgsql"
        f" AS $$ BEGIN RAISE EXCEPTION '{REFUSED}'; END $$",
    )
    execute(
        url,
        f"CREATE TRIGGER {trigger} BEFORE {verb} ON {table}"
        f" FOR EACH ROW EXECUTE FUNCTION {trigger}()",
    )


def allow_writes(url: str, table: str, verb: str) -> None:
    """Undo refuse_writes(url, table, verb): the store takes those writes again."""
    trigger = f"refuse_{verb.lower()}_{table}"
    if not url.startswith("postgresql"):
        execute(url, f"DROP TRIGGER {trigger}")
        return
    execute(url, f"DROP TRIGGER {trigger} ON {table}")
    execute(url, f"DROP FUNCTION {trigger}()")


def alembic_to(url: str, revision: str, *, down: bool = False) -> None:
    """Alembic upgrade (or downgrade) of the store at `url` to `revision`."""
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    cfg = alembic_config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            (command.downgrade if down else command.upgrade)(cfg, revision)
    finally:
        engine.dispose()


def dashed(hex_id: object) -> str:
    """A session id as the API and the CSV show it, from its 32 stored hex digits."""
    return str(uuid.UUID(hex=str(hex_id)))


def session_rows(url: str) -> list[dict[str, Any]]:
    """Every session row, read without tunnelacct's types, with `id` a UUID and `started_at`
    an aware UTC datetime (the rest as SQLite stores it)."""
    columns = [
        str(name)
        for (name,) in read_rows(
            url,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'sessions'"
            " ORDER BY ordinal_position"
            if url.startswith("postgresql")
            else "SELECT name FROM pragma_table_info('sessions') ORDER BY cid",
        )
    ]
    rows = [dict(zip(columns, r, strict=True)) for r in read_rows(url, "SELECT * FROM sessions")]
    for row in rows:
        row["id"] = uuid.UUID(hex=str(row["id"]))
        row["started_at"] = datetime.fromisoformat(str(row["started_at"])).replace(tzinfo=UTC)
    return rows


_TRAFFIC = ("bytes_tx", "bytes_rx", "packets_tx", "packets_rx")


def usage_totals(url: str) -> dict[str, tuple[int, ...]]:
    """org -> the usage rollup summed over every day and group: bytes and packets each way,
    sessions started, sessions completed."""
    sums = ", ".join(
        f"SUM({name})" for name in (*_TRAFFIC, "sessions_started", "sessions_completed")
    )
    rows = read_rows(url, f"SELECT org_id, {sums} FROM usage_days GROUP BY org_id")
    return {str(org): tuple(int(str(value)) for value in figures) for org, *figures in rows}


def session_totals(url: str) -> dict[str, tuple[int, ...]]:
    """org -> what its session rows add up to, as usage_totals() reads the rollup: the
    rollup's oracle, which holds each stored session once."""
    sums = ", ".join(f"SUM({name})" for name in _TRAFFIC)
    completed = "SUM(CASE WHEN status = 'completed' THEN 1 ELSE 0 END)"
    rows = read_rows(
        url, f"SELECT org_id, {sums}, COUNT(*), {completed} FROM sessions GROUP BY org_id"
    )
    return {str(org): tuple(int(str(value)) for value in figures) for org, *figures in rows}


def assert_months_sum_their_days(url: str) -> None:
    """usage_months holds, per org, month and group, the sum of its usage_days rows: a row for
    each month and group that has day rows, and no other."""
    group = "org_id, client_id, user_id, resource_id, protocol, gateway"
    sums = ", ".join(f"SUM({name})" for name in FIGURE_COLUMNS)
    from_days = read_rows(
        url,
        f"SELECT substr(day, 1, 7), {group}, {sums} FROM usage_days "
        f"GROUP BY substr(day, 1, 7), {group}",
    )
    stored = read_rows(url, f"SELECT month, {group}, {', '.join(FIGURE_COLUMNS)} FROM usage_months")

    def normal(rows: list[tuple[Any, ...]]) -> list[tuple[str, ...]]:
        return sorted(tuple(str(value) for value in row) for row in rows)

    assert normal(stored) == normal(from_days)
