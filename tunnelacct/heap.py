"""Python's cyclic garbage collector, set for processes that hold hundreds of thousands of
live objects (an import's open sessions and pending events).

With CPython's default thresholds (700, 10, 10) the collector walks the young objects every
700 allocations and, as the heap grows, the whole heap again and again: an import of 300,000
short sessions spent a quarter of its time there (issue 21). Sessions and events hold no
reference cycles, so they are freed by their reference counts; the collector only has to find
the rare cycle, and running it 300x less often still does.

Not for serve: a connection flood leaves closed sockets in reference cycles, and collecting
them less often held their descriptors until serve ran out of them (issue 16's flood test).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Allocations between young collections, and the two ratios above them; measured on the
# session-heavy import (tests/benchmarks/bench_sessions.py): 7.7 s with the defaults, 6.4 s
# with these, 5.9 s with no collection at all.
BULK_THRESHOLDS = (200_000, 50, 100)


@contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the collector at BULK_THRESHOLDS inside the block, as before after it."""
    before = gc.get_threshold()
    gc.set_threshold(*BULK_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
