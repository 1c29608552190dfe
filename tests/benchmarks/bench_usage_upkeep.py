"""Benchmark: what the usage rollup's upkeep costs the writer (issue 18: at most 5%), measured on
the same revision with and without it, in alternating runs.

`tunnelacct import` of a synthetic capture into a fresh SQLite file, in a subprocess per run;
"without" runs the same CLI with `UsageChanges.add_event` replaced by a no-op before it starts,
so that no write carries a rollup change (no usage rows to sum, no usage statements). Each
round runs both, the order alternating; per capture it prints every run's packets/s (the
import's own time: from its first import of tunnelacct to the CLI's end, interpreter start
excluded) and the medians. Asserts nothing.

    .venv/bin/python tests/benchmarks/bench_usage_upkeep.py [--rounds 7]

Captures: session-heavy (2M packets in 200,000 TCP sessions: every session written once,
the writer's worst case) and bulk (2M packets, 20,000 sessions).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.benchmarks.synth import synth_pcap  # noqa: E402

CAPTURES = {"session-heavy": (2_000_000, 200_000), "bulk": (2_000_000, 20_000)}
# Both modes import the same modules inside the timed part, in the same order.
_RUNNER = """
import sys, time
started = time.perf_counter()
from tunnelacct.store.usage import UsageChanges
if sys.argv[1] == "without":
    UsageChanges.add_event = lambda self, event, before, gateway: None
from tunnelacct.cli import main
try:
    main(sys.argv[2:])
except SystemExit as end:
    if end.code:
        raise
print(f"SECONDS {time.perf_counter() - started:.4f}", file=sys.stderr)
"""


def import_seconds(pcap: Path, workdir: Path, mode: str) -> float:
    """Seconds of one `tunnelacct import` of `pcap` into a fresh store, `mode` "with" or
    "without" the rollup's upkeep."""
    db = workdir / f"{mode}.db"
    for stale in workdir.glob(f"{mode}.db*"):
        stale.unlink()
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    done = subprocess.run(
        [sys.executable, "-c", _RUNNER, mode, "--log-level", "WARNING", "import", str(pcap)],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        check=True,
    )
    return float(done.stderr.split("SECONDS ")[1].split()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="tunnelacct-bench-upkeep-") as tmp:
        workdir = Path(tmp)
        for name, (packets, flows) in CAPTURES.items():
            pcap = workdir / f"{name}.pcap"
            synth_pcap(pcap, packets, flows)
            rates: dict[str, list[float]] = {"with": [], "without": []}
            for number in range(args.rounds):
                order = ("with", "without") if number % 2 == 0 else ("without", "with")
                for mode in order:
                    rate = packets / import_seconds(pcap, workdir, mode)
                    rates[mode].append(rate)
                    print(f"{name} round {number + 1} {mode:8} {rate:,.0f} packets/s", flush=True)
            with_upkeep = statistics.median(rates["with"])
            without = statistics.median(rates["without"])
            change = (with_upkeep / without - 1) * 100
            print(
                f"MEDIAN {name}: without {without:,.0f}, with {with_upkeep:,.0f} packets/s "
                f"({change:+.1f}%)",
                flush=True,
            )


if __name__ == "__main__":
    main()
