"""Pieces of bench_live.py: veth namespaces, a `tunnelacct serve` subprocess, CPU counters, pcaps.

Everything here starts real processes in network namespaces it creates, tracks their PIDs and
ends only those. Used as::

    with VethPair(f"tab{os.getpid()}") as pair:
        with ServeProcess(pair.receiver, cfg, workdir, "step-1") as serve:
            serve.wait_running()
            cpu0 = serve.cpu_s()
            ...
            final = serve.stop()   # SIGTERM: sessions are checkpointed, the status file is final
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import sqlite3
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parents[2]
TUNNELACCT = ROOT / ".venv" / "bin" / "tunnelacct"
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A benchmark step could not run (a command failed, serve did not come up)."""


def run(argv: list[str], *, check: bool = True, timeout_s: float = 60.0) -> str:
    """Run argv, return its stdout; raise BenchError with its stderr when it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and done.returncode:
        raise BenchError(f"{' '.join(argv)!r} exited {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def stop_pid(
    proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout_s: float = 10.0
) -> None:
    """Signal one process we started, wait for it, SIGKILL it after timeout_s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- CPU ---------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """utime + stime of `pid` (all its threads) and of its live descendants, in seconds."""
    total = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # comm may hold spaces and parentheses
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in task.read_text().split()]
    return total


def busy_pct(seconds: float) -> float:
    """How busy all CPUs were over the next `seconds`, in % of all of them."""
    busy0, total0 = machine_busy()
    time.sleep(seconds)
    busy1, total1 = machine_busy()
    return 100 * (busy1 - busy0) / max(total1 - total0, 1)


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat; busy excludes idle and iowait."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal (guest is in user)
    return total - values[3] - values[4], total


# -- namespaces --------------------------------------------------------------------------------


class VethPair:
    """Namespaces `<prefix>s` (sender) and `<prefix>r` (receiver) joined by one veth pair.

    The sender end is `<prefix>a` (10.77.0.1/24), the receiver end `<prefix>b` (10.77.0.2/24).
    IPv6 is off in both, so the kernel sends no router solicitations or MLD reports of its own:
    every TCP/UDP packet on the link is one the benchmark sent.
    """

    def __init__(self, prefix: str) -> None:
        self.sender, self.receiver = f"{prefix}s", f"{prefix}r"
        self.sender_if, self.receiver_if = f"{prefix}a", f"{prefix}b"
        self.sender_ip, self.receiver_ip = "10.77.0.1", "10.77.0.2"
        self.receiver_mac = b""
        self._made: list[str] = []

    def __enter__(self) -> VethPair:
        try:
            for ns in (self.sender, self.receiver):
                run(["ip", "netns", "add", ns])
                self._made.append(ns)
                no_ipv6 = ["all", "default"]
                sysctls = [f"net.ipv6.conf.{c}.disable_ipv6=1" for c in no_ipv6]
                run(["ip", "netns", "exec", ns, "sysctl", "-qw", *sysctls])
                run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(
                [
                    "ip",
                    "-n",
                    self.sender,
                    "link",
                    "add",
                    self.sender_if,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    self.receiver_if,
                    "netns",
                    self.receiver,
                ]
            )
            for ns, dev, addr in (
                (self.sender, self.sender_if, self.sender_ip),
                (self.receiver, self.receiver_if, self.receiver_ip),
            ):
                run(["ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev])
                run(["ip", "-n", ns, "link", "set", dev, "up"])
            show = json.loads(
                run(["ip", "-n", self.receiver, "-j", "link", "show", self.receiver_if])
            )
            self.receiver_mac = bytes.fromhex(show[0]["address"].replace(":", ""))
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def exec_argv(self, ns: str, argv: list[str]) -> list[str]:
        """argv run inside `ns` (`ip netns exec` execs in place: the PID is the program)."""
        return ["ip", "netns", "exec", ns, *argv]

    def close(self) -> None:
        """Delete the namespaces (and so the veth); their leftover processes are ours: killed."""
        for ns in reversed(self._made):
            for pid in run(["ip", "netns", "pids", ns], check=False).split():
                print(f"warning: killing leftover pid {pid} in namespace {ns}")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            run(["ip", "netns", "del", ns], check=False)
        self._made = []


# -- serve -------------------------------------------------------------------------------------


def serve_config(
    path: Path,
    interface: str,
    *,
    base: str = "",
    tcp_linger_s: float | None = None,
    flush_interval_s: float | None = None,
    first_write_s: float | None = None,
) -> Path:
    """Write a config for `serve`: `base` TOML text plus one [[capture]] and the benchmark knobs.

    `base` must not have [timeouts] or [writer] tables when their knobs are given.
    """
    parts = [base.rstrip() + "\n"] if base else ['[gateway]\nname = "bench"\n']
    timeouts = []
    if tcp_linger_s is not None:
        timeouts.append(f"tcp_linger = {tcp_linger_s}\n")
    if first_write_s is not None:
        timeouts.append(f"first_write = {first_write_s}\n")
    if timeouts:
        parts.append("[timeouts]\n" + "".join(timeouts))
    if flush_interval_s is not None:
        parts.append(f"[writer]\nflush_interval = {flush_interval_s}\n")
    parts.append(f'[[capture]]\ninterface = "{interface}"\n')
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def serve_argv(config: Path, status_path: Path) -> list[str]:
    """`tunnelacct serve` with `config`, writing its status to `status_path`, logging INFO."""
    return [
        str(TUNNELACCT),
        "--log-level",
        "INFO",
        "serve",
        "--config",
        str(config),
        "--status-file",
        str(status_path),
    ]


class ServeProcess:
    """`tunnelacct serve` inside a namespace, with its own SQLite file and status file."""

    def __init__(
        self,
        netns: str,
        config: Path,
        workdir: Path,
        name: str,
        *,
        popen: Any = None,
        cpus: str | None = None,
    ) -> None:
        self.db = workdir / f"{name}.db"
        self.status_path = workdir / f"{name}.status.json"
        self.log_path = workdir / f"{name}.log"
        self._netns, self._config, self._popen = netns, config, popen
        self._pin = ["taskset", "-c", cpus] if cpus else []  # taskset execs: the PID stays
        self.proc: subprocess.Popen[Any] | None = None
        self._log: IO[str] | None = None

    def __enter__(self) -> ServeProcess:
        env = {**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{self.db}"}
        argv = serve_argv(self._config, self.status_path)
        self._log = self.log_path.open("w")
        kwargs: dict[str, Any] = {"stdout": self._log, "stderr": subprocess.STDOUT, "env": env}
        if self._popen is not None:  # the lab's popen: it also ends the PID at teardown
            self.proc = self._popen(argv, **kwargs)
        else:
            self.proc = subprocess.Popen(
                [*self._pin, "ip", "netns", "exec", self._netns, *argv],
                start_new_session=True,
                **kwargs,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_pid(self.proc, signal.SIGTERM, timeout_s=60)
        if self._log is not None:
            self._log.close()
            self._log = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, Any]:
        """The last status file serve wrote ({} before the first)."""
        try:
            status: dict[str, Any] = json.loads(self.status_path.read_text())
        except (OSError, ValueError):
            return {}
        return status

    def capture(self) -> dict[str, Any]:
        """The counters of the (single) capture in the last status file."""
        captures = self.status().get("captures") or [{}]
        return dict(captures[0])

    def wait_running(self, timeout_s: float = 30.0) -> None:
        """Until the status file says running and capturing; raise with the log tail if not."""
        deadline = time.monotonic() + timeout_s
        while True:
            st = self.status()
            if st.get("state") == "running" and self.capture().get("state") == "capturing":
                return
            assert self.proc is not None
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"serve did not start: {self.log_tail()}")
            time.sleep(0.05)

    def cpu_s(self) -> float:
        """CPU seconds serve used so far (user + system, all threads)."""
        return process_cpu_s(self.pid)

    def stop(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """SIGTERM and wait for a clean exit; returns the final status (written on stop)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"serve ignored SIGTERM for {timeout_s} s: {self.log_tail()}") from e
        if code != 0:
            raise BenchError(f"serve exited {code}: {self.log_tail()}")
        return self.status()

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text()[-chars:]
        except OSError:
            return "(no log)"


def ensure_tcpreplay() -> None:
    """Install tcpreplay from Debian when it is missing (says so first)."""
    if shutil.which("tcpreplay"):
        return
    print("tcpreplay missing: apt-get install -y --no-install-recommends tcpreplay", flush=True)
    argv = ["apt-get", "install", "-y", "--no-install-recommends", "tcpreplay"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(argv, env=env, capture_output=True, check=False).returncode:
        print("apt-get install failed; running apt-get update first", flush=True)
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(argv, env=env, check=True, capture_output=True)
    if not shutil.which("tcpreplay"):
        raise BenchError("tcpreplay is still missing after apt-get install")


def db_totals(db: Path) -> tuple[int, int, int]:
    """(rows, sum of packets_tx + packets_rx, completed rows) of the sessions table."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows, packets, completed = conn.execute(
            "SELECT count(*), coalesce(sum(packets_tx + packets_rx), 0),"
            " coalesce(sum(status = 'completed'), 0) FROM sessions"
        ).fetchone()
    finally:
        conn.close()
    return int(rows), int(packets), int(completed)


# -- pcap of Ethernet frames -------------------------------------------------------------------

_PCAP_HEADER = struct.Struct("<IHHiIII").pack(0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)  # LINKTYPE_ETHERNET
_RECORD = struct.Struct("<IIII")
_IP = struct.Struct("!BBHHHBBH4s4s")
_TCP = struct.Struct("!HHIIBBHHH")
# SYN options as Linux sends them: MSS 1460, SACK permitted, timestamps, NOP, window scale 7.
_SYN_OPTIONS = bytes.fromhex("020405b40402080a000000010000000001030307")
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
SERVICE_PORTS = (443, 443, 443, 22, 5432, 8080, 3389, 445)


def _ip_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


@dataclass(slots=True)
class _Endpoints:
    """One synthetic session's addresses, ports and running sequence numbers."""

    client: bytes
    server: bytes
    sport: int
    dport: int
    seq_c: int
    seq_s: int
    ip_id: int = 0


@dataclass
class PcapFacts:
    """What synth_ethernet_pcap wrote."""

    packets: int
    frame_bytes: int
    flows: int


def synth_ethernet_pcap(
    path: Path,
    dst_mac: bytes,
    *,
    bulk_flows: int,
    short_flows: int,
    mss: int,
    bulk_segments: int = 80,
    seed: int = 1,
) -> PcapFacts:
    """Ethernet frames of complete TCP/IPv4 sessions, interleaved in time, to `dst_mac`.

    Bulk flows (handshake, a request, 10 to `bulk_segments` full-size segments one way with an
    ACK every second segment, FINs both ways) and short request/response flows (about 11
    packets). Every IP total
    length equals the bytes that follow the Ethernet header; IP checksums are right, TCP
    checksums are 0 (the receiver's IP layer drops these packets before TCP: not for it).
    """
    rng = random.Random(seed)
    src_mac = bytes.fromhex("020000000001")
    payload = bytes(max(mss, 1500))
    flows: list[tuple[float, float, list[tuple[int, int, int]]]] = []  # start, span, packets
    for i in range(bulk_flows + short_flows):
        bulk = i < bulk_flows
        pkts: list[tuple[int, int, int]] = [(0, SYN, 0), (1, SYN | ACK, 0), (0, ACK, 0)]
        pkts.append((0, PSH | ACK, rng.randrange(200, 700)))  # the request
        if bulk:
            upload = rng.random() < 0.3
            data_dir = 0 if upload else 1
            for n in range(rng.randrange(10, max(11, bulk_segments + 1))):
                pkts.append((data_dir, ACK, mss))
                if n % 2:
                    pkts.append((1 - data_dir, ACK, 0))
        else:
            for _ in range(rng.randrange(1, 4)):
                pkts.append((1, ACK, mss))
            pkts.append((1, PSH | ACK, rng.randrange(100, mss)))
            pkts.append((0, ACK, 0))
        pkts += [(1, FIN | ACK, 0), (0, FIN | ACK, 0), (1, ACK, 0)]
        start = rng.random()
        span = min(1.0 - start, 0.02 + 0.3 * rng.random()) if bulk else 0.01 * rng.random()
        flows.append((start, max(span, 1e-6), pkts))
    timeline: list[tuple[float, int, int]] = []
    for f, (start, span, pkts) in enumerate(flows):
        step = span / len(pkts)
        timeline += [(start + j * step, f, j) for j in range(len(pkts))]
    timeline.sort()
    state = [
        _Endpoints(
            client=bytes((100, 64, f >> 8 & 0x3F, f & 0xFF or 1)),
            server=bytes((10, 99, rng.randrange(256), rng.randrange(1, 255))),
            sport=20000 + rng.randrange(40000),
            dport=rng.choice(SERVICE_PORTS),
            seq_c=rng.getrandbits(32),
            seq_s=rng.getrandbits(32),
        )
        for f in range(len(flows))
    ]
    out = bytearray(_PCAP_HEADER)
    frame_bytes = 0
    ts0 = 1_800_000_000.0
    eth = dst_mac + src_mac + b"\x08\x00"
    for when, f, j in timeline:
        d, flags, size = flows[f][2][j]
        e = state[f]
        syn = flags & SYN
        tcp_len = 40 if syn else 20
        opts = _SYN_OPTIONS if syn else b""
        used = size + (1 if flags & (SYN | FIN) else 0)  # sequence space the segment takes
        if d == 0:
            src, dst, sp, dp, seq, ack = e.client, e.server, e.sport, e.dport, e.seq_c, e.seq_s
            e.seq_c = (e.seq_c + used) & 0xFFFFFFFF
        else:
            src, dst, sp, dp, seq, ack = e.server, e.client, e.dport, e.sport, e.seq_s, e.seq_c
            e.seq_s = (e.seq_s + used) & 0xFFFFFFFF
        if j == 0:
            ack = 0
        e.ip_id = (e.ip_id + 1) & 0xFFFF
        total = 20 + tcp_len + size
        ip = _IP.pack(0x45, 0, total, e.ip_id, 0x4000, 64, 6, 0, src, dst)
        ip = ip[:10] + struct.pack("!H", _ip_checksum(ip)) + ip[12:]
        tcp = _TCP.pack(sp, dp, seq, ack, (tcp_len // 4) << 4, flags, 502, 0, 0)
        frame = eth + ip + tcp + opts + payload[:size]
        ts = ts0 + when * 10.0
        sec = int(ts)
        out += _RECORD.pack(sec, int((ts - sec) * 1e6), len(frame), len(frame))
        out += frame
        frame_bytes += len(frame)
    path.write_bytes(out)
    return PcapFacts(packets=len(timeline), frame_bytes=frame_bytes, flows=len(flows))


@contextlib.contextmanager
def started(argv: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[Any]]:
    """Popen(argv) in its own session (Ctrl-C reaches only us); SIGTERM by PID on exit."""
    proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
    try:
        yield proc
    finally:
        stop_pid(proc)
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
