"""RawBatch: undecoded packets sharing one buffer, as every packet source yields them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

# Sources end each batch buffer with this many zero bytes after the last packet, so the decoder
# can read a little past any header without bounds checks or a copy.
BUF_PAD = 256

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]


@dataclass(slots=True)
class RawBatch:
    """Undecoded packets that share one buffer: packet i is buf[offsets[i]:offsets[i]+caplens[i]].

    `buf` should end with BUF_PAD zero bytes (else the decoder copies it to add them).
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
