"""Pieces of bench_collector.py: the softflowd IPFIX capture it replays, made from a synthetic pcap.

A seeded, headers-only pcap of many short sessions (UDP request/response pairs and short TCP
connections, clients in 100.64.0.0/16, servers in 10.99.0.0/24, each its own 5-tuple) is read by
`softflowd -r` (IPFIX, absolute millisecond times), which exports every flow at the end of the
file into a UDP socket of ours with a large receive buffer. The datagrams are checked complete
(softflowd's own summary, the IPFIX sequence numbers, the socket's drop counter) and kept as a
raw-IP pcap of loopback UDP, next to a JSON file of what made them::

    capture = make_capture(CaptureSpec(sessions=60_000), workdir / "capture")
    capture.datagrams[0][:2] == b"\\x00\\x0a"      # IPFIX
    capture.records                              # 120,000: one record per direction and session

A directory that already holds the capture of the same spec is reused (`cached` is then True).
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import subprocess
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.helpers.pcapwrite import LINKTYPE_RAW, PCAP_MAGIC_US
from tunnelacct.collector.decode import FlowDecoder
from tunnelacct.collector.records import DecodeReason

PCAP_FILE_HEADER = struct.Struct("<IHHiIII")
PCAP_RECORD_HEADER = struct.Struct("<IIII")
IPV4_HEADER = struct.Struct("!BBHHHBBH4s4s")
UDP_HEADER = struct.Struct("!HHHH")
TCP_HEADER = struct.Struct("!HHIIBBHHH")
IPFIX_HEADER = struct.Struct("!HHIII")  # version, length, export time s, sequence, domain
IPFIX_VERSION = 10
PROTO_TCP = 6
PROTO_UDP = 17
FIN = 0x01
SYN = 0x02
PSH = 0x08
ACK = 0x10

# Packet time of the capture's first session (2026-12-01T00:00:00Z); the replay moves it.
FIRST_SESSION_TS = 1_796_083_200.0
UDP_SERVICE_PORTS = (53, 53, 53, 123, 443, 5353)
TCP_SERVICE_PORTS = (443, 443, 443, 80, 22, 5432, 8443)
# Linux's ip_local_port_range: clients' ports are above the services' (softflowd times both
# directions of a conversation alike, so the collector takes the higher port as the initiator)
EPHEMERAL_FIRST = 32768
EPHEMERAL_LAST = 60999
GENERATOR_REVISION = 2  # changes whenever synth_sessions_pcap writes other packets
SOFTFLOWD = "softflowd"
RECEIVE_BUFFER_BYTES = 256 << 20  # every datagram of softflowd's end-of-file burst fits
SO_RCVBUFFORCE = 33  # Linux, socket(7); not every Python build names it
QUIET_S = 0.5  # no datagram for this long after softflowd exited: it sent everything
SOFTFLOWD_TIMEOUT_S = 600.0
EXPORTED = re.compile(
    r"Flows exported: (\d+) \((\d+) records\) in (\d+) packets \((\d+) failures\)"
)
EXPIRED = re.compile(r"Flows expired: (\d+) \((\d+) forced\)")
MAXFLOWS_EXPIRED = re.compile(r"maxflows =\s+(\d+)")
# Decoder counters that are bad input or loss; the rest (datagrams, records, templates...) are
# tallies.
TALLIES = frozenset(
    {
        DecodeReason.DATAGRAMS,
        DecodeReason.RECORDS,
        DecodeReason.OPTIONS_RECORDS,
        DecodeReason.TEMPLATES,
        DecodeReason.PENDING_SETS,
        DecodeReason.PENDING_DECODED,
    }
)


class CaptureError(RuntimeError):
    """The capture could not be made or is incomplete (softflowd failed, datagrams missing)."""


@dataclass(frozen=True, slots=True)
class CaptureSpec:
    """The synthetic traffic softflowd reads: `sessions` conversations, `udp_share` of them UDP
    request/response pairs, the rest short TCP connections; a new one every
    1/`sessions_per_s` s of packet time, with their packets 0.2 to 2 ms apart."""

    sessions: int = 60_000
    udp_share: float = 0.6
    sessions_per_s: float = 25_000.0  # 50,000 records/s: a loop replays at the pace it spans
    seed: int = 20

    def key(self) -> str:
        """A directory name that changes whenever a field does."""
        udp_pct = round(self.udp_share * 100)
        return (
            f"softflowd-ipfix-r{GENERATOR_REVISION}-{self.sessions}s-{udp_pct}udp-"
            f"{round(self.sessions_per_s)}per-s-seed{self.seed}"
        )


@dataclass(frozen=True, slots=True)
class Capture:
    """softflowd's IPFIX datagrams of one CaptureSpec, and the facts of how they were made."""

    spec: CaptureSpec
    datagrams: list[bytes]
    records: int  # flow records (data records, not options records) in all datagrams
    packets_in_pcap: int
    softflowd_version: str
    softflowd_summary: str  # its "Flows exported: ..." line
    pcap_path: Path
    datagrams_path: Path
    made_s: float  # wall time it took to make (0 when cached)
    cached: bool


def _ip_checksum(header: bytes) -> int:
    """RFC 791 header checksum of a 20-byte IPv4 header whose checksum field is 0."""
    total: int = sum(struct.unpack("!10H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _ipv4(source: bytes, destination: bytes, proto: int, total_bytes: int, ident: int) -> bytes:
    """A 20-byte IPv4 header (DF set, TTL 64) with its checksum."""
    header = IPV4_HEADER.pack(
        0x45, 0, total_bytes, ident, 0x4000, 64, proto, 0, source, destination
    )
    checksum = _ip_checksum(header)
    return header[:10] + struct.pack("!H", checksum) + header[12:]


def synth_sessions_pcap(path: Path, spec: CaptureSpec) -> int:
    """Write the spec's sessions as a headers-only raw-IPv4 pcap; returns the packet count.

    Each packet is captured up to the end of its TCP or UDP header, with its IP total length
    (what softflowd counts as octets) and original length set to the full size.
    """
    rng = random.Random(spec.seed)
    packets: list[tuple[float, bytes, int]] = []  # (ts, captured bytes, original length)
    used_tuples: set[tuple[int, int, int, int, int]] = set()
    ident = 0
    spacing_s = 1.0 / spec.sessions_per_s
    for index in range(spec.sessions):
        is_udp = rng.random() < spec.udp_share
        proto = PROTO_UDP if is_udp else PROTO_TCP
        service_ports = UDP_SERVICE_PORTS if is_udp else TCP_SERVICE_PORTS
        while True:
            client_host = rng.randrange(1, 65535)  # 100.64.0.0/16; the replay sets octet 2
            server_host = rng.randrange(1, 255)  # 10.99.0.0/24; the replay sets octet 3
            client_port = rng.randrange(EPHEMERAL_FIRST, EPHEMERAL_LAST + 1)
            server_port = rng.choice(service_ports)
            five_tuple = (proto, client_host, client_port, server_host, server_port)
            if five_tuple not in used_tuples:
                used_tuples.add(five_tuple)
                break
        client = bytes((100, 64, client_host >> 8, client_host & 0xFF))
        server = bytes((10, 99, 0, server_host))
        ts = FIRST_SESSION_TS + index * spacing_s + rng.random() * spacing_s
        if is_udp:
            # (from the client?, payload bytes): a request and its response
            steps = [(True, rng.randrange(20, 100), 0), (False, rng.randrange(40, 480), 0)]
        else:
            request = rng.randrange(100, 700)
            response = rng.randrange(200, 1400)
            steps = [
                (True, 0, SYN),
                (False, 0, SYN | ACK),
                (True, 0, ACK),
                (True, request, PSH | ACK),
                (False, response, PSH | ACK),
                (True, 0, FIN | ACK),
                (False, 0, FIN | ACK),
                (True, 0, ACK),
            ]
        client_seq = rng.getrandbits(32)
        server_seq = rng.getrandbits(32)
        for from_client, payload_bytes, flags in steps:
            if from_client:
                source = client
                destination = server
                source_port = client_port
                destination_port = server_port
            else:
                source = server
                destination = client
                source_port = server_port
                destination_port = client_port
            ident = (ident + 1) & 0xFFFF
            if is_udp:
                total = 20 + 8 + payload_bytes
                transport = UDP_HEADER.pack(source_port, destination_port, 8 + payload_bytes, 0)
            else:
                total = 20 + 20 + payload_bytes
                sequence = client_seq if from_client else server_seq
                acknowledged = server_seq if from_client else client_seq
                transport = TCP_HEADER.pack(
                    source_port, destination_port, sequence, acknowledged, 0x50, flags, 502, 0, 0
                )
                used = payload_bytes + (1 if flags & (SYN | FIN) else 0)
                if from_client:
                    client_seq = (client_seq + used) & 0xFFFFFFFF
                else:
                    server_seq = (server_seq + used) & 0xFFFFFFFF
            header = _ipv4(source, destination, proto, total, ident)
            packets.append((ts, header + transport, total))
            ts += 0.0002 + rng.random() * 0.0018
    packets.sort(key=lambda packet: packet[0])
    out = [PCAP_FILE_HEADER.pack(PCAP_MAGIC_US, 2, 4, 0, 0, 96, LINKTYPE_RAW)]
    for ts, captured, original_bytes in packets:
        seconds = int(ts)
        micros = min(999_999, round((ts - seconds) * 1e6))
        out.append(PCAP_RECORD_HEADER.pack(seconds, micros, len(captured), original_bytes))
        out.append(captured)
    path.write_bytes(b"".join(out))
    return len(packets)


# -- softflowd ---------------------------------------------------------------------------------


def softflowd_version() -> str:
    """softflowd's version line ("softflowd v1.1.0" style), from its usage text."""
    done = subprocess.run([SOFTFLOWD, "-h"], capture_output=True, text=True, check=False)
    match = re.search(r"softflowd version (\S+)", done.stdout + done.stderr)
    return f"softflowd {match.group(1).rstrip('.')}" if match else "softflowd (version unknown)"


class DatagramReceiver:
    """A UDP socket on 127.0.0.1 with a large receive buffer, read by a thread of its own."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # root may exceed net.core.rmem_max (SO_RCVBUFFORCE, socket(7))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER_BYTES)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.datagrams: list[bytes] = []
        self.last_arrival = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, name="ipfix-receiver", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                payload = self.sock.recv(65535)
            except TimeoutError:
                continue
            self.datagrams.append(payload)
            self.last_arrival = time.monotonic()

    def wait_quiet(self, quiet_s: float, timeout_s: float = 60.0) -> None:
        """Until no datagram arrived for `quiet_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() - self.last_arrival < quiet_s:
            if time.monotonic() > deadline:
                raise CaptureError(f"datagrams still arriving after {timeout_s} s")
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the reading thread and close the socket."""
        self._stop.set()
        self._thread.join()
        self.sock.close()


def run_softflowd(pcap: Path, workdir: Path, max_flows: int) -> tuple[list[bytes], str, int]:
    """`softflowd -r pcap` exporting IPFIX to a receiver of ours; returns (datagrams, its
    "Flows exported" line, the receiver socket's kernel drops).

    softflowd -r reads the whole file, expires flows only past `max_flows` (set above the
    file's flow count, so none is expired early), exports them all at the end, prints its
    statistics and exits (softflowd(8)); -d keeps it in the foreground. In this mode it
    writes no pid file and opens no control socket unless told to (-p, -c).
    """
    receiver = DatagramReceiver()
    try:
        argv = [SOFTFLOWD, "-d", "-r", str(pcap), "-v", "10", "-A", "milli"]
        argv += ["-n", f"127.0.0.1:{receiver.port}", "-m", str(max_flows)]
        # no -c: with a control socket, softflowd -r stays running after the end of the file
        argv += ["-t", "maxlife=10"]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SOFTFLOWD_TIMEOUT_S, check=False
        )
        output = done.stdout + done.stderr
        (workdir / "softflowd.log").write_text(f"{' '.join(argv)}\n{output}", encoding="utf-8")
        if done.returncode:
            raise CaptureError(f"softflowd exited {done.returncode}: {output[-2000:]}")
        receiver.wait_quiet(QUIET_S)
        drops = udp_socket_figures("127.0.0.1", receiver.port).drops
    finally:
        receiver.close()
    exported = EXPORTED.search(output)
    expired = EXPIRED.search(output)
    maxflows = MAXFLOWS_EXPIRED.search(output)
    if exported is None or expired is None or maxflows is None:
        raise CaptureError(f"cannot read softflowd's statistics: {output[-2000:]}")
    datagrams = receiver.datagrams
    if int(exported.group(4)):
        raise CaptureError(f"softflowd failed to send: {exported.group(0)}")
    if int(exported.group(3)) != len(datagrams) or drops:
        raise CaptureError(
            f"softflowd sent {exported.group(3)} packets, we received {len(datagrams)} "
            f"(kernel drops at our socket: {drops})"
        )
    if int(maxflows.group(1)) or int(expired.group(2)):
        raise CaptureError(f"softflowd expired flows early (raise -m): {output[-2000:]}")
    return datagrams, exported.group(0), drops


@dataclass(frozen=True, slots=True)
class UdpSocketFigures:
    """One bound UDP socket's line of /proc/net/udp(6): bytes queued to read, and drops."""

    rx_queue_bytes: int
    drops: int


def udp_socket_figures(host: str, port: int, proc_root: str = "/proc") -> UdpSocketFigures:
    """The receive queue and the drop counter of the UDP socket bound to host:port.

    proc(5) /proc/net/udp: local_address is the address in hex as the kernel stores it
    (little-endian for IPv4 here) and the port in hex; "tx_queue:rx_queue" in bytes; the
    last column, "drops", counts datagrams dropped at this socket (a full receive buffer).
    """
    table = Path(proc_root, "net", "udp6" if ":" in host else "udp")
    wanted = f":{port:04X}"
    address = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    # /proc prints each 32-bit word of the address in host (little-endian) order
    words = [address[i : i + 4][::-1].hex().upper() for i in range(0, len(address), 4)]
    local = "".join(words) + wanted
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local:
            rx_queue = int(fields[4].split(":")[1], 16)
            return UdpSocketFigures(rx_queue_bytes=rx_queue, drops=int(fields[-1]))
    raise CaptureError(f"no UDP socket bound to {host}:{port} in {table}")


# -- the saved datagrams -----------------------------------------------------------------------


def save_datagrams(path: Path, datagrams: list[bytes], port: int = 4739) -> None:
    """The datagrams as a raw-IPv4 pcap of 127.0.0.1 -> 127.0.0.1:port UDP (open it in
    Wireshark: Decode As... CFLOW), 1 ms apart."""
    out = [PCAP_FILE_HEADER.pack(PCAP_MAGIC_US, 2, 4, 0, 0, 65535, LINKTYPE_RAW)]
    loopback = bytes((127, 0, 0, 1))
    for index, payload in enumerate(datagrams):
        total = 20 + 8 + len(payload)
        header = _ipv4(loopback, loopback, PROTO_UDP, total, index & 0xFFFF)
        packet = header + UDP_HEADER.pack(9995, port, 8 + len(payload), 0) + payload
        out.append(PCAP_RECORD_HEADER.pack(index // 1000, index % 1000 * 1000, total, total))
        out.append(packet)
    path.write_bytes(b"".join(out))


def load_datagrams(path: Path) -> list[bytes]:
    """The UDP payloads of a pcap written by save_datagrams."""
    data = path.read_bytes()
    offset = PCAP_FILE_HEADER.size
    datagrams = []
    while offset < len(data):
        captured = PCAP_RECORD_HEADER.unpack_from(data, offset)[2]
        offset += PCAP_RECORD_HEADER.size
        datagrams.append(data[offset + 28 : offset + captured])
        offset += captured
    return datagrams


def check_sequence(datagrams: list[bytes]) -> int:
    """Decode the datagrams (one exporter) and check them complete; returns the flow records.

    softflowd's IPFIX sequence number counts the data records sent including the message's
    own (tunnelacct/collector/decode.py, DomainState.includes_current), from 0: each message's
    number must be the previous one plus its records, the first one its own records.
    """
    decoder = FlowDecoder()
    exporter = ("127.0.0.1", 9995)
    previous = 0
    records = 0
    for index, payload in enumerate(datagrams):
        header = IPFIX_HEADER.unpack_from(payload, 0)
        version = header[0]
        sequence = header[3]
        if version != IPFIX_VERSION:
            raise CaptureError(f"datagram {index} is version {version}, not IPFIX")
        count = len(decoder.decode_datagram(payload, exporter, 0.0))
        if sequence != (previous + count) & 0xFFFFFFFF:
            raise CaptureError(
                f"datagram {index}: sequence {sequence}, expected {previous} + {count} records"
            )
        previous = sequence
        records += count
    bad = {
        str(reason): count
        for reason, count in decoder.stats(exporter).items()
        if reason not in TALLIES and count
    }
    if bad:
        raise CaptureError(f"tunnelacct's decoder counted bad input in the capture: {bad}")
    return records


def make_capture(spec: CaptureSpec, directory: Path) -> Capture:
    """softflowd's IPFIX export of the spec's pcap, made in `directory` or reused from it."""
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / "capture.json"
    pcap_path = directory / "sessions.pcap"
    datagrams_path = directory / "ipfix-datagrams.pcap"
    if meta_path.exists() and datagrams_path.exists():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("spec") == asdict(spec) and meta.get("generator") == GENERATOR_REVISION:
            datagrams = load_datagrams(datagrams_path)
            return Capture(
                spec=spec,
                datagrams=datagrams,
                records=check_sequence(datagrams),
                packets_in_pcap=int(meta["packets_in_pcap"]),
                softflowd_version=str(meta["softflowd_version"]),
                softflowd_summary=str(meta["softflowd_summary"]),
                pcap_path=pcap_path,
                datagrams_path=datagrams_path,
                made_s=0.0,
                cached=True,
            )
    began = time.monotonic()
    packets = synth_sessions_pcap(pcap_path, spec)
    datagrams, summary, _drops = run_softflowd(pcap_path, directory, max_flows=spec.sessions * 2)
    records = check_sequence(datagrams)
    exported_records = int(summary.split("(")[1].split()[0])
    if records != exported_records:
        raise CaptureError(f"decoded {records} records, softflowd says {summary}")
    save_datagrams(datagrams_path, datagrams)
    version = softflowd_version()
    meta = {
        "spec": asdict(spec),
        "generator": GENERATOR_REVISION,
        "packets_in_pcap": packets,
        "softflowd_version": version,
        "softflowd_summary": summary,
        "records": records,
        "datagrams": len(datagrams),
    }
    meta_path.write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return Capture(
        spec=spec,
        datagrams=datagrams,
        records=records,
        packets_in_pcap=packets,
        softflowd_version=version,
        softflowd_summary=summary,
        pcap_path=pcap_path,
        datagrams_path=datagrams_path,
        made_s=time.monotonic() - began,
        cached=False,
    )
