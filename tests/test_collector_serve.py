"""`tunnelacct serve` with a [collector] (issue 20), on real UDP over loopback and real SQLite:
sessions continue across a restart, an empty allow-list accepts nothing and says so, lost
records flag sessions incomplete, a configured sampling interval scales and marks rows
estimated, and the exporters' gateways are locked like the service's own.

The oracle is what the test sends: NetFlow v5 datagrams built with scapy, whose records'
counters and sequence numbers the test chooses.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import time
from pathlib import Path
from typing import Any

from scapy.compat import raw
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

from tests.helpers.serving import Serve, dump_toml
from tests.helpers.waiting import WAIT_S

EXPORTER = "127.0.0.1"
TCP_ACK = 0x10
TCP_SYN = 0x02
TCP_PSH = 0x08
UPTIME_MS = 3_600_000  # the exporter's uptime at export: record times are measured back from it


def v5_datagram(
    records: list[dict[str, Any]], *, sequence: int, sampling_interval: int = 0
) -> bytes:
    """A NetFlow v5 datagram exported now, its records' times `ago_ms` before the export."""
    header = NetflowHeaderV5(
        count=len(records),
        sysUptime=UPTIME_MS,
        unixSecs=int(time.time()),
        flowSequence=sequence,
        samplingInterval=sampling_interval,
    )
    body = b"".join(
        raw(
            NetflowRecordV5(
                src=record["src"],
                dst=record["dst"],
                srcport=record["sport"],
                dstport=record["dport"],
                prot=record.get("proto", 6),
                dpkts=record["packets"],
                dOctets=record["octets"],
                first=UPTIME_MS - record["first_ago_ms"],
                last=UPTIME_MS - record["last_ago_ms"],
                tcpFlags=record.get("flags", TCP_ACK),
            )
        )
        for record in records
    )
    return raw(NetflowHeader(version=5) / header) + body


def collector_config(
    workdir: Path, exporters: list[dict[str, Any]], gateway: str = "lab-collector"
) -> Path:
    doc: dict[str, Any] = {
        "gateway": {"name": gateway},
        "collector": {"listen": ["127.0.0.1:0"]},
    }
    if exporters:
        doc["collector.exporters"] = exporters
    config = workdir / f"{gateway}.toml"
    config.write_text(dump_toml(doc), encoding="utf-8")
    return config


def collector_port(serve: Serve) -> int:
    status = serve.wait(
        lambda status: bool((status.get("collector") or {}).get("listening")),
        WAIT_S,
        "the collector listening",
    )
    return int(status["collector"]["listening"][0].rsplit(":", 1)[1])


def exporter_status(status: dict[str, Any]) -> dict[str, Any]:
    return dict((status.get("collector") or {}).get("exporters", {}).get(EXPORTER, {}))


class Exporter:
    """One exporter: a UDP socket on EXPORTER whose source port stays the same (an exporter's
    sequence numbers are per source), sending to serve's collector port."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((EXPORTER, 0))

    def send(self, datagram: bytes) -> None:
        self.sock.sendto(datagram, (EXPORTER, self.port))

    def __enter__(self) -> Exporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


def send_and_wait(serve: Serve, port: int, datagram: bytes, records_before: int) -> None:
    """Send one datagram from a new exporter socket and wait until serve has taken its
    records into sessions."""
    with Exporter(port) as exporter:
        send_and_wait_from(serve, exporter, datagram, records_before)


def send_and_wait_from(
    serve: Serve, exporter: Exporter, datagram: bytes, records_before: int
) -> None:
    """Send one datagram and wait until serve has taken its records into sessions."""
    exporter.send(datagram)
    records = int.from_bytes(datagram[2:4], "big")  # the v5 header's count
    serve.wait(
        lambda status: (
            exporter_status(status).get("records_accounted", 0) >= records_before + records
        ),
        WAIT_S,
        "the records taken into sessions",
    )


def rows(db: Path) -> list[sqlite3.Row]:
    with contextlib.closing(sqlite3.connect(db)) as connection:
        connection.row_factory = sqlite3.Row
        return connection.execute("SELECT * FROM sessions ORDER BY started_at").fetchall()


WEB_RECORD = {"src": "10.97.0.1", "sport": 40000, "dst": "10.97.0.2", "dport": 443}


def test_a_collector_session_continues_in_the_same_row_after_a_restart(tmp_path: Path) -> None:
    """A TCP connection with no FIN is checkpointed ongoing when serve stops; after a restart
    the exporter's next piece of it (no SYN) adds to the same row."""
    db = tmp_path / "flows.db"
    config = collector_config(tmp_path, [{"address": EXPORTER, "gateway": "branch-fw"}])
    first_piece = {
        **WEB_RECORD,
        "packets": 12,
        "octets": 4_800,
        "first_ago_ms": 20_000,
        "last_ago_ms": 15_000,
        "flags": TCP_SYN | TCP_ACK | TCP_PSH,
    }
    with Serve(None, config, db, tmp_path, name="first") as serve:
        serve.start(wait_for="")
        port = collector_port(serve)
        send_and_wait(serve, port, v5_datagram([first_piece], sequence=0), 0)
        assert serve.stop() == 0, serve.log()
    [stored] = rows(db)
    assert stored["status"] == "ongoing"
    assert stored["bytes_tx"] == first_piece["octets"]
    second_piece = {
        **WEB_RECORD,
        "packets": 7,
        "octets": 2_100,
        "first_ago_ms": 14_000,
        "last_ago_ms": 1_000,
        "flags": TCP_ACK | TCP_PSH,
    }
    with Serve(None, config, db, tmp_path, name="second") as serve:
        serve.start(wait_for="")
        port = collector_port(serve)
        assert serve.wait(lambda s: s["resumed_sessions"] == 1, WAIT_S, "the resume")
        send_and_wait(serve, port, v5_datagram([second_piece], sequence=1), 0)
        assert serve.stop() == 0, serve.log()
    [continued] = rows(db)
    assert continued["id"] == stored["id"]
    assert continued["bytes_tx"] == first_piece["octets"] + second_piece["octets"]
    assert continued["packets_tx"] == first_piece["packets"] + second_piece["packets"]
    assert continued["gateway"] == "branch-fw"
    assert continued["interface"] == f"flow:{EXPORTER}"
    assert continued["payload_bytes_tx"] is None


def test_with_no_exporters_serve_says_so_and_accepts_nothing(tmp_path: Path) -> None:
    db = tmp_path / "flows.db"
    config = collector_config(tmp_path, [])
    record = {**WEB_RECORD, "packets": 3, "octets": 180, "first_ago_ms": 900, "last_ago_ms": 800}
    with Serve(None, config, db, tmp_path) as serve:
        serve.start(wait_for="")
        port = collector_port(serve)
        with Exporter(port) as exporter:
            exporter.send(v5_datagram([record], sequence=0))
        serve.wait(
            lambda status: status["collector"]["dropped"].get("not_allowed", 0) == 1,
            WAIT_S,
            "the datagram counted as not allowed",
        )
        assert serve.stop() == 0, serve.log()
        log = serve.log()
    assert "no exporters in its allow-list: every datagram is dropped" in log
    assert rows(db) == []


def test_lost_records_flag_the_open_sessions_incomplete(tmp_path: Path) -> None:
    """v5 sequence numbers count records: a datagram whose sequence skips 5 records says 5
    were lost just before it. The sessions open then, and those its own records open (they may
    continue a lost record), are stored `incomplete`; one opened by a later datagram is not."""
    db = tmp_path / "flows.db"
    config = collector_config(tmp_path, [{"address": EXPORTER, "gateway": "branch-fw"}])
    open_before = {**WEB_RECORD, "packets": 4, "octets": 400, "first_ago_ms": 9_000}
    open_before["last_ago_ms"] = 8_000
    after_loss = {**open_before, "sport": 40001, "first_ago_ms": 2_000, "last_ago_ms": 1_000}
    next_one = {**after_loss, "sport": 40002}
    lost = 5
    with Serve(None, config, db, tmp_path) as serve:
        serve.start(wait_for="")
        port = collector_port(serve)
        with Exporter(port) as exporter:
            send_and_wait_from(serve, exporter, v5_datagram([open_before], sequence=0), 0)
            # the next datagram's sequence should be 1 (records before it): 1 + lost were
            later = v5_datagram([after_loss], sequence=1 + lost)
            send_and_wait_from(serve, exporter, later, 1)
            last = v5_datagram([next_one], sequence=1 + lost + 1)
            send_and_wait_from(serve, exporter, last, 2)
        status = serve.status() or {}
        assert status["collector"]["decoded"]["lost_records"] == lost
        assert serve.stop() == 0, serve.log()
    flags = {row["src_port"]: bool(row["incomplete"]) for row in rows(db)}
    assert flags == {
        open_before["sport"]: True,
        after_loss["sport"]: True,
        next_one["sport"]: False,
    }


def test_a_configured_sampling_interval_scales_the_counters_and_marks_rows_estimated(
    tmp_path: Path,
) -> None:
    db = tmp_path / "flows.db"
    sampling = 10
    exporters = [{"address": EXPORTER, "gateway": "branch-fw", "sampling": sampling}]
    config = collector_config(tmp_path, exporters)
    record = {**WEB_RECORD, "packets": 3, "octets": 180, "first_ago_ms": 900, "last_ago_ms": 800}
    with Serve(None, config, db, tmp_path) as serve:
        serve.start(wait_for="")
        port = collector_port(serve)
        send_and_wait(serve, port, v5_datagram([record], sequence=0), 0)
        assert serve.stop() == 0, serve.log()
    [row] = rows(db)
    assert row["bytes_tx"] == record["octets"] * sampling
    assert row["packets_tx"] == record["packets"] * sampling
    assert row["estimated"]


def test_a_second_serve_cannot_take_an_exporters_gateway(tmp_path: Path) -> None:
    """Two services writing one exporter gateway's sessions would resume and close each
    other's: the second one to start refuses, naming the first."""
    db = tmp_path / "flows.db"
    shared = [{"address": EXPORTER, "gateway": "branch-fw"}]
    first_config = collector_config(tmp_path, shared, gateway="gw-one")
    second_config = collector_config(tmp_path, [{"address": "127.0.0.2", "gateway": "branch-fw"}])
    with Serve(None, first_config, db, tmp_path, name="one") as first:
        first.start(wait_for="")
        collector_port(first)
        with Serve(None, second_config, db, tmp_path, name="two") as second:
            second.start(wait_for="")
            assert second.proc is not None
            assert second.proc.wait(WAIT_S) != 0
            log = second.log()
        assert first.stop() == 0, first.log()
    assert "gateway 'branch-fw' is already served on this store by tunnelacct serve" in log
