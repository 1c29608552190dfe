"""Run a real Prometheus (Debian's `prometheus` package) that scrapes test targets (tests only).

with Prometheus(tmp / "prom", ["127.0.0.1:8123"]) as prom:
    prom.wait_until(prom.targets_up, 30, "target up")
    rows = prom.query('rate(tunnelacct_capture_packets_total[1m])')
    # [{"metric": {"__name__": ..., "interface": ...}, "value": [1732550000.1, "412.5"]}]

It listens on a free loopback port and keeps its data in `tmp_dir`, so it never meets a system
prometheus (:9090); on exit it ends only the process it started, by its PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from tests.helpers.waiting import WAIT_S

T = TypeVar("T")

JOB = "tunnelacct"


class PromQLError(AssertionError):
    """Prometheus answered an API call with status "error" (e.g. a PromQL parse error)."""

    def __init__(self, call: str, error_type: str, error: str) -> None:
        super().__init__(f"prometheus {call}: {error_type}: {error}")
        self.call, self.error_type, self.error = call, error_type, error


def prometheus_binary() -> str | None:
    """Path of the prometheus server binary, or None (it lives in /usr/bin on Debian)."""
    return shutil.which("prometheus") or shutil.which("prometheus", path="/usr/bin:/usr/sbin")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape_config(targets: Sequence[str], scrape_interval: str) -> str:
    """prometheus.yml text: one job "tunnelacct" scraping /metrics of `targets` ("host:port").

    JSON is YAML, so no YAML library is needed.
    """
    doc = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "scrape_interval": scrape_interval,
                "scrape_timeout": scrape_interval,
                "static_configs": [{"targets": list(targets)}],
            }
        ],
    }
    return json.dumps(doc, indent=2) + "\n"


class Prometheus:
    """One prometheus server started by a test on a free port, scraping `targets`."""

    def __init__(
        self,
        tmp_dir: Path,
        targets: Sequence[str],
        scrape_interval: str = "1s",
        *,
        binary: str | None = None,
    ) -> None:
        self.dir = tmp_dir
        self.targets = list(targets)
        self.scrape_interval = scrape_interval
        self.binary = binary or prometheus_binary()
        self.config_path = tmp_dir / "prometheus.yml"
        self.log_path = tmp_dir / "prometheus.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        # loopback only: an http_proxy from the environment must not see these requests
        self.http = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = WAIT_S) -> Prometheus:
        """Write the config, start prometheus and wait until /-/ready answers 200."""
        if self.binary is None:
            raise AssertionError("prometheus missing: run scripts/install-system-deps.sh")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            scrape_config(self.targets, self.scrape_interval), encoding="utf-8"
        )
        self.port = free_port()
        argv = [
            self.binary,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1h",
            "--log.level=warn",
        ]
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                argv,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.dir,
                start_new_session=True,
            )
        self.wait_until(self._ready, timeout_s, "/-/ready")
        return self

    def _ready(self) -> bool:
        try:
            with self.http.open(f"{self.url}/-/ready", timeout=2) as r:
                return int(r.status) == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def api(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """`data` of GET /api/v1/<path>; PromQLError with Prometheus's `error` text when the
        status is not "success" (Prometheus sends the error JSON with a 4xx/5xx status)."""
        query = urllib.parse.urlencode(list(params))
        url = f"{self.url}/api/v1/{path}" + (f"?{query}" if query else "")
        call = f"{path} {dict(params)!r}" if params else path
        try:
            with self.http.open(url, timeout=30) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", errors="replace")
            try:
                body = json.loads(text)
            except json.JSONDecodeError:
                raise PromQLError(call, f"HTTP {e.code}", text) from None
        if body.get("status") != "success":
            raise PromQLError(call, str(body.get("errorType")), str(body.get("error")))
        return body["data"]

    def query(self, expr: str, time: float | None = None) -> list[dict[str, Any]]:
        """Instant query at `time` (epoch s, default now): vector rows
        [{"metric": {...}, "value": [ts, "v"]}], a scalar or string as one row without labels.
        """
        params = [("query", expr)] + ([("time", repr(time))] if time is not None else [])
        data = self.api("query", params)
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def series(self, match: str) -> list[dict[str, str]]:
        """Label sets of the series that selector `match` selects (the last 5 minutes)."""
        start = f"{time.time() - 300:.3f}"
        return list(self.api("series", [("match[]", match), ("start", start)]))

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """Values of `label`, over the series `match` selects when given (as Grafana asks)."""
        params = [("match[]", match)] if match is not None else []
        return list(self.api(f"label/{urllib.parse.quote(label)}/values", params))

    def active_targets(self) -> list[dict[str, Any]]:
        """Prometheus's active targets: scrapeUrl, health ("up"), lastError, lastScrape."""
        return list(self.api("targets", [("state", "active")])["activeTargets"])

    def targets_up(self) -> bool:
        """True when every configured target has been scraped and its last scrape succeeded."""
        active = self.active_targets()
        return len(active) == len(self.targets) and all(t["health"] == "up" for t in active)

    def wait_until(self, predicate: Callable[[], T], timeout_s: float, what: str) -> T:
        """Poll `predicate` every 0.2 s until it returns something truthy, and return that;
        AssertionError naming `what` with the log when the deadline passes or prometheus exits.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(
                    f"prometheus exited {self.proc.returncode} waiting for {what}:\n{self.log()}"
                )
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"prometheus: no {what} within {timeout_s} s:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        """Everything the prometheus process wrote (warnings and errors only)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM our process, wait, then SIGKILL it; idempotent."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def __enter__(self) -> Prometheus:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
