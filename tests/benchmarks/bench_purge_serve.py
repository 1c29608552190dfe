"""Benchmark: how long `tunnelacct serve`'s writer waits while its purge deletes 300,000+ expired
sessions beside a replay at full speed, on SQLite and PostgreSQL.

The scenario of tests/test_retention_cli.py's full-speed purge test (which checks that no write
fails and every expired row goes), timed: the recorded capture imported shifted 100, 20 and 3
days back, the 3-day-old copy replicated `--copies` times (those sessions stay), acme and
globex keeping 7 days; then `serve` purges every 2 s while it replays the 3-day-old copy in a
loop at full speed. Prints per engine the purge's wall time (from the first rows written to the
end of the first run), the writer's longest flush (`write_seconds_max` of the status file: the
longest stall the ingest path saw), its flushes and rows, and failed flushes. Asserts nothing
about time.

SQLite is a temporary file; PostgreSQL (`--url postgresql://user@host/db`) a database
`tunnelacct_bench_<random>` created on that server and dropped at the end.

    .venv/bin/python tests/benchmarks/bench_purge_serve.py [--url postgresql://...] [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.bench_purge_pg import database  # noqa: E402
from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.retention import (  # noqa: E402
    PURGED_ORGS,
    expired_rows,
    purge_beside_replay,
    purged_orgs,
)
from tests.helpers.serving import Serve  # noqa: E402
from tunnelacct.store.migrate import migrate  # noqa: E402

WAIT_S = 1800.0  # a run that has not ended by then is stuck


def run(url: str, workdir: Path, copies: int) -> None:
    """The scenario once on the migrated, empty store at `url`; prints its figures."""
    config, cutoff = purge_beside_replay(workdir, url, copies)
    expired = expired_rows(url, cutoff)
    with Serve(None, config, url, workdir) as serve:
        serve.start(wait_for="")
        first = serve.wait(lambda s: s["writer"]["rows_written"] > 0, WAIT_S, "rows written")
        began = time.monotonic()
        serve.wait(lambda _s: purged_orgs(url) == PURGED_ORGS, WAIT_S, "a purge of every org")
        took = time.monotonic() - began
        status = serve.wait(
            lambda s: s["writer"]["rows_written"] > first["writer"]["rows_written"] + 1000,
            WAIT_S,
            "writing after the purge",
        )
        if serve.stop() != 0:
            raise SystemExit(f"serve failed:\n{serve.log()}")
    writer = status["writer"]
    left = expired_rows(url, cutoff)
    engine = url.split(":", 1)[0].split("+", 1)[0]
    print(
        f"RESULT {engine}: {expired - left:,} of {expired:,} expired sessions purged within "
        f"{took:.1f} s; longest writer flush {writer['write_seconds_max'] * 1000:.0f} ms "
        f"({writer['flushes']:,} flushes, {writer['rows_written']:,} rows, "
        f"{writer['failed_flushes']} failed)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="a PostgreSQL server (postgresql://...): run there too")
    parser.add_argument("--copies", type=int, default=14_000, help="copies of the kept capture")
    parser.add_argument("--runs", type=int, default=1, help="runs per engine")
    args = parser.parse_args()
    print(f"machine: {machine()}", flush=True)
    for _ in range(args.runs):
        tmp = Path(tempfile.mkdtemp(prefix="tunnelacct-bench-purge-serve-"))
        try:
            url = f"sqlite:///{tmp / 'purge.db'}"
            migrate(url)
            run(url, tmp, args.copies)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        if args.url is None:
            continue
        tmp = Path(tempfile.mkdtemp(prefix="tunnelacct-bench-purge-serve-"))
        try:
            with database(args.url, "head") as url:
                run(url, tmp, args.copies)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
