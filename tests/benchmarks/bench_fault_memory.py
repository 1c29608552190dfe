"""Benchmark: the peak memory of `serve` through the store faults of tests/hardening, at 1x and
10x the traffic (root: it mounts filesystems).

Each run is a fresh `tunnelacct serve` process recording a paced replay (120 x SCALE TCP
sessions, 4,000 x SCALE packets over 8 s) into SQLite, with the store out for a while mid-way:
- none: no fault (the baseline);
- disk full: its 8 MiB tmpfs filled to the last byte until sessions pile up, then freed;
- frozen fs: its loop-mounted ext4 frozen with fsfreeze until sessions pile up, then thawed.
It prints serve's peak RSS (VmHWM, read once the backlog has drained) and the sessions stored.
Asserts nothing about memory.

    sudo .venv/bin/python tests/benchmarks/bench_fault_memory.py [--scales 1 10]
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.benchmarks.machine import machine  # noqa: E402
from tests.helpers.faults import (  # noqa: E402
    ext4_filesystem,
    fill,
    paced_replay,
    small_filesystem,
    wait_drained,
    wait_nothing_written_while_held,
)
from tests.helpers.serving import Serve  # noqa: E402
from tests.helpers.stores import query  # noqa: E402
from tests.helpers.waiting import WAIT_S  # noqa: E402

Fault = Callable[[Serve, Path], None]


def peak_rss_mib(pid: int) -> float:
    """VmHWM of process `pid`: its peak resident memory so far, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def no_fault(serve: Serve, store_dir: Path) -> None:
    """The baseline: the store stays writable."""


def disk_full(serve: Serve, store_dir: Path) -> None:
    filler = fill(store_dir)
    wait_nothing_written_while_held(serve, time.time())
    filler.unlink()


def frozen_fs(serve: Serve, store_dir: Path) -> None:
    subprocess.run(["fsfreeze", "-f", str(store_dir)], check=True)
    try:
        wait_nothing_written_while_held(serve, time.time())
    finally:
        subprocess.run(["fsfreeze", "-u", str(store_dir)], check=True)


@contextlib.contextmanager
def store_dir(kind: str, work: Path) -> Iterator[Path]:
    if kind == "disk full":
        with small_filesystem(work / "small") as small:
            yield small
    elif kind == "frozen fs":
        with ext4_filesystem(work / "fs.img", work / "ext4") as ext4:
            yield ext4
    else:
        yield work


FAULTS: dict[str, Fault] = {"none": no_fault, "disk full": disk_full, "frozen fs": frozen_fs}


def run(kind: str, scale: int) -> tuple[float, int]:
    """One serve through fault `kind` at `scale`: (peak RSS MiB, sessions stored)."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _pcap, config = paced_replay(work, seed=5, scale=scale)
        with store_dir(kind, work) as directory:
            url = f"sqlite:///{directory / 'store.db'}"
            with Serve(None, config, url, work) as serve:
                serve.start()
                serve.wait(lambda s: s["writer"]["rows_written"] > 0, WAIT_S, "first rows")
                FAULTS[kind](serve, directory)
                wait_drained(serve, "drained")
                assert serve.proc is not None
                peak = peak_rss_mib(serve.proc.pid)
                assert serve.stop() == 0, serve.log()
            stored = int(str(query(url, "select count(*) from sessions")[0][0]))
    return peak, stored


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scales", type=int, nargs="+", default=[1, 10])
    a = ap.parse_args()
    print(f"machine: {machine()}")
    for kind in FAULTS:
        for scale in a.scales:
            peak, stored = run(kind, scale)
            print(f"{kind:10} x{scale:<3} peak RSS {peak:7.1f} MiB, {stored:,} sessions stored")


if __name__ == "__main__":
    main()
