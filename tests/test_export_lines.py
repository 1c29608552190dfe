"""CSV lines written by the database (issue 21): byte for byte what Python's csv module writes
for the same cells, on rows with awkward text, on SQLite and PostgreSQL, in this process and
through export workers."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from tests.helpers.stores import ENGINES, migrated_store
from tunnelacct.query.export import ExportWorkers, export_org_csv
from tunnelacct.query.records import CSV_COLUMNS
from tunnelacct.store.engine import make_engine
from tunnelacct.store.models import SessionRecord
from tunnelacct.store.postgres.partitions import ensure_partitions

BASE = datetime(2026, 11, 23, 10, 40, 45, 123456, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Text that a CSV writer must quote, double, guard or pass through as it is.
AWKWARD = [
    'say "hi"',
    '"',
    '""',
    "a,b",
    "line\r\nbreak",
    "cr\ronly",
    "lf\nonly",
    "=1+1",
    "+1",
    "-1",
    "@SUM(A1)",
    "\tx",
    " x",
    "\r",
    "\uff1d1",
    "\uff0b1",
    "\uff0d1",
    "\uff20x",
    "Ærø 東京 🚀",
    "'quoted'",
    "a;b|c\td",
    "%s%w%%",
    "",
    "x",
    '="a",b',
    # around the guard's first comparison on SQLite (store/sqlite/cells.py): text starting
    # from "A" up to before the fullwidth "+" passes unguarded, the rest takes the full guard
    "A",
    "?x",
    "9lives",
    "\uff0a1",
    "\uff0c1",
    "\U0001f680x",
]
# SQLite text can hold a NUL (PostgreSQL's cannot): printf() would end the text there.
WITH_NUL = ["a\x00b", "\x00", '"\x00=', "=\x00"]
FREE_TEXT = (
    "client_id",
    "client_name",
    "user_id",
    "resource_id",
    "resource_name",
    "community_id",
    "gateway",
    "interface",
)
FORMULA_FIRSTS = "=+-@\t\r\n \uff1d\uff0b\uff0d\uff20"


@pytest.fixture(params=ENGINES)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_store(request.param, tmp_path) as url:
        yield url


def awkward_records(texts: list[str]) -> list[SessionRecord]:
    """A session per text, the text in every free-text column (rotated, so that cells differ
    within a row), with NULLs in every nullable column on every third row."""
    records = []
    for i, _ in enumerate(texts):
        names = {column: texts[(i + k) % len(texts)] for k, column in enumerate(FREE_TEXT)}
        nulls = i % 3 == 0
        if nulls:
            names.update(client_id=None, client_name=None, user_id=None, resource_id=None)
            names.update(resource_name=None)
        records.append(
            SessionRecord(
                id=uuid.UUID(int=(i + 1) * 0x1234_5678_9ABC_DEF1),
                org_id="acme",
                protocol="udp" if i % 2 else "tcp",
                ip_version=6 if i % 2 else 4,
                src_addr="fd00::2" if i % 2 else f"100.64.0.{i}",
                dst_addr="2001:db8::5" if i % 2 else "10.99.0.5",
                src_port=40000 + i,
                dst_port=443,
                started_at=BASE + timedelta(seconds=i, microseconds=7 * i),
                ended_at=None if nulls else BASE + timedelta(seconds=i + 1),
                last_seen_at=BASE + timedelta(seconds=i + 1),
                duration_s=1 / 128 + i / 3,
                bytes_tx=2**62 + i,
                bytes_rx=i,
                packets_tx=3,
                packets_rx=4,
                payload_bytes_tx=None if nulls else 5,
                payload_bytes_rx=None if nulls else 0,
                status="ongoing" if nulls else "completed",
                close_reason=None if nulls else "fin",
                midstream=i % 2 == 0,
                estimated=i % 4 == 0,
                incomplete=i % 5 == 0,
                **names,
            )
        )
    return records


def guarded(text: str | None) -> str | None:
    """The README's formula guard: a leading single quote before a formula-like first char."""
    if text and text[0] in FORMULA_FIRSTS:
        return "'" + text
    return text


def expected_csv(records: list[SessionRecord]) -> str:
    """The oracle: the header, then each record's cells formatted here from its Python values,
    written by Python's csv module (QUOTE_NONNUMERIC: numbers bare, text and NULLs quoted)."""
    out = io.StringIO(newline="")
    csv.writer(out, lineterminator="\r\n").writerow(CSV_COLUMNS)  # no name needs quotes
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_NONNUMERIC)
    for rec in sorted(records, key=lambda r: (r.started_at, r.id)):

        def time_cell(value: datetime | None) -> str | None:
            return None if value is None else value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        us = (rec.started_at - EPOCH) // timedelta(microseconds=1)
        cells: dict[str, Any] = {
            "session_id": str(rec.id),
            "org_id": guarded(rec.org_id),
            "started_at": time_cell(rec.started_at),
            "started_at_unix": f"{us // 10**6}.{us % 10**6:06d}",
            "ended_at": time_cell(rec.ended_at),
            "last_seen_at": time_cell(rec.last_seen_at),
            "duration_s": Decimal(f"{rec.duration_s:.6f}"),
            **{c: guarded(getattr(rec, c)) for c in FREE_TEXT},
            **{f: str(getattr(rec, f)).lower() for f in ("midstream", "estimated", "incomplete")},
        }
        writer.writerow([cells[c] if c in cells else getattr(rec, c) for c in CSV_COLUMNS])
    return out.getvalue()


async def export_both_ways(url: str, records: list[SessionRecord]) -> tuple[str, str]:
    """The CSV of acme read in this process and through 2 worker processes (small ranges)."""
    engine = make_engine(url)
    workers = ExportWorkers(2)
    try:
        await ensure_partitions(engine, {r.started_at.date() for r in records})
        async with AsyncSession(engine) as db:
            db.add_all(records)
            await db.commit()
        inline = io.BytesIO()
        await export_org_csv(engine, "acme", inline, page_size=4)
        spread = io.BytesIO()
        await export_org_csv(engine, "acme", spread, page_size=4, workers=workers)
    finally:
        await asyncio.to_thread(workers.close)
        await engine.dispose()
    return inline.getvalue().decode(), spread.getvalue().decode()


async def test_database_written_lines_equal_the_csv_modules_bytes(db_url: str) -> None:
    # Oracle: Python's csv module writing cells formatted here, and its reader reading back.
    texts = AWKWARD + (WITH_NUL if not db_url.startswith("postgresql") else [])
    records = awkward_records(texts)
    expected = expected_csv(awkward_records(texts))
    inline, spread = await export_both_ways(db_url, records)
    assert inline == expected
    assert spread == expected
    # and the csv module's reader gets every free-text value back, guarded, "" for a NULL
    read_back = list(csv.DictReader(io.StringIO(inline, newline="")))
    stored = sorted(awkward_records(texts), key=lambda r: (r.started_at, r.id))
    assert [{c: row[c] for c in FREE_TEXT} for row in read_back] == [
        {c: guarded(getattr(rec, c)) or "" for c in FREE_TEXT} for rec in stored
    ]
