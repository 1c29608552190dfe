"""Pieces of bench_collector.py: the replay of a softflowd IPFIX capture as endless new traffic.

`plan_replay(datagrams)` decodes the capture once with tunnelacct's FlowDecoder (to learn
softflowd's templates) and notes where each datagram's fields sit: the header's export time and
sequence number, and per flow record its times (IE 152/153, absolute ms: softflowd -A milli)
and addresses (IE 8/12). `LoopRewriter.loop(n)` returns the capture's datagrams as loop n
sends them: every record's times moved on by n loop spans (plus the shift that puts loop 0 at
the run's start), the client address 100.64.x.y made 100.(64 + n % 64).x.y and the server
address 10.99.0.z made 10.99.(n // 64).z, so no 5-tuple repeats and no session of a loop is
stitched into an earlier one; the sequence number continued (softflowd counts data records,
this message's included); the export time the loop's last record end. Template and options
sets stay as softflowd sent them.

Run as a module, it is the sender: a process of its own (not sharing serve's GIL, nor the
benchmark's) that sends the loops to serve over loopback UDP at a records/s rate for a duration,
then prints one JSON line of what it sent::

    .venv/bin/python -m tests.benchmarks.collector_replay --plan plan.npz --port 4739 \\
        --rate 50000 --seconds 60 --base-shift-ms 812345678

Pacing: a datagram is sent once the records sent before it are due at `rate` since the start
(time.perf_counter); the sender sleeps while it is ahead, so it sends in small bursts.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IPFIX_EXPORT_TIME_AT = 4  # RFC 7011 section 3.1: version, length, export time, sequence, domain
IPFIX_SEQUENCE_AT = 8
IPFIX_HEADER_BYTES = 16
SET_HEADER_BYTES = 4
MIN_DATA_SET_ID = 256
CLIENT_FIRST_OCTET = 100  # clients are 100.64.0.0/16 in the capture
SERVER_FIRST_OCTET = 10  # servers are 10.99.0.0/24
CLIENT_SECOND_OCTET = 64
LOOPS_PER_CLIENT_BLOCK = 64  # 100.64.0.0/10 holds 64 /16s
MAX_LOOPS = LOOPS_PER_CLIENT_BLOCK * 256  # then the server's third octet runs out
LOOP_GAP_MS = 100  # between the last record end of a loop and the first start of the next
SERIAL_MODULUS = 1 << 32
MIN_SLEEP_S = 0.0005
IPV4_ADDRESS_ELEMENTS = (8, 12)  # sourceIPv4Address, destinationIPv4Address
TIME_ELEMENTS = (152, 153)  # flowStartMilliseconds, flowEndMilliseconds
PLAN_ARRAYS = (
    "payload",
    "starts",
    "lengths",
    "sequences",
    "time_positions",
    "client_octets",
    "server_octets",
    "records",
    "octets",
    "packets",
    "new_sessions",
)


@dataclass(frozen=True, slots=True)
class ReplayPlan:
    """The capture as one byte array and where the replay rewrites it (byte offsets into
    `payload`), with per-datagram figures to total what a run sent."""

    payload: np.ndarray  # uint8: every datagram, back to back
    starts: np.ndarray  # int64: offset of each datagram
    lengths: np.ndarray  # int64: bytes of each datagram
    sequences: np.ndarray  # int64: each datagram's IPFIX sequence number as captured
    time_positions: np.ndarray  # int64: offset of every 8-byte flowStart/EndMilliseconds
    client_octets: np.ndarray  # int64: offset of the 2nd octet of every 100.64.x.y address
    server_octets: np.ndarray  # int64: offset of the 3rd octet of every 10.99.0.z address
    records: np.ndarray  # int64 per datagram: flow records
    octets: np.ndarray  # int64 per datagram: sum of the records' octets (IE 1)
    packets: np.ndarray  # int64 per datagram: sum of the records' packets (IE 2)
    new_sessions: np.ndarray  # int64 per datagram: conversations first seen in the loop there
    first_ms: int  # earliest flowStartMilliseconds
    last_ms: int  # latest flowEndMilliseconds

    @property
    def records_per_loop(self) -> int:
        """Flow records in one loop over the capture."""
        return int(self.records.sum())

    @property
    def sessions_per_loop(self) -> int:
        """Conversations (both directions' records) in one loop over the capture."""
        return int(self.new_sessions.sum())

    @property
    def loop_span_ms(self) -> int:
        """How far each loop's record times move on from the previous loop's."""
        return self.last_ms - self.first_ms + LOOP_GAP_MS

    def save(self, path: Path) -> None:
        """Write the plan as one .npz file (the sender process loads it)."""
        arrays = {name: getattr(self, name) for name in PLAN_ARRAYS}
        times = np.array([self.first_ms, self.last_ms], dtype=np.int64)
        np.savez(path, times=times, **arrays)

    @classmethod
    def load(cls, path: Path) -> ReplayPlan:
        """The plan `save` wrote."""
        with np.load(path) as saved:
            arrays = {name: saved[name] for name in PLAN_ARRAYS}
            times = saved["times"]
        return cls(first_ms=int(times[0]), last_ms=int(times[1]), **arrays)

    def totals(self, full_loops: int, partial_datagrams: int) -> dict[str, int]:
        """Records, sessions, octets and packets sent by `full_loops` whole loops and the first
        `partial_datagrams` datagrams of the next."""
        totals = {}
        for name in ("records", "new_sessions", "octets", "packets"):
            per_datagram = getattr(self, name)
            whole = int(per_datagram.sum()) * full_loops
            totals[name] = whole + int(per_datagram[:partial_datagrams].sum())
        totals["sessions"] = totals.pop("new_sessions")
        return totals


def plan_replay(datagrams: Sequence[bytes]) -> ReplayPlan:
    """Decode the capture (one exporter, IPFIX) and locate every field the replay rewrites.

    Raises ValueError when a record is not one the replay can move: an IPv6 or variable-length
    template, or addresses outside the capture's client and server networks.
    """
    # tunnelacct is imported here only: the sender process needs none of it
    from tunnelacct.collector.decode import FlowDecoder

    decoder = FlowDecoder()
    exporter = ("127.0.0.1", 9995)
    key = (exporter[0], exporter[1], 10, 0)
    payload = b"".join(datagrams)
    lengths = np.array([len(d) for d in datagrams], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    buffer = np.frombuffer(payload, dtype=np.uint8)
    sequences = []
    time_positions: list[np.ndarray] = []
    address_positions: list[np.ndarray] = []
    records = []
    octets = []
    packets = []
    new_sessions = []
    conversations: set[tuple[int, frozenset[tuple[str, int]]]] = set()
    for index, datagram in enumerate(datagrams):
        decoded = decoder.decode_datagram(datagram, exporter, 0.0)
        base = int(starts[index])
        sequences.append(int.from_bytes(datagram[IPFIX_SEQUENCE_AT : IPFIX_SEQUENCE_AT + 4]))
        if int.from_bytes(datagram[12:16]) != 0:
            raise ValueError("the replay expects observation domain 0")
        offset = IPFIX_HEADER_BYTES
        located = 0
        while offset + SET_HEADER_BYTES <= len(datagram):
            set_id = int.from_bytes(datagram[offset : offset + 2])
            set_length = int.from_bytes(datagram[offset + 2 : offset + 4])
            body_start = offset + SET_HEADER_BYTES
            body_end = offset + set_length
            offset = body_end
            if set_id < MIN_DATA_SET_ID:
                continue  # template and options template sets: kept as sent
            template = decoder.templates.lookup(key, set_id, 0.0)
            if template is None:
                raise ValueError(f"datagram {index}: data set {set_id} before its template")
            if template.is_options:
                continue  # softflowd's systemInitTime and sampling options: kept as sent
            field_offsets: dict[int, int] = {}
            record_bytes = 0
            for field in template.fields:
                if field.length == 65535:
                    raise ValueError(f"template {set_id} has a variable-length field")
                if field.enterprise == 0:
                    field_offsets[field.element_id] = record_bytes
                record_bytes += field.length
            if not all(e in field_offsets for e in IPV4_ADDRESS_ELEMENTS + TIME_ELEMENTS):
                raise ValueError(f"template {set_id} lacks IPv4 addresses or millisecond times")
            count = (body_end - body_start) // record_bytes
            record_starts = base + body_start + np.arange(count, dtype=np.int64) * record_bytes
            for element in TIME_ELEMENTS:
                time_positions.append(record_starts + field_offsets[element])
            for element in IPV4_ADDRESS_ELEMENTS:
                address_positions.append(record_starts + field_offsets[element])
            located += count
        if located != len(decoded):
            raise ValueError(f"datagram {index}: located {located} records, decoded {len(decoded)}")
        fresh = 0
        for record in decoded:
            ends = frozenset(
                ((record.src_addr, record.src_port), (record.dst_addr, record.dst_port))
            )
            conversation = (record.protocol, ends)
            if conversation not in conversations:
                conversations.add(conversation)
                fresh += 1
        records.append(len(decoded))
        octets.append(sum(record.octets for record in decoded))
        packets.append(sum(record.packets for record in decoded))
        new_sessions.append(fresh)
    times_at = np.concatenate(time_positions)
    addresses_at = np.concatenate(address_positions)
    first_octets = buffer[addresses_at]
    client_at = addresses_at[first_octets == CLIENT_FIRST_OCTET]
    server_at = addresses_at[first_octets == SERVER_FIRST_OCTET]
    if len(client_at) + len(server_at) != len(addresses_at) or len(client_at) != len(server_at):
        raise ValueError("every record must be between a 100.64.0.0/16 and a 10.99.0.0/24 host")
    if np.any(buffer[client_at + 1] != CLIENT_SECOND_OCTET) or np.any(buffer[server_at + 2]):
        raise ValueError("clients must be in 100.64.0.0/16 and servers in 10.99.0.0/24")
    times = _read_u64(buffer, times_at)
    return ReplayPlan(
        payload=buffer.copy(),
        starts=starts,
        lengths=lengths,
        sequences=np.array(sequences, dtype=np.int64),
        time_positions=times_at,
        client_octets=client_at + 1,
        server_octets=server_at + 2,
        records=np.array(records, dtype=np.int64),
        octets=np.array(octets, dtype=np.int64),
        packets=np.array(packets, dtype=np.int64),
        new_sessions=np.array(new_sessions, dtype=np.int64),
        first_ms=int(times.min()),
        last_ms=int(times.max()),
    )


def _byte_index(positions: np.ndarray, width: int) -> np.ndarray:
    """(len(positions), width) offsets of the fields' bytes."""
    return positions[:, None] + np.arange(width, dtype=np.int64)


def _read_u64(buffer: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The big-endian 8-byte unsigned integers at `positions`, as int64."""
    gathered = np.ascontiguousarray(buffer[_byte_index(positions, 8)])
    return gathered.view(">u8").ravel().astype(np.int64)


class LoopRewriter:
    """The capture's datagrams as loop n of the replay sends them (see the module docstring).

    Example:
        rewriter = LoopRewriter(plan, base_shift_ms=run_start_ms - plan.first_ms)
        datagrams = rewriter.loop(3)   # list of bytes, in capture order
    """

    def __init__(self, plan: ReplayPlan, base_shift_ms: int) -> None:
        self.plan = plan
        self.base_shift_ms = base_shift_ms
        self._sequence_index = _byte_index(plan.starts + IPFIX_SEQUENCE_AT, 4)
        self._export_index = _byte_index(plan.starts + IPFIX_EXPORT_TIME_AT, 4)
        self._time_index = _byte_index(plan.time_positions, 8)
        self._times_ms = _read_u64(plan.payload, plan.time_positions)
        ends = (plan.starts + plan.lengths).tolist()
        self._bounds = list(zip(plan.starts.tolist(), ends, strict=True))

    def shift_ms(self, loop: int) -> int:
        """How far loop `loop` moves the capture's record times."""
        return self.base_shift_ms + loop * self.plan.loop_span_ms

    def loop(self, loop: int) -> list[bytes]:
        """Loop `loop`'s datagrams (0 <= loop < MAX_LOOPS)."""
        if not 0 <= loop < MAX_LOOPS:
            raise ValueError(f"loop {loop}: the addresses allow {MAX_LOOPS} loops")
        plan = self.plan
        out = plan.payload.copy()
        shift_ms = self.shift_ms(loop)
        sequences = (plan.sequences + loop * plan.records_per_loop) % SERIAL_MODULUS
        out[self._sequence_index] = sequences.astype(">u4").view(np.uint8).reshape(-1, 4)
        # softflowd -r exports a file's flows at its end: the loop is exported after its last
        export_s = -(-(plan.last_ms + shift_ms) // 1000)
        export = np.full(len(plan.starts), export_s, dtype=">u4")
        out[self._export_index] = export.view(np.uint8).reshape(-1, 4)
        times = (self._times_ms + shift_ms).astype(">u8")
        out[self._time_index] = times.view(np.uint8).reshape(-1, 8)
        out[plan.client_octets] = CLIENT_SECOND_OCTET + loop % LOOPS_PER_CLIENT_BLOCK
        out[plan.server_octets] = loop // LOOPS_PER_CLIENT_BLOCK
        data = out.tobytes()
        return [data[start:end] for start, end in self._bounds]


# -- the sender process ------------------------------------------------------------------------


def send(
    rewriter: LoopRewriter, host: str, port: int, rate: float, seconds: float
) -> dict[str, object]:
    """Send loops at `rate` records/s for `seconds`; returns what was sent (JSON-ready)."""
    plan = rewriter.plan
    records_per_datagram = plan.records.tolist()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind(("127.0.0.1" if family == socket.AF_INET else "::1", 0))
    sock.connect((host, port))
    loop = 0
    datagrams = rewriter.loop(loop)
    position = 0
    sent_records = 0
    sent_datagrams = 0
    send_errors = 0
    max_lag_records = 0.0
    per_second: list[int] = []
    started_wall = time.time()
    cpu_started_s = time.process_time()
    started = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            break
        second = int(elapsed)
        while len(per_second) <= second:
            per_second.append(0)
        due = rate * elapsed
        if sent_records >= due:
            time.sleep(max(MIN_SLEEP_S, (sent_records - due) / rate))
            continue
        max_lag_records = max(max_lag_records, due - sent_records)
        # a burst: everything due now
        while sent_records < due:
            try:
                sock.send(datagrams[position])
            except OSError:
                send_errors += 1
            count = records_per_datagram[position]
            sent_records += count
            per_second[second] += count
            sent_datagrams += 1
            position += 1
            if position == len(datagrams):
                loop += 1
                position = 0
                datagrams = rewriter.loop(loop)
    took_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started_s
    sock.close()
    totals = plan.totals(loop, position)
    return {
        "datagrams": sent_datagrams,
        "records": sent_records,
        "full_loops": loop,
        "partial_datagrams": position,
        "sessions": totals["sessions"],
        "octets": totals["octets"],
        "packets": totals["packets"],
        "send_errors": send_errors,
        "started_wall": started_wall,
        "took_s": took_s,
        "cpu_s": cpu_s,
        "achieved_rate": sent_records / took_s,
        "max_lag_s": max_lag_records / rate,
        "per_second_records": per_second,
        "last_loop_shift_ms": rewriter.shift_ms(loop),
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The sender: prints "ready" once the first loop is built, then one JSON line at the end."""
    parser = argparse.ArgumentParser(description="replay a ReplayPlan to a UDP collector")
    parser.add_argument("--plan", type=Path, required=True, help="the .npz of ReplayPlan.save")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="records per second")
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--base-shift-ms", type=int, required=True)
    args = parser.parse_args(argv)
    plan = ReplayPlan.load(args.plan)
    loops_needed = int(args.rate * args.seconds / plan.records_per_loop) + 1
    if loops_needed >= MAX_LOOPS:
        parser.error(f"{loops_needed} loops needed; the addresses allow {MAX_LOOPS}")
    rewriter = LoopRewriter(plan, args.base_shift_ms)
    print("ready", flush=True)
    result = send(rewriter, args.host, args.port, args.rate, args.seconds)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
