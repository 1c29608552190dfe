"""Read and decode capture files in a child process, so decoding overlaps sessionizing.

The parent's event loop runs the flow table and the writer; the child walks the files and
decodes batches (the pcap record walk is Python and would otherwise share the parent's GIL).
Messages flow one way through a bounded queue, so a slow parent stops the child reading.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from tunnelacct.capture.decode import DecodedBatch, decode, plausible_until
from tunnelacct.capture.pcapfile import open_capture
from tunnelacct.errors import CaptureFormatError, TunnelacctError

QUEUE_BATCHES = 4  # decoded batches in flight (each from ~4 MB of capture)
POLL_S = 0.5


@dataclass(slots=True)
class FileDone:
    """A file was read to its end (or to the first corrupt record: see `error`)."""

    index: int
    packets: int
    size_bytes: int
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass(slots=True)
class Decoded:
    """One decoded batch of file `index`, and how far into that file reading has got."""

    index: int
    batch: DecodedBatch
    bytes_read: int


# Narrow dtypes for the trip through the pipe (half the bytes of int64 everywhere); the
# parent widens them back, so the flow engine always sees int64.
_NARROW = {
    "family": np.uint8,
    "proto": np.uint8,
    "sport": np.uint16,
    "dport": np.uint16,
    "ip_bytes": np.int32,
    "payload_bytes": np.int32,
    "flags": np.uint8,
    "frag": np.uint8,
    "frag_id": np.uint32,
}


def narrow(b: DecodedBatch) -> DecodedBatch:
    """The batch with narrow integer dtypes, for the trip through a pipe."""
    return replace(b, **{k: getattr(b, k).astype(t) for k, t in _NARROW.items()})


def widen(b: DecodedBatch) -> DecodedBatch:
    """The batch back with int64 everywhere, as the flow table expects."""
    return replace(b, **{k: getattr(b, k).astype(np.int64) for k in _NARROW})


def first_timestamp(path: Path) -> float:
    """Time of the first packet of a capture file (inf if it has none or is unreadable)."""
    try:
        for raw in open_capture(path).batches():
            if len(raw):
                return float(raw.ts[0])
    except CaptureFormatError:
        pass
    return float("inf")


def _child(paths: list[Path], out: Any) -> None:
    for index, path in enumerate(paths):
        reader = open_capture(path)
        error = None
        try:
            for raw in reader.batches():
                decoded = decode(raw, not_after_ts=plausible_until(time.time()))
                out.put(Decoded(index, narrow(decoded), reader.stats.bytes_read))
        except CaptureFormatError as e:
            error = str(e)
        warnings = reader.stats.warnings
        tail = reader.stats.tail
        if error is None and tail is not None:
            # A cut file lost its last packet: damage, as an import reports it (exit 1), not a
            # warning to miss (issue 15). A replay in serve only logs it.
            error = str(CaptureFormatError(str(path), f"truncated: {tail}"))
            warnings = [w for w in warnings if w != tail]
        if error is not None:
            error += f"; the {reader.stats.packets:,} packets before it were imported"
        out.put(FileDone(index, reader.stats.packets, reader.size_bytes, warnings, error))
    out.put(None)


class DecodeProcess:
    """Iterate Decoded and FileDone messages for `paths`, decoded in a child process."""

    def __init__(self, paths: Sequence[Path]) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs threads and an event loop
        self._queue: Any = ctx.Queue(maxsize=QUEUE_BATCHES)
        self._proc = ctx.Process(
            target=_child, args=(list(paths), self._queue), name="tunnelacct-decode", daemon=True
        )
        self._proc.start()

    def get(self) -> Decoded | FileDone | None:
        """The next message, None at the end; raises if the child died without finishing."""
        while True:
            try:
                msg: Decoded | FileDone | None = self._queue.get(timeout=POLL_S)
                if isinstance(msg, Decoded):
                    msg.batch = widen(msg.batch)
                return msg
            except queue.Empty:
                if not self._proc.is_alive():
                    raise TunnelacctError(
                        f"decoder process ended unexpectedly (exit code {self._proc.exitcode})"
                    ) from None

    def __iter__(self) -> Iterator[Decoded | FileDone]:
        while (msg := self.get()) is not None:
            yield msg

    def close(self) -> None:
        """Stop the child (if still running) and release the queue; idempotent."""
        if self._proc.is_alive():
            self._proc.terminate()
        self._proc.join(timeout=5)
        self._queue.close()
        self._queue.join_thread()
