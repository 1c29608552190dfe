"""Packet sources: capture files now, live interfaces later; each yields RawBatch objects."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(slots=True)
class RawBatch:
    """Undecoded packets that share one buffer: packet i is buf[offsets[i]:offsets[i]+caplens[i]].

    `linktypes` holds each packet's LINKTYPE_* value, `wirelens` the original length on the wire,
    `ts` the capture time in float epoch seconds.
    """

    buf: npt.NDArray[np.uint8]
    offsets: I64
    caplens: I64
    wirelens: I64
    ts: F64
    linktypes: I64
    interface: str

    def __len__(self) -> int:
        return len(self.offsets)
