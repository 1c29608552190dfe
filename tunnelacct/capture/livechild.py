"""A LiveSource run in a child process that also decodes: the ring walk and decoding then use
their own core and GIL, leaving the service's to the flow table and the writer.

Same interface as LiveSource, except that read_batch() returns DecodedBatch objects::

    with LiveProcessSource("wg0") as source:   # raises CaptureError like LiveSource
        batch = source.read_batch(0.5)         # a DecodedBatch, or None
        packets, drops = source.stats()

Messages go one way through a pipe; when the parent stops reading, the child blocks on the
pipe, stops reading the ring, and the kernel counts what overflows it. The child dies with
its parent (PR_SET_PDEATHSIG), so a `kill -9` of the service leaves no capture behind.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import signal
import socket
import threading
import time
from typing import Any

from tunnelacct.capture.child import narrow, widen
from tunnelacct.capture.decode import DecodedBatch, decode, plausible_until
from tunnelacct.capture.live import LiveSource
from tunnelacct.errors import CaptureError

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
START_TIMEOUT_S = 30.0
STATS_EVERY_S = 1.0
DRAIN_QUIET_S = 0.5  # after stop(): the ring has been read when it stays empty this long
DRAIN_TIMEOUT_S = 30.0


def _child(interface: str, options: dict[str, int], conn: Any, stop: Any, counts: Any) -> None:
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        source = LiveSource(interface, **options)
    except CaptureError as e:
        conn.send(("error", e.why, e.transient))
        return
    conn.send(("ok",))
    done = threading.Event()

    def publish_stats() -> None:
        # its own thread: the counters stay current while a stalled parent blocks the pipe
        while True:
            counts[0], counts[1] = source.stats()
            if done.wait(STATS_EVERY_S):
                return

    stats_thread = threading.Thread(target=publish_stats, daemon=True)
    stats_thread.start()
    stopping = False
    try:
        while True:
            if stop.is_set() and not stopping:
                source.stop()
                stopping = True
            raw = source.read_batch(DRAIN_QUIET_S if stopping else 0.2)
            if raw is not None:
                conn.send(("batch", narrow(decode(raw, not_after_ts=plausible_until(time.time())))))
            elif stopping:
                done.set()
                stats_thread.join()
                counts[0], counts[1] = source.stats()  # every packet counted has been read
                conn.send(("end",))
                return
    except CaptureError as e:
        conn.send(("error", e.why, e.transient))
    finally:
        done.set()
        stats_thread.join()
        source.close()


class LiveProcessSource:
    """Decoded TCP/UDP headers of `interface`, captured and decoded in a child process."""

    def __init__(
        self,
        interface: str,
        *,
        snaplen: int = 96,
        block_size: int = 1 << 20,
        block_count: int = 64,
    ) -> None:
        self.interface = interface
        try:
            socket.if_nametoindex(interface)  # no process for an interface that is not there
        except OSError:
            raise CaptureError(interface, "no such interface", transient=True) from None
        ctx = mp.get_context("spawn")  # never fork a process that runs threads and a loop
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._stop = ctx.Event()
        self._counts = ctx.Array("q", 2)  # kernel ring (packets, drops), kept by the child
        options = {"snaplen": snaplen, "block_size": block_size, "block_count": block_count}
        self._proc = ctx.Process(
            target=_child,
            args=(interface, options, child_conn, self._stop, self._counts),
            name=f"tunnelacct-capture-{interface}",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        self._ended = False
        try:
            first = self._recv(START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if first is None or first[0] != "ok":
            self.close()
            if first is not None and first[0] == "error":
                raise CaptureError(interface, first[1], transient=first[2])
            raise CaptureError(interface, "capture process did not start", transient=True)

    def _recv(self, timeout_s: float) -> tuple[Any, ...] | None:
        """The child's next message, None on timeout; CaptureError if it died."""
        try:
            if not self._conn.poll(timeout_s):
                return None
            msg: tuple[Any, ...] = self._conn.recv()
            return msg
        except (EOFError, OSError):
            code = self._proc.exitcode if not self._proc.is_alive() else None
            raise CaptureError(
                self.interface,
                f"capture process ended unexpectedly (exit code {code})",
                transient=True,
            ) from None

    def read_batch(self, timeout_s: float) -> DecodedBatch | None:
        """The next decoded batch within `timeout_s`, or None; after stop(), None once drained."""
        if self._ended:
            return None
        stopping = self._stop.is_set()
        deadline = time.monotonic() + (DRAIN_TIMEOUT_S if stopping else timeout_s)
        while (left_s := deadline - time.monotonic()) > 0 or not stopping:
            msg = self._recv(max(0.0, left_s))
            if msg is None:
                if not stopping:
                    return None
                continue
            kind = msg[0]
            if kind == "batch":
                return widen(msg[1])
            if kind == "end":
                self._ended = True
                return None
            elif kind == "error":
                raise CaptureError(self.interface, msg[1], transient=msg[2])
        raise CaptureError(self.interface, f"capture did not drain in {DRAIN_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """Accept no further packets; read_batch() then returns the rest, then None."""
        self._stop.set()

    def stats(self) -> tuple[int, int]:
        """(packets, drops) of the kernel ring, as the child last read them (every second)."""
        return int(self._counts[0]), int(self._counts[1])

    def close(self) -> None:
        """End the child and release the pipe; safe to call twice."""
        self._stop.set()
        self._proc.join(timeout=2)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._conn.close()

    def __enter__(self) -> LiveProcessSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
