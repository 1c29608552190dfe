"""What the store fault tests share (tests/hardening: disk full, frozen filesystem, stopped
PostgreSQL) with tests/benchmarks/bench_fault_memory.py: the small and frozen filesystems, a
paced replay into `serve`, the wait for sessions held while the store is out, the wait for the
drain, and the tshark oracle of the result. Mounting needs root."""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.benchmarks.synth import synth_pcap
from tests.helpers.needs import missing_tools, not_root, require
from tests.helpers.oracle import tshark_sessions
from tests.helpers.serving import Serve, write_config
from tests.helpers.stores import (
    assert_months_sum_their_days,
    session_rows,
    session_totals,
    usage_totals,
)
from tests.helpers.waiting import WAIT_S

DATA = Path(__file__).resolve().parent.parent / "data"
FLOWS = 120
PACKETS = 4000
PACE_PPS = 500.0  # 8 s of capture at its recorded pace
TMPFS_BYTES = 8 * 1024 * 1024
WRITE_TIMEOUT_S = 2.0  # [writer] write_timeout: a frozen store's writes are given up and counted


@contextlib.contextmanager
def small_filesystem(mountpoint: Path) -> Iterator[Path]:
    """A tmpfs of TMPFS_BYTES at `mountpoint`, unmounted after."""
    require(not_root() or missing_tools("mount", "umount"), "disk-full tests")
    mountpoint.mkdir()
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES},mode=0700", "tmpfs", str(mountpoint)],
        check=True,
    )
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=True)


def fill(directory: Path) -> Path:
    """A file taking every free byte of `directory`'s filesystem: written until ENOSPC, in
    smaller and smaller writes down to one byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def ext4_filesystem(image: Path, mountpoint: Path) -> Iterator[Path]:
    """A 64 MiB ext4 in the file `image`, loop-mounted at `mountpoint`; thawed and unmounted
    after (a frozen filesystem cannot be unmounted)."""
    require(not_root() or missing_tools("mkfs.ext4", "fsfreeze", "mount"), "frozen-fs tests")
    with image.open("wb") as out:
        out.truncate(64 * 1024 * 1024)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True, capture_output=True)
    mountpoint.mkdir()
    subprocess.run(["mount", "-o", "loop", str(image), str(mountpoint)], check=True)
    try:
        yield mountpoint
    finally:
        subprocess.run(["fsfreeze", "-u", str(mountpoint)], check=False, capture_output=True)
        subprocess.run(["umount", str(mountpoint)], check=True)


def paced_replay(
    tmp_path: Path, seed: int, *, scale: int = 1, pace_s: float = PACKETS / PACE_PPS
) -> tuple[Path, Path]:
    """A capture of FLOWS x `scale` TCP sessions (PACKETS x `scale` packets over `pace_s`
    seconds) and a serve config replaying it at its pace, sessions checkpointed every 0.5 s,
    flushed every 0.1 s, a write given up after WRITE_TIMEOUT_S: (pcap, config)."""
    pcap = tmp_path / "traffic.pcap"
    packets = PACKETS * scale
    synth_pcap(pcap, packets, FLOWS * scale, seed=seed, rate_pps=packets / pace_s)
    config = write_config(
        DATA / "wg-small.toml",
        tmp_path / "serve.toml",
        {
            "timeouts": {"tcp_idle": 60, "checkpoint": 0.5},
            "writer": {"flush_interval": 0.1, "write_timeout": WRITE_TIMEOUT_S},
        },
        captures=[{"pcap": str(pcap), "speed": 1.0}],
    )
    return pcap, config


def wait_nothing_written_while_held(serve: Serve, faulted_at: float) -> dict[str, Any]:
    """Wait for statuses written after the fault (at `faulted_at`, wall time) showing sessions
    piling up in the writer's buffer, and check that none was written meanwhile and serve
    runs on; return the last such status."""

    def held_since_fault(status: dict[str, Any], pending: int) -> bool:
        written_at = serve.status_path.stat().st_mtime  # a status from before does not count
        return written_at > faulted_at + 0.2 and status["writer"]["pending"] >= pending

    held = serve.wait(lambda s: held_since_fault(s, 5), WAIT_S, "sessions held")
    more = held["writer"]["pending"] + 5
    later = serve.wait(lambda s: held_since_fault(s, more), WAIT_S, "more sessions held")
    assert later["writer"]["rows_written"] == held["writer"]["rows_written"], "written while out"
    assert later["state"] == "running"
    return later


def wait_writes_given_up(serve: Serve) -> dict[str, Any]:
    """Wait until the writer has given up on writes that outlived WRITE_TIMEOUT_S (a frozen
    store): counted as failed, timed-out flushes, serve still running; return that status."""
    given_up = serve.wait(
        lambda s: s["writer"]["timed_out_flushes"] >= 2, WAIT_S, "writes given up"
    )
    assert given_up["writer"]["failed_flushes"] >= given_up["writer"]["timed_out_flushes"]
    assert given_up["state"] == "running"
    return given_up


def wait_drained(serve: Serve, what: str) -> dict[str, Any]:
    """Wait until the replay has finished and the writer holds nothing; return that status."""
    return serve.wait(
        lambda s: (
            all(c["state"] == "finished" for c in s["captures"]) and s["writer"]["pending"] == 0
        ),
        WAIT_S,
        what,
    )


def assert_every_session_once_as_tshark_counts(url: str, pcap: Path) -> None:
    """Every session of `pcap` has one row in the store at `url`, with tshark's counters, and
    the usage rollup holds each of them once (retried writes added nothing twice)."""
    truth = {s.key: s for s in tshark_sessions(pcap)}
    rows = session_rows(url)
    keys = [
        (r["protocol"], str(r["src_addr"]), r["src_port"], str(r["dst_addr"]), r["dst_port"])
        for r in rows
    ]
    assert sorted(keys) == sorted(set(keys)), "a session stored twice"
    assert set(keys) == set(truth), "a session lost"
    for row, key in zip(rows, keys, strict=True):
        expected = truth[key]
        counted = (row["bytes_tx"], row["bytes_rx"], row["packets_tx"], row["packets_rx"])
        oracle = (expected.bytes_tx, expected.bytes_rx, expected.packets_tx, expected.packets_rx)
        assert counted == oracle, key
    assert usage_totals(url) == session_totals(url)
    assert_months_sum_their_days(url)
