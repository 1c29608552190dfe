"""Benchmark: CSV export throughput of one org on SQLite and on PostgreSQL, same rows.

Imports tests/data/wg-small.pcap into a temporary SQLite file and a fresh PostgreSQL database
(dropped afterwards), copies acme's sessions to about `--rows` (new ids, starts a minute apart
per copy), then times `export_org_csv` in this process and with 2 export worker processes,
`--runs` times each, and prints rows per second. Also checks that both engines wrote the same
bytes (issue 7: one CSV whatever the store). Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_export_engines.py [--rows 200000] [--runs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.replicate import replicate  # noqa: E402
from tests.helpers.stores import ENGINES, imported_store, query  # noqa: E402
from tunnelacct.query.export import ExportWorkers, export_org_csv  # noqa: E402
from tunnelacct.store.engine import make_engine  # noqa: E402


async def export_once(url: str, workers: int) -> tuple[int, float, str]:
    """(rows, seconds, CSV text) of one export of acme."""
    engine = make_engine(url)
    pool = ExportWorkers(workers) if workers else None
    try:
        out = io.BytesIO()
        start = time.perf_counter()
        rows = await export_org_csv(engine, "acme", out, workers=pool)
        return rows, time.perf_counter() - start, out.getvalue().decode()
    finally:
        if pool is not None:
            await asyncio.to_thread(pool.close)
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="acme sessions, about")
    parser.add_argument("--runs", type=int, default=3, help="timed exports per setting")
    args = parser.parse_args()
    print(machine())
    texts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ENGINES:
            (Path(tmp) / kind).mkdir()
            with imported_store(kind, Path(tmp) / kind) as url:
                ((seed,),) = query(url, "select count(*) from sessions where org_id = 'acme'")
                copies = max(args.rows // int(seed) - 1, 0)
                replicate(url, copies, 60, "acme")  # PostgreSQL: with the day partitions
                for workers in (0, 2):
                    rates = []
                    for _ in range(args.runs):
                        rows, seconds, texts[kind] = asyncio.run(export_once(url, workers))
                        rates.append(rows / seconds)
                    best, worst = max(rates), min(rates)
                    print(
                        f"{kind:10s} workers={workers}: {rows:,} rows, "
                        f"best {best:,.0f} rows/s, worst {worst:,.0f} rows/s"
                    )
    # The copies' ids are random: compare everything but the id column.
    same = [{line.partition(",")[2] for line in text.split("\r\n")} for text in texts.values()]
    print("same CSV on both engines (ids aside):", same[0] == same[1])


if __name__ == "__main__":
    main()
