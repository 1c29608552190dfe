"""Capture files read and decoded in the decoder child (child.py), so decoding overlaps
sessionizing: the pcap record walk is Python and would otherwise share the parent's GIL."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tunnelacct.capture.child import (
    ChildEnded,
    Decoded,
    DecoderChild,
    Failed,
    FileDone,
    Started,
    narrow,
)
from tunnelacct.capture.decode import decode, plausible_until
from tunnelacct.capture.pcapfile import open_capture
from tunnelacct.errors import CaptureFormatError, TunnelacctError


def first_timestamp(path: Path) -> float:
    """Time of the first packet of a capture file (inf if it has none or is unreadable)."""
    try:
        for raw in open_capture(path).batches():
            if len(raw):
                return float(raw.ts[0])
    except CaptureFormatError:
        pass
    return float("inf")


class FileSource:
    """Capture files, one after the other, as a source of the decoder child."""

    name = "decode"

    def __init__(self, paths: Sequence[Path]) -> None:
        self.paths = list(paths)

    def open(self) -> None:
        pass  # each file is opened in its turn: a bad one is reported in its FileDone

    def messages(self, stop: Any, counts: Any) -> Iterator[Decoded | FileDone]:
        for index, path in enumerate(self.paths):
            reader = open_capture(path)
            error = None
            try:
                for raw in reader.batches():
                    decoded = decode(raw, not_after_ts=plausible_until(time.time()))
                    yield Decoded(index, narrow(decoded), reader.stats.bytes_read)
            except CaptureFormatError as e:
                error = str(e)
            warnings = reader.stats.warnings
            tail = reader.stats.tail
            if error is None and tail is not None:
                # A cut file lost its last packet: damage, as an import reports it (exit 1), not
                # a warning to miss (issue 15). A replay in serve only logs it.
                error = str(CaptureFormatError(str(path), f"truncated: {tail}"))
                warnings = [w for w in warnings if w != tail]
            if error is not None:
                error += f"; the {reader.stats.packets:,} packets before it were imported"
            yield FileDone(index, reader.stats.packets, reader.size_bytes, warnings, error)

    def close(self) -> None:
        pass


class DecodeProcess:
    """Iterate Decoded and FileDone messages for `paths`, decoded in the decoder child."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._child = DecoderChild(FileSource(paths))

    def get(self) -> Decoded | FileDone | None:
        """The next message, None at the end; raises if the child died without finishing."""
        while True:
            try:
                message = self._child.next_message()
            except ChildEnded as e:
                raise TunnelacctError(f"decoder process ended unexpectedly ({e})") from None
            if isinstance(message, Decoded | FileDone):
                return message
            if isinstance(message, Failed):
                raise TunnelacctError(f"decoder process failed: {message.why}")
            if not isinstance(message, Started):
                return None  # Ended

    def __iter__(self) -> Iterator[Decoded | FileDone]:
        while (msg := self.get()) is not None:
            yield msg

    def close(self) -> None:
        """Stop the child (if still running) and release the queue; idempotent."""
        self._child.close()
