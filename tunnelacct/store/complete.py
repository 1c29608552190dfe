"""Sessions complete in one write: their rows built where they end, written as they come.

An import writes most sessions once: each is a CLOSED event of a session that no earlier
event named. Such a session needs none of what the writer does for a session written in
several snapshots (coalescing its events, knowing what the rollup already holds of it): its
row is its event's, and its share of the usage rollup is its whole share. `tunnelacct import`
therefore builds these rows and their rollup in its own process, which has time to spare while
its writer child writes, and sends them instead of the events (store/writerchild.py). The
child's SessionWriter writes them as they come (`submit_complete`), rows and rollup in one
transaction. The child's event loop thread then does about 40% of the work it did for
events (issue 21, docs/performance-sessions.md "Rows built where the sessions end").

No SQLAlchemy here: the importer's process never imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tunnelacct.sessions.events import SessionEvent
from tunnelacct.store.rows import DriverValues, session_values
from tunnelacct.store.usage import UsageChanges


@dataclass(slots=True)
class CompleteSessions:
    """Rows of sessions complete in one write, each new to the writer, and their whole share
    of the usage rollup.

    `rows` are ROW_COLUMNS tuples in the values the store's driver takes (rows.py), `starts`
    each row's start in epoch seconds (what an import matches stored rows by: reimport.py).
    """

    rows: list[tuple[Any, ...]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    usage: UsageChanges = field(default_factory=UsageChanges)

    def add(self, event: SessionEvent, gateway: str, driver: DriverValues) -> None:
        """Add the session of `event`, a CLOSED event of a session no earlier event named;
        `gateway` and `driver` as session_values() takes them."""
        self.rows.append(session_values(event, gateway, driver))
        self.starts.append(event.started_ts)
        self.usage.add_event(event, None, gateway)
