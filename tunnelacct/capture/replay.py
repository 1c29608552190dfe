"""Replay of a capture file as a live source: as fast as possible or paced, once or in a loop.

Same interface as LiveSource (read_batch, stop, stats, close), so `serve` runs a file through
exactly the live pipeline::

    source = ReplaySource("tests/data/wg-small.pcap", speed=1.0, loop=True)
    batch = source.read_batch(0.5)   # the packets due by now; None when none are (or at the end)

At `speed` 0 the packets keep their recorded times (the rows equal those of `tunnelacct import`)
and pass n of a loop is shifted n x (span + `loop_gap_s`) later, so every session of one pass
has ended before the next begins. At `speed` > 0 packets are released as the wall clock reaches
their paced time and carry that time, as if captured now: recorded gaps / speed.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from tunnelacct.capture.batch import RawBatch
from tunnelacct.capture.pcapfile import CaptureReader, open_capture
from tunnelacct.errors import CaptureError, CaptureFormatError

log = logging.getLogger(__name__)

# A pass that cannot open its file for these is retried, not ended (issue 16): the process ran
# out of descriptors or memory for a while (a connection flood, say).
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


def _take(batch: RawBatch, sel: slice) -> RawBatch:
    """Packets `sel` of a batch, sharing its buffer (which keeps its zero padding)."""
    return RawBatch(
        buf=batch.buf,
        offsets=batch.offsets[sel],
        caplens=batch.caplens[sel],
        wirelens=batch.wirelens[sel],
        ts=batch.ts[sel],
        linktypes=batch.linktypes[sel],
        interface=batch.interface,
    )


class ReplaySource:
    """Packets of one capture file, released at `speed` x recorded pace (0 = at once)."""

    def __init__(
        self,
        path: str | Path,
        *,
        speed: float = 0.0,
        loop: bool = False,
        loop_gap_s: float = 3700.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if speed < 0:
            raise ValueError(f"speed {speed} < 0")
        self.path = Path(path)
        self.interface = str(self.path)
        self.speed, self.loop, self.loop_gap_s = speed, loop, loop_gap_s
        self._clock = clock
        self._sleep = sleep
        self._first_ts, self._span_s = self._extent()
        self.passes = 0  # passes started
        self.packets = 0  # packets handed out
        self.finished = False  # the file ended and does not loop (or has no packets to loop)
        self._pass_packets = 0  # packets read in the current pass
        self._packets_before = 0  # packets of the pass before (a pass may fail to start)
        self._stopped = self._closed = False
        self._batches: Iterator[RawBatch] | None = None
        self._reader: CaptureReader | None = None
        self._held: RawBatch | None = None  # paced: packets read but not yet due
        self._pass_start = 0.0  # wall time (paced) or shift (fast) of the current pass

    def _extent(self) -> tuple[float, float]:
        """(first packet time, last - first) of the file's packets up to any damage, read once;
        both 0.0 when it has none. A file that is no capture raises CaptureError; damage further
        on is raised by the pass that reaches it, after the packets before it (issue 16)."""
        lo, hi = float("inf"), float("-inf")
        try:
            reader = open_capture(self.path)
        except CaptureFormatError as e:  # same error as a later pass, and as LiveSource raises
            raise CaptureError(self.interface, e.why) from e
        with contextlib.suppress(CaptureFormatError):
            for batch in reader.batches():
                if len(batch):
                    lo, hi = min(lo, float(batch.ts.min())), max(hi, float(batch.ts.max()))
        return (lo, hi - lo) if lo <= hi else (0.0, 0.0)

    def read_batch(self, timeout_s: float) -> RawBatch | None:
        """The next packets due, waiting up to `timeout_s`; None if none are, or at the end."""
        if self._closed:
            raise CaptureError(self.interface, "source is closed")
        deadline = self._clock() + timeout_s
        while not self._stopped and not self.finished:
            batch = self._held if self._held is not None else self._next_file_batch()
            self._held = None
            if batch is None:
                continue  # a new pass began, or the file ended
            if self.speed == 0:
                batch.ts = batch.ts + self._pass_start
                self.packets += len(batch)
                return batch
            due = self._pass_start + (batch.ts - self._first_ts) / self.speed
            now = self._clock()
            ready = int(np.searchsorted(due, now, side="right"))  # file order is time order
            if ready:
                out = _take(batch, slice(0, ready))
                out.ts = due[:ready]
                if ready < len(batch):
                    self._held = _take(batch, slice(ready, None))
                self.packets += ready
                return out
            self._held = batch
            wait_s = min(float(due[0]), deadline) - now
            if now >= deadline:
                return None
            self._sleep(max(0.0, wait_s))
        return None

    def _next_file_batch(self) -> RawBatch | None:
        """The next non-empty batch of the file, starting (or ending) a pass as needed."""
        if self._batches is None:
            # A pass without packets ends a loop too: looping it would spin without end.
            if self.passes and not (self.loop and self._pass_packets):
                self.finished = True
                return None
            if self.speed == 0:
                self._pass_start = self.passes * (self._span_s + self.loop_gap_s)
            else:
                self._pass_start = self._clock()
            self.passes += 1
            try:
                self._reader = open_capture(self.path)
                self._batches = self._reader.batches()
            except CaptureFormatError as e:
                self._pass_not_started(e.__cause__)
                raise CaptureError(self.interface, e.why) from e
            # after the open: a pass that could not start keeps the count of the one before
            self._packets_before = self._pass_packets
            self._pass_packets = 0
        try:
            while len(batch := next(self._batches)) == 0:
                pass
        except OSError as e:  # the file is opened at the first batch of a pass
            if self._pass_packets == 0:
                self._pass_packets = self._packets_before
                self._pass_not_started(e)
            raise CaptureError(self.interface, e.strerror or str(e)) from e
        except StopIteration:
            self._batches = None
            if self.passes == 1 and self._reader is not None:
                for warning in self._reader.stats.warnings:  # e.g. a truncated last record
                    log.warning("%s: %s", self.path, warning)
            return None
        except CaptureFormatError as e:
            raise CaptureError(self.interface, e.why) from e
        self._pass_packets += len(batch)
        return batch

    def _pass_not_started(self, cause: BaseException | None) -> None:
        """A pass could not open the file for want of descriptors or memory: undo its start,
        so that the next read starts it again, and say so (CaptureError, transient)."""
        if isinstance(cause, OSError) and cause.errno in RESOURCE_ERRNOS:
            self.passes -= 1
            self._batches = None
            raise CaptureError(
                self.interface, cause.strerror or str(cause), transient=True
            ) from cause

    def stop(self) -> None:
        """Hand out nothing more (what was handed out stays counted)."""
        self._stopped = True

    def stats(self) -> tuple[int, int]:
        """(packets, drops): packets handed out so far; a file never drops."""
        return self.packets, 0

    def close(self) -> None:
        """Stop and release the file; safe to call twice."""
        self._stopped = self._closed = True
        self._batches = None
        self._held = None
