"""Keyset paging of one org's sessions, in one order for every reader: (started_at, id).

The API's pages (`page()`: the rows after a cursor, and a count capped at a bound), the web
UI's newest-first pages (`page_before()`) and the CSV export's ranges (`first_and_last()`,
`bound_after()`, `in_range()`) are all keyset reads in that order (or its reverse), so a page
or a range is an index walk however deep it starts.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, CompoundSelect, Select, Table, func, select, tuple_, union_all

from tunnelacct.query.filters import Filter, filter_clause
from tunnelacct.store.models import SessionRecord, table_of

Key = tuple[datetime, uuid.UUID]  # (started_at, id): unique, the order of every read


def sessions_table() -> Table:
    """The sessions table every read here pages through."""
    return table_of(SessionRecord)


def session_key(table: Table) -> ColumnElement[Any]:
    """The key of a session row, (started_at, id), comparable as a tuple."""
    return tuple_(table.c.started_at, table.c.id)


def of_org(org_id: str, flt: Filter | None, table: Table) -> list[ColumnElement[bool]]:
    """The conditions of `org_id`'s sessions matching `flt` (all of them when None)."""
    where = [table.c.org_id == org_id]
    if flt is not None:
        where.append(filter_clause(flt, table))
    return where


def page(org_id: str, flt: Filter | None, after: Key | None, limit: int) -> Select[Any]:
    """The records of a page: `limit` + 1 matching sessions after `after` (the extra row says
    whether a next page exists), in key order."""
    table = sessions_table()
    where = of_org(org_id, flt, table)
    if after is not None:
        where.append(session_key(table) > after)
    return select(SessionRecord).where(*where).order_by(*key_order(table)).limit(limit + 1)


def page_before(org_id: str, flt: Filter | None, before: Key | None, limit: int) -> Select[Any]:
    """The records of a page newest first: `limit` + 1 matching sessions before `before` (the
    newest when None), in descending key order (the web UI's log; the same index, backwards)."""
    table = sessions_table()
    where = of_org(org_id, flt, table)
    if before is not None:
        where.append(session_key(table) < before)
    newest_first = (table.c.started_at.desc(), table.c.id.desc())
    return select(SessionRecord).where(*where).order_by(*newest_first).limit(limit + 1)


def capped_count(org_id: str, flt: Filter | None, cap: int) -> Select[Any]:
    """The number of matching sessions, counting stops past `cap` (a page stays fast)."""
    table = sessions_table()
    matching = select(table.c.id).where(*of_org(org_id, flt, table)).limit(cap + 1)
    return select(func.count()).select_from(matching.subquery())


def key_order(table: Table) -> tuple[ColumnElement[Any], ...]:
    """ORDER BY of every read: the key, ascending."""
    return (table.c.started_at, table.c.id)


def first_and_last(org_id: str, flt: Filter | None) -> tuple[Select[Any], Select[Any]]:
    """The reads of the first and the last matching key."""
    table = sessions_table()
    keys = select(table.c.started_at, table.c.id).where(*of_org(org_id, flt, table))
    first = keys.order_by(*key_order(table)).limit(1)
    last = keys.order_by(table.c.started_at.desc(), table.c.id.desc()).limit(1)
    return first, last


def bound_after(org_id: str, lo: Key, last: Key, size: int) -> Select[Any]:
    """The key `size` sessions of the org after `lo` (an index-only walk; none past `last`)."""
    table = sessions_table()
    key = session_key(table)
    return (
        select(table.c.started_at, table.c.id)
        .where(table.c.org_id == org_id, key >= lo, key <= last)
        .order_by(*key_order(table))
        .offset(size)
        .limit(1)
    )


def in_range(
    columns: list[ColumnElement[Any]],
    org_id: str,
    flt: Filter | None,
    lo: Key,
    hi: Key | None,
    last: Key,
    tables: Sequence[Table] | None = None,
) -> Select[Any] | CompoundSelect[Any]:
    """`columns`, then the key (started_at, id), of the matching sessions with lo <= key < hi
    (lo <= key <= last when hi is None), in key order: from the sessions table, or from each of
    `tables` (holding the sessions columns) united. `columns` name no table: each read gives
    them its own."""
    sources = [sessions_table()] if tables is None else list(tables)
    reads = []
    for table in sources:
        key = session_key(table)
        upper = key < hi if hi is not None else key <= last
        where = [*of_org(org_id, flt, table), key >= lo, upper]
        reads.append(select(*columns, *key_order(table)).where(*where))
    if len(reads) == 1:
        return reads[0].order_by(*key_order(sources[0]))
    # each table's rows come in its index's order, and SQLite merges them (MERGE (UNION ALL))
    return union_all(*reads).order_by(*(column.name for column in key_order(sources[0])))
