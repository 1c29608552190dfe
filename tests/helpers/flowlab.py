"""FlowLab: real softflowd flow exporters watching real traffic on a veth, for the flow-record
collector's tests (issue 20), with nfcapd/nfdump as the oracle.

Topology (namespace names carry a per-run prefix such as ``fl4242-0-``)::

    exp   fl-exp 10.97.0.1/24 fd00:97::1/64  <-- veth, offloads off -->  peer  fl-peer .2 / ::2
          tcpdump -i fl-exp (the scenario pcap)                          iperf3 -s, http.server,
          softflowd -v 9 | -v 10 | -v 10 -b -i fl-exp                    UDP echo, sentinel sink
            -n 127.0.0.1:RECEIVER,127.0.0.1:NFCAPD  (exp's own loopback)

The exporters, nfcapd and our receivers all live in ``exp``: softflowd must run where it sees
fl-exp, and its datagrams then go over exp's loopback, never over the veth it watches nor into
the root namespace. The receivers are plain UDP sockets that this process opens inside ``exp``
(setns(2) in a short-lived thread: a socket stays in the namespace it was made in), so tests
read them in-process. Each softflowd sends every datagram, byte for byte, both to its receiver
and to its own nfcapd (softflowd's comma-separated destinations), which stores the flows for
nfdump: nfdump reads exactly what we recorded, with softflowd's own source address and port.

Example::

    with FlowLab(tmp_path) as lab:
        result = lab.run(SHORT_SCENARIO)
    result.datagrams["ipfix"][0].data[:2] == b"\\x00\\x0a"
    result.nfdump_rows["v9"]       # [FlowRow(proto=6, src_addr="10.97.0.1", ...), ...]
    result.save_datagrams("ipfix", tmp_path / "ipfix.pcap")  # for offline decoder tests
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import itertools
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from scapy.layers.inet import IP, UDP
from scapy.packet import Raw
from scapy.utils import rdpcap

from tests.helpers.netlab import LabError, LineReader, wait_written
from tests.helpers.pcapwrite import LINKTYPE_RAW, write_pcap
from tests.helpers.waiting import WAIT_S, wait_until

log = logging.getLogger(__name__)

REQUIRED_TOOLS = (
    "ip",
    "tcpdump",
    "iperf3",
    "curl",
    "softflowd",
    "softflowctl",
    "nfcapd",
    "nfdump",
    "ethtool",
)
EXP_IFACE, PEER_IFACE = "fl-exp", "fl-peer"
EXP_V4, PEER_V4 = "10.97.0.1", "10.97.0.2"
EXP_V6, PEER_V6 = "fd00:97::1", "fd00:97::2"
IPERF_PORT = 5201
HTTP_PORT = 8080
ECHO_PORT = 7007
REFUSED_PORT = 9  # nothing listens there on peer: the SYN is answered by a RST
SENTINEL_PORT = 9999
NFCAPD_FIRST_PORT = 2055  # nfcapd of exporter i listens on 2055 + i in exp's loopback
COLLECTOR_HOST = "127.0.0.1"
SNAPLEN = 128  # headers only: the oracle counts IP lengths, and a small snaplen does not drop
# ethtool -K names: with these on, the veth hands tcpdump and softflowd 64 kB super-packets.
OFFLOADS = ("rx", "tx", "sg", "tso", "gso", "gro")
MUST_BE_OFF = (
    "tcp-segmentation-offload",
    "generic-segmentation-offload",
    "generic-receive-offload",
)
# Proto names nfdump prints for %pr even with -N.
PROTO_NUMBERS = {"TCP": 6, "UDP": 17, "ICMP": 1, "ICMP6": 58}
NFDUMP_FORMAT = "fmt:%pr %sa %sp %da %dp %pkt %byt"
NFDUMP_FILTER = "proto tcp or proto udp"
CLONE_NEWNET = 0x40000000

ECHO_SERVER = """
import select, socket, sys
socks = []
for port in map(int, sys.argv[1:]):
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    socks.append(sock)
echo = socks[0]  # the first port echoes, the others (the sentinel) discard
while True:
    for sock in select.select(socks, [], [])[0]:
        data, peer = sock.recvfrom(65535)
        if sock is echo:
            sock.sendto(data, peer)
"""
ECHO_CLIENT = """
import socket, sys
host, port, flows, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
for flow in range(flows):  # one socket, so one 5-tuple, per flow
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.connect((host, port))
        for i in range(count):
            sock.send(b"flow %d echo %d" % (flow, i))
            if sock.recv(65535) != b"flow %d echo %d" % (flow, i):
                sys.exit("bad echo reply")
"""
REFUSED_CLIENT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
except ConnectionRefusedError:
    sys.exit(0)
sys.exit("connection was accepted, expected a RST")
"""
SENTINEL_CLIENT = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
    for i in range(count):
        sock.sendto(b"sentinel %d" % i, (host, port))
"""

_lab_numbers = itertools.count()


@dataclass(frozen=True, slots=True)
class Exporter:
    """One softflowd: its name in results, its version flags and the version field it sends."""

    name: str
    flags: tuple[str, ...]
    version: int


EXPORTERS = (
    Exporter("v9", ("-v", "9"), 9),
    Exporter("ipfix", ("-v", "10"), 10),
    Exporter("ipfix-biflow", ("-v", "10", "-b"), 10),  # RFC 5103 biflows
)


@dataclass(frozen=True, slots=True)
class Scenario:
    """The traffic run between exp (client) and peer (servers); durations in seconds."""

    iperf_tcp_s: float = 3.0
    iperf_tcp_rate: str = "20M"
    iperf_udp_s: float = 1.0
    iperf_udp_rate: str = "2M"
    http_file_bytes: int = 300_000  # fetched once over IPv4 and once over IPv6
    echo_flows: int = 10  # each its own UDP socket, alternating IPv4 and IPv6
    echo_requests: int = 3  # request/reply pairs per echo flow
    refused_connects: int = 1  # TCP SYN answered by RST
    sentinel_packets: int = 3000  # pushes softflowd's held packets out (see the recipe)


SHORT_SCENARIO = Scenario()
# Issue 20: "iperf3 TCP for 22 s" crosses maxlife=10 twice, so the flow arrives in 3 pieces.
ISSUE_SCENARIO = Scenario(iperf_tcp_s=22.0, iperf_udp_s=5.0)


class Datagram(NamedTuple):
    """One export datagram as received: raw bytes, sender (addr, port), arrival epoch s."""

    data: bytes
    source: tuple[str, int]
    arrived_ts: float


class FlowRow(NamedTuple):
    """One nfdump flow record (one direction; biflows as nfdump stores them)."""

    proto: int
    src_addr: str
    src_port: int
    dst_addr: str
    dst_port: int
    packets: int
    bytes: int


FiveTuple = tuple[int, str, int, str, int]  # (proto, src_addr, src_port, dst_addr, dst_port)


@dataclass
class FlowLabResult:
    """What a run produced: the pcap, per exporter the raw datagrams and nfdump's rows."""

    pcap: Path
    datagrams: dict[str, list[Datagram]]
    nfdump_rows: dict[str, list[FlowRow]]  # only exporters that went through nfcapd
    sentinel_port: int
    exporters: tuple[Exporter, ...]
    namespaces: tuple[str, ...]
    pids: tuple[int, ...]  # every process the lab started (all ended once the lab exits)
    receiver_ports: dict[str, int] = field(default_factory=dict)  # in exp's 127.0.0.1
    nfcapd_logs: dict[str, str] = field(default_factory=dict)

    def nfdump_totals(self, exporter: str) -> dict[FiveTuple, tuple[int, int]]:
        """nfdump's (packets, bytes) per directed 5-tuple, active-timeout pieces summed,
        the sentinel left out."""
        totals: dict[FiveTuple, list[int]] = defaultdict(lambda: [0, 0])
        for row in self.nfdump_rows[exporter]:
            if SENTINEL_PORT in (row.src_port, row.dst_port):
                continue
            key = (row.proto, row.src_addr, row.src_port, row.dst_addr, row.dst_port)
            totals[key][0] += row.packets
            totals[key][1] += row.bytes
        return {key: (packets, nbytes) for key, (packets, nbytes) in totals.items()}

    def save_datagrams(self, exporter: str, path: Path) -> Path:
        """Write an exporter's datagrams to a raw-IPv4 pcap (one UDP packet each, with its
        arrival time and source) for offline decoder tests; read back with load_datagrams."""
        port = self.receiver_ports.get(exporter, 0)
        packets = []
        for gram in self.datagrams[exporter]:
            ip_packet = IP(src=gram.source[0], dst=COLLECTOR_HOST, ttl=64) / UDP(
                sport=gram.source[1], dport=port
            )
            packets.append((gram.arrived_ts, bytes(ip_packet / Raw(gram.data))))
        write_pcap(path, packets, LINKTYPE_RAW)
        return path


def load_datagrams(path: Path) -> list[Datagram]:
    """The datagrams that FlowLabResult.save_datagrams wrote, in order."""
    out = []
    for packet in rdpcap(str(path)):
        ip_layer = packet if isinstance(packet, IP) else IP(bytes(packet))
        udp = ip_layer[UDP]
        out.append(Datagram(bytes(udp.payload), (ip_layer.src, udp.sport), float(packet.time)))
    return out


def parse_nfdump(text: str) -> list[FlowRow]:
    """Rows of `nfdump -q -N -o "fmt:%pr %sa %sp %da %dp %pkt %byt"`; addresses normalised.

    parse_nfdump("TCP 10.97.0.1 4242 10.97.0.2 5201 12 3400")  # [FlowRow(6, "10.97.0.1", ...)]
    """
    rows = []
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 7:
            raise LabError(f"unexpected nfdump line {line!r}")
        proto_text, src, sport, dst, dport, packets, nbytes = fields
        proto = int(proto_text) if proto_text.isdigit() else PROTO_NUMBERS[proto_text.upper()]
        rows.append(
            FlowRow(
                proto,
                str(ipaddress.ip_address(src)),
                int(sport),
                str(ipaddress.ip_address(dst)),
                int(dport),
                int(packets),
                int(nbytes),
            )
        )
    return rows


def available(euid: int | None = None, tools: Sequence[str] = REQUIRED_TOOLS) -> str | None:
    """Why the lab cannot run here (root, tools on $PATH), or None when it can."""
    euid = os.geteuid() if euid is None else euid
    why = []
    if euid != 0:
        why.append(f"needs root for network namespaces (euid={euid})")
    missing = [tool for tool in tools if _which(tool) is None]
    if missing:
        why.append(f"missing {', '.join(missing)}")
    return "; ".join(why) or None


def _which(tool: str) -> str | None:
    # softflowd and ethtool live in /usr/sbin, often missing from a non-root PATH
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return shutil.which(tool, path=path)


def socket_in_netns(netns: str, family: int, kind: int) -> socket.socket:
    """A socket made inside network namespace `netns` (/run/netns/NAME); it stays there for
    good, whatever thread uses it later."""
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def make() -> None:
        # setns(2) moves only this thread, which ends right after: the process stays put.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/run/netns/{netns}", "rb") as handle:
                if libc.setns(handle.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            made.append(socket.socket(family, kind))
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=make, name=f"setns-{netns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


class Receivers:
    """One plain UDP socket per exporter in a namespace, drained by one thread into lists."""

    def __init__(self, netns: str, names: Sequence[str]) -> None:
        self.datagrams: dict[str, list[Datagram]] = {name: [] for name in names}
        self.ports: dict[str, int] = {}
        self._socks: dict[socket.socket, str] = {}
        for name in names:
            sock = socket_in_netns(netns, socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
            sock.bind((COLLECTOR_HOST, 0))
            self._socks[sock] = name
            self.ports[name] = sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, name="flowlab-receivers", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            ready = select.select(list(self._socks), [], [], 0.1)[0]
            for sock in ready:
                data, source = sock.recvfrom(65535)
                self.datagrams[self._socks[sock]].append(Datagram(data, source, time.time()))

    def count(self) -> int:
        """Datagrams received so far, all exporters together."""
        return sum(map(len, self.datagrams.values()))

    def wait_quiet(self, quiet_s: float, what: str) -> None:
        """Wait until no datagram has arrived for quiet_s; AssertionError after WAIT_S."""
        state = {"count": -1, "since": time.monotonic()}

        def quiet() -> bool:
            now_count = self.count()
            if now_count != state["count"]:
                state["count"], state["since"] = now_count, time.monotonic()
            return time.monotonic() - state["since"] >= quiet_s

        wait_until(quiet, what, timeout_s=WAIT_S + quiet_s)

    def close(self) -> None:
        """Stop the drain thread and close the sockets; safe to call twice."""
        self._stop.set()
        self._thread.join(timeout=5)
        for sock in self._socks:
            sock.close()


class FlowLab:
    """Context manager owning two namespaces, a veth, their servers, tcpdump, three softflowd
    exporters, nfcapd and the receivers; `run()` once, then everything is torn down on exit."""

    def __init__(
        self,
        workdir: Path,
        *,
        exporters: Sequence[Exporter] = EXPORTERS,
        via_nfcapd: Sequence[str] | None = None,  # default: every exporter
        maxlife_s: int = 10,
        expint_s: int = 2,
        quiet_s: float = 3.0,
        prefix: str | None = None,
    ) -> None:
        n = next(_lab_numbers)
        self.prefix = prefix or f"fl{os.getpid()}-{n}-"
        self.exp_ns, self.peer_ns = self.prefix + "exp", self.prefix + "peer"
        self.workdir = workdir
        self.exporters = tuple(exporters)
        every = tuple(exporter.name for exporter in self.exporters)
        self.via_nfcapd = every if via_nfcapd is None else tuple(via_nfcapd)
        self.maxlife_s, self.expint_s = maxlife_s, expint_s
        # Longer than expint, so a quiet spell means softflowd has nothing left to send.
        self.quiet_s = max(quiet_s, expint_s + 1.0)
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._files = contextlib.ExitStack()
        self._receivers: Receivers | None = None
        self._softflowds: dict[str, subprocess.Popen[Any]] = {}
        self._nfcapds: dict[str, subprocess.Popen[Any]] = {}
        self._ran = False
        self._closed = False

    def __enter__(self) -> FlowLab:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------

    def run_in(
        self, netns: str, argv: list[str], *, check: bool = True, timeout_s: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside a namespace and wait; LabError with its output on failure."""
        return _run(["ip", "netns", "exec", netns, *argv], check=check, timeout_s=timeout_s)

    def popen_in(self, netns: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside a namespace (its PID is ended at teardown); output to a log."""
        if "stdout" not in kwargs:
            name = f"{len(self._procs)}-{netns.removeprefix(self.prefix)}-{Path(argv[0]).name}"
            logf = self._files.enter_context((self.workdir / f"{name}.log").open("w"))
            kwargs.update(stdout=logf, stderr=subprocess.STDOUT)
        # `ip netns exec` execs argv in place, so proc.pid is the program itself.
        proc = subprocess.Popen(["ip", "netns", "exec", netns, *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def _log_of(self, proc: subprocess.Popen[Any]) -> str:
        index = self._procs.index(proc)
        logs = list(self.workdir.glob(f"{index}-*.log"))
        return logs[0].read_text(errors="replace") if logs else "(no log)"

    def _wait_for(self, ready: Callable[[], bool], proc: subprocess.Popen[Any], what: str) -> None:
        def up() -> bool:
            if proc.poll() is not None:
                raise LabError(
                    f"{what} exited with {proc.returncode}: {self._log_of(proc)[-2000:]}"
                )
            return ready()

        wait_until(up, what, interval_s=0.05)

    def _listening(self, netns: str, flag: str, port: int) -> bool:
        return bool(self.run_in(netns, ["ss", flag, f"sport = :{port}"]).stdout.strip())

    # -- setup ----------------------------------------------------------------------------

    def _setup(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in (self.exp_ns, self.peer_ns):
            _run(["ip", "netns", "add", name])
            self._namespaces.append(name)
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        # Made inside the namespaces, so the names never meet the root namespace's.
        veth = ["ip", "-n", self.exp_ns, "link", "add", EXP_IFACE, "type", "veth"]
        _run([*veth, "peer", "name", PEER_IFACE, "netns", self.peer_ns])
        for netns, iface, v4, v6 in (
            (self.exp_ns, EXP_IFACE, EXP_V4, EXP_V6),
            (self.peer_ns, PEER_IFACE, PEER_V4, PEER_V6),
        ):
            self._offloads_off(netns, iface)
            _run(["ip", "-n", netns, "addr", "add", f"{v4}/24", "dev", iface])
            _run(["ip", "-n", netns, "-6", "addr", "add", f"{v6}/64", "dev", iface])
            _run(["ip", "-n", netns, "link", "set", iface, "up"])
        for netns, iface in ((self.exp_ns, EXP_IFACE), (self.peer_ns, PEER_IFACE)):
            wait_until(lambda n=netns, i=iface: self._dad_done(n, i), f"IPv6 DAD on {iface}")
        self._start_servers()
        log.info("flow lab %s up", self.prefix)

    def _offloads_off(self, netns: str, iface: str) -> None:
        # One feature a call: ethtool -K fails as a whole when one of them is fixed.
        for feature in OFFLOADS:
            self.run_in(netns, ["ethtool", "-K", iface, feature, "off"], check=False)
        shown = self.run_in(netns, ["ethtool", "-k", iface]).stdout
        for line in shown.splitlines():
            name, _, value = line.strip().partition(": ")
            if name in MUST_BE_OFF and value.startswith("on"):
                raise LabError(f"could not turn {name} off on {iface}: {shown}")

    def _dad_done(self, netns: str, iface: str) -> bool:
        shown = _run(["ip", "-n", netns, "-6", "addr", "show", "dev", iface]).stdout
        return "inet6" in shown and "tentative" not in shown

    def _start_servers(self) -> None:
        webroot = self.workdir / "www"
        webroot.mkdir(exist_ok=True)
        servers = (
            ("-Hltn", IPERF_PORT, ["iperf3", "-s", "-p", str(IPERF_PORT)]),
            (
                "-Hltn",
                HTTP_PORT,
                [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "::"]
                + ["--directory", str(webroot)],
            ),
            (
                "-Hlun",
                ECHO_PORT,
                [sys.executable, "-c", ECHO_SERVER, str(ECHO_PORT), str(SENTINEL_PORT)],
            ),
        )
        for flag, port, argv in servers:
            proc = self.popen_in(self.peer_ns, argv)
            self._wait_for(
                lambda f=flag, p=port: self._listening(self.peer_ns, f, p), proc, argv[0]
            )

    def _start_exporters(self) -> None:
        names = [exporter.name for exporter in self.exporters]
        self._receivers = Receivers(self.exp_ns, names)
        for index, exporter in enumerate(self.exporters):
            destinations = [f"{COLLECTOR_HOST}:{self._receivers.ports[exporter.name]}"]
            if exporter.name in self.via_nfcapd:
                nfcapd_port = NFCAPD_FIRST_PORT + index
                flowdir = self.workdir / f"nfcapd-{exporter.name}"
                flowdir.mkdir(exist_ok=True)
                argv = ["nfcapd", "-b", COLLECTOR_HOST, "-p", str(nfcapd_port)]
                argv += ["-w", str(flowdir), "-t", "3600"]
                proc = self.popen_in(self.exp_ns, argv)
                self._nfcapds[exporter.name] = proc
                self._wait_for(
                    lambda p=nfcapd_port: self._listening(self.exp_ns, "-Hlun", p), proc, "nfcapd"
                )
                # softflowd sends each datagram to every comma-separated destination (no -l).
                # Not nfcapd -R (the recipe's way): nfdump 1.7.1's repeater printed "sendto():
                # Message too long" here, and the receiver must see what nfcapd stored.
                destinations.append(f"{COLLECTOR_HOST}:{nfcapd_port}")
            ctl = self.workdir / f"softflowd-{exporter.name}.ctl"
            argv = ["softflowd", "-d", "-i", EXP_IFACE, *exporter.flags]
            argv += ["-n", ",".join(destinations), "-c", str(ctl)]
            argv += ["-p", str(self.workdir / f"softflowd-{exporter.name}.pid")]
            argv += ["-t", f"maxlife={self.maxlife_s}", "-t", f"expint={self.expint_s}"]
            argv += ["-B", str(8 << 20)]
            proc = self.popen_in(self.exp_ns, argv)
            self._softflowds[exporter.name] = proc
            self._wait_for(lambda c=ctl: self._ctl_answers(c), proc, f"softflowd {exporter.name}")

    def _ctl_answers(self, ctl: Path) -> bool:
        if not ctl.exists():
            return False
        done = self.run_in(self.exp_ns, ["softflowctl", "-c", str(ctl), "statistics"], check=False)
        return done.returncode == 0

    # -- the run --------------------------------------------------------------------------

    def run(self, scenario: Scenario = SHORT_SCENARIO) -> FlowLabResult:
        """Capture and export `scenario`, flush every exporter, stop them and nfcapd, and
        return the pcap, the datagrams and nfdump's rows. Once per lab."""
        if self._ran or self._closed:
            raise LabError("a FlowLab runs once; make a new one")
        self._ran = True
        pcap = self.workdir / "scenario.pcap"
        argv = ["tcpdump", "-i", EXP_IFACE, "-s", str(SNAPLEN), "-B", "16384", "-U", "-n"]
        argv += ["-Z", "root", "-w", str(pcap)]
        tcpdump = self.popen_in(
            self.exp_ns, argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        assert tcpdump.stderr is not None
        reader = LineReader(tcpdump.stderr, "listening on")
        reader.start()
        self._wait_for(reader.seen.is_set, tcpdump, "tcpdump")
        self._start_exporters()
        assert self._receivers is not None
        started = time.monotonic()
        self._traffic(scenario)
        log.info("flow lab scenario took %.1f s", time.monotonic() - started)
        wait_written(tcpdump, reader, 1.0, f"tcpdump -w {pcap}")
        _stop(tcpdump, signal.SIGINT)
        reader.join(timeout=WAIT_S)
        stats = "".join(reader.lines)
        if " 0 packets dropped by kernel" not in stats:
            raise LabError(f"tcpdump dropped packets: {stats}")
        for exporter in self.exporters:
            ctl = self.workdir / f"softflowd-{exporter.name}.ctl"
            self.run_in(self.exp_ns, ["softflowctl", "-c", str(ctl), "expire-all"])
        self._receivers.wait_quiet(self.quiet_s, "end of the exporters' datagrams")
        return self._finish(pcap)

    def _traffic(self, scenario: Scenario) -> None:
        (self.workdir / "www" / "file.bin").write_bytes(os.urandom(scenario.http_file_bytes))
        py = sys.executable
        self._iperf(["-t", f"{scenario.iperf_tcp_s:g}", "-b", scenario.iperf_tcp_rate], PEER_V4)
        self._iperf(
            ["-u", "-t", f"{scenario.iperf_udp_s:g}", "-b", scenario.iperf_udp_rate, "-l", "1200"],
            PEER_V6,
        )
        for url in (
            f"http://{PEER_V4}:{HTTP_PORT}/file.bin",
            f"http://[{PEER_V6}]:{HTTP_PORT}/file.bin",
        ):
            self.run_in(self.exp_ns, ["curl", "-sS", "--noproxy", "*", "-o", "/dev/null", url])
        for index in range(scenario.echo_flows):
            host = PEER_V4 if index % 2 == 0 else PEER_V6
            self.run_in(
                self.exp_ns,
                [py, "-c", ECHO_CLIENT, host, str(ECHO_PORT), "1", str(scenario.echo_requests)],
            )
        for _ in range(scenario.refused_connects):
            self.run_in(self.exp_ns, [py, "-c", REFUSED_CLIENT, PEER_V4, str(REFUSED_PORT)])
        self.run_in(
            self.exp_ns,
            [
                py,
                "-c",
                SENTINEL_CLIENT,
                PEER_V4,
                str(SENTINEL_PORT),
                str(scenario.sentinel_packets),
            ],
        )

    def _iperf(self, extra: list[str], host: str) -> None:
        argv = ["iperf3", "-c", host, "-p", str(IPERF_PORT), "--connect-timeout", "5000", *extra]

        def finished() -> bool:
            done = self.run_in(self.exp_ns, argv, check=False)
            if done.returncode and "busy" not in done.stdout + done.stderr:
                raise LabError(f"iperf3 {extra} failed: {done.stdout}{done.stderr}")
            return done.returncode == 0  # a busy server is still ending the last test: again

        wait_until(finished, f"iperf3 {extra}", interval_s=0.5)

    def _finish(self, pcap: Path) -> FlowLabResult:
        assert self._receivers is not None
        for proc in self._softflowds.values():
            _stop(proc, signal.SIGTERM)
        self._receivers.wait_quiet(self.quiet_s, "datagrams after softflowd stopped")
        rows: dict[str, list[FlowRow]] = {}
        logs: dict[str, str] = {}
        for name, proc in self._nfcapds.items():
            _stop(proc, signal.SIGTERM)  # flushes its file
            logs[name] = self._log_of(proc)
            flowdir = self.workdir / f"nfcapd-{name}"
            argv = ["nfdump", "-R", str(flowdir), "-q", "-N", "-o", NFDUMP_FORMAT, NFDUMP_FILTER]
            rows[name] = parse_nfdump(_run(argv).stdout)
        self._receivers.close()
        return FlowLabResult(
            pcap=pcap,
            datagrams={name: list(grams) for name, grams in self._receivers.datagrams.items()},
            nfdump_rows=rows,
            sentinel_port=SENTINEL_PORT,
            exporters=self.exporters,
            namespaces=tuple(self._namespaces),
            pids=tuple(proc.pid for proc in self._procs),
            nfcapd_logs=logs,
            receiver_ports=dict(self._receivers.ports),
        )

    # -- teardown -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every PID the lab started, delete its namespaces; safe to call twice. The
        workdir (the caller's) stays, with the pcap and the nfcapd files."""
        if self._closed:
            return
        self._closed = True
        if self._receivers is not None:
            self._receivers.close()
        for proc in reversed(self._procs):
            _stop(proc, signal.SIGTERM)
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self._files.close()
        for name in reversed(self._namespaces):
            # Stragglers (children of our commands) live in our namespace, so they are ours.
            for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split():
                log.warning("killing leftover pid %s in %s", pid, name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            done = _run(["ip", "netns", "del", name], check=False)
            if done.returncode:
                log.warning("could not delete netns %s: %s", name, done.stderr.strip())
        log.info("flow lab %s torn down", self.prefix)


def run_flow_lab(workdir: Path, scenario: Scenario = SHORT_SCENARIO, **lab: Any) -> FlowLabResult:
    """Build a FlowLab in workdir, run `scenario` once and tear it all down.

    result = run_flow_lab(tmp_path, ISSUE_SCENARIO)  # the issue's 22 s run
    """
    with FlowLab(workdir, **lab) as flow_lab:
        return flow_lab.run(scenario)


def _run(
    argv: list[str], *, check: bool = True, timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    if check and done.returncode:
        output = done.stderr.strip() + done.stdout[-500:]
        raise LabError(f"{' '.join(argv)!r} exited {done.returncode}: {output}")
    return done


def _stop(proc: subprocess.Popen[Any], sig: int, timeout_s: float = 10.0) -> None:
    """Signal one PID we started and wait for it, with SIGKILL after timeout_s."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("pid %d ignored signal %d, killing it", proc.pid, sig)
            proc.kill()
            proc.wait()
