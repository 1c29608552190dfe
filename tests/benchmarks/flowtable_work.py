"""The flow table's work alone, for an instruction count (tests/benchmarks/bench_revisions.py).

Reads and decodes a capture into memory, then (unless `--decode-only`) runs every batch
through a flow table and closes what is left. The instructions of a run minus those of a
`--decode-only` run are the flow table's. Works with the package of any revision on
`sys.path` (the flow table moved to `tunnelacct.sessions` in issue 17).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python tests/benchmarks/flowtable_work.py CAPTURE [--decode-only]

The collector runs as the import runs it (`tunnelacct.heap.fewer_collections`, where the
revision has it): with CPython's defaults a quarter of the time went to collections that the
import does not make.

With `--runs N` it times the flow table's pass N times instead (a new table each, the capture
decoded once) and prints the seconds of each; with another revision's package first on
`PYTHONPATH`, the same for that revision.

    PYTHONPATH=OTHER_CHECKOUT .venv/bin/python tests/benchmarks/flowtable_work.py CAPTURE --runs 3
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import time
from pathlib import Path
from typing import Any


def module(*names: str) -> Any:
    """The first of `names` that imports: the same module before and after a move."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    raise ModuleNotFoundError(names[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("capture", type=Path)
    parser.add_argument("--decode-only", action="store_true")
    parser.add_argument("--runs", type=int, default=0, help="time the pass this many times")
    args = parser.parse_args()
    config = module("tunnelacct.config.model", "tunnelacct.config")
    decode = module("tunnelacct.capture.decode", "tunnelacct.decode")
    pcapfile = module("tunnelacct.capture.pcapfile", "tunnelacct.sources.pcapfile")
    flowtable = module("tunnelacct.sessions.flowtable", "tunnelacct.flowtable")
    enums = module("tunnelacct.enums")
    events = module("tunnelacct.sessions.events", "tunnelacct.events")
    attribution = events.Attribution(org_id="acme")
    batches = [decode.decode(raw) for raw in pcapfile.open_capture(args.capture).batches()]
    if args.decode_only:
        return
    try:
        collections = module("tunnelacct.heap").fewer_collections()
    except ModuleNotFoundError:  # a revision before it: CPython's own thresholds
        collections = contextlib.nullcontext()
    with collections:
        run_tables(args.runs, flowtable, config, enums, attribution, batches)


def run_tables(
    runs: int, flowtable: Any, config: Any, enums: Any, attribution: Any, batches: list[Any]
) -> None:
    """Each batch through a new flow table, then close what is left; `runs` times (timed)."""
    for run in range(1, max(runs, 1) + 1):
        started = time.perf_counter()
        table = flowtable.FlowTable(
            config.Timeouts(),
            attribute=lambda *key: attribution,
            is_client=lambda family, address: address >> 24 == 100,
            emit_opened=True,
        )
        for batch in batches:
            table.process(batch)
        table.close_all(enums.CloseReason.END_OF_CAPTURE)
        if runs:
            print(f"run {run}: {time.perf_counter() - started:.2f} s ({flowtable.__file__})")


if __name__ == "__main__":
    main()
