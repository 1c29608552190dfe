"""Benchmark: `tunnelacct export` (the whole CLI command) and the API's `sessions.csv` against
`sqlite3 -csv` of the same rows, in one run, on a SQLite store of one org's sessions.

The store holds tests/data/wg-small.pcap imported by the CLI, acme's sessions copied until it
has about `--rows` (tests/helpers/replicate.py: the same rows on every run, new random ids),
all in sessions_default, or with `--partitioned` moved into per-day partitions by `tunnelacct
db partition`, as a store that serve has run on keeps them (store/sqlite/layout.py); with
`--page-size`, rebuilt with pages of that size (a new store has SQLite's default, 4 KiB).
Each command is timed `--runs` times and its best run kept:

- `sqlite3 -csv` of the stored columns behind the CSV's (session_id is the id, started_at_unix
  started_at again), acme's rows in (started_at, id) order, to a file: the floor;
- `tunnelacct export --org acme -o FILE` as a subprocess, Python's start included, with the
  peak resident memory of its process tree (itself and its export workers, sampled every
  20 ms), also for a tenth of the rows (`-q started_before:...`): flat memory is the same peak;
- the API's `GET /api/v1/orgs/acme/sessions.csv` from a real `tunnelacct serve`, streamed to a
  file, with each `[api] export_workers` of `--api-workers` (1, the default, and 2).

Prints rows/s and the ratio to `sqlite3 -csv`, and checks that the CLI and the API wrote the
same bytes. Asserts nothing about time.

    .venv/bin/python tests/benchmarks/bench_export_csv.py [--rows 300000] [--runs 2]
        [--api-workers 1 2] [--partitioned] [--page-size 4096]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.benchmarks.pagesize import rebuild_with_page_size  # noqa: E402
from tests.helpers.accuracy import run_cli  # noqa: E402
from tests.helpers.replicate import replicate  # noqa: E402
from tests.helpers.serving import Serve, write_config  # noqa: E402
from tests.helpers.stores import imported_store, query  # noqa: E402
from tests.helpers.waiting import WAIT_S  # noqa: E402
from tunnelacct.query.records import CSV_COLUMNS  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
BASE = DATA / "wg-small.toml"
ORG = "acme"
STORED = {"session_id": "id", "started_at_unix": "started_at"}  # CSV column -> stored column


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` and all its descendants (0 once it has exited)."""
    total = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def timed_command(argv: list[str], stdout_path: Path, env: dict[str, str]) -> tuple[float, int]:
    """(seconds, peak resident bytes of its process tree) of one run of `argv`."""
    with stdout_path.open("wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, env=env)
        peak_bytes = 0
        while proc.poll() is None:
            peak_bytes = max(peak_bytes, tree_rss_bytes(proc.pid))
            time.sleep(0.02)
        seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode() if proc.stderr is not None else ""
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{stderr}"
    return seconds, peak_bytes


def best_of(runs: int, once: Callable[[], tuple[float, int]]) -> tuple[float, int]:
    """The fastest of `runs` runs (seconds) and the highest peak memory seen in any."""
    results = [once() for _ in range(runs)]
    return min(seconds for seconds, _ in results), max(peak for _, peak in results)


def api_export(
    url: str, work: Path, export_workers: int, token: str, api_csv: Path, runs: int
) -> float:
    """The best time of `runs` downloads of acme's sessions.csv from a `tunnelacct serve` with
    `[api] export_workers = export_workers`, each written to `api_csv`."""
    port = free_port()
    api = {"listen": f"127.0.0.1:{port}", "export_workers": export_workers}
    config = write_config(BASE, work / "serve.toml", {"api": api})
    headers = {"Authorization": f"Bearer {token}"}
    api_url = f"http://127.0.0.1:{port}/api/v1/orgs/{ORG}/sessions.csv"
    with Serve(None, config, url, work) as serve, httpx.Client(timeout=600) as http:
        serve.start(wait_for="")
        serve.wait(lambda s: s["state"] == "running", WAIT_S, "running")
        assert http.get(api_url, params={"q": "dport:1"}, headers=headers).status_code == 200

        def download() -> tuple[float, int]:
            start = time.perf_counter()
            with (
                http.stream("GET", api_url, headers=headers) as answer,
                api_csv.open("wb") as out,
            ):
                assert answer.status_code == 200
                for chunk in answer.iter_bytes(1 << 20):
                    out.write(chunk)
            return time.perf_counter() - start, 0

        # the first download also starts the service's export workers
        seconds, _ = best_of(runs, download)
        assert serve.stop() == 0, serve.log()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=300_000, help="acme sessions, about")
    parser.add_argument("--runs", type=int, default=2, help="timed runs of each command")
    parser.add_argument(
        "--api-workers", type=int, nargs="+", default=[1, 2], help="[api] export_workers"
    )
    parser.add_argument(
        "--partitioned", action="store_true", help="move the rows into per-day partitions"
    )
    parser.add_argument(
        "--page-size", type=int, help="rebuild the store with this page size before the runs"
    )
    args = parser.parse_args()
    sqlite_cli = shutil.which("sqlite3")
    if sqlite_cli is None:
        raise SystemExit("bench_export_csv needs the sqlite3 command-line shell on PATH")
    print(machine())
    print(subprocess.run([sqlite_cli, "--version"], capture_output=True, text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp, imported_store("sqlite", Path(tmp)) as url:
        work = Path(tmp)
        ((seeds,),) = query(url, "SELECT count(*) FROM sessions WHERE org_id = ?", ORG)
        replicate(url, -(-args.rows // int(seeds)) - 1, step_s=60, org_id=ORG)
        ((rows,),) = query(url, "SELECT count(*) FROM sessions WHERE org_id = ?", ORG)
        rows = int(rows)
        # the start of the session a tenth of the way in: `started_before` keeps about a tenth
        ((tenth_start,),) = query(
            url,
            "SELECT started_at FROM sessions WHERE org_id = ? ORDER BY started_at, id"
            " LIMIT 1 OFFSET ?",
            ORG,
            rows // 10,
        )
        tenth_at = datetime.fromisoformat(str(tenth_start)).replace(tzinfo=UTC)
        tenth_filter = f"started_before:{tenth_at.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        env = {**os.environ, "TUNNELACCT_DATABASE_URL": url}
        db_path = url.removeprefix("sqlite:///")
        layout = "all in sessions_default"
        if args.partitioned:
            run_cli("db", "partition", "--config", str(BASE), env=env)
            partitions = "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name LIKE ?"
            ((tables,),) = query(url, partitions, "sessions_p%")
            layout = f"in {tables} partitions"
        if args.page_size is not None:
            rebuild_with_page_size(Path(db_path), args.page_size)
        ((page_size,),) = query(url, "PRAGMA page_size")
        print(f"store: {rows:,} sessions of {ORG}, {layout}, {page_size}-byte pages")

        columns = ", ".join(STORED.get(name, name) for name in CSV_COLUMNS)
        floor_sql = f"SELECT {columns} FROM sessions WHERE org_id = '{ORG}' ORDER BY started_at, id"
        floor_s, _ = best_of(
            args.runs,
            lambda: timed_command(
                [sqlite_cli, "-csv", db_path, floor_sql], work / "sqlite3.csv", env
            ),
        )

        cli_csv = work / "cli.csv"
        export = [sys.executable, "-m", "tunnelacct", "export", "--config", str(BASE)]
        export += ["--org", ORG, "-o", str(cli_csv)]
        cli_s, cli_peak = best_of(args.runs, lambda: timed_command(export, work / "cli.out", env))
        tenth_csv = work / "tenth.csv"
        tenth = [*export[:-1], str(tenth_csv), "-q", tenth_filter]
        _, tenth_peak = best_of(1, lambda: timed_command(tenth, work / "tenth.out", env))
        tenth_rows = tenth_csv.read_bytes().count(b"\n") - 1  # no line break inside a cell here

        admin = run_cli("token", "create", "--config", str(BASE), "--role", "admin", env=env)
        token = admin.stdout.strip()
        api_s: dict[int, float] = {}
        api_same: dict[int, bool] = {}
        for api_workers in args.api_workers:
            api_csv = work / f"api-{api_workers}.csv"
            api_s[api_workers] = api_export(url, work, api_workers, token, api_csv, args.runs)
            api_same[api_workers] = cli_csv.read_bytes() == api_csv.read_bytes()

        size_mib = cli_csv.stat().st_size / 2**20
        print(f"CSV: {size_mib:.1f} MiB; the API wrote the CLI's bytes: {api_same}")
        print(f"best of {args.runs} runs each:")
        print(f"  sqlite3 -csv                  {rows / floor_s:>10,.0f} rows/s  {floor_s:6.2f} s")
        timings = [("tunnelacct export (CLI)", cli_s)]
        timings += [(f"API, export_workers={n}", seconds) for n, seconds in api_s.items()]
        for label, seconds in timings:
            print(
                f"  {label:29s} {rows / seconds:>10,.0f} rows/s  {seconds:6.2f} s"
                f"  {floor_s / seconds:.2f}x the speed of sqlite3 -csv"
                f"  {cli_s / seconds:.2f}x the CLI's"
            )
        print(
            f"CLI peak RSS (process tree): {cli_peak / 2**20:.0f} MiB for {rows:,} rows,"
            f" {tenth_peak / 2**20:.0f} MiB for {tenth_rows:,} rows"
        )


if __name__ == "__main__":
    main()
