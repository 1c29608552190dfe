"""Python's cyclic garbage collector, set for processes that hold hundreds of thousands of
live objects (an import's or a busy gateway's open sessions and pending events).

With CPython's default thresholds (700, 10, 10) the collector walks the young objects every
700 allocations and, as the heap grows, the whole heap again and again: an import of 300,000
short sessions spent a quarter of its time there (issue 21), and so did serve's collector at
tens of thousands of records a second (issue 20). Sessions and events hold no reference
cycles, so they are freed by their reference counts; the collector only has to find the rare
cycle.

Two settings:
- BULK_THRESHOLDS, for the import and the writer children: the collector runs 300x less
  often, and still finds those cycles.
- SERVE_THRESHOLDS, for serve's own process: young collections 28x less often, but the older
  generations' ratios kept. A connection flood leaves closed sockets in reference cycles, and
  with BULK_THRESHOLDS serve held their descriptors until it ran out of them (issue 16's flood
  test, tests/hardening/test_connection_flood.py, caught it); with these it does not.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Allocations between young collections, and the two ratios above them; measured on the
# session-heavy import (tests/benchmarks/bench_sessions.py): 7.7 s with the defaults, 6.4 s
# with these, 5.9 s with no collection at all.
BULK_THRESHOLDS = (200_000, 50, 100)
# Measured on serve's collector path in one process (decode, record tables, events; 480,000
# records): 14.7 µs a record with the defaults, 12.0 with these, 11.2 with BULK_THRESHOLDS.
SERVE_THRESHOLDS = (20_000, 10, 10)


@contextmanager
def fewer_collections(thresholds: tuple[int, int, int] = BULK_THRESHOLDS) -> Iterator[None]:
    """Run the collector at `thresholds` inside the block, as before after it."""
    before = gc.get_threshold()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*before)
