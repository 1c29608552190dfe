"""Sources for the decoder child made up in tests: known batches of any size, and a source that
fails in the middle. They are pickled to the spawned child, which imports this module."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from tunnelacct.capture.child import Decoded, FileDone, narrow
from tunnelacct.capture.decode import DecodedBatch


def numbered_batch(first: int, packets: int) -> DecodedBatch:
    """A batch whose every column is derived from the packet's number, so that a reader can
    recompute what it should have received."""
    number = np.arange(first, first + packets, dtype=np.int64)
    return DecodedBatch(
        ts=number.astype(np.float64) / 1000.0,
        family=np.where(number % 2 == 0, 4, 6).astype(np.int64),
        proto=np.where(number % 3 == 0, 17, 6).astype(np.int64),
        src_hi=(number * 7).astype(np.uint64),
        src_lo=(number * 11).astype(np.uint64),
        dst_hi=(number * 13).astype(np.uint64),
        dst_lo=(number * 17).astype(np.uint64),
        sport=number % 65536,
        dport=(number * 3) % 65536,
        ip_bytes=40 + number % 1460,
        payload_bytes=number % 1420,
        flags=number % 256,
        frag=number % 3,
        frag_id=number % 4_000_000_000,
        interface="made-up",
        packets_in=packets,
    )


class NumberedSource:
    """`batches` batches of `packets` numbered packets, then (if `crash`) a crash that is
    not a CaptureError: a bug in a source, which ends the child without its last message."""

    name = "test-numbered"

    def __init__(self, batches: int, packets: int, *, crash: bool = False) -> None:
        self.batches = batches
        self.packets = packets
        self.crash = crash

    def open(self) -> None:
        pass

    def messages(self, stop: Any, counts: Any) -> Iterator[Decoded | FileDone]:
        for index in range(self.batches):
            batch = numbered_batch(index * self.packets, self.packets)
            yield Decoded(0, narrow(batch), (index + 1) * self.packets)
        if self.crash:
            raise RuntimeError("a source with a bug")
        yield FileDone(0, self.batches * self.packets, self.batches * self.packets)

    def close(self) -> None:
        pass
