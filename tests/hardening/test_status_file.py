"""A status file that cannot be written is counted and logged, never fatal (issue 16, item 1).

With `ulimit -n 200` and a connection flood, the status writer hit EMFILE and serve exited with
a traceback, leaving sessions ongoing. Here the file's directory disappears under a running
serve: the same failure (an OSError from the write), without exhausting anything.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.helpers.prometheus import free_port
from tests.helpers.serving import write_config

pytestmark = pytest.mark.hardening

BASE = Path(__file__).parents[1] / "data" / "wg-small.toml"


def wait_for(check: Callable[[], bool], what: str, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout_s} s:\n{log.read_text()}")


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def test_serve_survives_a_status_file_it_cannot_write_and_writes_it_again_later(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = write_config(BASE, tmp_path / "serve.toml", {"api": {"listen": f"127.0.0.1:{port}"}})
    status_dir = tmp_path / "run"
    status_dir.mkdir()
    status = status_dir / "status.json"
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "tunnelacct", "serve", "--config", str(config)]
    env = {**os.environ, "TUNNELACCT_DATABASE_URL": f"sqlite:///{tmp_path / 'store.db'}"}
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*argv, "--status-file", str(status)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
    try:
        wait_for(lambda: status.exists() and healthy(port), "status file and API", log)
        shutil.rmtree(status_dir)
        wait_for(lambda: "not written" in log.read_text(), "logged status failure", log)
        assert proc.poll() is None, log.read_text()
        assert healthy(port)
        status_dir.mkdir()
        wait_for(status.exists, "status file written again", log)
        wait_for(
            lambda: '"status_write_failures": 0' not in status.read_text(),
            "failures counted in the status",
            log,
        )
        assert log.read_text().count("not written") == 1  # at most once a minute
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
