"""Benchmark: how much a fresh `tunnelacct serve` grows while it streams one org's
`sessions.csv`, at 1x and 10x the rows (100,000 and 1,000,000 by default), per store engine.

The store holds wg-small.pcap imported by the CLI, acme's sessions copied until it has the
rows asked for. Growth is serve's peak resident memory (sampled every 50 ms) over its resident
memory after a first small export. Asserts nothing about memory.

    .venv/bin/python tests/benchmarks/bench_export_memory.py [--rows 100000 1000000]
        [--engines sqlite postgresql]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.accuracy import run_cli  # noqa: E402
from tests.helpers.replicate import replicate  # noqa: E402
from tests.helpers.serving import Serve, write_config  # noqa: E402
from tests.helpers.stores import ENGINES, empty_store, query  # noqa: E402
from tests.helpers.waiting import WAIT_S  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
BASE = DATA / "wg-small.toml"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run(engine: str, rows: int) -> tuple[int, int, int]:
    """(rows exported, CSV bytes, serve's growth in bytes) for one export of `rows` rows."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with empty_store(engine, work) as store:
            env = {"TUNNELACCT_DATABASE_URL": store}
            run_cli("import", "--config", str(BASE), str(DATA / "wg-small.pcap"), env=env)
            ((acme,),) = query(store, "SELECT count(*) FROM sessions WHERE org_id = 'acme'")
            replicate(store, -(-rows // int(acme)) - 1, step_s=60, org_id="acme")
            ((held,),) = query(store, "SELECT count(*) FROM sessions WHERE org_id = 'acme'")
            port = free_port()
            config = write_config(
                BASE, work / "serve.toml", {"api": {"listen": f"127.0.0.1:{port}"}}
            )
            token = run_cli("token", "create", "--config", str(config), "--role", "admin", env=env)
            headers = {"Authorization": f"Bearer {token.stdout.strip()}"}
            url = f"http://127.0.0.1:{port}/api/v1/orgs/acme/sessions.csv"
            received = 0
            with Serve(None, config, store, work) as serve, httpx.Client(timeout=600) as http:
                serve.start(wait_for="")
                serve.wait(lambda s: s["state"] == "running", WAIT_S, "running")
                first = http.get(url, params={"q": "dport:1"}, headers=headers)
                assert first.status_code == 200

                def download() -> None:
                    nonlocal received
                    with http.stream("GET", url, headers=headers) as response:
                        assert response.status_code == 200
                        for chunk in response.iter_bytes():
                            received += len(chunk)

                growth = serve.peak_rss_growth_while(download)
                assert serve.stop() == 0, serve.log()
    return int(held), received, growth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    a = ap.parse_args()
    print(f"machine: {machine()}")
    for engine in a.engines:
        for rows in a.rows:
            held, received, growth = run(engine, rows)
            print(
                f"{engine:10} {held:>9,} rows: CSV {received / 2**20:6.1f} MiB, "
                f"serve grew {growth / 2**20:5.1f} MiB"
            )


if __name__ == "__main__":
    main()
