"""Where the session-heavy import's wall time goes: each process's CPU, every half second.

Runs `tunnelacct import` of the session-heavy capture (synth_sessions.py) into a new SQLite
file and prints, per 0.5 s of wall time, the CPU share of the import's own process (the flow
table), its decoder child (it holds the capture open) and its writer child (it holds the
store open). A process at 100% holds one core; the machine has os.cpu_count() of them.

Run:
    .venv/bin/python tests/benchmarks/import_timeline.py [--sessions 300000]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_serve_replay import child_pids, holds_open, own_cpu_s, session_capture  # noqa: E402
from liveserve import TUNNELACCT, BenchError  # noqa: E402
from machine import machine  # noqa: E402

STEP_S = 0.5
IMPORT_WAIT_S = 1800.0  # sanity bound on one import


def timeline(capture: Path, db: Path, log_path: Path) -> list[tuple[float, dict[str, float]]]:
    """Import `capture` into `db`; the CPU % of each process per STEP_S, until it exits."""
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    steps: list[tuple[float, dict[str, float]]] = []
    with log_path.open("w") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(TUNNELACCT), "--log-level", "INFO", "import", str(capture)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        roles = {proc.pid: "flow table"}
        cpu_before: dict[int, float] = {}
        next_step = started + STEP_S
        while proc.poll() is None:
            if time.monotonic() - started > IMPORT_WAIT_S:
                proc.kill()
                raise BenchError(f"the import took more than {IMPORT_WAIT_S} s")
            for pid in child_pids(proc.pid):
                if pid not in roles and holds_open(pid, db):
                    roles[pid] = "writer"
                elif pid not in roles and holds_open(pid, capture):
                    roles[pid] = "decoder"
            now = time.monotonic()
            if now >= next_step:
                shares: dict[str, float] = {}
                for pid, role in roles.items():
                    with contextlib.suppress(OSError, IndexError):
                        cpu = own_cpu_s(pid)
                        shares[role] = 100 * (cpu - cpu_before.get(pid, 0.0)) / STEP_S
                        cpu_before[pid] = cpu
                steps.append((now - started, shares))
                next_step += STEP_S
            time.sleep(0.01)
    if proc.returncode != 0:
        raise BenchError(f"the import exited {proc.returncode}: {log_path.read_text()[-3000:]}")
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=300_000)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="tunnelacct-timeline-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        capture = session_capture(workdir, args.sessions)
        started = time.monotonic()
        steps = timeline(capture, workdir / "store.db", workdir / "import.log")
        print(f"wall: {time.monotonic() - started:.2f} s")
        roles = ["flow table", "decoder", "writer"]
        print("   t (s)  " + "  ".join(f"{role:>10}" for role in roles))
        for at_s, shares in steps:
            cells = [f"{shares[r]:9.0f}%" if r in shares else f"{'-':>10}" for r in roles]
            print(f"{at_s:8.1f}  " + "  ".join(cells))


if __name__ == "__main__":
    main()
