"""What the store fault tests share (tests/hardening: disk full, frozen filesystem, stopped
PostgreSQL): a paced replay into `serve`, the wait for sessions held while the store is out,
the wait for the drain, and the tshark oracle of the result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.benchmarks.synth import synth_pcap
from tests.helpers.oracle import tshark_sessions
from tests.helpers.serving import Serve, write_config
from tests.helpers.stores import session_rows
from tests.helpers.waiting import WAIT_S

DATA = Path(__file__).resolve().parent.parent / "data"
FLOWS = 120
PACKETS = 4000
PACE_PPS = 500.0  # 8 s of capture at its recorded pace


def paced_replay(tmp_path: Path, seed: int) -> tuple[Path, Path]:
    """A capture of FLOWS TCP sessions and a serve config replaying it at its pace, sessions
    checkpointed every 0.5 s and flushed every 0.1 s: (pcap, config)."""
    pcap = tmp_path / "traffic.pcap"
    synth_pcap(pcap, PACKETS, FLOWS, seed=seed, rate_pps=PACE_PPS)
    config = write_config(
        DATA / "wg-small.toml",
        tmp_path / "serve.toml",
        {"timeouts": {"tcp_idle": 60, "checkpoint": 0.5}, "writer": {"flush_interval": 0.1}},
        captures=[{"pcap": str(pcap), "speed": 1.0}],
    )
    return pcap, config


def wait_nothing_written_while_held(serve: Serve, faulted_at: float) -> dict[str, Any]:
    """Wait for statuses written after the fault (at `faulted_at`, wall time) showing sessions
    piling up in the writer's buffer, and check that none was written meanwhile and serve
    runs on; return the last such status."""

    def held_since_fault(status: dict[str, Any], pending: int) -> bool:
        written_at = serve.status_path.stat().st_mtime  # a status from before does not count
        return written_at > faulted_at + 0.2 and status["writer"]["pending"] >= pending

    held = serve.wait(lambda s: held_since_fault(s, 5), WAIT_S, "sessions held")
    more = held["writer"]["pending"] + 5
    later = serve.wait(lambda s: held_since_fault(s, more), WAIT_S, "more sessions held")
    assert later["writer"]["rows_written"] == held["writer"]["rows_written"], "written while out"
    assert later["state"] == "running"
    return later


def wait_drained(serve: Serve, what: str) -> dict[str, Any]:
    """Wait until the replay has finished and the writer holds nothing; return that status."""
    return serve.wait(
        lambda s: (
            all(c["state"] == "finished" for c in s["captures"]) and s["writer"]["pending"] == 0
        ),
        WAIT_S,
        what,
    )


def assert_every_session_once_as_tshark_counts(url: str, pcap: Path) -> None:
    """Every session of `pcap` has one row in the store at `url`, with tshark's counters."""
    truth = {s.key: s for s in tshark_sessions(pcap)}
    rows = session_rows(url)
    keys = [
        (r["protocol"], str(r["src_addr"]), r["src_port"], str(r["dst_addr"]), r["dst_port"])
        for r in rows
    ]
    assert sorted(keys) == sorted(set(keys)), "a session stored twice"
    assert set(keys) == set(truth), "a session lost"
    for row, key in zip(rows, keys, strict=True):
        expected = truth[key]
        counted = (row["bytes_tx"], row["bytes_rx"], row["packets_tx"], row["packets_rx"])
        oracle = (expected.bytes_tx, expected.bytes_rx, expected.packets_tx, expected.packets_rx)
        assert counted == oracle, key
