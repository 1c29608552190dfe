"""Stopped stores (issue 16, the fault suite): a PostgreSQL server of the test's own (initdb in
a temporary directory, its own port) is stopped with `pg_ctl stop -m immediate` (a crash: no
shutdown checkpoint) or frozen with SIGSTOP while `serve` records a paced replay into it. The
service stays up and keeps the sessions in its bounded buffer (a write to the frozen server is
given up after `[writer] write_timeout`, counted, and retried); once the server is back every
session of the capture is stored once, with tshark's counters."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.faults import (
    assert_every_session_once_as_tshark_counts,
    paced_replay,
    wait_drained,
    wait_nothing_written_while_held,
    wait_writes_given_up,
)
from tests.helpers.needs import not_root, require
from tests.helpers.serving import Serve
from tests.helpers.waiting import WAIT_S

pytestmark = pytest.mark.hardening

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@dataclass
class PrivateServer:
    """A PostgreSQL server only this test uses, run as the postgres user."""

    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args: str) -> None:
        options = f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1"
        log = str(self.data.parent / "server.log")  # not our pipes: run() would wait on them
        command = [str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", log, "-w"]
        command += args
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *command],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])

    def pids(self) -> list[int]:
        """The postmaster and its children (the backends): the processes this test started."""
        postmaster = self.postmaster_pid()
        children = subprocess.run(
            ["pgrep", "-P", str(postmaster)], capture_output=True, text=True, check=False
        ).stdout.split()
        return [postmaster, *(int(pid) for pid in children)]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[PrivateServer]:
    require(not_root(), "stopped-store tests (they run a PostgreSQL server as postgres)")
    require(
        None if (PG_BIN / "initdb").is_file() else f"no {PG_BIN / 'initdb'}",
        "stopped-store tests",
        hint="run scripts/install-system-deps.sh",
    )
    # outside pytest's directories, which only root may enter
    home = Path(tempfile.mkdtemp(prefix="tunnelacct-pg-"))
    home.chmod(0o700)
    postgres = pwd.getpwnam("postgres")
    os.chown(home, postgres.pw_uid, postgres.pw_gid)
    server = PrivateServer(home / "data", _free_port())
    subprocess.run(
        [
            "runuser",
            "-u",
            "postgres",
            "--",
            str(PG_BIN / "initdb"),
            "-D",
            str(server.data),
            "--auth=trust",
            "-U",
            "postgres",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    try:
        server.ctl("start")
        yield server
    finally:
        for pid in server.pids() if (server.data / "postmaster.pid").exists() else []:
            os.kill(pid, signal.SIGCONT)  # a frozen server cannot stop
        if (server.data / "postmaster.pid").exists():
            server.ctl("stop", "-m", "immediate")
        shutil.rmtree(home)


@pytest.mark.parametrize("fault", ["stop -m immediate", "SIGSTOP"])
def test_a_stopped_postgresql_holds_sessions_until_it_returns_and_loses_none(
    tmp_path: Path, private_server: PrivateServer, fault: str
) -> None:
    pcap, config = paced_replay(tmp_path, seed=11)
    with Serve(None, config, private_server.url, tmp_path) as serve:
        serve.start()
        serve.wait(lambda s: s["writer"]["rows_written"] > 0, WAIT_S, "first rows")
        if fault == "SIGSTOP":
            frozen = private_server.pids()
            for pid in frozen:
                os.kill(pid, signal.SIGSTOP)
        else:
            private_server.ctl("stop", "-m", "immediate")
        wait_nothing_written_while_held(serve, time.time())
        if fault == "SIGSTOP":
            wait_writes_given_up(serve)  # a frozen server never answers: bounded by write_timeout
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        else:
            status = serve.wait(lambda s: s["writer"]["failed_flushes"] > 0, WAIT_S, "failures")
            assert status["state"] == "running"
            private_server.ctl("start")
        wait_drained(serve, "the backlog drained once the server was back")
        assert serve.stop() == 0, serve.log()
    assert_every_session_once_as_tshark_counts(private_server.url, pcap)
