"""Disk full and a frozen filesystem (issue 16, the fault suite): the SQLite store on a small
tmpfs, filled up while `serve` records a paced replay, or on a loop-mounted ext4 frozen with
`fsfreeze`. The service stays up, holds the sessions in its bounded buffer (when full, counts
the failed flushes and shows the free bytes; when frozen, gives up each write after
`[writer] write_timeout` and counts it); once space returns or the filesystem
thaws everything drains, the file passes `integrity_check`, and every session of the capture
is stored once, with tshark's counters."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.faults import (
    TMPFS_BYTES,
    assert_every_session_once_as_tshark_counts,
    ext4_filesystem,
    fill,
    paced_replay,
    small_filesystem,
    wait_drained,
    wait_nothing_written_while_held,
    wait_writes_given_up,
)
from tests.helpers.serving import Serve
from tests.helpers.waiting import WAIT_S

pytestmark = pytest.mark.hardening


def _assert_whole_and_as_tshark_counts(database: Path, pcap: Path) -> None:
    """integrity_check ok, and every session of `pcap` stored once with tshark's counters."""
    with sqlite3.connect(database) as db:
        integrity = db.execute("PRAGMA integrity_check").fetchall()
    db.close()
    assert integrity == [("ok",)]
    assert_every_session_once_as_tshark_counts(f"sqlite:///{database}", pcap)


def test_a_frozen_filesystem_holds_sessions_until_it_thaws_and_loses_none(
    tmp_path: Path,
) -> None:
    pcap, config = paced_replay(tmp_path, seed=7)
    with ext4_filesystem(tmp_path / "fs.img", tmp_path / "ext4") as ext4:
        database = ext4 / "store.db"
        with Serve(None, config, f"sqlite:///{database}", tmp_path) as serve:
            serve.start()
            serve.wait(lambda s: s["writer"]["rows_written"] > 0, WAIT_S, "first rows")
            subprocess.run(["fsfreeze", "-f", str(ext4)], check=True)
            wait_nothing_written_while_held(serve, time.time())  # the status is not on ext4
            wait_writes_given_up(serve)
            subprocess.run(["fsfreeze", "-u", str(ext4)], check=True)
            wait_drained(serve, "the backlog drained once the filesystem thawed")
            assert serve.stop() == 0, serve.log()
        _assert_whole_and_as_tshark_counts(database, pcap)


def test_a_full_disk_holds_sessions_until_space_returns_and_loses_none(tmp_path: Path) -> None:
    pcap, config = paced_replay(tmp_path, seed=7)
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
            done = wait_drained(serve, "the backlog drained once space returned")
            assert done["writer"]["store_free_bytes"] > TMPFS_BYTES // 4
            assert serve.stop() == 0, serve.log()
        _assert_whole_and_as_tshark_counts(database, pcap)
    assert os.path.exists(tmp_path / "small") and not os.path.ismount(tmp_path / "small")
