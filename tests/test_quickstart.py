"""The README's first command runs the live service on a bundled capture and exports CSV."""

from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_serves_the_bundled_capture_and_exports_acme(tmp_path: Path) -> None:
    env = {**os.environ, "QUICKSTART_SECONDS": "6", "QUICKSTART_OUT": str(tmp_path)}
    env.pop("TUNNELACCT_CONFIG", None)
    env.pop("TUNNELACCT_DATABASE_URL", None)
    done = subprocess.run(
        ["bash", "scripts/quickstart.sh"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "stopped"
    (capture,) = status["captures"]
    assert capture["kind"] == "pcap" and capture["packets"] > 100
    assert capture["kernel_drops"] == capture["queue_drops"] == 0
    with (tmp_path / "acme-sessions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {r["org_id"] for r in rows} == {"acme"}
    assert sum(int(r["packets_tx"]) + int(r["packets_rx"]) for r in rows) > 0
    assert "SIGINT received" in done.stderr
