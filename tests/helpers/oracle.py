"""Independent session oracle: tshark's TCP/UDP streams summed from IP header lengths.

Used to check tunnelacct's session records against a tool that shares no code with it::

    problems = compare_sessions(tshark_sessions(pcap), read_session_rows(db_path))
    assert problems == [], "\\n".join(problems)
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import sqlite3
import subprocess
import tempfile
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TSHARK_FIELDS = (
    "frame.number",
    "frame.time_epoch",
    "ip.version",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "ip.len",
    "ipv6.plen",
    "ip.proto",
    "ipv6.nxt",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
    "tcp.stream",
    "udp.stream",
    "tcp.flags.syn",
    "tcp.flags.ack",
    "tcp.flags.fin",
    "tcp.flags.reset",
    "tcp.len",
    "udp.length",
)
IPV6_HEADER_BYTES = 40
UDP_HEADER_BYTES = 8
COUNTERS = (
    "packets_tx",
    "packets_rx",
    "bytes_tx",
    "bytes_rx",
    "payload_bytes_tx",
    "payload_bytes_rx",
)
SESSION_COLUMNS = (
    "id",
    "org_id",
    "client_id",
    "user_id",
    "resource_id",
    "protocol",
    "src_addr",
    "src_port",
    "dst_addr",
    "dst_port",
    "started_at",
    "ended_at",
    "packets_tx",
    "packets_rx",
    "bytes_tx",
    "bytes_rx",
    "payload_bytes_tx",
    "payload_bytes_rx",
    "status",
    "close_reason",
)
START_TOLERANCE_S = 2e-6  # pcap timestamps are whole microseconds; the rest is float slack

SessionKey = tuple[str, str, int, str, int]  # protocol, src_addr, src_port, dst_addr, dst_port


class OracleError(RuntimeError):
    """tshark failed or printed something the oracle cannot read."""


@dataclass(frozen=True, slots=True)
class OracleSession:
    """One tshark TCP/UDP stream; src is the initiator, tx = src->dst, bytes are IP bytes."""

    protocol: str  # "tcp" | "udp"
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    packets_tx: int
    packets_rx: int
    bytes_tx: int  # IP total length (IPv6: payload length + 40)
    bytes_rx: int
    payload_bytes_tx: int  # tcp.len, or udp.length - 8
    payload_bytes_rx: int
    first_ts: float  # epoch seconds of the first and last packet
    last_ts: float
    saw_syn: bool  # a SYN without ACK opened the stream
    fin_both: bool  # FIN seen from both sides
    rst: bool

    @property
    def key(self) -> SessionKey:
        """(protocol, src_addr, src_port, dst_addr, dst_port)."""
        return (self.protocol, self.src_addr, self.src_port, self.dst_addr, self.dst_port)


@dataclass(slots=True)
class _Packet:
    ts: float
    src: tuple[str, int]
    dst: tuple[str, int]
    ip_bytes: int
    payload_bytes: int
    syn: bool
    ack: bool
    fin: bool
    rst: bool


def tshark_sessions(pcap: Path, *, tshark: str = "tshark") -> list[OracleSession]:
    """Sessions in a capture per tshark stream index, ordered by first packet time."""
    streams = tshark_streams(pcap, tshark=tshark)
    sessions = [_summarise(protocol, packets) for (protocol, _), packets in streams.items()]
    return sorted(sessions, key=lambda s: (s.first_ts, s.key))


DAY_S = 86_400


@dataclass
class DailyUsage:
    """What a group moved on one UTC day, by tshark: packets count on their own day."""

    bytes_tx: int = 0
    bytes_rx: int = 0
    packets_tx: int = 0
    packets_rx: int = 0
    sessions_started: int = 0  # on the day of their first packet
    sessions_completed: int = 0  # on the day of their last (the capture ended them all)


def tshark_daily_usage(
    pcap: Path, group_of: Callable[[str, str], str], *, tshark: str = "tshark"
) -> dict[tuple[str, str], DailyUsage]:
    """(ISO day, group) -> DailyUsage of the capture's streams, each packet on the UTC day of
    its own frame.time_epoch; tx = sent by the stream's initiator (the SYN sender, else the
    first packet's sender, as tshark_sessions). `group_of(initiator, responder)` names a
    stream's group from its addresses."""
    usage: dict[tuple[str, str], DailyUsage] = defaultdict(DailyUsage)
    for (protocol, _stream), packets in tshark_streams(pcap, tshark=tshark).items():
        session = _summarise(protocol, packets)
        group = group_of(session.src_addr, session.dst_addr)
        initiator = (session.src_addr, session.src_port)
        for packet in packets:
            day = _iso_day(packet.ts)
            if packet.src == initiator:
                usage[(day, group)].bytes_tx += packet.ip_bytes
                usage[(day, group)].packets_tx += 1
            else:
                usage[(day, group)].bytes_rx += packet.ip_bytes
                usage[(day, group)].packets_rx += 1
        usage[(_iso_day(session.first_ts), group)].sessions_started += 1
        usage[(_iso_day(session.last_ts), group)].sessions_completed += 1
    return dict(usage)


def _iso_day(ts: float) -> str:
    return datetime.fromtimestamp(ts // DAY_S * DAY_S, UTC).date().isoformat()


def tshark_streams(pcap: Path, *, tshark: str = "tshark") -> dict[tuple[str, int], list[_Packet]]:
    """The capture's TCP and UDP packets per (protocol, tshark stream index)."""
    argv = [tshark, "-r", str(pcap), "-n"]
    argv += ["-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
    argv += ["-o", "tcp.analyze_sequence_numbers:TRUE"]
    argv += ["-Y", "(tcp or udp) and not icmp and not icmpv6"]
    argv += ["-T", "fields", "-E", "separator=/t", "-E", "occurrence=f"]
    for name in TSHARK_FIELDS:
        argv += ["-e", name]
    # An empty profile directory: the user's Wireshark preferences cannot change the answer.
    with tempfile.TemporaryDirectory(prefix="oracle-wireshark-") as config_dir:
        env = {**os.environ, "WIRESHARK_CONFIG_DIR": config_dir}
        done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise OracleError(f"tshark exited {done.returncode} on {pcap}: {done.stderr.strip()}")
    streams: dict[tuple[str, int], list[_Packet]] = defaultdict(list)
    for line in done.stdout.splitlines():
        protocol, stream, packet = _parse_line(line)
        streams[(protocol, stream)].append(packet)
    return dict(streams)


def _parse_line(line: str) -> tuple[str, int, _Packet]:
    f = dict(zip(TSHARK_FIELDS, line.split("\t"), strict=True))
    if f["ip.version"] == "4":
        src, dst, ip_bytes = f["ip.src"], f["ip.dst"], int(f["ip.len"])
    elif f["ip.version"] == "6":
        src, dst = f["ipv6.src"], f["ipv6.dst"]
        ip_bytes = int(f["ipv6.plen"]) + IPV6_HEADER_BYTES
    else:
        raise OracleError(f"frame {f['frame.number']}: no IP version in {line!r}")
    if f["tcp.stream"]:
        protocol, stream = "tcp", int(f["tcp.stream"])
        sport, dport, payload = int(f["tcp.srcport"]), int(f["tcp.dstport"]), int(f["tcp.len"])
    elif f["udp.stream"]:
        protocol, stream = "udp", int(f["udp.stream"])
        sport, dport = int(f["udp.srcport"]), int(f["udp.dstport"])
        payload = int(f["udp.length"]) - UDP_HEADER_BYTES
    else:
        raise OracleError(f"frame {f['frame.number']}: neither a TCP nor a UDP stream")
    packet = _Packet(
        ts=float(f["frame.time_epoch"]),
        src=(_norm_addr(src), sport),
        dst=(_norm_addr(dst), dport),
        ip_bytes=ip_bytes,
        payload_bytes=payload,
        syn=_flag(f["tcp.flags.syn"]),
        ack=_flag(f["tcp.flags.ack"]),
        fin=_flag(f["tcp.flags.fin"]),
        rst=_flag(f["tcp.flags.reset"]),
    )
    return protocol, stream, packet


def _flag(text: str) -> bool:
    return text in ("1", "True")  # tshark 4.0 prints 1/0, later versions True/False


def _summarise(protocol: str, packets: list[_Packet]) -> OracleSession:
    opener = next((p for p in packets if p.syn and not p.ack), None)
    initiator, responder = (opener or packets[0]).src, (opener or packets[0]).dst
    count = {True: 0, False: 0}  # keyed by "sent by the initiator"
    ip_bytes = {True: 0, False: 0}
    payload = {True: 0, False: 0}
    fin = {True: False, False: False}
    for p in packets:
        tx = p.src == initiator and p.dst == responder
        count[tx] += 1
        ip_bytes[tx] += p.ip_bytes
        payload[tx] += p.payload_bytes
        fin[tx] |= p.fin
    return OracleSession(
        protocol=protocol,
        src_addr=initiator[0],
        src_port=initiator[1],
        dst_addr=responder[0],
        dst_port=responder[1],
        packets_tx=count[True],
        packets_rx=count[False],
        bytes_tx=ip_bytes[True],
        bytes_rx=ip_bytes[False],
        payload_bytes_tx=payload[True],
        payload_bytes_rx=payload[False],
        first_ts=min(p.ts for p in packets),
        last_ts=max(p.ts for p in packets),
        saw_syn=opener is not None,
        fin_both=fin[True] and fin[False],
        rst=any(p.rst for p in packets),
    )


def compare_sessions(
    oracle: Sequence[OracleSession],
    rows: Sequence[Mapping[str, Any]],
    *,
    tolerance_s: float = START_TOLERANCE_S,
) -> list[str]:
    """Every disagreement between oracle sessions and session rows; [] = exact agreement.

    A row matches a session by (protocol, src, sport, dst, dport) and a start time within
    `tolerance_s`; then every counter in COUNTERS must be equal.
    """
    by_key: dict[SessionKey, list[int]] = defaultdict(list)
    for index, row in enumerate(rows):
        by_key[_row_key(row)].append(index)
    matched: set[int] = set()
    problems: list[str] = []
    for session in oracle:
        label = _describe(session.key, session.first_ts)
        same_key = by_key.get(session.key, [])
        hits = [i for i in same_key if abs(_row_ts(rows[i]) - session.first_ts) <= tolerance_s]
        if not hits:
            near = ", ".join(_iso(_row_ts(rows[i])) for i in same_key)
            hint = f" (rows with that key start {near})" if near else ""
            problems.append(f"missing: {label}{hint}")
            continue
        if len(hits) > 1:
            ids = ", ".join(str(rows[i].get("id", f"#{i}")) for i in hits)
            problems.append(f"duplicated: {label} matches {len(hits)} rows (ids {ids})")
        matched.update(hits)
        row = rows[hits[0]]
        for name in COUNTERS:
            expected, got = getattr(session, name), row.get(name)
            if got != expected:
                problems.append(f"{label}: {name} oracle={expected} row={got}")
    for index, row in enumerate(rows):
        if index not in matched:
            ident = row.get("id", f"#{index}")
            problems.append(f"extra row {ident}: {_describe(_row_key(row), _row_ts(row))}")
    return problems


def read_session_rows(sqlite_path: Path) -> list[dict[str, Any]]:
    """Every row of table `sessions` in a SQLite file (read-only), ordered by start then id."""
    uri = sqlite_path.resolve().as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as db:
        db.row_factory = sqlite3.Row
        cursor = db.execute(
            f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions ORDER BY started_at, id"
        )
        return [dict(row) for row in cursor]


def rows_by_session(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Rows keyed by what names a session across runs (protocol, src and dst address and
    port, start time), without their ids: each run names its sessions anew. Fails when two
    rows share a key."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        key = (*_row_key(row), str(row["started_at"]))
        assert key not in out, f"two rows of {key}"
        out[key] = {k: v for k, v in row.items() if k != "id"}
    return out


def _norm_addr(text: str) -> str:
    return ipaddress.ip_address(text).compressed


def _row_key(row: Mapping[str, Any]) -> SessionKey:
    protocol = row["protocol"]
    if isinstance(protocol, int):  # an IP protocol number
        protocol = {6: "tcp", 17: "udp"}.get(protocol, str(protocol))
    return (
        str(protocol).lower(),
        _norm_addr(str(row["src_addr"])),
        int(row["src_port"]),
        _norm_addr(str(row["dst_addr"])),
        int(row["dst_port"]),
    )


def _row_ts(row: Mapping[str, Any]) -> float:
    value = row["started_at"]
    if isinstance(value, int | float):
        return float(value)
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if when.tzinfo is None:  # SQLite keeps no zone; tunnelacct stores UTC
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="microseconds")


def _describe(key: SessionKey, ts: float) -> str:
    protocol, src, sport, dst, dport = key
    src, dst = (f"[{a}]" if ":" in a else a for a in (src, dst))
    return f"{protocol} {src}:{sport} -> {dst}:{dport} started {_iso(ts)}"
