"""Repeated kill -9 under load (issue 16, the fault suite): the real `serve` is killed with
SIGKILL 30 times, at random moments while a capture replays at its recorded pace, on SQLite and
on PostgreSQL. Each life replays a capture of its own (sessions no other life has), so across
all lives each session can have one row at most.

After every kill the SQLite file passes `integrity_check`. At the end, after a clean last life:
- every completed row seen before a kill is still there, unchanged, exactly once;
- every ongoing row seen before a kill is still there (same id) with counters never lower:
  what was checkpointed is never lost, and a resumed session is never split;
- no two rows share a session (5-tuple), and no row counts more than the capture holds
  (tshark's count of its stream); a session that ended by FIN counts exactly that.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks.synth import synth_pcap
from tests.helpers.oracle import OracleSession, tshark_sessions
from tests.helpers.serving import Serve, write_config
from tests.helpers.stores import ENGINES, empty_store, session_rows
from tests.helpers.waiting import WAIT_S

pytestmark = pytest.mark.hardening

DATA = Path(__file__).parents[1] / "data"
BASE = DATA / "wg-small.toml"
KILLS = 30
FLOWS_PER_LIFE = 60
PACKETS_PER_LIFE = 1500
PACE_PPS = 500.0  # each life's capture spans 3 s at its recorded pace
COUNTERS = ("bytes_tx", "bytes_rx", "packets_tx", "packets_rx")

SessionKey = tuple[str, str, int, str, int]


def _key(row: dict[str, Any]) -> SessionKey:
    return (
        str(row["protocol"]),
        str(row["src_addr"]),
        int(row["src_port"]),
        str(row["dst_addr"]),
        int(row["dst_port"]),
    )


def _counters(row: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(row[name]) for name in COUNTERS)


def _oracle_counters(session: OracleSession) -> tuple[int, ...]:
    return (session.bytes_tx, session.bytes_rx, session.packets_tx, session.packets_rx)


@pytest.fixture(params=ENGINES)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with empty_store(request.param, tmp_path) as url:
        yield url


def _life_config(tmp_path: Path, life: int) -> tuple[Path, Path]:
    """The capture and the config of one life: its own sessions, replayed at their pace."""
    pcap = tmp_path / f"life{life}.pcap"
    synth_pcap(
        pcap,
        PACKETS_PER_LIFE,
        FLOWS_PER_LIFE,
        seed=life,
        rate_pps=PACE_PPS,
        first_flow=life * FLOWS_PER_LIFE,
    )
    config = write_config(
        BASE,
        tmp_path / f"life{life}.toml",
        {
            # sessions stay open across a restart (resumed), and are checkpointed often
            "timeouts": {"tcp_idle": 60, "udp_idle": 60, "checkpoint": 0.5},
            "writer": {"flush_interval": 0.1},
        },
        captures=[{"pcap": str(pcap), "speed": 1.0}],
    )
    return pcap, config


def _integrity(url: str) -> str:
    if not url.startswith("sqlite"):
        return "ok"  # PostgreSQL: its own WAL recovery; the row checks below still apply
    with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
        result = db.execute("PRAGMA integrity_check").fetchall()
    db.close()
    return ",".join(str(r[0]) for r in result)


def test_serve_killed_30_times_loses_splits_and_duplicates_nothing(
    tmp_path: Path, store_url: str
) -> None:
    chance = random.Random(16)
    truth: dict[SessionKey, OracleSession] = {}
    completed_seen: dict[Any, dict[str, Any]] = {}
    ongoing_seen: dict[Any, tuple[int, ...]] = {}
    for life in range(KILLS + 1):
        pcap, config = _life_config(tmp_path, life)
        for session in tshark_sessions(pcap):
            assert session.key not in truth, "each life's capture has sessions of its own"
            truth[session.key] = session
        with Serve(None, config, store_url, tmp_path, name=f"life{life}") as serve:
            serve.start()
            written_before = serve.wait(lambda s: s["writer"] is not None, WAIT_S, "a writer")
            rows_at_start = written_before["writer"]["rows_written"]
            # under load: the writer has written this life's rows, then a random moment later
            serve.wait(
                lambda s, rows=rows_at_start: s["writer"]["rows_written"] > rows,
                WAIT_S,
                "rows written",
            )
            if life == KILLS:  # the last life ends cleanly, with every session stored
                serve.wait(
                    lambda s: all(c["state"] == "finished" for c in s["captures"]),
                    WAIT_S,
                    "the replay finished",
                )
                assert serve.stop() == 0, serve.log()
                break
            # the kill's moment, not a wait for anything: within the 3 s replay, after first rows
            time.sleep(chance.uniform(0.0, 1.5))
            before = session_rows(store_url)
            serve.kill()
        for row in before:
            if row["status"] == "completed":
                completed_seen[row["id"]] = row
            else:
                counters = _counters(row)
                ongoing_seen[row["id"]] = max(ongoing_seen.get(row["id"], counters), counters)
        assert _integrity(store_url) == "ok", f"after kill {life + 1}"

    final = {row["id"]: row for row in session_rows(store_url)}
    for session_id, row in completed_seen.items():
        assert final.get(session_id) == row, f"completed session {session_id} changed or is gone"
    for session_id, counters in ongoing_seen.items():
        assert session_id in final, f"ongoing session {session_id} is gone"
        now = _counters(final[session_id])
        assert all(a >= b for a, b in zip(now, counters, strict=True)), (session_id, counters)
    by_session: dict[SessionKey, list[dict[str, Any]]] = {}
    for row in final.values():
        by_session.setdefault(_key(row), []).append(row)
    split = {key: len(rows) for key, rows in by_session.items() if len(rows) > 1}
    assert not split, f"{len(split)} sessions split or duplicated, e.g. {list(split.items())[:3]}"
    assert set(by_session) <= set(truth)
    for key, (row,) in by_session.items():
        expected = _oracle_counters(truth[key])
        counted = _counters(row)
        assert all(a <= b for a, b in zip(counted, expected, strict=True)), (key, counted)
        if row["close_reason"] == "fin":
            assert counted == expected, (key, counted, expected)
    fin_closed = sum(1 for (row,) in by_session.values() if row["close_reason"] == "fin")
    assert fin_closed >= FLOWS_PER_LIFE // 2  # at least the last life's sessions ended by FIN
