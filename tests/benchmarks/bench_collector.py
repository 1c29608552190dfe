"""Benchmark: the flow-record collector of `tunnelacct serve` (issue 20) at a sustained rate of
records: softflowd's IPFIX replayed over loopback UDP, decode -> sessions -> SQLite.

1. The capture (tests/benchmarks/collector_capture.py): a seeded, headers-only pcap of 60,000
   short sessions (60% UDP request/response, 40% short TCP connections: handshake, request,
   response, FINs both ways) read by `softflowd -r -v 10 -A milli`, whose 120,000 records
   (4,364 datagrams) are received, checked complete (softflowd's summary, the IPFIX sequence
   numbers, our socket's drops) and kept in the work directory.
2. The replay (tests/benchmarks/collector_replay.py): a sender process of its own sends the
   datagrams to serve at --rate records/s for --seconds, looping over the capture; each loop is
   new traffic (times moved on, client and server addresses changed, sequence numbers
   continued), checked here with tunnelacct's FlowDecoder before any timed run, which also
   times the decoding and sessionizing of two loops in this process (a per-record cost).
3. serve: a fresh `tunnelacct serve` per run (tests/helpers/serving.py), SQLite in the work
   directory, `[collector] listen = ["127.0.0.1:0"]`, one exporter entry for 127.0.0.1/32,
   every other setting default. Every second: its RSS and CPU, the status file's collector
   and writer counters, and the kernel's counters of its UDP socket in /proc/net/udp (drops,
   and the receive queue, sampled every 0.1 s). Once the sender is done: until every datagram
   is decoded, then SIGTERM, then the rows are checked: one per session sent, and their bytes
   and packets the records' sums.

A run is clean when: no datagram was dropped (allow-list, queue, kernel socket), no record was
lost or bad, every record was decoded and accounted, every session stored with its bytes and
packets, serve kept pace (decoded everything within CATCH_UP_LIMIT_S of the sender's end) and
so did its writer (the floor of its pending sessions neither rising from the next-to-last 10 s
of sending to the last 10 s by more than a batch nor pinned at [writer] max_pending), and serve
stopped cleanly on SIGTERM.

Modes:
- default: the issue's check, `--rate 50000 --seconds 60`: PASS when the run is clean and RSS
  stayed flat (the largest RSS of the last 20 s within 10% or 20 MiB of the largest of the
  20 s after --warmup).
- --find-max: --rates steps of --step-seconds each (40 s: sessions reach the writer 10 s after
  their last record, so shorter steps hardly load it), a fresh serve each, up to the first
  step that is not clean (halving down from the first rate when that one is not), then
  --refine halvings between the highest clean and the lowest unclean rate.

Prints its figures and asserts nothing about time; exit 1 on FAIL (default mode). Needs
softflowd (Debian package softflowd).

    .venv/bin/python tests/benchmarks/bench_collector.py [--rate 50k] [--seconds 60]
    .venv/bin/python tests/benchmarks/bench_collector.py --find-max [--rates 50k,75k,100k]
        [--step-seconds 40] [--refine 3] [--workdir DIR (kept; the capture is reused)]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.collector_capture import (  # noqa: E402
    TALLIES,
    Capture,
    CaptureSpec,
    make_capture,
    udp_socket_figures,
)
from tests.benchmarks.collector_replay import LoopRewriter, ReplayPlan, plan_replay  # noqa: E402
from tests.benchmarks.liveserve import (  # noqa: E402
    CLK_TCK,
    ROOT,
    BenchError,
    busy_pct,
    machine_busy,
    process_cpu_s,
    stop_pid,
)
from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.serving import Serve, dump_toml  # noqa: E402
from tunnelacct.collector.decode import FlowDecoder  # noqa: E402
from tunnelacct.collector.records import FlowRecord  # noqa: E402
from tunnelacct.config.model import Timeouts, WriterConfig  # noqa: E402
from tunnelacct.enums import IpProto  # noqa: E402
from tunnelacct.sessions.events import Attribution  # noqa: E402
from tunnelacct.sessions.flowkey import SessionIds  # noqa: E402
from tunnelacct.sessions.flowrecords import (  # noqa: E402
    CLOSING_HOLD_S,
    RecordTable,
    exporter_interface,
)

EXPORTER_GATEWAY = "bench"
SERVE_GATEWAY = "bench-serve"
LISTEN_HOST = "127.0.0.1"
SAMPLE_EVERY_S = 1.0
UDP_POLL_S = 0.1
CATCH_UP_LIMIT_S = 5.0  # decoded everything this soon after the sender's end: it kept pace
CATCH_UP_DEADLINE_S = 600.0
STOP_DEADLINE_S = 300.0  # from SIGTERM to exit; then serve is killed and the run fails
START_DEADLINE_S = 60.0
RSS_WINDOW_S = 20.0
RSS_TOLERANCE_SHARE = 0.10
RSS_TOLERANCE_BYTES = 20 << 20
SENDER_SHORTFALL = 0.99  # a step whose sender achieved less than this share of its rate is void
BACKGROUND_BUSY_PCT = 5.0
MIB = 1 << 20
DEFAULT_RATES = "50k,75k,100k,150k,200k,300k,400k"
MIN_RATE = 1_000  # --find-max halves down to this when its first rate is not clean
REFINE_STEP = 250  # --find-max's halvings are rounded to this many records/s
WRITER_MAX_PENDING = WriterConfig().max_pending  # serve's default: the writer is full there
WRITER_BATCH = WriterConfig().batch_size
WRITER_WINDOW_S = 10.0


def parse_rate(text: str) -> int:
    """'50k' -> 50000, '1.5M' -> 1500000, '75000' -> 75000 (records/s)."""
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


# -- the replay, checked -----------------------------------------------------------------------


def lab_attribution(
    family: int, initiator: int, responder: int, responder_port: int, proto: IpProto
) -> Attribution:
    """Every session to one org, as serve's default_org does with no inventory."""
    return Attribution(org_id="bench")


def never_client(family: int, address: int) -> bool:
    """No address is a client's (serve's identity has no clients here)."""
    return False


@dataclass
class ReplayCheck:
    """What decoding and sessionizing two rewritten loops in this process gave."""

    records: list[int]
    bad: dict[str, int]
    shared_tuples: int
    sessions: int
    decode_us_per_record: float
    sessions_us_per_record: float
    ending_us_per_session: float


def check_replay(plan: ReplayPlan, rewriter: LoopRewriter) -> ReplayCheck:
    """Loops 0 and 1 through a fresh FlowDecoder and RecordTable, as serve's collector feeds
    them (tunnelacct/ingest/flows.py FlowSource.add), timed per stage: the same record count
    per loop, no bad-input or lost-record counter, no 5-tuple shared by the loops, and the
    sessions the plan counts. Raises BenchError when not."""
    decoder = FlowDecoder()
    exporter = ("127.0.0.1", 4739)
    table = RecordTable(
        Timeouts(),
        stitch_gap_s=5.0,
        active_timeout_s=1800.0,
        interface=exporter_interface(exporter[0], 0),
        gateway=EXPORTER_GATEWAY,
        attribute=lab_attribution,
        is_client=never_client,
        ids=SessionIds(),
    )
    records_per_loop = []
    tuples_per_loop = []
    decode_s = 0.0
    sessions_s = 0.0
    now = time.time()
    for loop in (0, 1):
        decoded: list[list[FlowRecord]] = []
        began = time.perf_counter()
        for datagram in rewriter.loop(loop):
            decoded.append(decoder.decode_datagram(datagram, exporter, now))
        decode_s += time.perf_counter() - began
        began = time.perf_counter()
        for records in decoded:
            table.add_records(records, now)
        sessions_s += time.perf_counter() - began
        flat = [record for records in decoded for record in records]
        records_per_loop.append(len(flat))
        tuples_per_loop.append(
            {
                (
                    record.protocol,
                    record.src_addr,
                    record.src_port,
                    record.dst_addr,
                    record.dst_port,
                )
                for record in flat
            }
        )
    began = time.perf_counter()
    events = table.advance(now + 60.0)
    ending_s = time.perf_counter() - began
    bad = {
        str(reason): count
        for reason, count in decoder.stats(exporter).items()
        if reason not in TALLIES and count
    }
    check = ReplayCheck(
        records=records_per_loop,
        bad=bad,
        shared_tuples=len(tuples_per_loop[0] & tuples_per_loop[1]),
        sessions=len(events),
        decode_us_per_record=1e6 * decode_s / sum(records_per_loop),
        sessions_us_per_record=1e6 * sessions_s / sum(records_per_loop),
        ending_us_per_session=1e6 * ending_s / max(len(events), 1),
    )
    expected = [plan.records_per_loop, plan.records_per_loop]
    if check.records != expected or bad or check.shared_tuples:
        raise BenchError(
            f"rewritten loops decode badly: records {check.records} (expected {expected}), "
            f"bad or lost {bad}, 5-tuples shared by loops 0 and 1: {check.shared_tuples}"
        )
    if check.sessions != 2 * plan.sessions_per_loop:
        raise BenchError(
            f"two loops made {check.sessions} sessions, the plan counts "
            f"{2 * plan.sessions_per_loop}"
        )
    return check


# -- measuring serve ---------------------------------------------------------------------------


def rss_bytes(pid: int) -> int:
    """VmRSS of a process, in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def thread_cpu_s(pid: int) -> dict[int, float]:
    """utime + stime of each thread of `pid`, by thread id, in seconds."""
    times = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            times[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return times


def receive_buffer_bytes(host: str, port: int) -> int | None:
    """The socket's receive buffer (ss's skmem rb), None when ss cannot tell."""
    done = subprocess.run(
        ["ss", "-Huamn", "src", f"{host}:{port}"], capture_output=True, text=True, check=False
    )
    match = re.search(r"rb(\d+)", done.stdout)
    return int(match.group(1)) if match else None


@dataclass
class Sample:
    """One second of a run; t_s counts from the sender's start (negative: before it)."""

    t_s: float
    rss_bytes: int
    cpu_s: float
    busy: tuple[float, float]
    decoded_records: int
    decoded_datagrams: int
    queue_depth: int
    open_sessions: int
    writer_pending: int
    rows_written: int
    dropped: int
    kernel_drops: int
    rx_queue_max_bytes: int


def collector_of(status: dict[str, Any] | None) -> dict[str, Any]:
    """The status file's "collector" entry ({} before the first status)."""
    return dict((status or {}).get("collector") or {})


class Watch:
    """Samples serve every second and its socket every 0.1 s; keeps the samples."""

    def __init__(self, serve: Serve, port: int) -> None:
        assert serve.proc is not None
        self.serve = serve
        self.pid = serve.proc.pid
        self.port = port
        self.samples: list[Sample] = []
        self.origin = time.monotonic()
        self._next_sample = self.origin
        self._rx_queue_max = 0
        self.rx_queue_max_bytes = 0

    def poll(self) -> None:
        """Read the socket's queue; take a sample when one is due."""
        figures = udp_socket_figures(LISTEN_HOST, self.port)
        self._rx_queue_max = max(self._rx_queue_max, figures.rx_queue_bytes)
        self.rx_queue_max_bytes = max(self.rx_queue_max_bytes, figures.rx_queue_bytes)
        now = time.monotonic()
        if now < self._next_sample:
            return
        self._next_sample += SAMPLE_EVERY_S
        status = self.serve.status() or {}
        collector = collector_of(status)
        decoded = collector.get("decoded") or {}
        writer = status.get("writer") or {}
        self.samples.append(
            Sample(
                t_s=now - self.origin,
                rss_bytes=rss_bytes(self.pid),
                cpu_s=process_cpu_s(self.pid),
                busy=machine_busy(),
                decoded_records=int(decoded.get("records", 0)),
                decoded_datagrams=int(decoded.get("datagrams", 0)),
                queue_depth=int(collector.get("queue_depth", 0)),
                open_sessions=int(collector.get("open_sessions", 0)),
                writer_pending=int(writer.get("pending", 0)),
                rows_written=int(writer.get("rows_written", 0)),
                dropped=sum((collector.get("dropped") or {}).values()),
                kernel_drops=figures.drops,
                rx_queue_max_bytes=self._rx_queue_max,
            )
        )
        self._rx_queue_max = 0

    def run_for(self, seconds: float) -> None:
        """Poll for `seconds`."""
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            self.poll()
            time.sleep(UDP_POLL_S)

    def restart_clock(self) -> None:
        """t = 0 from now (the sender starts); earlier samples get negative times."""
        now = time.monotonic()
        for sample in self.samples:
            sample.t_s -= now - self.origin
        self.origin = now
        self._next_sample = now


@contextlib.contextmanager
def sender_process(
    plan_path: Path, port: int, rate: int, seconds: float, base_shift_ms: int
) -> Iterator[subprocess.Popen[str]]:
    """The sender (collector_replay.py) as a process of its own, ended by its PID on exit."""
    argv = [sys.executable, "-m", "tests.benchmarks.collector_replay", "--plan", str(plan_path)]
    argv += ["--host", LISTEN_HOST, "--port", str(port), "--rate", str(rate)]
    argv += ["--seconds", str(seconds), "--base-shift-ms", str(base_shift_ms)]
    proc = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        yield proc
    finally:
        stop_pid(proc)
        if proc.stdout is not None:
            proc.stdout.close()


# -- one run -----------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One rate for some seconds against a fresh serve: what was sent, seen and stored."""

    rate: int
    seconds: float
    sent: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    rss_start_bytes: int = 0
    catch_up_s: float = 0.0
    stop_s: float = 0.0
    final: dict[str, Any] = field(default_factory=dict)
    kernel_drops: int = 0
    rx_queue_max_bytes: int = 0
    receive_buffer_bytes: int | None = None
    background_pct: float = 0.0
    cpu_send_s: float = 0.0
    cpu_main_thread_s: float = 0.0
    cpu_total_s: float = 0.0
    busy_pct: float = 0.0
    sender_cpu_s: float = 0.0
    rows: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = 0  # None: still running STOP_DEADLINE_S after SIGTERM (killed)
    checks: list[tuple[str, bool, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        """Every check passed (RSS flatness is judged apart, in the default mode)."""
        return all(ok for _name, ok, _text in self.checks)


def serve_config(path: Path) -> Path:
    """[collector] on 127.0.0.1, any free port, the sender's address allowed; all else default."""
    doc = {
        "gateway": {"name": SERVE_GATEWAY},
        "collector": {"listen": [f"{LISTEN_HOST}:0"]},
        "collector.exporters": [{"address": f"{LISTEN_HOST}/32", "gateway": EXPORTER_GATEWAY}],
    }
    path.write_text(dump_toml(doc), encoding="utf-8")
    return path


def stored_rows(db: Path) -> dict[str, Any]:
    """Totals of the sessions table, read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(bytes_tx + bytes_rx), 0),"
            " coalesce(sum(packets_tx + packets_rx), 0), coalesce(sum(incomplete), 0),"
            " coalesce(sum(src_addr LIKE '100.%'), 0), coalesce(sum(midstream), 0)"
            " FROM sessions"
        ).fetchone()
        by_status = dict(conn.execute("SELECT status, count(*) FROM sessions GROUP BY 1"))
        by_reason = dict(
            conn.execute("SELECT coalesce(close_reason, '-'), count(*) FROM sessions GROUP BY 1")
        )
    finally:
        conn.close()
    return {
        "rows": int(row[0]),
        "bytes": int(row[1]),
        "packets": int(row[2]),
        "incomplete": int(row[3]),
        "client_initiated": int(row[4]),
        "midstream": int(row[5]),
        "by_status": by_status,
        "by_reason": by_reason,
    }


def remove_db(db: Path) -> None:
    """Delete a SQLite file and its WAL and shared-memory files."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


def run_rate(
    plan: ReplayPlan, plan_path: Path, workdir: Path, rate: int, seconds: float, name: str
) -> RunResult:
    """One fresh serve, the sender at `rate` for `seconds`, the checks; the DB is deleted."""
    result = RunResult(rate=rate, seconds=seconds)
    db = workdir / f"{name}.db"
    config = serve_config(workdir / f"{name}.toml")
    (workdir / f"{name}.log").unlink(missing_ok=True)  # Serve appends to it
    remove_db(db)  # a fresh store: an earlier run that failed may have left its file
    with Serve(None, config, db, workdir, name) as serve:
        serve.start(wait_for="")
        status = serve.wait(
            lambda s: s.get("state") == "running" and bool(collector_of(s).get("listening")),
            START_DEADLINE_S,
            "the collector listening",
        )
        port = int(collector_of(status)["listening"][0].rsplit(":", 1)[1])
        assert serve.proc is not None
        pid = serve.proc.pid
        result.receive_buffer_bytes = receive_buffer_bytes(LISTEN_HOST, port)
        watch = Watch(serve, port)
        # Serve is idle now: whatever keeps the machine busy is someone else's load.
        result.background_pct = busy_pct(SAMPLE_EVERY_S)
        if result.background_pct > BACKGROUND_BUSY_PCT:
            result.notes.append(f"machine {result.background_pct:.0f}% busy before the run")
        watch.run_for(SAMPLE_EVERY_S + 0.2)
        result.rss_start_bytes = rss_bytes(pid)
        base_shift_ms = round(time.time() * 1000) - plan.first_ms
        with sender_process(plan_path, port, rate, seconds, base_shift_ms) as sender:
            assert sender.stdout is not None
            if sender.stdout.readline().strip() != "ready":
                raise BenchError("the sender did not start")
            threads0 = thread_cpu_s(pid)
            cpu0 = process_cpu_s(pid)
            busy0 = machine_busy()
            watch.restart_clock()
            while sender.poll() is None:
                watch.poll()
                time.sleep(UDP_POLL_S)
            sent_at = time.monotonic()
            cpu1 = process_cpu_s(pid)
            busy1 = machine_busy()
            threads1 = thread_cpu_s(pid)
            if sender.returncode:
                raise BenchError(f"the sender exited {sender.returncode}")
            result.sent = json.loads(sender.stdout.read().strip().splitlines()[-1])
        result.sender_cpu_s = float(result.sent.get("cpu_s", 0.0))
        sent_s = float(result.sent["took_s"])
        result.cpu_send_s = cpu1 - cpu0
        result.cpu_main_thread_s = threads1.get(pid, 0.0) - threads0.get(pid, 0.0)
        result.busy_pct = 100 * (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1)
        # caught up: every datagram decoded or dropped somewhere, nothing queued
        deadline = time.monotonic() + CATCH_UP_DEADLINE_S
        caught_up = False
        while time.monotonic() < deadline:
            watch.poll()
            collector = collector_of(serve.status())
            decoded = collector.get("decoded") or {}
            kernel = udp_socket_figures(LISTEN_HOST, port).drops
            accounted = (
                int(decoded.get("datagrams", 0))
                + kernel
                + sum((collector.get("dropped") or {}).values())
            )
            if accounted >= result.sent["datagrams"] and collector.get("queue_depth") == 0:
                caught_up = True
                break
            time.sleep(UDP_POLL_S)
        result.catch_up_s = max(0.0, time.monotonic() - sent_at - SAMPLE_EVERY_S)
        if not caught_up:
            result.notes.append(f"not caught up {CATCH_UP_DEADLINE_S:.0f} s after the sender")
        result.cpu_total_s = process_cpu_s(pid) - cpu0
        result.kernel_drops = udp_socket_figures(LISTEN_HOST, port).drops
        result.rx_queue_max_bytes = watch.rx_queue_max_bytes
        result.samples = watch.samples
        began = time.monotonic()
        try:
            result.exit_code = serve.stop(timeout_s=STOP_DEADLINE_S)
        except subprocess.TimeoutExpired:
            serve.kill()  # by its PID; the rows written so far are still checked
            result.exit_code = None
        result.stop_s = time.monotonic() - began
        result.final = serve.status() or {}
        log_text = serve.log()
        if "Traceback" in log_text:
            result.notes.append(f"a Traceback in serve's log: {serve.log_path}")
        for line in log_text.splitlines():
            if " ERROR " in line:
                result.notes.append(f"serve logged: {line[:300]}")
    result.rows = stored_rows(db)
    remove_db(db)
    judge(result, sent_s)
    return result


def rss_flatness(result: RunResult, warmup_s: float) -> tuple[bool | None, str]:
    """(flat?, text): the largest RSS of the last RSS_WINDOW_S of sending vs the largest of the
    RSS_WINDOW_S after the warm-up; None when the run is too short to tell."""
    sending = [s for s in result.samples if 0 <= s.t_s <= result.seconds + SAMPLE_EVERY_S]
    if result.seconds < warmup_s + 2 * RSS_WINDOW_S or not sending:
        return None, f"not judged (needs --seconds >= {warmup_s + 2 * RSS_WINDOW_S:.0f})"
    early = [s.rss_bytes for s in sending if warmup_s < s.t_s <= warmup_s + RSS_WINDOW_S]
    late = [s.rss_bytes for s in sending if s.t_s > result.seconds - RSS_WINDOW_S]
    early_max = max(early)
    late_max = max(late)
    allowed = max(RSS_TOLERANCE_SHARE * early_max, RSS_TOLERANCE_BYTES)
    flat = late_max <= early_max + allowed
    text = (
        f"max {late_max / MIB:.1f} MiB in the last {RSS_WINDOW_S:.0f} s vs "
        f"{early_max / MIB:.1f} MiB in {warmup_s:.0f}-{warmup_s + RSS_WINDOW_S:.0f} s "
        f"({(late_max - early_max) / MIB:+.1f} MiB, allowed +{allowed / MIB:.1f})"
    )
    return flat, text


def writer_pace(result: RunResult) -> tuple[str, bool, str]:
    """The writer's check: the floor of its pending sessions (the least pending within
    WRITER_WINDOW_S: the writer flushes every second, and every [timeouts] checkpoint hands it
    every open session at once) did not rise from the next-to-last window of sending to the
    last by more than a batch, and is not pinned within a batch of max_pending (there the
    collector waits for it): either is a writer slower than sessions end. A run too short for
    two windows after the closing hold passes when the writer never reached max_pending."""
    pending_max = max((s.writer_pending for s in result.samples), default=0)
    text = f"writer pending max {pending_max:,} of [writer] max_pending {WRITER_MAX_PENDING:,}"
    end = result.seconds
    if end < CLOSING_HOLD_S + 2 * WRITER_WINDOW_S:
        full = pending_max >= WRITER_MAX_PENDING
        return "the writer kept pace", not full, text + " (its floor not judged: run too short)"
    earlier = min(
        s.writer_pending
        for s in result.samples
        if end - 2 * WRITER_WINDOW_S < s.t_s <= end - WRITER_WINDOW_S
    )
    last = min(s.writer_pending for s in result.samples if end - WRITER_WINDOW_S < s.t_s <= end)
    rising = last > earlier + WRITER_BATCH
    pinned = last >= WRITER_MAX_PENDING - WRITER_BATCH
    text += (
        f"; floor {last:,} in the last {WRITER_WINDOW_S:.0f} s of sending vs {earlier:,} in the "
        f"{WRITER_WINDOW_S:.0f} s before (rise allowed: one batch, {WRITER_BATCH:,})"
    )
    if pinned:
        text += "; pinned at max_pending: decoding waits for the writer"
    return "the writer kept pace", not rising and not pinned, text


def judge(result: RunResult, sent_s: float) -> None:
    """Fill result.checks: what the issue calls losing nothing, and keeping pace."""
    sent = result.sent
    collector = collector_of(result.final)
    decoded = collector.get("decoded") or {}
    dropped = collector.get("dropped") or {}
    bad = {k: v for k, v in decoded.items() if k not in TALLIES and v}
    exporter = (collector.get("exporters") or {}).get(LISTEN_HOST) or {}
    rows = result.rows
    checks = result.checks
    checks.append(
        (
            "no datagram dropped by serve",
            not any(dropped.values()),
            f"not_allowed {dropped.get('not_allowed', 0):,}, "
            f"queue_overflow {dropped.get('queue_overflow', 0):,}",
        )
    )
    checks.append(
        (
            "no datagram dropped by the kernel",
            result.kernel_drops == 0,
            f"/proc/net/udp drops {result.kernel_drops:,}",
        )
    )
    checks.append(
        (
            "no record lost or bad",
            not bad,
            f"lost_records {decoded.get('lost_records', 0):,}, bad input {bad or 'none'}",
        )
    )
    accounted = int(exporter.get("records_accounted", 0))
    checks.append(
        (
            "every record decoded and accounted",
            int(decoded.get("records", 0)) == sent["records"] == accounted,
            f"sent {sent['records']:,}, decoded {int(decoded.get('records', 0)):,}, "
            f"accounted {accounted:,}",
        )
    )
    checks.append(
        (
            "every session stored",
            rows["rows"] == sent["sessions"],
            f"rows {rows['rows']:,}, sessions sent {sent['sessions']:,}",
        )
    )
    checks.append(
        (
            "rows' bytes and packets = the records'",
            rows["bytes"] == sent["octets"] and rows["packets"] == sent["packets"],
            f"bytes {rows['bytes']:,} of {sent['octets']:,}, "
            f"packets {rows['packets']:,} of {sent['packets']:,}",
        )
    )
    checks.append(
        (
            "serve kept pace",
            result.catch_up_s <= CATCH_UP_LIMIT_S,
            f"everything decoded {result.catch_up_s:.1f} s after the sender's end "
            f"(limit {CATCH_UP_LIMIT_S:.0f} s; the status file is up to 1 s old)",
        )
    )
    checks.append(writer_pace(result))
    if result.exit_code is None:
        exited = f"still running {STOP_DEADLINE_S:.0f} s after SIGTERM: killed"
    else:
        exited = f"exit status {result.exit_code} after {result.stop_s:.1f} s"
    checks.append(("serve stopped cleanly on SIGTERM", result.exit_code == 0, exited))
    achieved = float(sent["achieved_rate"])
    if achieved < SENDER_SHORTFALL * result.rate:
        result.notes.append(
            f"the sender achieved only {achieved:,.0f} records/s of {result.rate:,} "
            f"(in {sent_s:.1f} s): the run says nothing about serve at {result.rate:,}"
        )


# -- printing ----------------------------------------------------------------------------------


def series_line(previous: Sample, sample: Sample) -> str:
    """One interval of the series: rates and levels."""
    elapsed = max(sample.t_s - previous.t_s, 1e-3)
    records_per_s = (sample.decoded_records - previous.decoded_records) / elapsed
    cpu_pct = 100 * (sample.cpu_s - previous.cpu_s) / elapsed
    busy = sample.busy[0] - previous.busy[0]
    total = max(sample.busy[1] - previous.busy[1], 1)
    return (
        f"  t={sample.t_s:5.1f}s decoded {records_per_s:9,.0f} rec/s  queue {sample.queue_depth:6,}"
        f"  open {sample.open_sessions:8,}  writer pending {sample.writer_pending:7,}"
        f"  rows {sample.rows_written:10,}  RSS {sample.rss_bytes / MIB:6.1f} MiB"
        f"  serve CPU {cpu_pct:4.0f}%  machine {100 * busy / total:4.0f}%"
        f"  kernel drops {sample.kernel_drops:,}  rx_queue max {sample.rx_queue_max_bytes:,} B"
    )


def print_series(result: RunResult, every_s: float) -> None:
    """The per-second samples, one line per `every_s` (each line covers its interval)."""
    print(f"series (every {every_s:g} s; t from the sender's start; status up to 1 s old):")
    previous: Sample | None = None
    for sample in result.samples:
        if previous is None:
            previous = sample
            continue
        if sample.t_s - previous.t_s >= every_s - 0.05:
            print(series_line(previous, sample))
            previous = sample


def print_run(result: RunResult, warmup_s: float) -> tuple[bool | None, str]:
    """The run's RESULT lines and checks; returns the RSS verdict."""
    sent = result.sent
    rows = result.rows
    sending = [s for s in result.samples if 0 <= s.t_s <= result.seconds + SAMPLE_EVERY_S]
    rss_max = max((s.rss_bytes for s in result.samples), default=0)
    rss_end = sending[-1].rss_bytes if sending else 0
    queue_max = max((s.queue_depth for s in result.samples), default=0)
    pending_max = max((s.writer_pending for s in result.samples), default=0)
    open_max = max((s.open_sessions for s in result.samples), default=0)
    sent_s = float(sent["took_s"])
    per_second = sent["per_second_records"]
    print(
        f"RESULT {result.rate:,} records/s for {result.seconds:g} s: sent {sent['records']:,} "
        f"records ({sent['sessions']:,} sessions) in {sent['datagrams']:,} datagrams = "
        f"{sent['achieved_rate']:,.0f} records/s achieved (per second {min(per_second):,} to "
        f"{max(per_second):,}; sender at most {1000 * sent['max_lag_s']:.1f} ms behind; "
        f"{sent['full_loops']} loops + {sent['partial_datagrams']:,} datagrams; "
        f"send errors {sent['send_errors']}; sender CPU "
        f"{100 * result.sender_cpu_s / max(sent_s, 1e-3):.0f}% of a core)",
        flush=True,
    )
    cpu_pct = 100 * result.cpu_send_s / max(sent_s, 1e-3)
    main_pct = min(cpu_pct, 100 * result.cpu_main_thread_s / max(sent_s, 1e-3))
    print(
        f"RESULT serve: CPU {cpu_pct:.0f}% of a core while sending (main thread: event loop, "
        f"receive, decode, sessions: {main_pct:.0f}%; other threads, the writer's: "
        f"{cpu_pct - main_pct:.0f}%), {1e6 * result.cpu_total_s / max(sent['records'], 1):.1f} "
        f"µs of CPU per record incl. catch-up; machine {result.busy_pct:.0f}% busy "
        f"(both cores); caught up {result.catch_up_s:.1f} s after the sender, SIGTERM to exit "
        f"{result.stop_s:.1f} s",
        flush=True,
    )
    rb = result.receive_buffer_bytes
    print(
        f"RESULT serve: RSS start {result.rss_start_bytes / MIB:.1f} MiB, end of sending "
        f"{rss_end / MIB:.1f} MiB, max {rss_max / MIB:.1f} MiB; queue depth max {queue_max:,} "
        f"datagrams; open sessions max {open_max:,}; writer pending max {pending_max:,}; "
        f"socket receive queue max {result.rx_queue_max_bytes:,} B of "
        f"{'?' if rb is None else f'{rb:,}'} B (rb)",
        flush=True,
    )
    print(
        f"RESULT rows: {rows['rows']:,} ({rows['by_status']}), close reasons "
        f"{rows['by_reason']}; initiator the 100.x client in {rows['client_initiated']:,}; "
        f"midstream {rows['midstream']:,}; incomplete {rows['incomplete']:,}",
        flush=True,
    )
    flat, rss_text = rss_flatness(result, warmup_s)
    for name, ok, text in result.checks:
        print(f"CHECK {'ok  ' if ok else 'FAIL'} {name}: {text}")
    verdict = "not judged" if flat is None else ("ok  " if flat else "FAIL")
    print(f"CHECK {verdict} RSS flat: {rss_text}")
    for note in result.notes:
        print(f"  note: {note}")
    return flat, rss_text


# -- main --------------------------------------------------------------------------------------


def prepare(workdir: Path, spec: CaptureSpec) -> tuple[ReplayPlan, Path]:
    """The capture (made or reused), its replay plan (saved for the sender), the check."""
    capture: Capture = make_capture(spec, workdir / spec.key())
    how = "reused" if capture.cached else f"made in {capture.made_s:.1f} s"
    print(
        f"capture ({how}): {capture.softflowd_version} -r of a {capture.packets_in_pcap:,}-packet "
        f"headers-only pcap ({spec.sessions:,} sessions, {spec.udp_share:.0%} UDP, seed "
        f"{spec.seed}): {len(capture.datagrams):,} IPFIX datagrams, {capture.records:,} records; "
        f"softflowd: '{capture.softflowd_summary}'; sequence numbers contiguous; "
        f"{capture.datagrams_path}",
        flush=True,
    )
    plan = plan_replay(capture.datagrams)
    plan_path = workdir / "replay-plan.npz"
    plan.save(plan_path)
    rewriter = LoopRewriter(plan, round(time.time() * 1000) - plan.first_ms)
    check = check_replay(plan, rewriter)
    per_record_us = (
        check.decode_us_per_record
        + check.sessions_us_per_record
        + check.ending_us_per_session * plan.sessions_per_loop / plan.records_per_loop
    )
    print(
        f"replay: {plan.records_per_loop:,} records, {plan.sessions_per_loop:,} sessions per "
        f"loop, {plan.loop_span_ms / 1000:.2f} s of record time; loops 0 and 1 rewritten and "
        f"decoded here: {check.records[0]:,} + {check.records[1]:,} records, no bad or lost "
        f"record, no 5-tuple shared, {check.sessions:,} sessions",
        flush=True,
    )
    print(
        f"stages in this process (one core, no I/O): decode {check.decode_us_per_record:.1f} "
        f"µs/record, sessions {check.sessions_us_per_record:.1f} µs/record, ending + events "
        f"{check.ending_us_per_session:.1f} µs/session: {per_record_us:.1f} µs/record, a "
        f"ceiling of {1e6 / per_record_us:,.0f} records/s before receiving, writing and the rest",
        flush=True,
    )
    return plan, plan_path


def run_step(
    plan: ReplayPlan, plan_path: Path, workdir: Path, args: argparse.Namespace, rate: int
) -> bool:
    """One --find-max step at `rate`: run, print; True when clean (and the sender kept up)."""
    name = f"step-{rate}"
    result = run_rate(plan, plan_path, workdir, rate, args.step_seconds, name)
    print_run(result, args.warmup)
    if args.series:
        print_series(result, args.series)
    void = result.sent["achieved_rate"] < SENDER_SHORTFALL * rate
    failed = [check_name for check_name, ok, _text in result.checks if not ok]
    verdict = "clean" if result.clean and not void else "NOT clean"
    why = "; the sender fell short" if void else (f": {', '.join(failed)}" if failed else "")
    print(f"STEP {rate:,} records/s: {verdict}{why}", flush=True)
    return result.clean and not void


def find_max(
    plan: ReplayPlan, plan_path: Path, workdir: Path, args: argparse.Namespace
) -> int | None:
    """Up the rates to the first unclean step (down, halving, when the first is not clean),
    then --refine halvings between the highest clean and the lowest unclean rate."""
    best: int | None = None
    failed: int | None = None
    for rate in sorted(parse_rate(r) for r in args.rates.split(",")):
        if run_step(plan, plan_path, workdir, args, rate):
            best = rate
            continue
        failed = rate
        break
    if best is None and failed is not None:
        rate = failed // 2
        while rate >= MIN_RATE:
            if run_step(plan, plan_path, workdir, args, rate):
                best = rate
                break
            failed = rate
            rate //= 2
    if best is None or failed is None:
        return best
    for _halving in range(args.refine):
        rate = round((best + failed) / 2 / REFINE_STEP) * REFINE_STEP
        if rate in (best, failed):
            break
        if run_step(plan, plan_path, workdir, args, rate):
            best = rate
        else:
            failed = rate
    return best


def code_identity() -> str:
    """The commit, whether the tree differs from it, and a digest of tunnelacct/'s sources as
    measured (the tree may hold uncommitted changes)."""
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "tunnelacct"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    digest = hashlib.sha256()
    newest = 0.0
    for path in sorted((ROOT / "tunnelacct").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode())
        digest.update(path.read_bytes())
        newest = max(newest, path.stat().st_mtime)
    changed = datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    state = "with uncommitted changes to tunnelacct/" if dirty else "clean"
    return (
        f"commit {head or '?'} ({state}); sha256 of tunnelacct/**/*.py "
        f"{digest.hexdigest()[:12]}, newest modified {changed}"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen mode; returns 1 on FAIL (default mode)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--rate", default="50k", help="records/s of the default mode")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the default mode")
    parser.add_argument("--warmup", type=float, default=20.0, help="s before RSS is compared")
    parser.add_argument("--find-max", action="store_true", help="step the rate up instead")
    parser.add_argument("--rates", default=DEFAULT_RATES, help="--find-max steps (records/s)")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=40.0,
        help="--find-max step length (sessions reach the writer 10 s after their records)",
    )
    parser.add_argument("--refine", type=int, default=3, help="--find-max halvings at the end")
    parser.add_argument("--sessions", type=int, default=CaptureSpec().sessions)
    parser.add_argument("--seed", type=int, default=CaptureSpec().seed)
    parser.add_argument("--series", type=float, default=5.0, help="print the series every N s")
    parser.add_argument(
        "--workdir", type=Path, help="keep the capture and logs here (default: a temporary dir)"
    )
    args = parser.parse_args(argv)
    print(f"command: {shlex.join([Path(sys.executable).name, *sys.argv])}")
    print(f"date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}")
    print(f"machine: {machine()}; nproc {os.cpu_count()}; kernel {os.uname().release}")
    rmem_default = Path("/proc/sys/net/core/rmem_default").read_text().strip()
    rmem_max = Path("/proc/sys/net/core/rmem_max").read_text().strip()
    print(f"net.core.rmem_default {rmem_default} B, rmem_max {rmem_max} B")
    print(f"code: {code_identity()}", flush=True)
    spec = CaptureSpec(sessions=args.sessions, seed=args.seed)
    with contextlib.ExitStack() as stack:
        if args.workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-coll-")))
        else:
            workdir = args.workdir
            workdir.mkdir(parents=True, exist_ok=True)
        plan, plan_path = prepare(workdir, spec)
        if args.find_max:
            best = find_max(plan, plan_path, workdir, args)
            print(
                "RESULT highest clean rate: "
                + (f"{best:,} records/s" if best else "none")
                + f" ({args.step_seconds:g} s steps, a fresh serve each)"
            )
            return 0
        rate = parse_rate(args.rate)
        result = run_rate(plan, plan_path, workdir, rate, args.seconds, "run")
        flat, _text = print_run(result, args.warmup)
        if args.series:
            print_series(result, args.series)
        passed = result.clean and flat is not False
        print(f"{'PASS' if passed else 'FAIL'}: {rate:,} records/s for {args.seconds:g} s")
        return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
