"""A capture the tests record themselves: long-lived TCP and UDP sessions on loopback, each
with packets from the first to the last moment of the capture, recorded by tcpdump.

    record_sessions(path, [("127.0.0.2", "127.0.0.3")], rounds=20)

Every client address opens a TCP connection and a UDP flow to the server address; then, round
by round, each sends a request and waits for its answer, so every session has packets all
through the capture, and a time between its first and last packet (say its middle) falls
inside all of them. tcpdump is started, and stopped with SIGINT, by PID.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path

from tests.helpers.waiting import WAIT_S

REQUEST_BYTES = 300
ANSWER_BYTES = 1200


def record_sessions(path: Path, pairs: Sequence[tuple[str, str]], *, rounds: int) -> None:
    """Record, into pcap `path`, a TCP connection and a UDP flow from each (client, server)
    address pair, `rounds` request/answer rounds each, all rounds interleaved."""
    servers = [_Server(server) for _client, server in pairs]
    ports = sorted({port for s in servers for port in (s.tcp_port, s.udp_port)})
    port_filter = " or ".join(f"port {port}" for port in ports)
    tcpdump = subprocess.Popen(
        ["tcpdump", "-i", "lo", "-U", "-n", "-s", "0", "-w", str(path), port_filter],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_listening(tcpdump)
        _exchange(pairs, servers, rounds)
    finally:
        os.kill(tcpdump.pid, signal.SIGINT)
        tcpdump.communicate(timeout=WAIT_S)
        for server in servers:
            server.close()


def _wait_listening(tcpdump: subprocess.Popen[str]) -> None:
    """Until tcpdump says it listens (its first line on stderr)."""
    assert tcpdump.stderr is not None
    timer = threading.Timer(WAIT_S, tcpdump.kill)
    timer.start()
    try:
        line = tcpdump.stderr.readline()
    finally:
        timer.cancel()
    if "listening on" not in line:
        raise AssertionError(f"tcpdump did not start: {line!r}")


def _exchange(pairs: Sequence[tuple[str, str]], servers: Sequence[_Server], rounds: int) -> None:
    tcp_clients = []
    udp_clients = []
    for (client, _server_address), server in zip(pairs, servers, strict=True):
        tcp = socket.create_connection(
            (server.address, server.tcp_port), timeout=WAIT_S, source_address=(client, 0)
        )
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.settimeout(WAIT_S)
        udp.bind((client, 0))
        udp.connect((server.address, server.udp_port))
        tcp_clients.append(tcp)
        udp_clients.append(udp)
    try:
        for _round in range(rounds):
            for tcp in tcp_clients:
                tcp.sendall(b"q" * REQUEST_BYTES)
                _receive_exactly(tcp, ANSWER_BYTES)
            for udp in udp_clients:
                udp.send(b"q" * REQUEST_BYTES)
                udp.recv(ANSWER_BYTES)
    finally:
        for tcp in tcp_clients:
            tcp.close()
        for udp in udp_clients:
            udp.close()


def _receive_exactly(sock: socket.socket, size: int) -> None:
    received = 0
    while received < size:
        chunk = sock.recv(size - received)
        if not chunk:
            raise AssertionError("the server closed the connection")
        received += len(chunk)


class _Server:
    """A TCP and a UDP answerer on `address`: ANSWER_BYTES for every REQUEST_BYTES."""

    POLL_S = 0.2  # how often an idle answerer looks whether it should end

    def __init__(self, address: str) -> None:
        self.address = address
        self._stop = threading.Event()
        self._tcp = socket.create_server((address, 0))
        self._tcp.settimeout(self.POLL_S)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.settimeout(self.POLL_S)
        self._udp.bind((address, 0))
        self.tcp_port = self._tcp.getsockname()[1]
        self.udp_port = self._udp.getsockname()[1]
        self._threads = [
            threading.Thread(target=self._serve_tcp, daemon=True),
            threading.Thread(target=self._serve_udp, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _peer = self._tcp.accept()
            except TimeoutError:
                continue
            conn.settimeout(WAIT_S)
            with conn:
                while True:
                    try:
                        _receive_exactly(conn, REQUEST_BYTES)
                    except (AssertionError, OSError):
                        return  # the client is done
                    conn.sendall(b"a" * ANSWER_BYTES)

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                _request, peer = self._udp.recvfrom(REQUEST_BYTES)
            except TimeoutError:
                continue
            self._udp.sendto(b"a" * ANSWER_BYTES, peer)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(WAIT_S)
        self._tcp.close()
        self._udp.close()


def first_and_last_ts(pcap: Path) -> tuple[float, float]:
    """The first and last record times of a little-endian microsecond pcap, read with struct."""
    data = pcap.read_bytes()
    assert struct.unpack_from("<I", data)[0] == 0xA1B2C3D4, "a little-endian microsecond pcap"
    times = []
    offset = 24
    while offset + 16 <= len(data):
        seconds, microseconds, captured, _on_wire = struct.unpack_from("<IIII", data, offset)
        times.append(seconds + microseconds / 1e6)
        offset += 16 + captured
    return times[0], times[-1]
