"""The flow table's work alone, for an instruction count (tests/benchmarks/bench_revisions.py).

Reads and decodes a capture into memory, then (unless `--decode-only`) runs every batch
through a flow table and closes what is left. The instructions of a run minus those of a
`--decode-only` run are the flow table's. Works with the package of any revision on
`sys.path` (the flow table moved to `tunnelacct.sessions` in issue 17).

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python tests/benchmarks/flowtable_work.py CAPTURE [--decode-only]
"""

from __future__ import annotations

import argparse
import importlib
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
    table = flowtable.FlowTable(
        config.Timeouts(),
        attribute=lambda *key: attribution,
        is_client=lambda family, address: address >> 24 == 100,
        emit_opened=True,
    )
    for batch in batches:
        table.process(batch)
    table.close_all(enums.CloseReason.END_OF_CAPTURE)


if __name__ == "__main__":
    main()
