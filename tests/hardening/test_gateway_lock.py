"""One `tunnelacct serve` per store and gateway name (issue 16, item 2).

A second serve of the same gateway on the same store started without complaint, closed the
first one's live sessions as idle, and the first one's later checkpoints were refused.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.pg import fresh_database
from tests.helpers.serving import Serve, write_config
from tests.helpers.stores import session_rows

pytestmark = pytest.mark.hardening

DATA = Path(__file__).parents[1] / "data"
BASE = DATA / "wg-small.toml"
PCAP = DATA / "wg-small.pcap"


@contextlib.contextmanager
def store(kind: str, tmp: Path) -> Iterator[str]:
    """A database URL: a SQLite file in `tmp`, or a fresh PostgreSQL database."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / 'store.db'}"
        return
    with fresh_database() as url:
        yield url


def config(tmp: Path, name: str, gateway: str) -> Path:
    """A paced replay (the capture over 100 s): sessions stay open while the test runs."""
    return write_config(
        BASE,
        tmp / f"{name}.toml",
        {"gateway": {"name": gateway}},
        captures=[{"pcap": str(PCAP), "speed": 0.005}],
    )


def running(status: dict[str, Any]) -> bool:
    return (
        status["state"] == "running"
        and status["captures"][0]["open_sessions"] >= 1
        and status["writer"]["rows_written"] >= 1
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_second_serve_of_the_same_gateway_is_refused_naming_the_first(
    tmp_path: Path, kind: str
) -> None:
    with store(kind, tmp_path) as url:
        first = Serve(None, config(tmp_path, "first", "gw-a"), url, tmp_path, "first")
        with first:
            first.start(wait_for="")
            first.wait(running, 60, "sessions open and written")
            before = session_rows(url)
            assert any(r["status"] == "ongoing" for r in before)

            second = Serve(None, config(tmp_path, "second", "gw-a"), url, tmp_path, "second")
            with second:
                second.start(wait_for="")
                assert second.proc is not None and second.proc.wait(60) == 2, second.log()
            assert first.proc is not None
            assert "error: gateway 'gw-a' is already served on this store by" in second.log()
            assert f"pid {first.proc.pid} " in second.log()
            assert "tunnelacct serve gw-a" in second.log()
            # the refused one touched no session: the first one's rows are as it wrote them
            ongoing = {r["id"] for r in before if r["status"] == "ongoing"}
            after = {r["id"]: r for r in session_rows(url)}
            assert all(after[i]["close_reason"] is None for i in ongoing)
            assert first.proc.poll() is None and first.status() is not None

            # another gateway on the same store is another lock
            other = Serve(None, config(tmp_path, "other", "gw-b"), url, tmp_path, "other")
            with other:
                other.start(wait_for="")
                other.wait(running, 60, "the other gateway serving")
                assert other.stop() == 0, other.log()

            # a holder that dies, however it dies, frees the lock
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(10)
        third = Serve(None, config(tmp_path, "third", "gw-a"), url, tmp_path, "third")
        with third:
            third.start(wait_for="")
            third.wait(running, 60, "serving after the holder died")
            assert third.stop() == 0, third.log()
