"""Disk full and a frozen filesystem (issue 16, the fault suite): the SQLite store on a small
tmpfs, filled up while `serve` records a paced replay, or on a loop-mounted ext4 frozen with
`fsfreeze`. The service stays up, holds the sessions in its bounded buffer (and, when full,
counts the failed flushes and shows the free bytes); once space returns or the filesystem
thaws everything drains, the file passes `integrity_check`, and every session of the capture
is stored once, with tshark's counters."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks.synth import synth_pcap
from tests.helpers.needs import missing_tools, not_root, require
from tests.helpers.oracle import tshark_sessions
from tests.helpers.serving import Serve, write_config
from tests.helpers.stores import session_rows
from tests.helpers.waiting import WAIT_S

pytestmark = pytest.mark.hardening

DATA = Path(__file__).parents[1] / "data"
TMPFS_BYTES = 8 * 1024 * 1024
FLOWS = 120
PACKETS = 4000
PACE_PPS = 500.0  # 8 s of capture at its recorded pace


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


def _paced_replay(tmp_path: Path) -> tuple[Path, Path]:
    """A capture of FLOWS sessions and a config replaying it at its pace (8 s)."""
    pcap = tmp_path / "traffic.pcap"
    synth_pcap(pcap, PACKETS, FLOWS, seed=7, rate_pps=PACE_PPS)
    config = write_config(
        DATA / "wg-small.toml",
        tmp_path / "serve.toml",
        {"timeouts": {"tcp_idle": 60, "checkpoint": 0.5}, "writer": {"flush_interval": 0.1}},
        captures=[{"pcap": str(pcap), "speed": 1.0}],
    )
    return pcap, config


def _assert_whole_and_as_tshark_counts(database: Path, pcap: Path) -> None:
    """integrity_check ok, and every session of `pcap` stored once with tshark's counters."""
    with sqlite3.connect(database) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchall()
    db.close()
    assert integrity == [("ok",)]
    truth = {s.key: s for s in tshark_sessions(pcap)}
    rows = session_rows(f"sqlite:///{database}")
    keys = [
        (r["protocol"], r["src_addr"], r["src_port"], r["dst_addr"], r["dst_port"]) for r in rows
    ]
    assert sorted(keys) == sorted(set(keys)), "a session stored twice"
    assert set(keys) == set(truth), "a session lost"
    for row, key in zip(rows, keys, strict=True):
        expected = truth[key]
        counted = (row["bytes_tx"], row["bytes_rx"], row["packets_tx"], row["packets_rx"])
        oracle = (expected.bytes_tx, expected.bytes_rx, expected.packets_tx, expected.packets_rx)
        assert counted == oracle, key


def test_a_frozen_filesystem_holds_sessions_until_it_thaws_and_loses_none(
    tmp_path: Path,
) -> None:
    pcap, config = _paced_replay(tmp_path)
    with ext4_filesystem(tmp_path / "fs.img", tmp_path / "ext4") as ext4:
        database = ext4 / "store.db"
        with Serve(None, config, f"sqlite:///{database}", tmp_path) as serve:
            serve.start()
            serve.wait(lambda s: s["writer"]["rows_written"] > 0, WAIT_S, "first rows")
            subprocess.run(["fsfreeze", "-f", str(ext4)], check=True)
            frozen_at = time.time()

            def since_freeze(status: dict[str, Any], pending: int) -> bool:
                written_at = serve.status_path.stat().st_mtime  # the status is not on ext4
                return written_at > frozen_at + 0.2 and status["writer"]["pending"] >= pending

            held = serve.wait(lambda s: since_freeze(s, 5), WAIT_S, "sessions held")
            more = held["writer"]["pending"] + 5
            later = serve.wait(lambda s: since_freeze(s, more), WAIT_S, "more held")
            assert later["writer"]["rows_written"] == held["writer"]["rows_written"]
            assert later["state"] == "running"
            subprocess.run(["fsfreeze", "-u", str(ext4)], check=True)
            serve.wait(
                lambda s: (
                    all(c["state"] == "finished" for c in s["captures"])
                    and s["writer"]["pending"] == 0
                ),
                WAIT_S,
                "the backlog drained once the filesystem thawed",
            )
            assert serve.stop() == 0, serve.log()
        _assert_whole_and_as_tshark_counts(database, pcap)


def test_a_full_disk_holds_sessions_until_space_returns_and_loses_none(tmp_path: Path) -> None:
    pcap, config = _paced_replay(tmp_path)
    with small_filesystem(tmp_path / "small") as small:
        database = small / "store.db"
        url = f"sqlite:///{database}"
        with Serve(None, config, url, tmp_path) as serve:
            serve.start()
            serve.wait(lambda s: s["writer"]["rows_written"] > 0, WAIT_S, "first rows")
            filler = fill(small)
            full = serve.wait(
                lambda s: s["writer"]["failed_flushes"] > 0 and s["writer"]["pending"] > 0,
                WAIT_S,
                "flushes failing on the full disk, sessions held",
            )
            assert full["writer"]["store_free_bytes"] < 64 * 1024
            assert serve.proc is not None and serve.proc.poll() is None  # still serving
            filler.unlink()
            done = serve.wait(
                lambda s: (
                    all(c["state"] == "finished" for c in s["captures"])
                    and s["writer"]["pending"] == 0
                ),
                WAIT_S,
                "the backlog drained once space returned",
            )
            assert done["writer"]["store_free_bytes"] > TMPFS_BYTES // 4
            assert serve.stop() == 0, serve.log()
        _assert_whole_and_as_tshark_counts(database, pcap)
    assert os.path.exists(tmp_path / "small") and not os.path.ismount(tmp_path / "small")
