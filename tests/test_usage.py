"""The usage rollup (issue 18) against tshark, on a capture moved across midnight.

The test records long-lived TCP and UDP sessions of two users on loopback with tcpdump
(tests/helpers/loopcapture.py) and moves the capture with editcap so that UTC midnight falls in
its middle: the sessions run across it. tshark then says, per UTC day of each packet's own
time, what each user's sessions moved each way; the rollup must hold exactly that, on both
engines, and hold it still after the file is imported again.
"""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import io
import json
import subprocess
from collections import defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import httpx
import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers.accuracy import run_cli
from tests.helpers.faults import (
    assert_every_session_once_as_tshark_counts,
    paced_replay,
    wait_drained,
)
from tests.helpers.loopcapture import first_and_last_ts, record_sessions
from tests.helpers.oracle import DailyUsage, tshark_daily_usage, tshark_sessions
from tests.helpers.pg import read_rows
from tests.helpers.serving import Serve
from tests.helpers.stores import assert_months_sum_their_days, execute
from tests.helpers.waiting import WAIT_S
from tunnelacct.capture.decode import MAX_TS, DecodedBatch, decode, packets_at
from tunnelacct.capture.pcapfile import open_capture
from tunnelacct.config.load import load_config
from tunnelacct.config.model import Config
from tunnelacct.enums import CloseReason
from tunnelacct.retention.purge import purge
from tunnelacct.sessions.attribution import Inventory
from tunnelacct.sessions.flowtable import FlowTable
from tunnelacct.store.engine import make_engine
from tunnelacct.store.inventory import sync_inventory
from tunnelacct.store.ongoing import ongoing_sessions
from tunnelacct.store.usage import FIGURE_COLUMNS
from tunnelacct.store.writer import SessionWriter
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token

ROOT = Path(__file__).resolve().parents[1]
MIDNIGHT = datetime(2026, 11, 24, tzinfo=UTC).timestamp()
ALICE = "127.0.0.2"  # acme's client alice-laptop
BOB = "127.0.0.4"  # globex's client bob-desktop
SERVER = "127.0.0.3"  # acme's resource "echo"
USERS = {ALICE: "alice", BOB: "bob"}
CONFIG = f"""
[[orgs]]
id = "acme"
name = "Acme Corp"

[[orgs]]
id = "globex"
name = "Globex"

[[clients]]
id = "alice-laptop"
org = "acme"
user = "alice"
addresses = ["{ALICE}/32"]

[[clients]]
id = "bob-desktop"
org = "globex"
user = "bob"
addresses = ["{BOB}/32"]

[[resources]]
id = "echo"
name = "Echo"
org = "acme"
address = "{SERVER}/32"
"""
FIGURES = FIGURE_COLUMNS

# skip, or under CI fail, without them
needs_tools = pytest.mark.usefixtures("require_tshark", "require_tcpdump", "require_root")


@pytest.fixture(scope="module")
def across_midnight(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sessions recorded on loopback, moved by editcap so that midnight is their middle."""
    home = tmp_path_factory.mktemp("usage")
    recorded = home / "recorded.pcap"
    record_sessions(recorded, [(ALICE, SERVER), (BOB, SERVER)], rounds=50)
    first_ts, last_ts = first_and_last_ts(recorded)
    shift_s = MIDNIGHT - (first_ts + last_ts) / 2
    shifted = home / "across-midnight.pcap"
    subprocess.run(
        ["editcap", "-F", "pcap", "-t", f"{shift_s:.6f}", str(recorded), str(shifted)],
        check=True,
        capture_output=True,
    )
    return shifted


@pytest.fixture(scope="module")
def config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("usage-config") / "usage.toml"
    path.write_text(CONFIG)
    return path


def _config_with(tmp_path: Path, acme_setting: str) -> Path:
    """CONFIG with one more setting of org acme, written in `tmp_path`."""
    path = tmp_path / "usage-variant.toml"
    path.write_text(CONFIG.replace('name = "Acme Corp"', f'name = "Acme Corp"\n{acme_setting}'))
    return path


def _user_of(initiator: str, responder: str) -> str:
    return USERS.get(initiator) or USERS.get(responder) or ""


def _import(url: str, config: Path, pcap: Path) -> None:
    run_cli("import", "--config", str(config), str(pcap), env={"TUNNELACCT_DATABASE_URL": url})


def _rollup_by_day_and_user(url: str) -> dict[tuple[str, str], DailyUsage]:
    """The rollup summed per (day, user) over orgs and the other groups."""
    sums = ", ".join(f"SUM({figure})" for figure in FIGURES)
    rows = read_rows(url, f"SELECT day, user_id, {sums} FROM usage_days GROUP BY day, user_id")
    return {
        (str(day), str(user)): DailyUsage(*(int(str(value)) for value in figures))
        for day, user, *figures in rows
    }


def _session_totals(url: str) -> tuple[int, ...]:
    sums = ", ".join(f"SUM({c})" for c in ("bytes_tx", "bytes_rx", "packets_tx", "packets_rx"))
    (row,) = read_rows(url, f"SELECT {sums}, COUNT(*) FROM sessions")
    return tuple(int(str(value)) for value in row)


@needs_tools
def test_the_rollup_counts_each_packet_on_its_own_utc_day(
    database_url: str, across_midnight: Path, config: Path
) -> None:
    across = [s for s in tshark_sessions(across_midnight) if s.first_ts < MIDNIGHT <= s.last_ts]
    assert len(across) >= 2, "sessions run across midnight"
    oracle = tshark_daily_usage(across_midnight, _user_of)
    _import(database_url, config, across_midnight)
    assert _rollup_by_day_and_user(database_url) == oracle
    assert_months_sum_their_days(database_url)
    # sessions that ran across midnight keep their split in their row
    split = read_rows(database_url, "SELECT COUNT(*) FROM sessions WHERE day_split IS NOT NULL")
    assert split == [(len(across),)]


@needs_tools
def test_the_rollup_over_all_days_equals_the_session_rows(
    database_url: str, across_midnight: Path, config: Path
) -> None:
    _import(database_url, config, across_midnight)
    by_day = _rollup_by_day_and_user(database_url)
    total: dict[str, int] = defaultdict(int)
    for usage in by_day.values():
        for figure in FIGURES:
            total[figure] += getattr(usage, figure)
    bytes_tx, bytes_rx, packets_tx, packets_rx, sessions = _session_totals(database_url)
    assert (total["bytes_tx"], total["bytes_rx"]) == (bytes_tx, bytes_rx)
    assert (total["packets_tx"], total["packets_rx"]) == (packets_tx, packets_rx)
    assert total["sessions_started"] == total["sessions_completed"] == sessions


@needs_tools
def test_importing_the_file_again_changes_no_total(
    database_url: str, across_midnight: Path, config: Path
) -> None:
    _import(database_url, config, across_midnight)
    once = read_rows(database_url, "SELECT * FROM usage_days ORDER BY 1, 2, 3, 4, 5, 6, 7")
    sessions_once = _session_totals(database_url)
    _import(database_url, config, across_midnight)
    assert _session_totals(database_url) == sessions_once  # the rows were replaced, not added
    assert read_rows(database_url, "SELECT * FROM usage_days ORDER BY 1, 2, 3, 4, 5, 6, 7") == once
    assert_months_sum_their_days(database_url)


async def _one_life(
    engine: AsyncEngine, config: Config, batch: DecodedBatch, *, last: bool
) -> None:
    """What serve does between a start and a stop: resume what the store holds ongoing, take
    `batch`, then stop (checkpointing what is open) or, when `last`, close everything."""
    inventory = Inventory.from_config(config)
    table = FlowTable(
        config.timeouts, attribute=inventory.attribute, is_client=inventory.is_client_address
    )
    writer = SessionWriter(engine, config.writer, gateway=config.gateway)
    stored = await ongoing_sessions(engine, config.gateway)
    writer.seed(stored)
    for event in stored:
        table.resume(event)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(writer.run())
        await writer.submit(table.process(batch))
        ending = table.close_all(CloseReason.END_OF_CAPTURE) if last else table.suspend()
        await writer.submit(ending)
        await writer.close()


@needs_tools
@pytest.mark.parametrize("restart_at", [0.25, 0.75])
async def test_a_restart_changes_no_total(
    store_url: str, across_midnight: Path, config: Path, restart_at: float
) -> None:
    """Sessions checkpointed at a stop and resumed at the next start (before midnight, or after
    it with their day split stored) count as if the service had run through."""
    settings = load_config(str(config), environ={"TUNNELACCT_DATABASE_URL": store_url})
    (raw,) = list(open_capture(across_midnight).batches())
    batch = decode(raw, not_after_ts=MAX_TS)
    assert len(batch) == len(raw), "every packet decoded"
    first_ts, last_ts = first_and_last_ts(across_midnight)
    restart_ts = first_ts + (last_ts - first_ts) * restart_at
    engine = make_engine(store_url)
    try:
        await sync_inventory(engine, settings)
        await _one_life(
            engine, settings, packets_at(batch, np.flatnonzero(batch.ts < restart_ts)), last=False
        )
        ongoing = read_rows(store_url, "SELECT COUNT(*) FROM sessions WHERE status = 'ongoing'")
        assert ongoing[0][0] > 0, "sessions were left ongoing at the stop"
        await _one_life(
            engine, settings, packets_at(batch, np.flatnonzero(batch.ts >= restart_ts)), last=True
        )
    finally:
        await engine.dispose()
    assert _rollup_by_day_and_user(store_url) == tshark_daily_usage(across_midnight, _user_of)
    assert_months_sum_their_days(store_url)


def _period_of(day: str, interval: str) -> str:
    """The first day of `day`'s interval, by Python's calendar (the oracle of the SQL)."""
    when = date.fromisoformat(day)
    if interval == "week":
        return (when - timedelta(days=when.weekday())).isoformat()
    if interval == "month":
        return when.replace(day=1).isoformat()
    return day


def _oracle_report(
    across_midnight: Path,
    interval: str,
    users: set[str],
    days: tuple[str, str] = ("0000-00-00", "9999-99-99"),
) -> list[dict[str, object]]:
    """tshark's daily usage of the `days` (first, last: ISO, inclusive) summed per interval
    and user, as report rows by column name."""
    sums: dict[tuple[str, str], DailyUsage] = defaultdict(DailyUsage)
    for (day, user), usage in tshark_daily_usage(across_midnight, _user_of).items():
        if user in users and days[0] <= day <= days[1]:
            total = sums[(_period_of(day, interval), user)]
            for figure in FIGURES:
                setattr(total, figure, getattr(total, figure) + getattr(usage, figure))
    first_column = "day" if interval == "day" else "period_start"
    return [
        {first_column: period, "user": user, **dataclasses.asdict(usage)}
        for (period, user), usage in sorted(sums.items())
    ]


@needs_tools
@pytest.mark.parametrize("interval", ["day", "week", "month"])
@pytest.mark.parametrize(
    "days",
    [
        ("2026-11-01", "2026-12-31"),  # whole months: usage_months
        ("2026-11-24", "2026-12-31"),  # part of November (its last days), December whole
        ("2026-10-15", "2026-11-23"),  # part of October and of November: usage_days alone
        ("2026-10-01", "2026-11-23"),  # October whole, then part of November (its first days)
    ],
)
async def test_the_api_the_csv_and_the_cli_agree_with_tshark(
    store_url: str, across_midnight: Path, config: Path, interval: str, days: tuple[str, str]
) -> None:
    _import(store_url, config, across_midnight)
    params = {"by": "user", "interval": interval, "from": days[0], "to": days[1]}
    async with _acme_auditor(store_url) as client:
        answer = await client.get("/api/v1/orgs/acme/usage", params=params)
        as_csv = await client.get("/api/v1/orgs/acme/usage.csv", params=params)
        alice = await client.get("/api/v1/orgs/acme/usage", params={**params, "q": "user:alice"})
        refused = await client.get("/api/v1/orgs/acme/usage", params={**params, "q": "dport:22"})
        other_org = await client.get("/api/v1/orgs/globex/usage")
    assert answer.status_code == 200, answer.text
    rows = answer.json()["rows"]
    assert rows == _oracle_report(across_midnight, interval, {"alice", "bob"}, days)
    assert rows, "a range without traffic tells nothing"
    assert alice.json()["rows"] == _oracle_report(across_midnight, interval, {"alice"}, days)
    # the CSV holds the same rows, and the CLI writes the same CSV
    assert as_csv.status_code == 200
    parsed = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert [{k: str(v) for k, v in row.items()} for row in rows] == parsed
    cli = run_cli(
        "usage",
        "--config",
        str(config),
        "--org",
        "acme",
        "--by",
        "user",
        "--interval",
        interval,
        "--from",
        days[0],
        "--to",
        days[1],
        env={"TUNNELACCT_DATABASE_URL": store_url},
    )
    assert cli.stdout == as_csv.text.replace("\r\n", "\n")  # read in text mode: CRLF as LF
    # a term the rollup cannot answer is a 400 naming it; another org's report, a 404
    assert refused.status_code == 400
    assert (refused.json()["parameter"], refused.json()["token"]) == ("q", "dport:22")
    assert other_org.status_code == 404


@asynccontextmanager
async def _acme_auditor(store_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the real app on the store at `store_url`, with an auditor token of acme."""
    engine = make_engine(store_url)
    try:
        token, _row = await create_token(engine, Role.AUDITOR, org_id="acme")
        app = create_app(ApiContext(engine, config_orgs=frozenset({"acme", "globex"})))
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://test",
            headers={"Authorization": f"Bearer {token}"},
        ) as client:
            yield client
    finally:
        await engine.dispose()


def _grafana_link(url: str, api: str, org: str, first: datetime, last: datetime) -> str:
    """A dashboard data link's URL as Grafana expands it for `org`'s bar over `first`..`last`:
    `:date:iso` is RFC 3339 in UTC with milliseconds, `:percentencode` percent-encodes."""
    expansions = {
        "${tunnelacct_api}": api,
        "${__field.labels.org:percentencode}": quote(org, safe=""),
        "${__from:date:iso}": first.astimezone(UTC).isoformat(timespec="milliseconds"),
        "${__to:date:iso}": last.astimezone(UTC).isoformat(timespec="milliseconds"),
    }
    for variable, value in expansions.items():
        url = url.replace(variable, value)
    assert "$" not in url, f"a variable the test does not expand: {url}"
    return url.replace("+00:00", "Z")


@needs_tools
async def test_the_dashboard_links_open_the_bars_org_report_for_its_days(
    store_url: str, across_midnight: Path, config: Path
) -> None:
    model = json.loads((ROOT / "grafana/dashboards/tunnelacct-traffic.json").read_text("utf-8"))
    links = [
        link["url"]
        for panel in model["panels"]
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
        if "/api/v1/" in link["url"] and "/usage" in link["url"]
    ]
    assert links, "no dashboard panel links to the usage report"
    _import(store_url, config, across_midnight)
    first_ts, last_ts = first_and_last_ts(across_midnight)
    # the dashboard's range: from a little before the capture to a little after it
    first = datetime.fromtimestamp(first_ts - 60, UTC)
    last = datetime.fromtimestamp(last_ts + 60, UTC)
    async with _acme_auditor(store_url) as client:
        answers = [
            await client.get(_grafana_link(url, "http://test", "acme", first, last))
            for url in links
        ]
    expected = _oracle_report(across_midnight, "day", {"alice", "bob"})
    assert {row["day"] for row in expected} == {"2026-11-23", "2026-11-24"}
    for url, answer in zip(links, answers, strict=True):
        assert answer.status_code == 200, f"{url}: {answer.text}"
        if answer.headers["content-type"].startswith("text/csv"):
            rows: list[dict[str, object]] = list(csv.DictReader(io.StringIO(answer.text)))
            assert rows == [{k: str(v) for k, v in row.items()} for row in expected]
        else:
            body = answer.json()
            assert (body["from"], body["to"]) == (first.date().isoformat(), last.date().isoformat())
            assert body["rows"] == expected


@needs_tools
async def test_the_purge_keeps_usage_for_its_own_retention(
    store_url: str, across_midnight: Path, tmp_path: Path
) -> None:
    """Sessions kept 30 days, usage 400: a purge 400 days after the second day removes every
    session and the first day's usage, and leaves the second day's as it was."""
    config = _config_with(tmp_path, "retention_days = 30")
    _import(store_url, config, across_midnight)
    usage = "SELECT * FROM usage_days WHERE org_id = 'acme' ORDER BY 1, 2, 3, 4, 5, 6, 7"
    before = read_rows(store_url, usage)
    assert {row[1] for row in before} == {"2026-11-23", "2026-11-24"}
    now = datetime(2026, 11, 24, 12, tzinfo=UTC) + timedelta(days=400)
    engine = make_engine(store_url)
    try:
        await sync_inventory(engine, load_config(str(config), environ={}))
        dry = await purge(engine, org_id="acme", now=now, dry_run=True)
        assert read_rows(store_url, usage) == before  # a dry run deletes nothing
        result = await purge(engine, org_id="acme", now=now)
    finally:
        await engine.dispose()
    first_day_rows = [row for row in before if row[1] == "2026-11-23"]
    (part,) = result.orgs
    assert part.usage_cutoff_day == date(2026, 11, 24)
    assert part.usage_deleted == dry.orgs[0].usage_deleted == len(first_day_rows) > 0
    assert read_rows(store_url, "SELECT COUNT(*) FROM sessions WHERE org_id = 'acme'") == [(0,)]
    assert read_rows(store_url, usage) == [row for row in before if row[1] == "2026-11-24"]
    assert_months_sum_their_days(store_url)  # the purged day is out of November's rows
    recorded = read_rows(
        store_url,
        "SELECT usage_cutoff_day, usage_deleted FROM purge_runs WHERE org_id = 'acme' "
        "AND dry_run = :dry",
        {"dry": False},
    )
    assert recorded == [("2026-11-24", len(first_day_rows))]


@needs_tools
def test_an_org_without_logging_has_no_usage(
    database_url: str, across_midnight: Path, tmp_path: Path
) -> None:
    config = _config_with(tmp_path, "logging = false")
    _import(database_url, config, across_midnight)
    rows = read_rows(database_url, "SELECT org_id, COUNT(*) FROM usage_days GROUP BY org_id")
    assert rows == []  # every session of the capture is acme's (the echo resource)


@pytest.mark.usefixtures("require_tshark")
def test_rebuilds_while_serve_writes_change_no_total(database_url: str, tmp_path: Path) -> None:
    # `usage rebuild`, run again and again, deletes and computes again the rows that serve's
    # writer adds to (checkpoints every 0.5 s): the writer's changes wait for each rebuild and
    # then apply on top, so that every session counts once, as tshark and the session rows say.
    pcap, config = paced_replay(tmp_path, seed=11)
    env = {"TUNNELACCT_DATABASE_URL": database_url}
    rebuilds = 0
    with Serve(None, config, database_url, tmp_path) as serve:
        serve.start()
        serve.wait(lambda s: s["writer"]["rows_written"] > 0, WAIT_S, "first rows")
        while not all(
            c["state"] == "finished" for c in serve.wait(bool, WAIT_S, "a status")["captures"]
        ):
            run_cli("usage", "rebuild", "--config", str(config), env=env)
            rebuilds += 1
        wait_drained(serve, "the replay written")
        assert serve.stop() == 0, serve.log()
    assert rebuilds >= 2, "the replay ended before two rebuilds ran beside it"
    assert_every_session_once_as_tshark_counts(database_url, pcap)


@needs_tools
def test_a_rebuild_from_the_sessions_gives_the_rollup_back(
    database_url: str, across_midnight: Path, config: Path
) -> None:
    _import(database_url, config, across_midnight)
    usage = "SELECT * FROM usage_days ORDER BY 1, 2, 3, 4, 5, 6, 7"
    kept = read_rows(database_url, usage)
    env = {"TUNNELACCT_DATABASE_URL": database_url}
    # a rollup gone wrong: every figure doubled, and a day's rows lost
    execute(database_url, "UPDATE usage_days SET bytes_tx = 2 * bytes_tx")
    execute(database_url, "DELETE FROM usage_days WHERE day = '2026-11-24'")
    execute(database_url, "UPDATE usage_months SET packets_rx = 0")
    assert read_rows(database_url, usage) != kept
    out = run_cli("usage", "rebuild", "--config", str(config), env=env).stdout
    assert "org acme: rebuilt 2026-11-23 to " in out, out
    assert read_rows(database_url, usage) == kept
    assert_months_sum_their_days(database_url)
    # a range rebuilds only its days
    execute(database_url, "UPDATE usage_days SET bytes_rx = 0")
    run_cli(
        "usage",
        "rebuild",
        "--config",
        str(config),
        "--org",
        "acme",
        "--from",
        "2026-11-24",
        "--to",
        "2026-11-24",
        env=env,
    )
    rows = read_rows(database_url, usage)
    assert [r for r in rows if r[1] == "2026-11-24"] == [r for r in kept if r[1] == "2026-11-24"]
    assert {r[8] for r in rows if r[1] == "2026-11-23"} == {0}


@needs_tools
async def test_days_a_purge_reached_are_not_rebuilt(
    store_url: str, across_midnight: Path, tmp_path: Path
) -> None:
    """After a purge whose cutoff is 2026-11-24 12:00, only the days from 2026-11-25 are
    complete: a rebuild leaves the two days of the capture as they were, and says so."""
    config = _config_with(tmp_path, "retention_days = 30")
    _import(store_url, config, across_midnight)
    usage = "SELECT * FROM usage_days ORDER BY 1, 2, 3, 4, 5, 6, 7"
    kept = read_rows(store_url, usage)
    engine = make_engine(store_url)
    try:
        await sync_inventory(engine, load_config(str(config), environ={}))
        await purge(engine, org_id="acme", now=datetime(2026, 12, 24, 12, tzinfo=UTC))
    finally:
        await engine.dispose()
    assert read_rows(store_url, "SELECT COUNT(*) FROM sessions WHERE org_id = 'acme'") == [(0,)]
    env = {"TUNNELACCT_DATABASE_URL": store_url}
    out = run_cli(
        "usage",
        "rebuild",
        "--config",
        str(config),
        "--org",
        "acme",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-30",
        env=env,
    ).stdout
    assert "org acme: days before 2026-11-25 lost sessions to a purge" in out, out
    assert read_rows(store_url, usage) == kept
