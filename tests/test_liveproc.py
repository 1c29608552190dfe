"""LiveProcessSource: capture + decode in a child process, on a real interface (loopback)."""

from __future__ import annotations

import multiprocessing
import signal
import socket
import time

import pytest

from tests.helpers.waiting import WAIT_S
from tunnelacct.capture.livechild import LiveProcessSource
from tunnelacct.errors import CaptureError

# AF_PACKET capture needs root or CAP_NET_RAW: skips without, or under CI fails
needs_root = pytest.mark.usefixtures("require_root")


def test_a_missing_interface_is_a_transient_error_without_a_process() -> None:
    ended: list[int] = []  # SIGCHLD: the kernel says a child of this process ended
    previous = signal.signal(signal.SIGCHLD, lambda signum, _frame: ended.append(signum))
    try:
        with pytest.raises(CaptureError) as caught:
            LiveProcessSource("ta-no-such0")
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert (caught.value.why, caught.value.transient) == ("no such interface", True)
    # no child process was started for it: none ended, none runs
    assert ended == [] and multiprocessing.active_children() == []


@needs_root
def test_packets_sent_on_loopback_arrive_decoded_and_counted_once_drained() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.1", 0))
        port = rx.getsockname()[1]
        with (
            LiveProcessSource("lo") as source,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx,
        ):
            for size in range(10, 30):
                tx.sendto(b"x" * size, ("127.0.0.1", port))
            seen: list[tuple[int, int]] = []
            deadline = time.monotonic() + WAIT_S
            while len(seen) < 40 and time.monotonic() < deadline:  # lo shows each packet twice
                batch = source.read_batch(0.5)
                if batch is not None:
                    mine = batch.dport == port
                    sizes = batch.ip_bytes[mine].tolist(), batch.payload_bytes[mine].tolist()
                    seen += zip(*sizes, strict=True)
            source.stop()
            while source.read_batch(0.5) is not None:
                pass
            packets, drops = source.stats()
    # IP total length = 20 + 8 + payload, taken from the header by the child's decoder
    assert sorted(seen) == sorted([(28 + n, n) for n in range(10, 30)] * 2)
    assert packets >= 40 and drops == 0
