"""Session opens and closes as JSON lines for SIEMs (Splunk, Loki, Vector), optional.

One object per line with the CSV's field names and order, plus `event` ("opened" or
"closed"); counters are numbers, times RFC 3339 UTC strings, NULLs null::

    {"session_id": "…", "org_id": "acme", …, "started_at": "2026-11-23T10:40:45.123456Z", …,
     "status": "completed", "close_reason": "fin", …, "event": "closed"}
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from tunnelacct.enums import EventKind
from tunnelacct.query.records import CSV_COLUMNS, json_duration, json_value, unix_time
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.store.rows import event_row
from tunnelacct.store.servewriter import ServeWriter


def event_line(event: SessionEvent, gateway: str) -> str:
    """The JSON line (without newline) of one OPENED or CLOSED event."""
    row = event_row(event, gateway)
    row["session_id"] = row.pop("id")
    row["started_at_unix"] = unix_time(row["started_at"])
    out: dict[str, Any] = {name: json_value(row[name]) for name in CSV_COLUMNS}
    out["duration_s"] = json_duration(row["duration_s"])
    out["event"] = event.kind.value
    return json.dumps(out, separators=(",", ":"), ensure_ascii=False)


class SessionEventLog:
    """Appends the opens and closes of submitted events to a file or standard output."""

    def __init__(self, path: str, gateway: str) -> None:
        self.path = path
        self._gateway = gateway
        self._out: TextIO = (
            sys.stdout if path == "-" else open(path, "a", encoding="utf-8")  # noqa: SIM115
        )
        self.lines = 0

    async def write(self, events: Sequence[SessionEvent]) -> None:
        """Write the OPENED and CLOSED events among `events` (checkpoints are not news)."""
        lines = [
            event_line(e, self._gateway) + "\n"
            for e in events
            if e.kind is not EventKind.CHECKPOINT
        ]
        if lines:
            await asyncio.to_thread(self._write, lines)

    def _write(self, lines: list[str]) -> None:
        self._out.writelines(lines)
        self._out.flush()
        self.lines += len(lines)

    def close(self) -> None:
        """Flush and close the file (standard output stays open); idempotent."""
        if self._out is not sys.stdout and not self._out.closed:
            self._out.close()


class WriterAndEventLog:
    """Where serve's session events go: the writer, and the session event log when one is
    configured (written first: a line per open and close)."""

    def __init__(self, writer: ServeWriter, events: SessionEventLog | None) -> None:
        self._writer = writer
        self._events = events

    async def seed(self, stored: list[SessionEvent]) -> None:
        """Sessions as the store holds them, which later events continue (SessionWriter.seed)."""
        await self._writer.seed(stored)

    async def room(self) -> None:
        """Wait while the writer holds as many sessions as it may (SessionWriter.room)."""
        await self._writer.room()

    async def submit(self, events: list[SessionEvent]) -> None:
        if self._events is not None:
            await self._events.write(events)
        await self._writer.submit(events)
