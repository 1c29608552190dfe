"""Several gateways, one PostgreSQL store (issue 7): real writer processes at once.

Each gateway is its own process (tests/helpers/gatewayproc.py: a SessionWriter fed the
gateway's planned sessions). The oracle is the plan itself, what each process was given,
turned into the rows it must leave: no lost or duplicated sessions, exact per-gateway totals,
a restart that resumes and closes only its own gateway's ongoing sessions, and two gateways
that see the same 5-tuple at the same time keeping one row each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.helpers.gatewayproc import RESUME_DELTA, plan, resumed_close
from tests.helpers.pg import fresh_database, plain, read_rows
from tunnelacct.enums import EventKind
from tunnelacct.sessions.events import SessionEvent
from tunnelacct.store.migrate import migrate

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
GATEWAYS = ("gw-1", "gw-2", "gw-3")
SESSIONS = 4000  # per gateway and generation
COLUMNS = (
    "id, gateway, protocol, src_addr, src_port, dst_addr, dst_port, started_at, last_seen_at,"
    " bytes_tx, bytes_rx, packets_tx, packets_rx, status, close_reason"
)

Row = tuple[object, ...]


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh migrated PostgreSQL database (dropped afterwards)."""
    with fresh_database() as url:
        migrate(url)
        yield url


def run_gateways(barrier: Path, *commands: tuple[str, ...]) -> list[dict[str, object]]:
    """Run one gatewayproc process per command, released together through `barrier` (a fresh
    directory) once all are ready; wait for all; their JSON results."""
    barrier.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.gatewayproc", *cmd, "--barrier", str(barrier)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        for cmd in commands
    ]
    results = []
    try:
        deadline = time.monotonic() + 60
        while len(list(barrier.glob("ready-*"))) < len(procs):
            assert time.monotonic() < deadline, "gateway processes not ready within 60 s"
            assert all(p.poll() is None for p in procs), "a gateway process ended early"
            time.sleep(0.01)
        (barrier / "go").touch()
        for cmd, proc in zip(commands, procs, strict=True):
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, f"gatewayproc {cmd} exited {proc.returncode}:\n{err}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:  # only ours, by their Popen handles
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return results


def assert_overlapped(results: list[dict[str, object]]) -> None:
    """The processes were writing at the same time (each started before any finished)."""
    starts = [float(str(r["started"])) for r in results]
    ends = [float(str(r["ended"])) for r in results]
    assert max(starts) < min(ends), results


def expected_row(gateway: str, e: SessionEvent) -> tuple[str, Row]:
    """id hex -> the row `e` must leave (times as plain() reads them back)."""

    def at(ts: float) -> object:
        return plain(datetime.fromtimestamp(ts, UTC))

    return e.session_id.hex, (
        gateway,
        e.proto.label,
        e.src_addr,
        e.src_port,
        e.dst_addr,
        e.dst_port,
        at(e.started_ts),
        at(e.last_ts),
        e.bytes_tx,
        e.bytes_rx,
        e.packets_tx,
        e.packets_rx,
        "completed" if e.kind is EventKind.CLOSED else "ongoing",
        e.close_reason.value if e.close_reason else None,
    )


def stored(url: str) -> dict[str, Row]:
    rows = read_rows(url, f"SELECT {COLUMNS} FROM sessions")
    by_id = {str(r[0]): r[1:] for r in rows}
    assert len(by_id) == len(rows)
    return by_id


def totals(rows: dict[str, Row]) -> dict[str, tuple[int, int, int, int, int]]:
    """gateway -> (sessions, bytes_tx, bytes_rx, packets_tx, completed)."""
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0])
    for row in rows.values():
        t = out[str(row[0])]
        t[0] += 1
        t[1] += int(str(row[8]))
        t[2] += int(str(row[9]))
        t[3] += int(str(row[10]))
        t[4] += row[12] == "completed"
    return {gw: (t[0], t[1], t[2], t[3], t[4]) for gw, t in out.items()}


def store_totals(url: str) -> dict[str, tuple[int, int, int, int, int]]:
    """The same totals, summed by the server."""
    rows = read_rows(
        url,
        "SELECT gateway, count(*), sum(bytes_tx), sum(bytes_rx), sum(packets_tx),"
        " count(*) FILTER (WHERE status = 'completed') FROM sessions GROUP BY gateway",
    )
    return {str(r[0]): tuple(int(str(v)) for v in r[1:]) for r in rows}  # type: ignore[misc]


def write_commands(url: str, generation: int, gateways: tuple[str, ...]) -> list[tuple[str, ...]]:
    return [
        ("write", url, gw, "--generation", str(generation), "--sessions", str(SESSIONS))
        for gw in gateways
    ]


def closes(e: SessionEvent) -> bool:
    return e.kind is EventKind.CLOSED


def planned_rows(gateway: str, generation: int) -> dict[str, Row]:
    return dict(expected_row(gateway, p.event) for p in plan(gateway, generation, SESSIONS))


def test_three_gateway_processes_write_every_session_exactly_once(
    pg_url: str, tmp_path: Path
) -> None:
    results = run_gateways(tmp_path / "go", *write_commands(pg_url, 0, GATEWAYS))
    assert_overlapped(results)
    expected: dict[str, Row] = {}
    for gw in GATEWAYS:
        expected |= planned_rows(gw, 0)
    assert len(expected) == len(GATEWAYS) * SESSIONS  # the plan's ids are distinct
    got = stored(pg_url)
    assert got.keys() == expected.keys()  # none lost, none extra
    assert got == expected  # each row has its own gateway's final counters
    assert store_totals(pg_url) == totals(expected)
    for result in results:
        assert result["events"] == 3 * SESSIONS


def test_same_five_tuple_on_two_gateways_keeps_one_row_per_gateway(
    pg_url: str, tmp_path: Path
) -> None:
    run_gateways(tmp_path / "go0", *write_commands(pg_url, 0, GATEWAYS))
    shared = {
        gw: {p.event.session_id.hex for p in plan(gw, 0, SESSIONS) if p.shared} for gw in GATEWAYS
    }
    got = stored(pg_url)
    # the flow as every gateway saw it: protocol, both ends and start time
    by_flow: dict[Row, list[str]] = defaultdict(list)
    for sid, row in got.items():
        if any(sid in ids for ids in shared.values()):
            by_flow[row[1:7]].append(str(row[0]))
    assert len(by_flow) == len(shared["gw-1"]) > 0
    assert Counter(tuple(sorted(gws)) for gws in by_flow.values()) == {
        GATEWAYS: len(shared["gw-1"])
    }
    for gw, ids in shared.items():
        assert {sid for sid in ids if got[sid][0] == gw} == ids  # written by their own gateway
    # and with that gateway's counters, which differ between gateways
    want = {sid: row for gw in GATEWAYS for sid, row in planned_rows(gw, 0).items()}
    assert {sid: got[sid] for ids in shared.values() for sid in ids} == {
        sid: want[sid] for ids in shared.values() for sid in ids
    }


def test_restart_resumes_only_its_own_ongoing_sessions_while_others_write(
    pg_url: str, tmp_path: Path
) -> None:
    run_gateways(tmp_path / "go0", *write_commands(pg_url, 0, GATEWAYS))
    ongoing = {
        gw: {p.event.session_id.hex for p in plan(gw, 0, SESSIONS) if not closes(p.event)}
        for gw in GATEWAYS
    }
    assert all(ongoing.values())
    # gw-1 restarts (resume, then closes what it resumed) while gw-2 and gw-3 keep writing
    results = run_gateways(
        tmp_path / "go1", ("resume", pg_url, "gw-1"), *write_commands(pg_url, 1, GATEWAYS[1:])
    )
    assert_overlapped(results)
    assert set(results[0]["resumed_ids"]) == ongoing["gw-1"]  # type: ignore[arg-type]
    assert results[0]["resumed"] == len(ongoing["gw-1"])

    expected: dict[str, Row] = {}
    for gw in GATEWAYS:
        for p in plan(gw, 0, SESSIONS):
            final = p.event
            if gw == "gw-1" and not closes(final):
                final = resumed_close(final)
            expected.update([expected_row(gw, final)])
    for gw in GATEWAYS[1:]:
        expected |= planned_rows(gw, 1)
    got = stored(pg_url)
    assert got == expected
    # gw-1's totals: what it was given plus exactly one resume delta per resumed session
    given = plan("gw-1", 0, SESSIONS)
    assert store_totals(pg_url)["gw-1"] == (
        SESSIONS,
        sum(p.event.bytes_tx for p in given) + RESUME_DELTA[0] * len(ongoing["gw-1"]),
        sum(p.event.bytes_rx for p in given) + RESUME_DELTA[1] * len(ongoing["gw-1"]),
        sum(p.event.packets_tx for p in given) + RESUME_DELTA[2] * len(ongoing["gw-1"]),
        SESSIONS,
    )
    assert all(got[s][12] == "ongoing" for gw in GATEWAYS[1:] for s in ongoing[gw])
