"""serve's writer without an injector: `tunnelacct serve` replaying the session-heavy capture.

The live benchmark (bench_live.py) shares the machine's two cores with tcpreplay, which takes
most of one. Here serve replays the same mix from a file (`[[capture]] pcap`, `speed = 0`): its
capture child reads the file as fast as the flow table takes it, and the writer child has a
core of its own. What it reports per run:

- the wall time from serve's start until its flow table has closed every session of the
  file (`sessionized_s`), and until serve, stopped then, has written every row and exited
  (`wall_s`);
- the CPU of serve's main process (which also reads the file) and of its writer child, and
  the writer's µs of CPU per stored row;
- the writer's own figures from serve's log (rows, flushes, seconds writing);
- with --profile DIR, a py-spy profile of the writer child (per thread, speedscope JSON), if
  py-spy is installed (`pip install --target /tmp/pyspy py-spy`, then --py-spy
  /tmp/pyspy/bin/py-spy).

Run:
    .venv/bin/python tests/benchmarks/bench_serve_replay.py --sessions 300000 [--first-write 10]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from liveserve import BenchError, serve_argv, stop_pid  # noqa: E402
from machine import machine  # noqa: E402
from synth_sessions import synth_sessions  # noqa: E402

FINISH_WAIT_S = 1800.0  # sanity bound on one replay
WRITER_CLOSED = re.compile(
    r"session writer closed: (\d+) rows in (\d+) flushes \(([\d.]+) s writing\)"
)


def child_pids(pid: int) -> list[int]:
    """The process ids of `pid`'s children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError):
            found += [int(child) for child in task.read_text().split()]
    return found


def is_spawned(pid: int) -> bool:
    """Whether `pid` is a multiprocessing child (not its resource tracker)."""
    with contextlib.suppress(OSError):
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    return False


def holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open."""
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    return True
    return False


def own_cpu_s(pid: int) -> float:
    """utime + stime of `pid` alone (its threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def replay(
    capture: Path,
    workdir: Path,
    name: str,
    *,
    first_write_s: float | None,
    py_spy: str | None,
    profile_dir: Path | None,
) -> dict[str, float | str]:
    """One serve replaying `capture` into a new SQLite file; its figures."""
    db = workdir / f"{name}.db"
    status_path = workdir / f"{name}.status.json"
    log_path = workdir / f"{name}.log"
    config = workdir / f"{name}.toml"
    parts = ['[gateway]\nname = "bench"\n']
    if first_write_s is not None:
        parts.append(f"[timeouts]\nfirst_write = {first_write_s}\n")
    parts.append(f'[[capture]]\npcap = "{capture}"\nspeed = 0\n')
    config.write_text("\n".join(parts), encoding="utf-8")
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    argv = serve_argv(config, status_path)
    figures: dict[str, float | str] = {}
    with log_path.open("w") as log:
        started = time.monotonic()
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        spy: subprocess.Popen[bytes] | None = None
        try:
            children = wait_for_children(proc, db, log_path)
            if py_spy and profile_dir is not None:
                writer_pid = children["writer"]
                spy = subprocess.Popen(
                    [
                        py_spy,
                        "record",
                        "--pid",
                        str(writer_pid),
                        "--threads",
                        "--rate",
                        "200",
                        "--format",
                        "speedscope",
                        "--output",
                        str(profile_dir / f"{name}-writer.speedscope.json"),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            cpu_s = run_to_the_end(proc, children, status_path, log_path)
            figures["sessionized_s"] = cpu_s.pop("sessionized_at") - started
            figures["wall_s"] = time.monotonic() - started
            figures.update({f"{role}_cpu_s": seconds for role, seconds in cpu_s.items()})
        finally:
            if spy is not None:  # py-spy writes its profile once the writer has exited
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=60)
                if spy.poll() is None:
                    stop_pid(spy, signal.SIGINT, timeout_s=60)
            if proc.poll() is None:
                stop_pid(proc, signal.SIGTERM, timeout_s=120)
    closed = WRITER_CLOSED.search(log_path.read_text())
    if closed is None:
        raise BenchError(f"no 'session writer closed' line in {log_path}")
    figures["rows"] = float(closed.group(1))
    figures["flushes"] = float(closed.group(2))
    figures["writing_s"] = float(closed.group(3))
    figures["writer_us_per_row"] = 1e6 * float(figures["writer_cpu_s"]) / max(figures["rows"], 1)
    return figures


def wait_for_children(proc: subprocess.Popen[bytes], db: Path, log_path: Path) -> dict[str, int]:
    """serve's writer child (it holds the store open), once it runs, and any other child it
    spawned (a replay reads its file in serve's own process)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"serve exited {proc.returncode}: {log_path.read_text()[-3000:]}")
        roles: dict[str, int] = {}
        for pid in child_pids(proc.pid):
            if holds_open(pid, db):
                roles["writer"] = pid
            elif is_spawned(pid):
                roles[f"child{pid}"] = pid
        if "writer" in roles:
            return roles
        time.sleep(0.01)
    raise BenchError(f"serve's children did not start: {log_path.read_text()[-3000:]}")


def run_to_the_end(
    proc: subprocess.Popen[bytes], children: dict[str, int], status_path: Path, log_path: Path
) -> dict[str, float]:
    """Stop serve (SIGTERM) once its flow table has taken every packet of the replay and
    closed every session, and wait until it has exited: a stop writes everything submitted
    first. Returns the CPU seconds of serve's main process and of each child, polled until
    each exits, and `sessionized_at` (time.monotonic()).
    """
    deadline = time.monotonic() + FINISH_WAIT_S
    cpu_s: dict[str, float] = {}
    sessionized_at: float | None = None
    while proc.poll() is None:
        if time.monotonic() > deadline:
            raise BenchError(f"serve did not finish in {FINISH_WAIT_S} s")
        for role, pid in [("main", proc.pid), *children.items()]:
            with contextlib.suppress(OSError, IndexError):
                cpu_s[role] = own_cpu_s(pid)
        if sessionized_at is None and sessionized(status_path):
            sessionized_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
        time.sleep(0.02)
    if proc.returncode != 0 or sessionized_at is None:
        raise BenchError(f"serve exited {proc.returncode}: {log_path.read_text()[-3000:]}")
    return {**cpu_s, "sessionized_at": sessionized_at}


def sessionized(status_path: Path) -> bool:
    """Whether the status file says the replay finished, its flow table took every packet
    and it closed every session (their events may still be on their way to the writer)."""
    try:
        status = json.loads(status_path.read_text())
    except (OSError, ValueError):
        return False
    capture = (status.get("captures") or [{}])[0]
    return (
        capture.get("state") == "finished"
        and capture.get("queued_packets", 1) == 0
        and capture.get("open_sessions", 1) == 0
    )


def session_capture(workdir: Path, sessions: int) -> Path:
    """The session-heavy capture of `sessions` sessions (synth_sessions.py) in `workdir`."""
    capture = workdir / "sessions.pcap"
    packets, written = synth_sessions(capture, sessions)
    print(f"capture: {written:,} sessions, {packets:,} packets")
    return capture


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=300_000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--first-write", type=float, default=None, help="[timeouts] first_write")
    parser.add_argument("--py-spy", default=None, help="py-spy binary, to profile the writer")
    parser.add_argument("--profile", type=Path, default=None, help="where py-spy's profiles go")
    args = parser.parse_args()
    print(machine())
    with tempfile.TemporaryDirectory(prefix="tunnelacct-replay-", dir="/var/tmp") as tmp:
        workdir = Path(tmp)
        capture = session_capture(workdir, args.sessions)
        print(f"[timeouts] first_write: {args.first_write}")
        for run in range(args.runs):
            figures = replay(
                capture,
                workdir,
                f"run{run}",
                first_write_s=args.first_write,
                py_spy=args.py_spy,
                profile_dir=args.profile,
            )
            shown = ", ".join(
                f"{key} {value:,.1f}" if isinstance(value, float) else f"{key} {value}"
                for key, value in figures.items()
            )
            print(f"run {run}: {shown}", flush=True)


if __name__ == "__main__":
    main()
