"""`tunnelacct inspect`: explain packets that failed to decode, dissected by scapy."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunnelacct.capture.decode import decode, plausible_until
from tunnelacct.capture.pcapfile import open_capture
from tunnelacct.capture.reasons import REASONS, SKIPPED_REASONS


def _dissect(linktype: int, data: bytes) -> str:
    """One-line scapy dissection of a link-layer frame: the layers scapy found, outermost
    first, then its summary, e.g. `Ether / IP / Raw (Ether / 10.0.0.1 > 10.0.0.2 tcp / Raw)`
    (scapy is slow: tools only)."""
    # Importing the layers fills conf.l2types (linktype -> class) and binds IP and IPv6 to the
    # link layers (issue 15, item 10: with scapy.config alone the table was empty, so every
    # frame came out as hex). Lazily: scapy takes a while to load.
    import scapy.layers.inet  # noqa: F401
    import scapy.layers.inet6  # noqa: F401
    import scapy.layers.l2  # noqa: F401
    from scapy.config import conf

    cls: Any = conf.l2types.get(linktype)
    if cls is None:
        return f"linktype {linktype}: {data[:32].hex()}"
    try:
        packet = cls(data)
        layers = " / ".join(layer.__name__ for layer in packet.layers())
        return f"{layers} ({packet.summary()})"
    except Exception as e:  # scapy raises anything on garbage: show it instead
        return f"scapy could not dissect it ({e.__class__.__name__}): {data[:32].hex()}"


def failed_packets(
    path: str | Path, *, limit: int, include_skipped: bool = False
) -> Iterator[tuple[int, float, str, str]]:
    """Yield (record number from 1, time, reason, dissection) for packets that decode rejected."""
    seen = shown = 0
    for raw in open_capture(path).batches():
        d = decode(raw, not_after_ts=plausible_until(time.time()))
        for i, code in zip(d.failed_index.tolist(), d.failed_reason.tolist(), strict=True):
            reason = REASONS[code]
            if reason in SKIPPED_REASONS and not include_skipped:
                continue
            o, c = int(raw.offsets[i]), int(raw.caplens[i])
            data = raw.buf[o : o + c].tobytes()
            yield seen + i + 1, float(raw.ts[i]), reason, _dissect(int(raw.linktypes[i]), data)
            shown += 1
            if shown >= limit:
                return
        seen += len(raw)
