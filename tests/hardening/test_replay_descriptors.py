"""A replay that runs out of descriptors waits and goes on (issue 16, item 1).

Under a connection flood the looped replay's next pass could not open its file ("Too many open
files"), the capture ended and serve with it. Now the pass is started again once it can be, by
the same source, so a loop at recorded times keeps shifting each pass after the last.

The pipeline runs in a child process whose soft descriptor limit the test lowers so that no new
descriptor can be opened, then raises again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hardening

ROOT = Path(__file__).parents[2]
PCAP = ROOT / "tests" / "data" / "wg-small.pcap"

SCRIPT = r"""
import asyncio, json, os, resource, sys, time
from tunnelacct.config.model import CaptureConfig, Timeouts
from tunnelacct.enums import EventKind
from tunnelacct.sessions.events import Attribution
from tunnelacct.ingest.pipeline import CapturePipeline

class Sink:
    def __init__(self):
        self.closed = []
    async def submit(self, events):
        self.closed += [e for e in events if e.kind is EventKind.CLOSED]

async def until(check, what, status, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline or status.state in ("finished", "stopped"):
            raise SystemExit(f"no {what}: capture {status.state}, error {status.error}")
        await asyncio.sleep(0.05)

async def main():
    pipeline = CapturePipeline(
        CaptureConfig(pcap=sys.argv[1], loop=True), Timeouts(),
        attribute=lambda *args: Attribution("acme"), is_client=lambda f, a: False,
        queue_packets=20_000,
    )
    pipeline.start()
    sink = Sink()
    task = asyncio.create_task(pipeline.run(sink))
    status = pipeline.status
    await until(lambda: status.packets > 0, "packets", status)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    pcap = os.path.realpath(sys.argv[1])

    def limit_descriptors():
        # RLIMIT_NOFILE bounds descriptor numbers: below the lowest free one and below the one
        # the replay holds on its file now (freed at the end of its pass), no open can succeed.
        # The replay opens and closes its file in its own thread meanwhile, so this is tried
        # again while the replay is not waiting; the limit only ever goes down.
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            held = [int(fd) for fd in os.listdir("/proc/self/fd")
                    if os.path.realpath(f"/proc/self/fd/{fd}") == pcap]
            probe = os.open(os.devnull, os.O_RDONLY)
        except OSError:  # no descriptor is free below the limit now
            return
        os.close(probe)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min([limit, probe, *held]), hard))

    limit_descriptors()
    await until(
        lambda: status.state == "waiting" or limit_descriptors(), "waiting for descriptors", status
    )
    stalled = status.packets
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    await until(
        lambda: status.state == "capturing" and status.packets > stalled + 5000, "more", status
    )
    pipeline.stop()
    await task
    keys = [(e.src_addr, e.src_port, e.dst_addr, e.dst_port, e.started_ts) for e in sink.closed]
    print(json.dumps({"stalled": stalled, "packets": status.packets, "error": status.error,
                      "sessions": len(keys), "distinct": len(set(keys))}))

asyncio.run(main())
"""


def test_a_looped_replay_out_of_descriptors_waits_and_goes_on(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(PCAP)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Too many open files; retrying every" in done.stderr
    figures = json.loads(done.stdout.splitlines()[-1])
    assert figures["error"] is None
    assert figures["packets"] > figures["stalled"]
    # each pass after the wait is shifted after the last: no session repeats an earlier one
    assert figures["sessions"] == figures["distinct"] > 0
