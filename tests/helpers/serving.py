"""Run the real `tunnelacct serve` in a lab namespace and watch its status file (tests only).

config = write_config(BASE, tmp / "serve.toml", {"timeouts": {"udp_idle": 3}},
                      captures=[{"interface": "wg0"}])
with Serve(lab, config, tmp / "live.db", tmp) as serve:
    serve.start()
    ...traffic...
    assert serve.stop() == 0
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helpers.netlab import WITH_UAPI_DIR, WireguardLab
from tests.helpers.waiting import WAIT_S


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dump_toml(doc: Mapping[str, Any]) -> str:
    """TOML text of a document of tables and arrays of tables holding scalars and lists."""
    out: list[str] = []
    for name, section in doc.items():
        tables = section if isinstance(section, list) else [section]
        for table in tables:
            out.append(f"[[{name}]]" if isinstance(section, list) else f"[{name}]")
            out += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
            out.append("")
    return "\n".join(out)


def write_config(
    base: Path,
    path: Path,
    overrides: Mapping[str, Mapping[str, Any]] = {},
    *,
    captures: Sequence[Mapping[str, Any]] = (),
    client_keys: Mapping[str, str] = {},
    wireguard: Sequence[str] = (),
) -> Path:
    """`base` with sections updated by `overrides`, [[capture]] tables, and clients declared by
    public key only (client id -> key: their addresses are dropped); written to `path`."""
    doc: dict[str, Any] = tomllib.loads(base.read_text(encoding="utf-8"))
    for section, values in overrides.items():
        doc[section] = {**doc.get(section, {}), **values}
    for client in doc.get("clients", []):
        if client["id"] in client_keys:
            client["public_key"] = client_keys[client["id"]]
            client.pop("addresses", None)
    if captures:
        doc["capture"] = [dict(c) for c in captures]
    if wireguard:
        doc["wireguard"] = {**doc.get("wireguard", {}), "interfaces": list(wireguard)}
    path.write_text(dump_toml(doc), encoding="utf-8")
    return path


class Serve:
    """One `tunnelacct serve` process started by a test and ended by its PID.

    With a lab, it runs in the lab's gw namespace with gw's wg UAPI socket; without, it runs
    here (or in `netns`), with `preexec` run in the child before exec (e.g. to drop privileges).
    """

    def __init__(
        self,
        lab: WireguardLab | None,
        config: Path,
        db: Path | str,  # a SQLite file, or a database URL
        workdir: Path,
        name: str = "serve",
        *,
        netns: str | None = None,
        preexec: Callable[[], None] | None = None,
    ) -> None:
        self.lab, self.config, self.db = lab, config, db
        self.netns, self.preexec = netns, preexec
        self.status_path = workdir / f"{name}.status.json"
        self.log_path = workdir / f"{name}.log"
        self.proc: subprocess.Popen[Any] | None = None
        self.ready_ts = 0.0  # wall time its captures were all running

    def start(self, *, wait_for: str = "capturing", timeout_s: float = WAIT_S) -> Serve:
        """Start serve and wait until every capture is in state `wait_for` (or "" = none)."""
        self.status_path.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "tunnelacct"]
        argv += ["serve", "--config", str(self.config), "--status-file", str(self.status_path)]
        url = self.db if isinstance(self.db, str) else f"sqlite:///{self.db}"
        env = {**os.environ, "TUNNELACCT_DATABASE_URL": url}
        with self.log_path.open("a") as logf:
            if self.lab is not None:
                assert self.lab.workdir is not None
                uapi = str(self.lab.workdir / "uapi-gw")
                argv = ["sh", "-c", WITH_UAPI_DIR, uapi, *argv]
                self.proc = self.lab.popen(
                    "gw", argv, stdout=logf, stderr=subprocess.STDOUT, env=env
                )
            else:
                if self.netns is not None:
                    argv = ["ip", "netns", "exec", self.netns, *argv]
                self.proc = subprocess.Popen(
                    argv,
                    stdout=logf,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    preexec_fn=self.preexec,
                )
        if wait_for:
            self.wait(
                lambda s: (
                    s["state"] == "running" and all(c["state"] == wait_for for c in s["captures"])
                ),
                timeout_s,
                f"captures {wait_for}",
            )
        self.ready_ts = time.time()
        return self

    def status(self) -> dict[str, Any] | None:
        """The last status the service wrote, or None before the first."""
        try:
            return dict(json.loads(self.status_path.read_text(encoding="utf-8")))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def wait(
        self, ready: Callable[[dict[str, Any]], bool], timeout_s: float, what: str
    ) -> dict[str, Any]:
        """Poll the status file until `ready(status)`; fail with the log when serve exits."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.status()
            if status is not None and ready(status):
                return status
            if self.proc.poll() is not None:
                raise AssertionError(f"serve exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.1)
        raise AssertionError(f"serve: no {what} within {timeout_s} s:\n{self.log()}")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        """SIGKILL (a crash, or the end of a test) and reap, unless it already exited."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def rss_bytes(self) -> int:
        """Resident memory of the serve process."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def peak_rss_growth_while(self, work: Callable[[], None]) -> int:
        """Run `work()` while sampling this serve's resident memory every 50 ms; return its
        peak over the resident memory at the start, in bytes."""
        baseline = peak = self.rss_bytes()
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, self.rss_bytes())
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        try:
            work()
        finally:
            done.set()
            sampler.join()
        return peak - baseline

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def __enter__(self) -> Serve:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.kill()
