"""An import replaces the stored sessions of an earlier capture of the same traffic (issue 15).

Two captures of the same traffic (a full and a headers-only tcpdump of one interface, or one
file imported again) hold the same sessions, with start times a few microseconds apart. When
`tunnelacct import` writes a session for the first time, it looks for a stored session that is
the same one:

- the same gateway, protocol, initiator (src) address and port, and responder (dst) address
  and port;
- a start within MATCH_TOLERANCE_S of its own;
- not written by this import: the row's id carries another issuer's tag (`flowkey.SessionIds`).

The nearest such row is deleted in the transaction that writes the new session, so the store
holds each session once, with the counters of the last import. Sessions of one import never
replace each other (two captures merged into one import stay two sets of sessions, as the
import summary counts them), and a stored row is replaced at most once.

The candidates are found by id range: a session id begins with its start in Unix milliseconds,
so the rows that started near a batch's sessions are a few primary key ranges.
"""

from __future__ import annotations

import json
import operator
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import Connection

from tunnelacct.sessions.events import SessionEvent
from tunnelacct.sessions.flowkey import id_range, tag_hex
from tunnelacct.store.rows import ROW_COLUMNS
from tunnelacct.store.shares import take_stored_postgresql, take_stored_sqlite
from tunnelacct.store.usage import UsageChanges

MATCH_TOLERANCE_S = 0.001  # two captures of one interface differ by microseconds
WINDOW_GAP_S = 1.0  # starts further apart than this are looked up in separate id ranges

# (protocol, src address, src port, dst address, dst port), addresses as inet_ntop text
_Key = tuple[str, str, int, str, int]

_CANDIDATES_SQLITE = (
    "SELECT id, org_id, started_at, protocol, src_addr, src_port, dst_addr, dst_port "
    "FROM sessions WHERE id >= ? AND id <= ? AND gateway = ? "
    # not this import's own rows (their issuer tag's digits, flowkey.tag_hex): in a long
    # import they are most of each range, and only rows of other captures can be replaced
    "AND substr(id, 14, 11) NOT IN (SELECT value FROM json_each(?))"
)
# started_at bounds too, so that PostgreSQL reads only the partitions of those days; host()
# prints an address as inet_ntop does (tests/test_inet.py)
_CANDIDATES_POSTGRESQL = (
    "SELECT id, org_id, started_at, protocol, host(src_addr), src_port, host(dst_addr), "
    "dst_port FROM sessions WHERE id >= $1 AND id <= $2 AND gateway = $3 "
    "AND started_at >= $4 AND started_at <= $5"
)
_DELETE_POSTGRESQL = "DELETE FROM sessions WHERE id = $1 AND started_at = $2"


class IssuedIds(Protocol):
    """The import's issuer of session ids (flowkey.SessionIds), or what a writer in another
    process knows of it (store/writerchild.py): its tags, and whether it issued an id."""

    tags: set[int]

    def issued(self, ident: uuid.UUID) -> bool: ...


@dataclass(frozen=True, slots=True)
class StoredSession:
    """A stored session that a new one may replace: its id, org and start as the store holds
    them (SQLite: hex and naive UTC text; PostgreSQL: UUID and aware datetime)."""

    stored_id: Any
    org_id: str
    stored_start: Any
    ident: uuid.UUID
    started_ts: float
    key: _Key


# A session an import writes for the first time, as stored rows are matched to it: its start
# (epoch seconds) and its key.
FreshSession = tuple[float, _Key]
_PROTOCOL = ROW_COLUMNS.index("protocol")
_SRC_ADDR = ROW_COLUMNS.index("src_addr")
_SRC_PORT = ROW_COLUMNS.index("src_port")
_DST_ADDR = ROW_COLUMNS.index("dst_addr")
_DST_PORT = ROW_COLUMNS.index("dst_port")


def fresh_of_event(event: SessionEvent) -> FreshSession:
    """The FreshSession of the session `event` writes."""
    key = (event.proto.label, event.src_addr, event.src_port, event.dst_addr, event.dst_port)
    return (event.started_ts, key)


def fresh_of_row(started_ts: float, row: Sequence[Any]) -> FreshSession:
    """The FreshSession of session row `row` (ROW_COLUMNS), which started at `started_ts`."""
    key = (row[_PROTOCOL], row[_SRC_ADDR], row[_SRC_PORT], row[_DST_ADDR], row[_DST_PORT])
    return (started_ts, key)


def windows(fresh: Sequence[FreshSession]) -> list[tuple[float, float]]:
    """The spans of start times (epoch seconds) to look in for `fresh` sessions: their starts,
    widened by MATCH_TOLERANCE_S, one span per run of starts less than WINDOW_GAP_S apart."""
    starts = sorted(started_ts for started_ts, _key in fresh)
    spans: list[tuple[float, float]] = []
    first = last = starts[0]
    for ts in starts[1:]:
        if ts - last > WINDOW_GAP_S:
            spans.append((first - MATCH_TOLERANCE_S, last + MATCH_TOLERANCE_S))
            first = ts
        last = ts
    spans.append((first - MATCH_TOLERANCE_S, last + MATCH_TOLERANCE_S))
    return spans


def _ms(ts: float) -> int:
    return round(ts * 1_000_000) // 1000


def pair(
    fresh: Sequence[FreshSession],
    candidates: Sequence[StoredSession],
    is_own: Callable[[uuid.UUID], bool],
) -> list[StoredSession]:
    """The stored sessions that `fresh` sessions replace: for each, in order of start, the
    nearest candidate of the same key within MATCH_TOLERANCE_S that this import did not write
    and no other fresh session took."""
    by_key: dict[_Key, list[StoredSession]] = defaultdict(list)
    for candidate in candidates:
        if not is_own(candidate.ident):
            by_key[candidate.key].append(candidate)
    if not by_key:
        return []
    taken: set[uuid.UUID] = set()
    replaced = []
    for started_ts, key in sorted(fresh, key=operator.itemgetter(0)):
        best: StoredSession | None = None
        best_gap_s = MATCH_TOLERANCE_S
        for candidate in by_key.get(key, ()):
            gap_s = abs(candidate.started_ts - started_ts)
            if gap_s <= best_gap_s and candidate.ident not in taken:
                best, best_gap_s = candidate, gap_s
        if best is not None:
            taken.add(best.ident)
            replaced.append(best)
    return replaced


class Reimport:
    """Deletes, in the writer's transaction, the stored sessions that an import's new sessions
    replace (see the module docstring); `is_own` tells the ids this import issued."""

    def __init__(self, gateway: str, ids: IssuedIds) -> None:
        self.gateway = gateway
        self.ids = ids
        self.is_own: Callable[[uuid.UUID], bool] = ids.issued

    def replace_sqlite(
        self,
        conn: Connection,
        fresh: Sequence[FreshSession],
        table_of_row: Callable[[str, str], str],
        usage: UsageChanges,
    ) -> int:
        """SQLite: delete the rows `fresh` replace, each from the table that holds it
        (`table_of_row(org, ISO start day)`: its partition or sessions_default), and take
        their share out of the rollup (`usage`); returns how many. Runs in the caller's write
        transaction."""
        candidates = []
        own_tags = json.dumps([tag_hex(tag) for tag in self.ids.tags])
        for first_ts, last_ts in windows(fresh):
            low, high = id_range(_ms(first_ts), _ms(last_ts))
            result = conn.exec_driver_sql(
                _CANDIDATES_SQLITE, (low.hex, high.hex, self.gateway, own_tags)
            )
            for stored_id, org, started, proto, src, sport, dst, dport in result:
                begins = datetime.fromisoformat(started).replace(tzinfo=UTC)
                candidates.append(
                    StoredSession(
                        stored_id,
                        org,
                        started,
                        uuid.UUID(hex=stored_id),
                        begins.timestamp(),
                        (proto, src, sport, dst, dport),
                    )
                )
        replaced = pair(fresh, candidates, self.is_own)
        tables: dict[str, list[str]] = defaultdict(list)
        for stored in replaced:
            tables[table_of_row(stored.org_id, stored.stored_start[:10])].append(stored.stored_id)
        take_stored_sqlite(conn, tables, usage)
        quote = conn.dialect.identifier_preparer.quote
        for name, ids in tables.items():
            conn.exec_driver_sql(f"DELETE FROM {quote(name)} WHERE id = ?", [(i,) for i in ids])
        return len(replaced)

    async def replace_postgresql(
        self, driver: Any, fresh: Sequence[FreshSession], usage: UsageChanges
    ) -> int:
        """PostgreSQL: delete the rows `fresh` replace, on asyncpg connection `driver` inside
        the caller's transaction, and take their share out of the rollup (`usage`); returns
        how many."""
        candidates = []
        for first_ts, last_ts in windows(fresh):
            low, high = id_range(_ms(first_ts), _ms(last_ts))
            records = await driver.fetch(
                _CANDIDATES_POSTGRESQL,
                low,
                high,
                self.gateway,
                datetime.fromtimestamp(first_ts, UTC),
                datetime.fromtimestamp(last_ts, UTC),
            )
            for stored_id, org, started, proto, src, sport, dst, dport in records:
                candidates.append(
                    StoredSession(
                        stored_id,
                        org,
                        started,
                        uuid.UUID(bytes=stored_id.bytes),  # asyncpg has a UUID class of its own
                        started.timestamp(),
                        (proto, src, sport, dst, dport),
                    )
                )
        replaced = pair(fresh, candidates, self.is_own)
        if replaced:
            ids = [stored.stored_id for stored in replaced]
            starts = [stored.stored_start for stored in replaced]
            await take_stored_postgresql(driver, ids, starts, usage)
            await driver.executemany(
                _DELETE_POSTGRESQL, [(s.stored_id, s.stored_start) for s in replaced]
            )
        return len(replaced)
