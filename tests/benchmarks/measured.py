"""Run a command and measure it from outside: its wall time, the peak resident memory of its
own process and of its largest child process, and the CPU time of each.

The peaks are each process's VmHWM (its high-water mark), read from /proc every `poll_s`
while it runs: nothing runs inside the measured process. `together_mib` is the highest sum
of the processes' VmRSS seen at one poll (each counts the shared library pages it maps, 17-23
MiB for the import's). (A watcher thread there, as the
import benchmarks had, takes that process's GIL every time it wakes; and ru_maxrss of a child
would count this process's memory from before its exec.) A child that lives less than
`poll_s` may be missed; the import's decoder and writer children live as long as it does.
CPU times are each process's utime + stime as last read, up to `poll_s` before it ended.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Measured:
    seconds: float
    peak_mib: float  # VmHWM of the command's own process
    largest_child_mib: float  # the highest VmHWM among its child processes
    own_cpu_s: float  # CPU seconds (user + system) of the command's own process
    children_cpu_s: tuple[float, ...]  # of each child process, the busiest first
    together_mib: float  # the highest VmRSS of the command and its children summed at a poll
    returncode: int
    stdout: str
    stderr: str


def peak_mib(pid: int) -> float | None:
    """VmHWM of process `pid` in MiB; None once it is gone."""
    return status_mib(pid, "VmHWM:")


def status_mib(pid: int, field: str) -> float | None:
    """The memory figure `field` (as "VmRSS:") of process `pid` in MiB; None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (proc(5) stat); None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # after the command, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def child_pids(pid: int) -> list[int]:
    """The processes that `pid`'s threads started (none once it is gone)."""
    found: list[int] = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    except OSError:
        return found
    return found


def run_measured(argv: Sequence[str], env: Mapping[str, str], poll_s: float = 0.02) -> Measured:
    """Run `argv` to its end (stdin empty); its output is kept in files, not pipes, so a
    command that writes a lot never waits for this process to read it."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err
        )
        own = 0.0
        own_cpu = 0.0
        children: dict[int, float] = {}
        children_cpu: dict[int, float] = {}
        together = 0.0
        while proc.poll() is None:
            own = max(own, peak_mib(proc.pid) or 0.0)
            own_cpu = max(own_cpu, cpu_s(proc.pid) or 0.0)
            resident = status_mib(proc.pid, "VmRSS:") or 0.0
            for child in child_pids(proc.pid):
                children[child] = max(children.get(child, 0.0), peak_mib(child) or 0.0)
                children_cpu[child] = max(children_cpu.get(child, 0.0), cpu_s(child) or 0.0)
                resident += status_mib(child, "VmRSS:") or 0.0
            together = max(together, resident)
            time.sleep(poll_s)
        seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        return Measured(
            seconds=seconds,
            peak_mib=own,
            largest_child_mib=max(children.values(), default=0.0),
            own_cpu_s=own_cpu,
            children_cpu_s=tuple(sorted(children_cpu.values(), reverse=True)),
            together_mib=together,
            returncode=proc.returncode,
            stdout=out.read().decode(errors="replace"),
            stderr=err.read().decode(errors="replace"),
        )


def tunnelacct_command(*args: str) -> list[str]:
    """The `tunnelacct` command line as an admin runs it, with this interpreter."""
    return [sys.executable, "-m", "tunnelacct", *args]


def postgres_server_cpu_s() -> float:
    """CPU seconds (user + system) used so far by the `postgres` processes on this machine,
    ended ones included: a backend ends with its connection, and the postmaster, having reaped
    it, holds its time as children's time."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        comm_end = text.rindex(")")
        if text[text.index("(") + 1 : comm_end] != "postgres":
            continue
        fields = text[comm_end + 2 :].split()
        # utime, stime, cutime, cstime: fields 14-17 of proc(5) stat
        total += sum(int(f) for f in fields[11:15])
    return total / CLOCK_TICKS
