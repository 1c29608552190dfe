"""`tunnelacct serve` as a process: replay, query-only, restart, missing interface, privileges;
and in this process (`Service`), what its metrics say of a store that went away or held the
captures back past the shutdown (issue 22)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP
from scapy.packet import Packet
from scapy.utils import rdpcap
from sqlalchemy.exc import OperationalError

from tests.helpers.accuracy import run_cli
from tests.helpers.oracle import rows_by_session
from tests.helpers.pcapwrite import LINKTYPE_RAW, write_pcap
from tests.helpers.pg import connections_refused, fresh_database, read_rows
from tests.helpers.prometheus import free_port
from tests.helpers.serving import Serve, write_config
from tests.helpers.sqlite import replicate_sessions
from tests.helpers.stores import session_rows
from tests.helpers.waiting import WAIT_S
from tunnelacct.config.load import load_config
from tunnelacct.errors import StoreError
from tunnelacct.ingest.pipeline import READ_TIMEOUT_S
from tunnelacct.service.service import Service
from tunnelacct.store.migrate import migrate

DATA = Path(__file__).parent / "data"
PCAP = DATA / "wg-small.pcap"
BASE = DATA / "wg-small.toml"
# network namespaces and AF_PACKET need root: skips without, or under CI fails
needs_root = pytest.mark.usefixtures("require_root")


def all_rows(db: Path) -> list[dict[str, Any]]:
    """Every column of every session row, read with the stdlib sqlite3 module."""
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute("SELECT * FROM sessions ORDER BY id")]


@contextlib.contextmanager
def serving(tmp: Path, config: Path, db: Path | str, **kwargs: Any) -> Iterator[Serve]:
    """A started `tunnelacct serve` (not waiting for captures), killed by PID at the end."""
    with Serve(None, config, db, tmp, f"serve-{time.monotonic_ns()}", **kwargs) as serve:
        yield serve.start(wait_for="")


def replay_config(
    tmp: Path, overrides: dict[str, dict[str, Any]] | None = None, **capture: Any
) -> Path:
    return write_config(
        BASE, tmp / "serve.toml", overrides or {}, captures=[{"pcap": str(PCAP), **capture}]
    )


# [timeouts] first_write: 0 writes each session when it opens; a day, only when it ends
@pytest.mark.parametrize("first_write_s", [0, 86_400])
def test_replay_at_full_speed_gives_the_rows_of_import(
    tmp_path: Path, first_write_s: float
) -> None:
    db, imported = tmp_path / "live.db", tmp_path / "import.db"
    events_log = tmp_path / "events.jsonl"
    config = replay_config(
        tmp_path,
        {
            "timeouts": {"first_write": first_write_s},
            "service": {"session_events": str(events_log)},
        },
    )
    with serving(tmp_path, config, db) as serve:
        final = serve.wait(
            lambda s: (
                s["captures"][0]["state"] == "finished"
                and s["writer"]["pending"] == 0
                and s["writer"]["rows_written"] > 0
            ),
            WAIT_S,
            "replay finished and written",
        )
        assert serve.stop() == 0, serve.log()
    run_cli(
        "import",
        "--config",
        str(BASE),
        str(PCAP),
        env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{imported}"},
    )
    live_rows, import_rows = rows_by_session(all_rows(db)), rows_by_session(all_rows(imported))
    assert live_rows == import_rows
    sessions = final["captures"][0]["sessions_opened"]
    assert len(live_rows) == sessions > 10
    # each session's events: opened when it opens, or none when it ends first (no session
    # of the file lasts a day); closed once
    events = Counter(json.loads(line)["event"] for line in events_log.read_text().splitlines())
    assert (events["opened"], events["closed"]) == (0 if first_write_s else sessions, sessions)


def test_serve_writes_the_rows_of_import_into_postgresql(tmp_path: Path) -> None:
    """The whole service on PostgreSQL: migrations at start, the writer, the final drain."""
    with fresh_database() as live, fresh_database() as imported:
        with serving(tmp_path, replay_config(tmp_path), live) as serve:
            serve.wait(
                lambda s: (
                    s["captures"][0]["state"] == "finished"
                    and s["writer"]["pending"] == 0
                    and s["writer"]["rows_written"] > 0
                ),
                WAIT_S,
                "replay finished and written",
            )
            assert serve.stop() == 0, serve.log()
        run_cli(
            "import", "--config", str(BASE), str(PCAP), env={"TUNNELACCT_DATABASE_URL": imported}
        )
        live_rows = rows_by_session(session_rows(live))
        import_rows = rows_by_session(session_rows(imported))
    assert live_rows == import_rows and len(live_rows) > 10


def test_serve_without_captures_runs_as_a_query_only_node(tmp_path: Path) -> None:
    config = write_config(BASE, tmp_path / "serve.toml")
    with serving(tmp_path, config, tmp_path / "q.db") as serve:
        status = serve.wait(lambda s: s["state"] == "running", WAIT_S, "running")
        assert status["captures"] == []
        started = time.monotonic()
        assert serve.stop() == 0, serve.log()
        # a sanity bound, 27x above the 0.26-0.37 s measured: no shutdown step waits out its
        # timeout ([service] shutdown_timeout, 30 s)
        assert time.monotonic() - started < 10
    assert serve.status() is not None and serve.status()["state"] == "stopped"  # type: ignore[index]
    assert all_rows(tmp_path / "q.db") == []


def _lingering_capture(path: Path) -> tuple[Path, int, int]:
    """A capture where one TCP session closes by FIN at once and another stays open for ten
    minutes; (its path, how many packets come before the ten-minute gap, how many the closed
    session has)."""
    client, server = "100.64.0.2", "10.99.0.5"  # alice and the web resource of wg-small.toml

    def seg(sport: int, from_client: bool, flags: str, data: bytes = b"") -> Packet:
        src, dst = (client, server) if from_client else (server, client)
        ports = (sport, 443) if from_client else (443, sport)
        return IP(src=src, dst=dst) / TCP(sport=ports[0], dport=ports[1], flags=flags) / data

    closed = [
        seg(41001, True, "S"),
        seg(41001, False, "SA"),
        seg(41001, True, "A"),
        seg(41001, True, "PA", b"q" * 300),
        seg(41001, False, "PA", b"r" * 900),
        seg(41001, True, "FA"),
        seg(41001, False, "FA"),
        seg(41001, True, "A"),
    ]
    open_ = [
        seg(41002, True, "S"),
        seg(41002, False, "SA"),
        seg(41002, True, "A"),
        seg(41002, True, "PA", b"q" * 50),
    ]
    first = [(1_764_000_000 + i * 0.001, bytes(p)) for i, p in enumerate(closed + open_)]
    later = (1_764_000_600.0, bytes(seg(41002, False, "PA", b"r" * 70)))
    return write_pcap(path, [*first, later], LINKTYPE_RAW), len(first), len(closed)


def test_a_session_closed_by_fin_inside_its_linger_at_stop_is_stored_as_closed_by_fin(
    tmp_path: Path,
) -> None:
    # Issue 15: it was saved as ongoing, and after a restart it became completed by "idle".
    # The session still open at the stop is closed at the restart as "shutdown" (its capture
    # is gone), at its last packet, with the counters it had.
    db = tmp_path / "live.db"
    pcap, before_gap, closed_packets = _lingering_capture(tmp_path / "linger.pcap")
    config = write_config(
        BASE,
        tmp_path / "serve.toml",
        {"timeouts": {"tcp_linger": 3600}},
        captures=[{"pcap": str(pcap), "speed": 1.0}],
    )
    with serving(tmp_path, config, db) as first:
        first.wait(
            lambda s: (
                s["captures"][0]["packets"] >= before_gap
                and s["captures"][0]["sessions_opened"] >= 2
            ),
            WAIT_S,
            "both sessions seen",
        )
        assert first.stop() == 0, first.log()
    by_port = {r["src_port"]: r for r in all_rows(db)}
    assert (by_port[41001]["status"], by_port[41001]["close_reason"]) == ("completed", "fin")
    assert by_port[41001]["packets_tx"] + by_port[41001]["packets_rx"] == closed_packets
    assert (by_port[41002]["status"], by_port[41002]["close_reason"]) == ("ongoing", None)

    with serving(tmp_path, write_config(BASE, tmp_path / "none.toml"), db) as second:
        status = second.wait(
            lambda s: (
                s["state"] == "running"
                and s["writer"]["pending"] == 0
                and s["writer"]["rows_written"] >= 1
            ),
            WAIT_S,
            "rows closed",
        )
        assert second.stop() == 0, second.log()
    assert status["closed_at_start"] == 1
    after = {r["src_port"]: r for r in all_rows(db)}
    assert after[41001] == by_port[41001]  # its real reason survives the restart
    row, old = after[41002], by_port[41002]
    assert (row["status"], row["close_reason"]) == ("completed", "shutdown")
    assert row["ended_at"] == old["last_seen_at"] == row["last_seen_at"]
    assert row["duration_s"] == pytest.approx(old["duration_s"], abs=2e-6)
    changed = ("status", "close_reason", "ended_at", "duration_s")
    assert {k: v for k, v in row.items() if k not in changed} == {
        k: v for k, v in old.items() if k not in changed
    }


@contextlib.contextmanager
def namespace(name: str) -> Iterator[str]:
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@needs_root
def test_a_missing_interface_is_logged_and_captured_once_it_appears(tmp_path: Path) -> None:
    """Also tunnelacct_ready (issue 22): 0 while the capture waits, 1 once it captures."""
    metrics = {"metrics": {"listen": "127.0.0.1:9109"}}  # in the namespace: free
    config = write_config(BASE, tmp_path / "serve.toml", metrics, captures=[{"interface": "tad0"}])
    with namespace(f"tasvc{os.getpid()}") as ns:

        def ready_metric() -> float | None:
            scraped = subprocess.run(
                ["ip", "netns", "exec", ns, "curl", "-sf", "http://127.0.0.1:9109/metrics"],
                capture_output=True,
                text=True,
                check=True,
                timeout=WAIT_S,
            )
            return sample(scraped.stdout, "tunnelacct_ready")

        link = ["ip", "-n", ns, "link"]
        subprocess.run([*link, "set", "lo", "up"], check=True)  # for the metrics listener
        with serving(tmp_path, config, tmp_path / "d.db", netns=ns) as serve:
            serve.wait(
                lambda s: s["state"] == "running" and s["captures"][0]["state"] == "waiting",
                WAIT_S,
                "waiting for the interface",
            )
            assert "capture on tad0: no such interface; retrying every 5 s" in serve.log()
            assert ready_metric() == 0
            add_veth = [*link, "add", "tad0", "type", "veth", "peer", "name", "tad1"]
            subprocess.run(add_veth, check=True)
            subprocess.run([*link, "set", "tad0", "up"], check=True)
            serve.wait(lambda s: s["captures"][0]["state"] == "capturing", WAIT_S, "capturing")
            assert "capture on tad0: interface is back" in serve.log()
            assert ready_metric() == 1
            assert serve.stop() == 0, serve.log()


def drop_cap_net_raw() -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 13, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_NET_RAW
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP, CAP_NET_RAW)")


@needs_root
def test_missing_privileges_stop_serve_at_start_with_a_clear_error(tmp_path: Path) -> None:
    config = write_config(BASE, tmp_path / "serve.toml", captures=[{"interface": "lo"}])
    with serving(tmp_path, config, tmp_path / "p.db", preexec=drop_cap_net_raw) as serve:
        assert serve.proc is not None and serve.proc.wait(WAIT_S) == 2
    assert "error: capture on lo: permission denied (needs root or CAP_NET_RAW)" in serve.log()


def test_session_events_are_json_lines_with_the_fields_and_values_of_the_csv(
    tmp_path: Path,
) -> None:
    import csv
    import io

    db, log = tmp_path / "live.db", tmp_path / "events.jsonl"
    config = write_config(
        BASE,
        tmp_path / "serve.toml",
        {"service": {"session_events": str(log)}},
        captures=[{"pcap": str(PCAP)}],
    )
    with serving(tmp_path, config, db) as serve:
        serve.wait(
            lambda s: (
                s["captures"][0]["state"] == "finished"
                and s["writer"]["pending"] == 0
                and s["writer"]["rows_written"] > 0
            ),
            WAIT_S,
            "replay written",
        )
        assert serve.stop() == 0, serve.log()
    lines = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    rows = all_rows(db)
    closed = {e["session_id"]: e for e in lines if e["event"] == "closed"}
    opened = [e["session_id"] for e in lines if e["event"] == "opened"]
    assert sorted(opened) == sorted(closed) and len(closed) == len(rows)
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    exported = []
    for org in sorted({r["org_id"] for r in rows}):
        out = run_cli("export", "--config", str(BASE), "--org", org, env=env).stdout
        exported += list(csv.DictReader(io.StringIO(out)))
    assert len(exported) == len(rows)
    for cells in exported:
        event = closed[cells["session_id"]]
        assert list(event) == [*cells, "event"]  # the CSV's names, in its order
        for name, cell in cells.items():
            value = event[name]
            if isinstance(value, bool):
                assert cell == str(value).lower(), name
            elif isinstance(value, float):
                assert float(cell) == value, name  # one field, one value (issue 15)
            else:
                assert cell == ("" if value is None else str(value)), name


def test_serve_answers_the_rest_api_over_http(tmp_path: Path) -> None:
    import socket as socketlib
    import urllib.error
    import urllib.request

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "live.db"
    config = write_config(
        BASE,
        tmp_path / "serve.toml",
        {"api": {"listen": f"127.0.0.1:{port}"}},
        captures=[{"pcap": str(PCAP)}],
    )
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    run_cli("db", "upgrade", env=env)  # token commands never create a store
    token = run_cli("token", "create", "--config", str(config), "--org", "acme", env=env).stdout
    base = f"http://127.0.0.1:{port}"

    def get(path: str, auth: bool = True) -> tuple[int, Any]:
        req = urllib.request.Request(base + path)
        if auth:
            req.add_header("Authorization", f"Bearer {token.strip()}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())

    with serving(tmp_path, config, db) as serve:
        serve.wait(
            lambda s: (
                s["captures"][0]["state"] == "finished"
                and s["writer"]["pending"] == 0
                and s["writer"]["rows_written"] > 0
            ),
            WAIT_S,
            "replay written",
        )
        assert get("/healthz", auth=False) == (200, {"status": "ok"})
        assert get("/readyz", auth=False) == (200, {"ready": True, "reasons": []})
        assert get("/api/v1/orgs/acme/sessions", auth=False)[0] == 401
        code, page = get("/api/v1/orgs/acme/sessions?limit=1000")
        assert get("/api/v1/orgs/globex/sessions")[0] == 404
        with urllib.request.urlopen(base + "/metrics", timeout=10) as r:  # no token needed
            metrics = {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(r.read().decode())
                for s in f.samples
            }
        assert serve.stop() == 0, serve.log()
    acme = [r for r in all_rows(db) if r["org_id"] == "acme"]
    assert code == 200 and page["count"] == len(acme) == len(page["sessions"]) > 0
    # capture figures against the capture file itself (scapy counts its records)
    iface = (("interface", str(PCAP)),)
    assert metrics["tunnelacct_capture_packets_total", iface] == len(rdpcap(str(PCAP)))
    assert metrics["tunnelacct_capture_kernel_drops_total", iface] == 0
    assert metrics["tunnelacct_capture_open_sessions", iface] == 0
    assert metrics["tunnelacct_decode_errors_total", (*iface, ("reason", "bad_ip_version"))] == 0
    assert not any(
        name == "tunnelacct_decode_errors_total" and ("reason", "ok") in labels
        for name, labels in metrics
    )
    assert metrics["tunnelacct_writer_queue_depth", ()] == 0
    assert metrics["tunnelacct_store_rows_written_total", ()] >= len(all_rows(db))


def test_metrics_listen_serves_only_metrics_with_the_stored_rows_byte_totals(
    tmp_path: Path,
) -> None:
    """[metrics] listen without [api]: /metrics alone, its traffic equal to the rows' sums."""
    import socket as socketlib
    import urllib.error
    import urllib.request

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    db = tmp_path / "live.db"
    metrics = {"metrics": {"listen": f"127.0.0.1:{port}"}}
    config = write_config(BASE, tmp_path / "serve.toml", metrics, captures=[{"pcap": str(PCAP)}])
    with serving(tmp_path, config, db) as serve:
        serve.wait(
            lambda s: (
                s["captures"][0]["state"] == "finished"
                and s["writer"]["pending"] == 0
                and s["writer"]["rows_written"] > 0
            ),
            WAIT_S,
            "replay written",
        )
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/orgs", timeout=10)
        refused.value.close()
        assert serve.stop() == 0, serve.log()
    assert refused.value.code == 404
    got: dict[tuple[str, str, str, str], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "tunnelacct_bytes_total":
                lb = sample.labels
                got[lb["org"], lb["resource"], lb["protocol"], lb["direction"]] = sample.value
    want: dict[tuple[str, str, str, str], float] = {}
    for row in all_rows(db):
        labels = (row["org_id"], row["resource_id"] or "unmatched", row["protocol"])
        for direction in ("tx", "rx"):
            key = (*labels, direction)
            want[key] = want.get(key, 0) + row[f"bytes_{direction}"]
    assert {k: v for k, v in got.items() if v} == want
    # configured resources are there from the start, at 0 when nothing reached them
    declared = {(r["org"], r["id"]) for r in tomllib.loads(BASE.read_text())["resources"]}
    assert declared <= {(org, res) for org, res, _p, _d in got}


def test_an_api_address_in_use_is_a_clear_error_at_start(tmp_path: Path) -> None:
    import socket as socketlib

    with socketlib.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            BASE, tmp_path / "serve.toml", {"api": {"listen": f"127.0.0.1:{port}"}}
        )
        with serving(tmp_path, config, tmp_path / "a.db") as serve:
            assert serve.proc is not None and serve.proc.wait(WAIT_S) == 2
    assert f"error: [api] listen 127.0.0.1:{port}: Address already in use" in serve.log()


def children_of(pid: int) -> set[int]:
    """PIDs whose parent is `pid`, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def test_export_workers_end_with_serve_even_on_kill_9(tmp_path: Path) -> None:
    import socket as socketlib
    import urllib.request

    db = tmp_path / "big.db"
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    run_cli("import", "--config", str(BASE), str(PCAP), env=env)
    replicate_sessions(db, 2000, step_s=60, org_id="acme")  # 28,000 rows: several ranges
    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    api = {"listen": f"127.0.0.1:{port}", "export_workers": 2}
    config = write_config(BASE, tmp_path / "serve.toml", {"api": api})
    token = run_cli("token", "create", "--config", str(config), "--role", "admin", env=env)
    with serving(tmp_path, config, db) as serve:
        serve.wait(lambda s: s["state"] == "running", WAIT_S, "running")
        assert serve.proc is not None
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/orgs/acme/sessions.csv")
        req.add_header("Authorization", f"Bearer {token.stdout.strip()}")
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.read().count(b"\n") == 28_014 + 1
        workers = children_of(serve.proc.pid)
        assert workers, "a download of several ranges starts export worker processes"
        serve.kill()
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and any(Path(f"/proc/{w}").exists() for w in workers):
        time.sleep(0.1)
    survivors = [w for w in workers if Path(f"/proc/{w}").exists()]
    for pid in survivors:  # the processes this test started, ended by PID
        os.kill(pid, signal.SIGKILL)
    assert not survivors, "export workers outlived serve"


def sample(text: str, name: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of sample `name` with `labels` in a Prometheus text exposition, or None."""
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels == (labels or {}):
                return float(found.value)
    return None


async def test_tunnelacct_ready_follows_the_store_going_away_and_back_as_readyz_does(
    tmp_path: Path,
) -> None:
    """tunnelacct_ready (issue 22) is 1 while the store answers and 0 once it refuses every
    connection (a database that no longer allows them, its connections ended), then 1 again:
    by serve's own probes, read on scrape, with no GET /readyz in between. /readyz, the oracle,
    says the same each time, and a connection of the test's own is refused meanwhile."""
    api = f"127.0.0.1:{free_port()}"
    metrics = f"127.0.0.1:{free_port()}"
    with fresh_database() as url:
        migrate(url)
        config = write_config(
            BASE,
            tmp_path / "serve.toml",
            {
                "database": {"url": url},
                "api": {"listen": api},
                "metrics": {"listen": metrics},
            },
        )
        service = Service(load_config(config, environ={}), store_probe_every_s=0.2)
        stop = asyncio.Event()
        running = asyncio.create_task(service.run(stop))
        try:
            async with httpx.AsyncClient(trust_env=False, timeout=10) as http:

                async def ready_metric() -> float | None:
                    try:
                        scraped = await http.get(f"http://{metrics}/metrics")
                    except httpx.TransportError:  # not listening yet
                        return None
                    return sample(scraped.text, "tunnelacct_ready")

                async def wait_ready_metric(value: float) -> None:
                    deadline = time.monotonic() + WAIT_S
                    while (now := await ready_metric()) != value:
                        assert time.monotonic() < deadline, f"tunnelacct_ready {now}, not {value}"
                        await asyncio.sleep(0.05)

                await wait_ready_metric(1)
                readyz = await http.get(f"http://{api}/readyz")
                assert (readyz.status_code, readyz.json()) == (200, {"ready": True, "reasons": []})
                with connections_refused(url):
                    with pytest.raises(OperationalError):
                        read_rows(url, "SELECT 1")
                    await wait_ready_metric(0)
                    readyz = await http.get(f"http://{api}/readyz")
                    assert readyz.status_code == 503, readyz.text
                    [reason] = readyz.json()["reasons"]
                    assert reason.startswith("store unreachable: "), reason
                    assert await ready_metric() == 0
                await wait_ready_metric(1)
                readyz = await http.get(f"http://{api}/readyz")
                assert (readyz.status_code, readyz.json()) == (200, {"ready": True, "reasons": []})
        finally:
            stop.set()
            await running


def looping_replay(
    tmp_path: Path,
    db: Path,
    status_path: Path,
    *,
    service: dict[str, Any],
    writer: dict[str, Any],
) -> Service:
    """A Service (not started) replaying PCAP in a loop at full speed into the SQLite `db`,
    with these [service] and [writer] settings."""
    url = f"sqlite:///{db}"
    migrate(url)
    config = write_config(
        BASE,
        tmp_path / "serve.toml",
        {"database": {"url": url}, "service": service, "writer": writer},
        captures=[{"pcap": str(PCAP), "loop": True}],
    )
    return Service(load_config(config, environ={}), status_path=status_path)


def capture_metric(service: Service, name: str) -> float | None:
    """The sample `name` of the replayed capture on the service's metrics."""
    assert service.registry is not None
    return service.registry.get_sample_value(name, {"interface": str(PCAP)})


def taken_by_the_sessionizer(service: Service) -> int:
    """The packets read that the capture's sessionizer took: counted by its flow table, or
    skipped or undecodable."""
    pipeline = service.pipelines[0]
    status = pipeline.status
    skipped = sum(status.skipped.values()) + sum(status.decode_errors.values())
    return pipeline.table.stats.packets + skipped


async def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"waited {WAIT_S} s for {what}"
        await asyncio.sleep(0.05)


async def wait_capture_held_back(service: Service) -> None:
    """Until the reader waits for room in the queue: its packet count stays put for longer
    than one read of the replay takes (READ_TIMEOUT_S)."""
    capture = service.pipelines[0].status
    deadline = time.monotonic() + WAIT_S
    read_before = -1
    while capture.packets != read_before:
        assert time.monotonic() < deadline, f"the capture went on: {capture.packets}"
        read_before = capture.packets
        await asyncio.sleep(2 * READ_TIMEOUT_S)


async def test_packets_dropped_from_the_capture_queue_at_a_stalled_shutdown_are_on_the_metrics(
    tmp_path: Path,
) -> None:
    """tunnelacct_capture_queue_drops_total (issue 22): a replay at full speed into a SQLite
    store that another connection holds locked fills the writer, then the capture's queue;
    serve stopped then runs out of [service] shutdown_timeout and drops what is queued. The
    counter of the capture says as many packets as the status file's queue_drops, more than 0
    (it starts at 0)."""
    db = tmp_path / "stalled.db"
    status_path = tmp_path / "status.json"
    service = looping_replay(
        tmp_path,
        db,
        status_path,
        service={"queue_packets": 1, "shutdown_timeout": 1},
        writer={"max_pending": 1, "write_timeout": 1},
    )
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))

    def queue_drops_metric() -> float | None:
        return capture_metric(service, "tunnelacct_capture_queue_drops_total")

    locker = sqlite3.connect(db, timeout=WAIT_S, isolation_level=None)
    try:
        await wait_for("rows written", lambda: service.writer.rows_written > 0)
        assert queue_drops_metric() == 0
        locker.execute("BEGIN EXCLUSIVE")  # the store stalls: no write gets through
        await wait_capture_held_back(service)
    finally:
        stop.set()
        [ended] = await asyncio.gather(running, return_exceptions=True)
        locker.close()
    assert isinstance(ended, StoreError), ended  # it names the sessions left unwritten
    [capture] = json.loads(status_path.read_text())["captures"]
    assert capture["queue_drops"] > 0, capture
    assert queue_drops_metric() == capture["queue_drops"]
    # every packet read was sessionized or counted as dropped: none is left queued
    assert capture["queued_packets"] == 0, capture
    assert capture["packets"] == taken_by_the_sessionizer(service) + capture["queue_drops"]


async def test_the_packets_waiting_for_the_sessionizer_are_on_the_status_file_and_metrics(
    tmp_path: Path,
) -> None:
    """queued_packets, and tunnelacct_capture_queued_packets (issue 21): a replay at full speed
    into a SQLite store that another connection holds locked fills the writer, which holds the
    sessionizer back, and the reader fills the queue behind it. What the figure says is then
    what the reader handed on that the flow table has not counted (the packets read, less
    those not TCP or UDP), more than 0, on the status file and the metric alike. Unlocked
    and stopped, serve sessionizes all of it: the figure ends at 0 and the rows hold every
    packet read."""
    db = tmp_path / "held.db"
    status_path = tmp_path / "status.json"
    service = looping_replay(
        tmp_path,
        db,
        status_path,
        service={"queue_packets": 500},
        # held back at once, yet the shutdown's checkpoints are not written one by one
        writer={"max_pending": 100, "write_timeout": 1},
    )
    stop = asyncio.Event()
    running = asyncio.create_task(service.run(stop))

    def queued_metric() -> float | None:
        return capture_metric(service, "tunnelacct_capture_queued_packets")

    def on_status_file() -> int:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            [capture] = json.loads(status_path.read_text())["captures"]
            return int(capture["queued_packets"])
        return -1

    locker = sqlite3.connect(db, timeout=WAIT_S, isolation_level=None)
    try:
        await wait_for("rows written", lambda: service.writer.rows_written > 0)
        locker.execute("BEGIN EXCLUSIVE")  # the store stalls: no write gets through
        await wait_capture_held_back(service)
        capture = service.pipelines[0].status
        not_sessionized = capture.packets - taken_by_the_sessionizer(service)
        assert capture.queued_packets == not_sessionized > 0, capture
        assert queued_metric() == not_sessionized
        await wait_for("the status file", lambda: on_status_file() == not_sessionized)
    finally:
        locker.close()  # the store is writable again
        stop.set()
        [ended] = await asyncio.gather(running, return_exceptions=True)
    assert ended is None, ended
    [final] = json.loads(status_path.read_text())["captures"]
    assert final["queued_packets"] == final["queue_drops"] == 0, final
    assert queued_metric() == 0
    stored_packets = sum(row["packets_tx"] + row["packets_rx"] for row in all_rows(db))
    read_packets = final["packets"] - sum(final["skipped"].values())
    assert stored_packets == read_packets - sum(final["decode_errors"].values())
