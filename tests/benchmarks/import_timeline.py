"""Where the session-heavy import's wall time goes: each process's CPU, every half second.

Runs `tunnelacct import` of the session-heavy capture (synth_sessions.py) with the config of
bench_sessions.py into a new SQLite file and prints, per 0.5 s of wall time, the CPU share of
the import's own process (the flow table), its decoder child (it holds the capture open) and
its writer child (it holds the store open), the writer's split into its main thread (the event
loop: messages, rows, the rollup) and its other threads (SQLite's, through aiosqlite, and the
pipe's polls). A process at 100% holds one core; the machine has os.cpu_count() of them. Last,
each one's CPU seconds in all.

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

from bench_serve_replay import child_pids, holds_open, own_cpu_s  # noqa: E402
from bench_sessions import session_heavy  # noqa: E402
from liveserve import TUNNELACCT, BenchError  # noqa: E402
from machine import machine  # noqa: E402

STEP_S = 0.5
IMPORT_WAIT_S = 1800.0  # sanity bound on one import
ROLES = ("flow table", "decoder", "writer loop", "writer rest")


def thread_cpu_s(pid: int, tid: int) -> float:
    """utime + stime of thread `tid` of process `pid`."""
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_role(roles: dict[int, str]) -> dict[str, float]:
    """CPU seconds so far of each role of `roles` (pid -> "flow table", "decoder" or
    "writer"), the writer's split into its main thread and the rest."""
    seconds: dict[str, float] = {}
    for pid, role in roles.items():
        with contextlib.suppress(OSError, IndexError):
            if role != "writer":
                seconds[role] = own_cpu_s(pid)
                continue
            whole = own_cpu_s(pid)
            loop = thread_cpu_s(pid, pid)
            seconds["writer loop"] = loop
            seconds["writer rest"] = whole - loop
    return seconds


def timeline(
    config: Path, capture: Path, db: Path, log_path: Path
) -> tuple[list[tuple[float, dict[str, float]]], dict[str, float]]:
    """Import `capture` into `db`; the CPU % of each role per STEP_S until it exits, and the
    last CPU seconds read of each."""
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    steps: list[tuple[float, dict[str, float]]] = []
    with log_path.open("w") as log:
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                str(TUNNELACCT),
                "--log-level",
                "INFO",
                "import",
                "--config",
                str(config),
                str(capture),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        roles = {proc.pid: "flow table"}
        cpu_before: dict[str, float] = {}
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
                cpu_now = cpu_by_role(roles)
                shares = {
                    role: 100 * (cpu - cpu_before.get(role, 0.0)) / STEP_S
                    for role, cpu in cpu_now.items()
                }
                cpu_before.update(cpu_now)
                steps.append((now - started, shares))
                next_step += STEP_S
            time.sleep(0.01)
    if proc.returncode != 0:
        raise BenchError(f"the import exited {proc.returncode}: {log_path.read_text()[-3000:]}")
    return steps, cpu_before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=300_000)
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="tunnelacct-timeline-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        config, capture, packets, sessions = session_heavy(workdir, args.sessions)
        print(f"capture: {sessions:,} sessions, {packets:,} packets")
        started = time.monotonic()
        steps, cpu_s = timeline(config, capture, workdir / "store.db", workdir / "import.log")
        print(f"wall: {time.monotonic() - started:.2f} s")
        print("   t (s)  " + "  ".join(f"{role:>11}" for role in ROLES))
        for at_s, shares in steps:
            cells = [f"{shares[r]:10.0f}%" if r in shares else f"{'-':>11}" for r in ROLES]
            print(f"{at_s:8.1f}  " + "  ".join(cells))
        print(
            "CPU seconds (as last read, up to 0.5 s before each process ended): "
            + ", ".join(f"{role} {cpu_s.get(role, 0.0):.2f}" for role in ROLES)
        )


if __name__ == "__main__":
    main()
