"""A live capture run in the decoder child (child.py), which also decodes: the ring walk and
decoding then use their own core and GIL, leaving the service's to the flow table and the
writer.

Same interface as LiveSource, except that read_batch() returns DecodedBatch objects::

    with LiveProcessSource("wg0") as source:   # raises CaptureError like LiveSource
        batch = source.read_batch(0.5)         # a DecodedBatch, or None
        packets, drops = source.stats()

When the parent stops reading, the child blocks on the full queue, stops reading the ring, and
the kernel counts what overflows it.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from tunnelacct.capture.child import (
    ChildEnded,
    Decoded,
    DecoderChild,
    Ended,
    Failed,
    FileDone,
    Started,
    narrow,
)
from tunnelacct.capture.decode import DecodedBatch, decode, plausible_until
from tunnelacct.capture.live import LiveSource
from tunnelacct.errors import CaptureError

START_TIMEOUT_S = 30.0
STATS_EVERY_S = 1.0
DRAIN_QUIET_S = 0.5  # after stop(): the ring has been read when it stays empty this long
DRAIN_TIMEOUT_S = 30.0


class LiveRingSource:
    """An interface's AF_PACKET ring (LiveSource) as a source of the decoder child; keeps the
    ring's (packets, drops) in the child's counters."""

    def __init__(self, interface: str, options: dict[str, int]) -> None:
        self.interface = interface
        self.options = options
        self.name = f"capture-{interface}"
        self._source: LiveSource | None = None

    def open(self) -> None:
        self._source = LiveSource(self.interface, **self.options)

    def messages(self, stop: Any, counts: Any) -> Iterator[Decoded | FileDone]:
        source = self._source
        assert source is not None  # opened first
        done = threading.Event()

        def publish_stats() -> None:
            # its own thread: the counters stay current while a stalled parent blocks the queue
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
                    decoded = decode(raw, not_after_ts=plausible_until(time.time()))
                    yield Decoded(0, narrow(decoded), 0)
                elif stopping:
                    done.set()
                    stats_thread.join()
                    counts[0], counts[1] = source.stats()  # every packet counted has been read
                    return
        finally:
            done.set()
            stats_thread.join()

    def close(self) -> None:
        if self._source is not None:
            self._source.close()


class LiveProcessSource:
    """Decoded TCP/UDP headers of `interface`, captured and decoded in the decoder child."""

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
        options = {"snaplen": snaplen, "block_size": block_size, "block_count": block_count}
        self._child = DecoderChild(LiveRingSource(interface, options))
        try:
            first = self._next(START_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        if not isinstance(first, Started):
            self.close()
            if isinstance(first, Failed):
                raise CaptureError(interface, first.why, transient=first.transient)
            raise CaptureError(interface, "capture process did not start", transient=True)

    def _next(self, timeout_s: float) -> Any:
        """The child's next message, None on timeout; CaptureError if it died."""
        try:
            return self._child.next_message(timeout_s)
        except ChildEnded as e:
            raise CaptureError(
                self.interface, f"capture process ended unexpectedly ({e})", transient=True
            ) from None

    def read_batch(self, timeout_s: float) -> DecodedBatch | None:
        """The next decoded batch within `timeout_s`, or None; after stop(), None once drained."""
        if self._child.ended:
            return None
        stopping = self._child.stopping
        deadline = time.monotonic() + (DRAIN_TIMEOUT_S if stopping else timeout_s)
        while (left_s := deadline - time.monotonic()) > 0 or not stopping:
            message = self._next(max(0.0, left_s))
            if message is None:
                if not stopping:
                    return None
                continue
            if isinstance(message, Decoded):
                return message.batch
            if isinstance(message, Ended):
                return None
            if isinstance(message, Failed):
                raise CaptureError(self.interface, message.why, transient=message.transient)
        raise CaptureError(self.interface, f"capture did not drain in {DRAIN_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """Accept no further packets; read_batch() then returns the rest, then None."""
        self._child.stop()

    def stats(self) -> tuple[int, int]:
        """(packets, drops) of the kernel ring, as the child last read them (every second)."""
        return self._child.counts()

    def close(self) -> None:
        """End the child and release the queue; safe to call twice."""
        self._child.close()

    def __enter__(self) -> LiveProcessSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
