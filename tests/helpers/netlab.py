"""WireguardLab: a real userspace WireGuard gateway in network namespaces, for tests and tools.

Topology (namespace names carry a per-run prefix such as ``ta4242-``)::

    alice  wg0 100.64.0.2/32 fd00:64::2/128   underlay 10.98.1.2/24 --+
                                                                      gw  wg0 100.64.0.1/24
    bob    wg0 100.64.0.3/32 fd00:64::3/128   underlay 10.98.2.2/24 --+      fd00:64::1/64
                                                                      |   UDP 51820
    res    10.99.0.5/24 fd00:99::5/64  <-- veth -->  gw 10.99.0.1/24 fd00:99::1/64

Clients reach 10.99.0.0/24 and fd00:99::/64 through wg0; gw forwards; res routes the tunnel
subnets back via gw. res runs an HTTP server (8080), a UDP echo server (5353) and iperf3 (5201).

Example::

    with WireguardLab() as lab, lab.capture({Path("full.pcap"): 0}) as cap:
        lab.run_standard_traffic(scale=0.1)
    assert cap.problems() == []  # no kernel drops, every packet written
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from tests.helpers.waiting import WAIT_S

log = logging.getLogger(__name__)

ROLES = ("alice", "bob", "gw", "res")
CLIENTS = ("alice", "bob")
REQUIRED_TOOLS = ("ip", "wireguard-go", "wg", "tcpdump", "iperf3", "mount")
TUN_DEVICE = Path("/dev/net/tun")  # wireguard-go creates its wg0 through it

WG_PORT = 51820
RES_V4 = "10.99.0.5"
RES_V6 = "fd00:99::5"
TUNNEL_V4 = {"gw": "100.64.0.1/24", "alice": "100.64.0.2/32", "bob": "100.64.0.3/32"}
TUNNEL_V6 = {"gw": "fd00:64::1/64", "alice": "fd00:64::2/128", "bob": "fd00:64::3/128"}
UNDERLAY = {"alice": ("10.98.1.1", "10.98.1.2"), "bob": ("10.98.2.1", "10.98.2.2")}  # (gw, client)
CLIENT_ALLOWED_IPS = "10.99.0.0/24,fd00:99::/64,100.64.0.0/24,fd00:64::/64"
HTTP_PORT = 8080
IPERF_PORT = 5201
ECHO_PORT = 5353
REFUSED_PORT = 9  # nothing listens there in res, so the SYN is answered by a RST
# wg and wireguard-go find each other through this fixed path; it is not per network namespace.
UAPI_DIR = "/var/run/wireguard"
# Bind a per-namespace directory over UAPI_DIR in the private mount namespace that
# `ip netns exec` creates, then exec the tool: each wg0.sock stays apart and the PID is kept.
WITH_UAPI_DIR = 'mount --bind "$0" ' + UAPI_DIR + ' && exec "$@"'

HTTP_CLIENT = """
import sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for _ in range(int(sys.argv[2])):
    with opener.open(sys.argv[1], timeout=10) as reply:  # HTTP/1.0 server: one connection each
        reply.read()
"""
ECHO_SERVER = """
import socket, sys
sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
sock.bind(("::", int(sys.argv[1])))
while True:
    data, peer = sock.recvfrom(65535)
    sock.sendto(data, peer)
"""
ECHO_CLIENT = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
family = socket.AF_INET6 if ":" in host else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as sock:
    sock.settimeout(5)
    sock.connect((host, port))
    for i in range(count):
        sock.send(b"echo %d" % i)
        if sock.recv(65535) != b"echo %d" % i:
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

_lab_numbers = itertools.count()


class LabError(RuntimeError):
    """A lab command failed or the lab did not come up."""


@dataclass
class CaptureStats:
    """What each tcpdump reported when stopped, keyed by output file (counts in packets)."""

    snaplens: dict[Path, int]
    drops: dict[Path, int | None] = field(default_factory=dict)  # "dropped by kernel"
    captured: dict[Path, int | None] = field(default_factory=dict)
    received: dict[Path, int | None] = field(default_factory=dict)  # "received by filter"
    stderr: dict[Path, str] = field(default_factory=dict)

    def problems(self) -> list[str]:
        """Why a file may lack packets: kernel drops, or received but never written."""
        out = []
        for path in self.snaplens:
            drops = self.drops.get(path)
            captured, received = self.captured.get(path), self.received.get(path)
            if drops != 0:
                out.append(f"{path}: {drops} packets dropped by kernel ({self.stderr.get(path)!r})")
            if captured is None or captured != received:
                out.append(f"{path}: {captured} packets captured but {received} received")
        return out


class LineReader(threading.Thread):
    """Drains a text pipe into a list and flags when a line containing `marker` arrives."""

    def __init__(self, pipe: IO[str], marker: str) -> None:
        super().__init__(daemon=True)
        self.pipe, self.marker = pipe, marker
        self.lines: list[str] = []
        self.seen = threading.Event()

    def run(self) -> None:
        for line in self.pipe:
            self.lines.append(line)
            if self.marker in line:
                self.seen.set()


class WireguardLab:
    """Context manager owning four namespaces, their wireguard-go daemons and test servers."""

    def __init__(self, prefix: str | None = None, *, start_timeout_s: float = WAIT_S) -> None:
        n = next(_lab_numbers)
        self.prefix = prefix or f"ta{os.getpid()}-" + (f"{n}-" if n else "")
        self.start_timeout_s = start_timeout_s
        self.public_keys: dict[str, str] = {}
        self.tunnel_v4 = {role: cidr.split("/")[0] for role, cidr in TUNNEL_V4.items()}
        self.tunnel_v6 = {role: cidr.split("/")[0] for role, cidr in TUNNEL_V6.items()}
        self.workdir: Path | None = None
        self._namespaces: list[str] = []
        self._procs: list[subprocess.Popen[Any]] = []
        self._files = contextlib.ExitStack()  # the log files of popen()
        self._closed = False

    @staticmethod
    def available(
        *,
        euid: int | None = None,
        tools: Sequence[str] = REQUIRED_TOOLS,
        tun_device: Path = TUN_DEVICE,
    ) -> tuple[bool, str]:
        """(True, "") when the lab can run here, else (False, every reason why): root (`euid`,
        default this process's), the tools on $PATH and a TUN device."""
        euid = os.geteuid() if euid is None else euid
        why = []
        if euid != 0:
            why.append(f"needs root for network namespaces (euid={euid})")
        missing = [tool for tool in tools if shutil.which(tool) is None]
        if missing:
            why.append(f"missing {', '.join(missing)}: run scripts/install-system-deps.sh")
        if not tun_device.exists():
            why.append(f"no {tun_device}: wireguard-go cannot create its TUN device")
        return not why, "; ".join(why)

    def netns(self, role: str) -> str:
        """Full namespace name of a role ("alice", "bob", "gw", "res")."""
        if role not in ROLES:
            raise ValueError(f"unknown lab role {role!r}, expected one of {ROLES}")
        return self.prefix + role

    def __enter__(self) -> WireguardLab:
        try:
            self._setup()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- commands -------------------------------------------------------------------------

    def run(
        self,
        role: str,
        argv: list[str],
        *,
        check: bool = True,
        timeout_s: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside a namespace and wait; raise LabError with its stderr on failure."""
        return _run(["ip", "netns", "exec", self.netns(role), *argv], check, timeout_s, input)

    def popen(self, role: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start argv inside a namespace; its PID is ended at teardown. Output goes to a log."""
        assert self.workdir is not None, "lab not started"
        if "stdout" not in kwargs or "stderr" not in kwargs:
            name = f"{role}-{len(self._procs)}-{Path(argv[0]).name}.log"
            logf = self._files.enter_context((self.workdir / name).open("w"))
            kwargs.setdefault("stdout", logf)
            kwargs.setdefault("stderr", subprocess.STDOUT)
        # `ip netns exec` execs argv in place, so proc.pid is the program itself.
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns(role), *argv], **kwargs)
        self._procs.append(proc)
        return proc

    def wg(self, role: str, args: list[str]) -> str:
        """Run `wg ARGS` against the wireguard-go of a namespace and return its stdout."""
        assert self.workdir is not None, "lab not started"
        uapi = str(self.workdir / f"uapi-{role}")
        return self.run(role, ["sh", "-c", WITH_UAPI_DIR, uapi, "wg", *args]).stdout

    def wg_show(self, what: str = "dump") -> str:
        """`wg show wg0 WHAT` on gw, e.g. "dump", "transfer", "latest-handshakes"."""
        return self.wg("gw", ["show", "wg0", what])

    def wg_transfer(self) -> dict[str, tuple[int, int]]:
        """gw's per-peer (rx_bytes, tx_bytes) from `wg show wg0 transfer`, keyed by client."""
        names = {key: role for role, key in self.public_keys.items()}
        out: dict[str, tuple[int, int]] = {}
        for line in self.wg_show("transfer").splitlines():
            key, rx, tx = line.split("\t")
            out[names.get(key, key)] = (int(rx), int(tx))
        return out

    # -- setup and teardown ---------------------------------------------------------------

    def _setup(self) -> None:
        ok, why = self.available()
        if not ok:
            raise LabError(f"WireguardLab unavailable: {why}")
        self.workdir = Path(tempfile.mkdtemp(prefix=self.prefix))
        for role in ROLES:
            _run(["ip", "netns", "add", self.netns(role)])
            self._namespaces.append(self.netns(role))
            # No duplicate address detection: addresses are usable at once and never tentative.
            self._write_sysctls(
                role, {"net/ipv6/conf/all/accept_dad": 0, "net/ipv6/conf/default/accept_dad": 0}
            )
            self._ip(role, "link", "set", "lo", "up")
        self._write_sysctls("gw", {"net/ipv4/ip_forward": 1, "net/ipv6/conf/all/forwarding": 1})
        self._setup_underlay()
        self._setup_wireguard()
        self._start_servers()
        # Warm up: completes both handshakes and proves v4 and v6 reach res through the tunnel.
        for client in CLIENTS:
            self.udp_echo(client, RES_V4, 1)
            self.udp_echo(client, RES_V6, 1)
        log.info("wireguard lab %s up (workdir %s)", self.prefix, self.workdir)

    def _ip(self, role: str, *args: str) -> None:
        _run(["ip", "-n", self.netns(role), *args])

    def _write_sysctls(self, role: str, values: Mapping[str, int]) -> None:
        script = "; ".join(f"echo {value} > /proc/sys/{key}" for key, value in values.items())
        self.run(role, ["sh", "-ec", script])

    def _setup_underlay(self) -> None:
        for client in CLIENTS:
            gw_addr, client_addr = UNDERLAY[client]
            self._ip("gw", "link", "add", f"to-{client}", "type", "veth", "peer", "name", "to-gw")
            self._ip("gw", "link", "set", "to-gw", "netns", self.netns(client))
            self._ip("gw", "addr", "add", f"{gw_addr}/24", "dev", f"to-{client}")
            self._ip("gw", "link", "set", f"to-{client}", "up")
            self._ip(client, "addr", "add", f"{client_addr}/24", "dev", "to-gw")
            self._ip(client, "link", "set", "to-gw", "up")
        self._ip("gw", "link", "add", "to-res", "type", "veth", "peer", "name", "to-gw")
        self._ip("gw", "link", "set", "to-gw", "netns", self.netns("res"))
        for role, dev, v4, v6 in (
            ("gw", "to-res", "10.99.0.1/24", "fd00:99::1/64"),
            ("res", "to-gw", f"{RES_V4}/24", f"{RES_V6}/64"),
        ):
            self._ip(role, "addr", "add", v4, "dev", dev)
            self._ip(role, "-6", "addr", "add", v6, "dev", dev, "nodad")
            self._ip(role, "link", "set", dev, "up")
        self._ip("res", "route", "add", "100.64.0.0/24", "via", "10.99.0.1")
        self._ip("res", "-6", "route", "add", "fd00:64::/64", "via", "fd00:99::1")

    def _setup_wireguard(self) -> None:
        assert self.workdir is not None
        private_keys: dict[str, Path] = {}
        for role in ("gw", *CLIENTS):
            key = _run(["wg", "genkey"]).stdout.strip()
            self.public_keys[role] = _run(["wg", "pubkey"], input=key + "\n").stdout.strip()
            private_keys[role] = self.workdir / f"{role}.key"
            private_keys[role].touch(mode=0o600)
            private_keys[role].write_text(key + "\n")
            self._start_wireguard_go(role)
        gw_args = ["set", "wg0", "listen-port", str(WG_PORT)]
        gw_args += ["private-key", str(private_keys["gw"])]
        for client in CLIENTS:
            allowed = f"{self.tunnel_v4[client]}/32,{self.tunnel_v6[client]}/128"
            gw_args += ["peer", self.public_keys[client], "allowed-ips", allowed]
        self.wg("gw", gw_args)
        for client in CLIENTS:
            endpoint = f"{UNDERLAY[client][0]}:{WG_PORT}"
            self.wg(client, ["set", "wg0", "private-key", str(private_keys[client])])
            self.wg(client, ["set", "wg0", "peer", self.public_keys["gw"], "endpoint", endpoint])
            peer = ["peer", self.public_keys["gw"], "allowed-ips", CLIENT_ALLOWED_IPS]
            self.wg(client, ["set", "wg0", *peer])
        for role in ("gw", *CLIENTS):
            self._ip(role, "addr", "add", TUNNEL_V4[role], "dev", "wg0")
            self._ip(role, "-6", "addr", "add", TUNNEL_V6[role], "dev", "wg0", "nodad")
            self._ip(role, "link", "set", "wg0", "up")
        for client in CLIENTS:
            for prefix in ("10.99.0.0/24", "100.64.0.0/24", "fd00:99::/64", "fd00:64::/64"):
                family = "-6" if ":" in prefix else "-4"
                self._ip(client, family, "route", "add", prefix, "dev", "wg0")

    def _start_wireguard_go(self, role: str) -> None:
        assert self.workdir is not None
        uapi = self.workdir / f"uapi-{role}"
        uapi.mkdir()
        Path(UAPI_DIR).mkdir(parents=True, exist_ok=True)  # the mount point for WITH_UAPI_DIR
        # -f keeps wireguard-go in the foreground, so the Popen PID is the daemon we end later.
        proc = self.popen(role, ["sh", "-c", WITH_UAPI_DIR, str(uapi), "wireguard-go", "-f", "wg0"])
        self._wait_for(lambda: (uapi / "wg0.sock").exists(), proc, f"wireguard-go in {role}")

    def _start_servers(self) -> None:
        assert self.workdir is not None
        webroot = self.workdir / "www"
        webroot.mkdir()
        # 4 KiB page: a few data segments per HTTP response
        (webroot / "index.html").write_text("<html>" + "tunnelacct " * 372 + "</html>\n")
        http = [sys.executable, "-m", "http.server", str(HTTP_PORT), "--bind", "::"]
        servers = (
            ("tcp", HTTP_PORT, self.popen("res", [*http, "--directory", str(webroot)])),
            (
                "udp",
                ECHO_PORT,
                self.popen("res", [sys.executable, "-c", ECHO_SERVER, str(ECHO_PORT)]),
            ),
            ("tcp", IPERF_PORT, self.popen("res", ["iperf3", "-s", "-p", str(IPERF_PORT)])),
        )
        for proto, port, proc in servers:
            flag = "-Hltn" if proto == "tcp" else "-Hlun"

            def listening(flag: str = flag, port: int = port) -> bool:
                return bool(self.run("res", ["ss", flag, f"sport = :{port}"]).stdout.strip())

            self._wait_for(listening, proc, f"{proto} server on res port {port}")

    def _wait_for(self, ready: Callable[[], bool], proc: subprocess.Popen[Any], what: str) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while not ready():
            if proc.poll() is not None:
                raise LabError(f"{what} exited with {proc.returncode}: {self._log_tail(proc)}")
            if time.monotonic() > deadline:
                raise LabError(f"{what} not ready after {self.start_timeout_s}s")
            time.sleep(0.05)

    def _log_tail(self, proc: subprocess.Popen[Any]) -> str:
        index = self._procs.index(proc)
        assert self.workdir is not None
        logs = list(self.workdir.glob(f"*-{index}-*.log"))
        return logs[0].read_text()[-2000:] if logs else "(no log)"

    def close(self) -> None:
        """Stop every tracked PID, delete the namespaces and the workdir; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for proc in reversed(self._procs):
            _stop(proc, signal.SIGTERM)
            _close_pipes(proc)
        self._files.close()
        for name in reversed(self._namespaces):
            # Stragglers (children of our commands) live in our namespace, so they are ours.
            pids = _run(["ip", "netns", "pids", name], check=False).stdout.split()
            for pid in pids:
                log.warning("killing leftover pid %s in %s", pid, name)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            done = _run(["ip", "netns", "del", name], check=False)
            if done.returncode:
                log.warning("could not delete netns %s: %s", name, done.stderr.strip())
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
        log.info("wireguard lab %s torn down", self.prefix)

    # -- capture --------------------------------------------------------------------------

    @contextlib.contextmanager
    def capture(
        self,
        paths_and_snaplens: Mapping[Path, int] | Iterable[tuple[Path, int]],
        *,
        role: str = "gw",
        iface: str = "wg0",
        quiet_s: float = 2.0,
    ) -> Iterator[CaptureStats]:
        """Run one tcpdump per file (snaplen 0 = whole packets) on gw's wg0 while the body runs,
        then until each has written every packet it received and none came for quiet_s.

        Yields CaptureStats, filled in when the block exits; check `stats.problems() == []`.
        """
        stats = CaptureStats(snaplens=dict(paths_and_snaplens))
        running: list[tuple[Path, subprocess.Popen[str], LineReader]] = []
        try:
            for path, snaplen in stats.snaplens.items():
                path.parent.mkdir(parents=True, exist_ok=True)
                # -Z root: Debian's tcpdump otherwise switches to user tcpdump and hands it the
                # file. No --immediate-mode: libpcap then uses TPACKET_V2 with one
                # snaplen-sized ring slot per packet, and a -s 0 capture drops under iperf3.
                argv = ["tcpdump", "-i", iface, "-s", str(snaplen), "-U", "-n"]
                argv += ["--time-stamp-precision", "nano"]  # as precise as the live source
                argv += ["-Z", "root", "-w", str(path)]
                pipes = {"stdout": subprocess.DEVNULL, "stderr": subprocess.PIPE, "text": True}
                proc = self.popen(role, argv, **pipes)
                assert proc.stderr is not None
                reader = LineReader(proc.stderr, "listening on")
                reader.start()
                running.append((path, proc, reader))
            for path, proc, reader in running:
                self._wait_for(reader.seen.is_set, proc, f"tcpdump -w {path}")
            log.info("capturing on %s:%s into %s", role, iface, ", ".join(map(str, stats.snaplens)))
            yield stats
            for path, proc, reader in running:
                wait_written(proc, reader, quiet_s, f"tcpdump -w {path}")
        finally:
            for path, proc, reader in running:
                _stop(proc, signal.SIGINT)
                reader.join(timeout=WAIT_S)
                _close_pipes(proc)
                text = "".join(reader.lines)
                stats.stderr[path] = text
                stats.drops[path] = _count(text, "dropped by kernel")
                stats.captured[path] = _count(text, "captured")
                stats.received[path] = _count(text, "received by filter")
                if stats.drops[path] is None:
                    log.warning("tcpdump -w %s reported no drop count: %r", path, text)

    # -- traffic --------------------------------------------------------------------------

    def http_get(self, client: str, host: str, count: int = 1, port: int = HTTP_PORT) -> None:
        """`count` HTTP GETs from a client to res, each on its own TCP connection."""
        url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
        self.run(client, [sys.executable, "-c", HTTP_CLIENT, url, str(count)])

    def udp_echo(self, client: str, host: str, count: int = 10, port: int = ECHO_PORT) -> None:
        """`count` request/reply pairs from one client UDP socket to res's echo server."""
        self.run(client, [sys.executable, "-c", ECHO_CLIENT, host, str(port), str(count)])

    def refused_connect(self, client: str, host: str = RES_V4, port: int = REFUSED_PORT) -> None:
        """One TCP connection attempt to a port without listener: SYN answered by RST."""
        self.run(client, [sys.executable, "-c", REFUSED_CLIENT, host, str(port)])

    def iperf(self, client: str, extra: list[str], host: str = RES_V4) -> None:
        """One iperf3 client run to res (extra: e.g. ["-n", "1M", "-R"]); retries a busy server."""
        argv = ["iperf3", "-c", host, "-p", str(IPERF_PORT), "--connect-timeout", "5000", *extra]
        deadline = time.monotonic() + WAIT_S
        while True:
            done = self.run(client, argv, check=False)
            if done.returncode == 0:
                return
            if "busy" not in done.stdout + done.stderr:
                raise LabError(f"iperf3 {extra} from {client} failed: {done.stdout}{done.stderr}")
            if time.monotonic() > deadline:
                raise LabError(f"iperf3 server stayed busy for {client} for {WAIT_S:g} s")
            time.sleep(0.5)  # the server is still finishing the previous test: ask again

    def run_standard_traffic(self, scale: float = 1.0) -> dict[str, Any]:
        """Mixed TCP/UDP, v4/v6 traffic from both clients to res; returns what was run.

        At scale 1.0: ~6 MB per iperf3 TCP run, 0.5 MB UDP, 30 HTTP connections per client.
        """
        http_count = max(5, round(30 * scale))
        tcp_bytes = max(64 * 1024, int(6_000_000 * scale))
        udp_bytes = max(16 * 1024, int(500_000 * scale))
        echo_count = 10
        started = time.monotonic()
        for client in CLIENTS:
            self.http_get(client, RES_V4, http_count)
            self.udp_echo(client, RES_V4, echo_count)
        self.http_get("alice", RES_V6, 1)
        self.udp_echo("bob", RES_V6, echo_count)
        self.refused_connect("alice")
        self.iperf("alice", ["-n", str(tcp_bytes), "-b", "50M"])
        self.iperf("bob", ["-n", str(tcp_bytes), "-b", "50M", "-R"])
        self.iperf("bob", ["-u", "-b", "4M", "-l", "1200", "-n", str(udp_bytes)])
        log.info("standard traffic (scale %.2f) took %.1fs", scale, time.monotonic() - started)
        return {
            "res_v4": RES_V4,
            "res_v6": RES_V6,
            "http_port": HTTP_PORT,
            "http_connections": {"alice": http_count, "bob": http_count},
            "http_v6_connections": {"alice": 1},
            "echo_port": ECHO_PORT,
            "echo_requests": {"alice": echo_count, "bob": echo_count},
            "echo_v6_requests": {"bob": echo_count},
            "refused": {"client": "alice", "port": REFUSED_PORT},
            "iperf_port": IPERF_PORT,
            "iperf_runs": [
                {"client": "alice", "protocol": "tcp", "reverse": False, "bytes": tcp_bytes},
                {"client": "bob", "protocol": "tcp", "reverse": True, "bytes": tcp_bytes},
                {"client": "bob", "protocol": "udp", "reverse": False, "bytes": udp_bytes},
            ],
        }


def _run(
    argv: list[str], check: bool = True, timeout_s: float = 60.0, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout_s, input=input, check=False
    )
    if check and done.returncode:
        raise LabError(f"{' '.join(argv)!r} exited {done.returncode}: {done.stderr.strip()}")
    return done


def _stop(proc: subprocess.Popen[Any], sig: int, timeout_s: float = 5.0) -> None:
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


def _close_pipes(proc: subprocess.Popen[Any]) -> None:
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            pipe.close()


def wait_written(
    proc: subprocess.Popen[str], reader: LineReader, quiet_s: float, what: str
) -> None:
    """Wait until a running tcpdump (its stderr drained by `reader`) has written every packet
    its filter received, and received none for quiet_s; LabError after WAIT_S.

    TPACKET_V3 holds packets in a ring block until tcpdump's 1 s buffer timeout, and a SIGINT
    before that loses them ("received by filter" > "captured", 0 drops). On Linux, SIGUSR1
    makes tcpdump print those counts and go on; the quiet time lets packets still in flight
    (last ACKs) arrive.
    """
    deadline = time.monotonic() + WAIT_S
    last: tuple[int | None, ...] = ()
    changed = time.monotonic()
    while True:
        text = "".join(reader.lines)
        counts = tuple(
            _count(text, w) for w in ("captured", "received by filter", "dropped by kernel")
        )
        if counts != last:
            last = counts
            changed = time.monotonic()
        captured, received, dropped = counts
        if (
            captured is not None
            and received is not None
            and captured + (dropped or 0) >= received
            and time.monotonic() - changed >= quiet_s
        ):
            return
        if proc.poll() is not None:
            raise LabError(f"{what} exited with {proc.returncode}: {text[-2000:]}")
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not all packets written after {WAIT_S:g} s: {text[-2000:]}")
        proc.send_signal(signal.SIGUSR1)  # its next report, read by a later round
        time.sleep(0.2)


def _count(text: str, what: str) -> int | None:
    """The last count of "N packets <what>" in tcpdump's output (its reports, then its final
    statistics), or None."""
    found = re.findall(rf"(\d+) packets? {what}", text)
    return int(found[-1]) if found else None
