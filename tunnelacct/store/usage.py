"""The usage rollup's upkeep (issue 18): what each write of session rows adds to usage_days.

A session's share of the rollup is a function of its row alone (`session_usage`): its bytes
and packets per UTC day of their packets (sessions/days.py), +1 session started on its first
packet's day, +1 completed on its last packet's day once it has ended. Each write adds, per
session written, its share now minus its share as the store held it before (`UsageChanges`),
in the transaction that writes the rows: a checkpoint adds what came since the last one, a
re-imported session that replaces a stored row takes that row's share away, and a write
that failed and is tried again adds nothing twice: since the failed attempt may have
committed (a connection lost during COMMIT), the retry adds its sessions' whole shares less
those of their rows as the store holds them then (`recheck`, store/shares.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tunnelacct.enums import EventKind, IpProto
from tunnelacct.sessions.days import DAY_S, DayMark, day_date, day_of, traffic_by_day
from tunnelacct.sessions.events import SessionEvent

if TYPE_CHECKING:  # the importer's process builds usage changes without SQLAlchemy
    from sqlalchemy import Dialect

# (org_id, day as ISO date, client_id, user_id, resource_id, protocol, gateway); '' for none
UsageKey = tuple[str, str, str, str, str, str, str]
KEY_COLUMNS = ("org_id", "day", "client_id", "user_id", "resource_id", "protocol", "gateway")
FIGURE_COLUMNS = (
    "bytes_tx",
    "bytes_rx",
    "packets_tx",
    "packets_rx",
    "sessions_started",
    "sessions_completed",
)
USAGE_COLUMNS = KEY_COLUMNS + FIGURE_COLUMNS
# usage_months: the same with the month ("2026-11") in place of the day
MONTH_KEY_COLUMNS = ("org_id", "month", *KEY_COLUMNS[2:])
MONTH_COLUMNS = MONTH_KEY_COLUMNS + FIGURE_COLUMNS
_CLOSED = EventKind.CLOSED
_PROTOCOL_LABELS = {proto: proto.label for proto in IpProto}


@dataclass(frozen=True, slots=True)
class StoredShare:
    """What the rollup holds of one stored session row: enough of the row to recompute it."""

    org_id: str
    client_id: str | None
    user_id: str | None
    resource_id: str | None
    protocol: str
    gateway: str
    started_ts: float
    last_ts: float
    completed: bool
    bytes_tx: int
    bytes_rx: int
    packets_tx: int
    packets_rx: int
    day_marks: tuple[DayMark, ...]


_ISO_DAYS: dict[int, str] = {}


def iso_day(day: int) -> str:
    """Day number `day` as an ISO date (cached: a writer sees a few days at a time)."""
    text = _ISO_DAYS.get(day)
    if text is None:
        if len(_ISO_DAYS) > 4096:
            _ISO_DAYS.clear()
        text = _ISO_DAYS[day] = day_date(day).isoformat()
    return text


class UsageChanges:
    """The changes one write makes to usage_days, summed per key."""

    def __init__(self) -> None:
        self.by_key: dict[UsageKey, list[int]] = {}
        # session rows (store/codec.py ROW_COLUMNS) whose whole share is added: the write takes
        # away, in its transaction, the share of the row the store holds for each (if any)
        self.recheck: list[tuple[object, ...]] = []

    def __bool__(self) -> bool:
        return bool(self.by_key)

    def add_event(self, event: SessionEvent, before: SessionEvent | None, gateway: str) -> None:
        """Add the share of the row `event` writes, less that of the row written before for the
        same session (`before`; None for its first write).

        `gateway` is the writer's own: the group's unless the event carries its own (a flow
        exporter's), as the row's gateway column (codec.session_values).
        """
        if event.gateway is not None:
            gateway = event.gateway
        who = event.attribution
        org = who.org_id
        client = who.client_id or ""
        user = who.user_id or ""
        resource = who.resource_id or ""
        protocol = _PROTOCOL_LABELS[event.proto]
        last_day = int(event.last_ts // DAY_S)
        completed = 1 if event.kind is _CLOSED else 0
        if not event.day_marks and int(event.started_ts // DAY_S) == last_day:
            # most writes: a session all on one day so far (so was its write before, if any);
            # inlined, as it is most of the upkeep's cost
            if before is None:
                bytes_tx = event.bytes_tx
                bytes_rx = event.bytes_rx
                packets_tx = event.packets_tx
                packets_rx = event.packets_rx
                started = 1
            else:
                bytes_tx = event.bytes_tx - before.bytes_tx
                bytes_rx = event.bytes_rx - before.bytes_rx
                packets_tx = event.packets_tx - before.packets_tx
                packets_rx = event.packets_rx - before.packets_rx
                started = 0
            day_text = _ISO_DAYS.get(last_day) or iso_day(last_day)
            key = (org, day_text, client, user, resource, protocol, gateway)
            sums = self.by_key.get(key)
            if sums is None:
                self.by_key[key] = [bytes_tx, bytes_rx, packets_tx, packets_rx, started, completed]
            else:
                sums[0] += bytes_tx
                sums[1] += bytes_rx
                sums[2] += packets_tx
                sums[3] += packets_rx
                sums[4] += started
                sums[5] += completed
            return
        group = (client, user, resource, protocol, gateway)
        totals = (event.bytes_tx, event.bytes_rx, event.packets_tx, event.packets_rx)
        for day, bytes_tx, bytes_rx, packets_tx, packets_rx in traffic_by_day(
            event.day_marks, last_day, totals
        ):
            key = (org, iso_day(day), *group)
            self._add(key, bytes_tx, bytes_rx, packets_tx, packets_rx, 0, 0)
        if before is None:
            self._add((org, iso_day(day_of(event.started_ts)), *group), 0, 0, 0, 0, 1, 0)
        else:
            before_totals = (before.bytes_tx, before.bytes_rx, before.packets_tx, before.packets_rx)
            for day, bytes_tx, bytes_rx, packets_tx, packets_rx in traffic_by_day(
                before.day_marks, day_of(before.last_ts), before_totals
            ):
                key = (org, iso_day(day), *group)
                self._add(key, -bytes_tx, -bytes_rx, -packets_tx, -packets_rx, 0, 0)
        if completed:
            self._add((org, iso_day(last_day), *group), 0, 0, 0, 0, 0, 1)

    def add_changes(self, other: UsageChanges) -> None:
        """Add the changes `other` holds (those of sessions complete in one write, summed where
        they ended: store/complete.py)."""
        for key, figures in other.by_key.items():
            self._add(key, *figures)

    def add_rechecked(self, event: SessionEvent, row: tuple[object, ...], gateway: str) -> None:
        """Add the whole share of the row `event` writes (`row`), to be less that of the row the
        store holds for the session when the write runs: after a write of unknown outcome."""
        self.add_event(event, None, gateway)
        self.recheck.append(row)

    def take_stored(self, stored: StoredShare) -> None:
        """Take away the share of a stored row that is deleted (an import replaces it)."""
        self._stored(stored, -1, None)

    def add_stored(self, stored: StoredShare, first_day: str, last_day: str) -> None:
        """Add the share of a stored row on the days `first_day`..`last_day` (ISO, inclusive):
        a rebuild from the session rows."""
        self._stored(stored, 1, (first_day, last_day))

    def _stored(self, stored: StoredShare, sign: int, within: tuple[str, str] | None) -> None:
        org = stored.org_id
        group = (
            stored.client_id or "",
            stored.user_id or "",
            stored.resource_id or "",
            stored.protocol,
            stored.gateway,
        )

        def counted(day: str) -> bool:
            return within is None or within[0] <= day <= within[1]

        totals = (stored.bytes_tx, stored.bytes_rx, stored.packets_tx, stored.packets_rx)
        last_day = day_of(stored.last_ts)
        for day, bytes_tx, bytes_rx, packets_tx, packets_rx in traffic_by_day(
            stored.day_marks, last_day, totals
        ):
            if counted(iso_day(day)):
                key = (org, iso_day(day), *group)
                self._add(
                    key,
                    sign * bytes_tx,
                    sign * bytes_rx,
                    sign * packets_tx,
                    sign * packets_rx,
                    0,
                    0,
                )
        started_day = iso_day(day_of(stored.started_ts))
        if counted(started_day):
            self._add((org, started_day, *group), 0, 0, 0, 0, sign, 0)
        if stored.completed and counted(iso_day(last_day)):
            self._add((org, iso_day(last_day), *group), 0, 0, 0, 0, 0, sign)

    def _add(
        self,
        key: UsageKey,
        bytes_tx: int,
        bytes_rx: int,
        packets_tx: int,
        packets_rx: int,
        started: int,
        completed: int,
    ) -> None:
        sums = self.by_key.get(key)
        if sums is None:
            self.by_key[key] = [bytes_tx, bytes_rx, packets_tx, packets_rx, started, completed]
            return
        sums[0] += bytes_tx
        sums[1] += bytes_rx
        sums[2] += packets_tx
        sums[3] += packets_rx
        sums[4] += started
        sums[5] += completed

    def rows(self) -> list[tuple[object, ...]]:
        """The changes as USAGE_COLUMNS rows, in key order (two writes at once lock the rows
        they share in the same order), without those that change nothing."""
        return [(*key, *figures) for key, figures in sorted(self.by_key.items()) if any(figures)]

    def month_rows(self) -> list[tuple[object, ...]]:
        """The changes summed per month, as MONTH_COLUMNS rows for usage_months, in key order,
        without those that change nothing."""
        by_month: dict[tuple[str, ...], list[int]] = {}
        for key, figures in self.by_key.items():
            month_key = (key[0], key[1][:7], *key[2:])
            sums = by_month.get(month_key)
            if sums is None:
                by_month[month_key] = list(figures)
                continue
            for index, figure in enumerate(figures):
                sums[index] += figure
        return [(*key, *figures) for key, figures in sorted(by_month.items()) if any(figures)]


def usage_upsert_sql(dialect: Dialect, placeholders: list[str], *, months: bool = False) -> str:
    """INSERT one usage_days row of changes (USAGE_COLUMNS), or add them to the row of its
    key; with `months`, one usage_months row (MONTH_COLUMNS)."""
    quote = dialect.identifier_preparer.quote
    table = quote("usage_months" if months else "usage_days")
    columns = ", ".join(quote(c) for c in (MONTH_COLUMNS if months else USAGE_COLUMNS))
    keys = ", ".join(quote(c) for c in (MONTH_KEY_COLUMNS if months else KEY_COLUMNS))
    sums = ", ".join(
        f"{quote(c)} = {table}.{quote(c)} + excluded.{quote(c)}" for c in FIGURE_COLUMNS
    )
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join(placeholders)}) "
        f"ON CONFLICT ({keys}) DO UPDATE SET {sums}"
    )
