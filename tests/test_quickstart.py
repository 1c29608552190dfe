"""The README's first command runs the live service on a bundled capture, serves the web UI with
a generated login, and exports CSV when stopped with Ctrl-C."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import threading
from pathlib import Path

import httpx

from tests.helpers.prometheus import free_port
from tests.helpers.waiting import WAIT_S, wait_until

ROOT = Path(__file__).resolve().parents[1]
WEB_UI_LINE = re.compile(r"web UI: (http://\S+)/ - sign in as admin with password (\S+) ")


def signed_in_rows(base: str, password: str) -> int:
    """Sign in to the UI as admin and count the rows of acme's session log."""
    with httpx.Client(base_url=base, timeout=10) as ui:
        form = ui.get("/login")
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        assert token is not None, form.text
        signed = ui.post(
            "/login", data={"csrf": token.group(1), "user": "admin", "password": password}
        )
        assert signed.status_code == 303, signed.text
        page = ui.get("/orgs/acme/sessions")
        assert page.status_code == 200
        return page.text.count('<tr id="s-')


def test_quickstart_serves_the_ui_and_exports_acme_when_stopped(tmp_path: Path) -> None:
    listen = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "QUICKSTART_OUT": str(tmp_path), "TUNNELACCT_API_LISTEN": listen}
    env.pop("TUNNELACCT_CONFIG", None)
    env.pop("TUNNELACCT_DATABASE_URL", None)
    env.pop("QUICKSTART_SECONDS", None)
    script = subprocess.Popen(
        ["bash", "scripts/quickstart.sh"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: Ctrl-C is sent to it alone
    )
    stdout_lines: list[str] = []
    stderr_text: list[str] = []
    readers = [
        threading.Thread(target=lambda: stdout_lines.extend(script.stdout or [])),
        threading.Thread(target=lambda: stderr_text.append((script.stderr or "").read())),
    ]
    for reader in readers:
        reader.start()
    try:
        line = wait_until(
            lambda: (
                next((m for m in map(WEB_UI_LINE.search, stdout_lines) if m), None)
                or script.poll() is not None
            ),
            "web UI line from the quick start",
            timeout_s=5 * WAIT_S,  # it installs the package first
        )
        assert isinstance(line, re.Match), "".join(stdout_lines)
        base = line.group(1)
        assert base == f"http://{listen}"

        def rows_shown() -> int:
            try:
                return signed_in_rows(base, line.group(2))
            except httpx.TransportError:
                return 0  # not listening yet

        assert wait_until(rows_shown, "sessions in the UI's log") > 0
    finally:
        if script.poll() is None:
            os.killpg(script.pid, signal.SIGINT)  # Ctrl-C in its terminal
        script.wait(WAIT_S)
        for reader in readers:
            reader.join(WAIT_S)
        for pipe in (script.stdout, script.stderr):
            if pipe is not None:
                pipe.close()
    output = "".join(stdout_lines) + "".join(stderr_text)
    assert script.returncode == 0, output
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "stopped"
    (capture,) = status["captures"]
    assert capture["kind"] == "pcap" and capture["packets"] > 100
    assert capture["kernel_drops"] == capture["queue_drops"] == 0
    with (tmp_path / "acme-sessions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["org_id"] for r in rows} == {"acme"}
    assert sum(int(r["packets_tx"]) + int(r["packets_rx"]) for r in rows) > 0
    assert "SIGINT received" in "".join(stderr_text)
    assert not (tmp_path / "user-create.log").exists()
