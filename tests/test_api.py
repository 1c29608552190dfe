"""The REST API in-process (httpx ASGI transport) on a real store, SQLite and PostgreSQL, filled
by importing a capture recorded through a real WireGuard tunnel (once per engine; each test gets
its own copy), plus orgs whose ids are prefixes of acme's and the other way round, holding
copies of its data; checked against the rows read back without tunnelacct's types."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from sqlalchemy import create_engine, insert, pool, select

from tests.helpers.pg import add_partitions
from tests.helpers.prefixorgs import PREFIX_ORGS, add_prefix_orgs
from tests.helpers.serving import dump_toml
from tests.helpers.stores import ENGINES, copied_store, execute, imported_store
from tests.helpers.stores import query as raw_query
from tunnelacct.query.export import export_org_csv
from tunnelacct.retention.purge import purge
from tunnelacct.store.engine import make_engine, sync_url
from tunnelacct.store.models import SessionRecord, table_of
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token, revoke_token
from tunnelacct.web.routes import sessions as api_module

DATA = Path(__file__).parent / "data"
CONFIG = DATA / "wg-small.toml"
NOW = datetime(2026, 12, 1, tzinfo=UTC)  # the app's clock (updated_at) and the purges' now
FUTURE = datetime(2099, 1, 1, tzinfo=UTC)  # after every session of the capture
RETENTION_IN_CONFIG = {"acme": 30, "globex": 7, "unattributed": 30}  # wg-small.toml (+ default)
CONFIG_ORGS = frozenset(RETENTION_IN_CONFIG)  # the orgs the config writes to the store


@pytest.fixture(scope="module", params=ENGINES)
def capture_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """wg-small.pcap imported by the real CLI, once per engine, and the PREFIX_ORGS: copied,
    never used, by tests."""
    with imported_store(request.param, tmp_path_factory.mktemp("api")) as url:
        add_prefix_orgs(url)
        yield url


@pytest.fixture
def imported(capture_store: str, tmp_path: Path) -> Iterator[str]:
    """The URL of this test's own copy of the imported capture."""
    with copied_store(capture_store, tmp_path) as url:
        yield url


@pytest.fixture
async def client(imported: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    engine = make_engine(imported)
    tokens = {
        "acme": (await create_token(engine, Role.AUDITOR, org_id="acme"))[0],
        "admin": (await create_token(engine, Role.ADMIN))[0],
    }
    revoked, row = await create_token(engine, Role.AUDITOR, org_id="acme")
    await revoke_token(engine, row.id)
    tokens["revoked"] = revoked
    app = create_app(ApiContext(engine, config_orgs=CONFIG_ORGS, clock=lambda: NOW))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c, tokens
    await engine.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def not_found(org: str) -> dict[str, str]:
    """The answer to an org that does not exist or that the token may not read."""
    return {"error": "not_found", "detail": f"no org {org!r}"}


def ids_of(db: str, sql: str, *params: object) -> list[str]:
    """Session ids as the API shows them (dashed UUIDs), read back without tunnelacct's types."""
    return [
        f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}" for (h,) in raw_query(db, sql, *params)
    ]


Client = tuple[httpx.AsyncClient, dict[str, str]]


async def test_health_needs_no_token_and_reveals_no_data(client: Client) -> None:
    c, _ = client
    assert (await c.get("/healthz")).json() == {"status": "ok"}
    ready = await c.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic dXNlcjpwdw=="}]
)
async def test_no_or_a_bad_token_is_401(client: Client, headers: dict[str, str]) -> None:
    c, _ = client
    for path in ("/api/v1/orgs", "/api/v1/orgs/acme/sessions", "/api/v1/orgs/acme/sessions.csv"):
        r = await c.get(path, headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path


async def test_a_revoked_token_is_401(client: Client) -> None:
    c, tokens = client
    assert (await c.get("/api/v1/orgs", headers=bearer(tokens["revoked"]))).status_code == 401


async def test_an_auditor_sees_its_org_only_and_others_look_absent(client: Client) -> None:
    c, tokens = client
    auditor = bearer(tokens["acme"])
    assert [o["id"] for o in (await c.get("/api/v1/orgs", headers=auditor)).json()] == ["acme"]
    # acme2 and acm hold copies of acme's data, and their ids start alike
    for org in ("globex", *PREFIX_ORGS, "no-such-org"):
        for tail in ("", "/sessions", "/sessions.csv", "/clients", "/resources"):
            r = await c.get(f"/api/v1/orgs/{org}{tail}", headers=auditor)
            assert (r.status_code, r.json()) == (404, not_found(org)), (org, tail)
    admin = bearer(tokens["admin"])
    listed = (await c.get("/api/v1/orgs", headers=admin)).json()
    orgs = {o["id"] for o in listed}
    assert {"acme", "globex", *PREFIX_ORGS} <= orgs
    # wg-small.toml: acme keeps 30 days, globex 7; both log
    assert {(o["id"], o["retention_days"], o["logging"]) for o in listed} >= {
        ("acme", 30, True),
        ("globex", 7, True),
    }
    assert (await c.get("/api/v1/orgs/globex/sessions", headers=admin)).status_code == 200


async def test_pages_visit_every_session_once_in_start_order(client: Client, imported: str) -> None:
    c, tokens = client
    expected = ids_of(
        imported, "select id from sessions where org_id = 'acme' order by started_at, id"
    )
    assert len(expected) > 5
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = (
            await c.get("/api/v1/orgs/acme/sessions", params=params, headers=bearer(tokens["acme"]))
        ).json()
        assert page["count"] == len(expected) and page["count_capped"] is False
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == expected


async def test_a_filter_selects_what_sql_selects_and_a_bad_one_is_400(
    client: Client, imported: str
) -> None:
    c, tokens = client
    r = await c.get(
        "/api/v1/orgs/acme/sessions",
        params={"q": "protocol:udp", "limit": 1000},
        headers=bearer(tokens["acme"]),
    )
    got = sorted(s["session_id"] for s in r.json()["sessions"])
    want = sorted(
        ids_of(imported, "select id from sessions where org_id = 'acme' and protocol = 'udp'")
    )
    assert got == want and len(want) > 0
    bad = await c.get(
        "/api/v1/orgs/acme/sessions", params={"q": "dport:70000"}, headers=bearer(tokens["acme"])
    )
    assert bad.status_code == 400
    assert bad.json()["token"] == "dport:70000" and "0-65535" in bad.json()["expected"]
    assert (bad.json()["error"], bad.json()["parameter"]) == ("bad_parameter", "q")
    sneaky = await c.get(
        "/api/v1/orgs/acme/sessions",
        params={"q": 'client:"x\' OR 1=1 --"'},
        headers=bearer(tokens["acme"]),
    )
    assert sneaky.status_code == 200 and sneaky.json()["sessions"] == []


async def test_the_count_is_capped(client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    c, tokens = client
    monkeypatch.setattr(api_module, "COUNT_CAP", 4)
    page = (await c.get("/api/v1/orgs/acme/sessions", headers=bearer(tokens["acme"]))).json()
    assert (page["count"], page["count_capped"]) == (4, True)
    assert len(page["sessions"]) > 4  # the page itself is not capped by the count


async def test_csv_download_is_the_export_streamed_as_an_attachment(
    client: Client, imported: str
) -> None:
    c, tokens = client
    r = await c.get("/api/v1/orgs/acme/sessions.csv", headers=bearer(tokens["acme"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"] == 'attachment; filename="tunnelacct-acme-sessions.csv"'
    engine = make_engine(imported)
    out = io.BytesIO()
    try:
        await export_org_csv(engine, "acme", out)  # the CLI's export, for the same org
    finally:
        await engine.dispose()
    assert r.content == out.getvalue()
    assert len(list(csv.DictReader(io.StringIO(r.text)))) == len(
        raw_query(imported, "select 1 from sessions where org_id = 'acme'")
    )


async def test_inventory_lists_the_orgs_clients_and_resources(client: Client) -> None:
    c, tokens = client
    auditor = bearer(tokens["acme"])
    clients = (await c.get("/api/v1/orgs/acme/clients", headers=auditor)).json()
    assert [x["id"] for x in clients] == ["alice-laptop"]
    assert clients[0]["addresses"] == ["100.64.0.2/32", "fd00:64::2/128"]
    resources = (await c.get("/api/v1/orgs/acme/resources", headers=auditor)).json()
    assert resources and all(set(r["protocols"]) <= {"tcp", "udp"} for r in resources)
    # wg-small.toml's resources of acme, not those of acme2 (copies) or of another org
    assert [r["id"] for r in resources] == ["intranet-web", "intranet-web-v6", "udp-echo"]


def add_session_like_one_of_acme(url: str, started_at: datetime) -> None:
    """A live writer's new session: a stored one of acme's with a new id and start."""
    t = table_of(SessionRecord)
    add_partitions(url, [started_at])
    engine = create_engine(sync_url(url), poolclass=pool.NullPool)
    try:
        with engine.begin() as conn:
            row = conn.execute(select(t).where(t.c.org_id == "acme").limit(1)).mappings().one()
            conn.execute(insert(t).values({**row, "id": uuid.uuid4(), "started_at": started_at}))
    finally:
        engine.dispose()


async def test_paging_stays_exact_while_new_sessions_arrive(client: Client, imported: str) -> None:
    c, tokens = client
    original = ids_of(
        imported, "select id from sessions where org_id = 'acme' order by started_at, id"
    )
    seen: list[str] = []
    cursor = None
    added = 0
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = (
            await c.get("/api/v1/orgs/acme/sessions", params=params, headers=bearer(tokens["acme"]))
        ).json()
        seen += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
        # a live writer adds a session now: one starting long ago, one starting in the future;
        # later arrivals start later (as live sessions do): each is ahead of any cursor
        for started in (datetime(2000, 1, 1, tzinfo=UTC), FUTURE + timedelta(microseconds=added)):
            add_session_like_one_of_acme(imported, started)
            added += 1
    assert added > 0
    assert len(seen) == len(set(seen))  # nothing twice
    assert [s for s in seen if s in original] == original  # every original once, in order
    future = ids_of(imported, "select id from sessions where started_at >= ?", FUTURE)
    assert set(future) <= set(seen)  # rows arriving ahead of the cursor are reached too


async def test_readyz_says_why_the_service_is_not_ready(imported: str) -> None:
    engine = make_engine(imported)
    reasons = ["capture on wg0 is waiting"]
    app = create_app(ApiContext(engine, not_ready=lambda: reasons))
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.get("/readyz")
    finally:
        await engine.dispose()
    assert (r.status_code, r.json()) == (503, {"ready": False, "reasons": reasons})


@pytest.mark.parametrize("kind", ENGINES)
async def test_non_ascii_names_download_as_utf8_intact(kind: str, tmp_path: Path) -> None:
    names = {"alice-laptop": "Zoë’s Läptop — 東京", "intranet-web": 'Intranät 🌐, "main"'}
    doc = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    for table in (*doc["clients"], *doc["resources"]):
        table["name"] = names.get(table["id"], table.get("name", table["id"]))
    config = tmp_path / "utf8.toml"
    config.write_text(dump_toml(doc), encoding="utf-8")
    with imported_store(kind, tmp_path, config=config) as db:
        engine = make_engine(db)
        token, _ = await create_token(engine, Role.AUDITOR, org_id="acme")
        transport = httpx.ASGITransport(app=create_app(ApiContext(engine)))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                r = await c.get("/api/v1/orgs/acme/sessions.csv", headers=bearer(token))
                page = (await c.get("/api/v1/orgs/acme/sessions", headers=bearer(token))).json()
        finally:
            await engine.dispose()
        expected = raw_query(
            db,
            "SELECT client_name, resource_name FROM sessions"
            " WHERE org_id = 'acme' ORDER BY started_at, id",
        )
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8"), newline="")))
    as_cells = [tuple("" if n is None else n for n in row) for row in expected]
    assert [(x["client_name"], x["resource_name"]) for x in rows] == as_cells
    assert {names["alice-laptop"], names["intranet-web"]} <= {n for row in expected for n in row}
    assert {x["client_name"] for x in page["sessions"]} >= {names["alice-laptop"]}


async def test_metrics_need_no_token_and_reveal_no_session_data(
    client: Client, imported: str
) -> None:
    c, _ = client
    r = await c.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    assert 'tunnelacct_build_info{version="' in r.text
    rows = raw_query(
        imported,
        "SELECT id, src_addr, dst_addr, client_id, client_name, user_id,"
        " resource_id, community_id FROM sessions",
    )
    secrets = {str(v) for row in rows for v in row if v is not None}
    assert secrets and not [s for s in secrets if s in r.text]


def b64(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64 !",
        b64("just a string"),
        b64(["2000-01-01", []]),  # id not a string
        b64(["2000-01-01", "e3e70682c2094cac629f6fbed82c07cd"]),  # no offset
        b64(["0001-01-01T00:00:00+00:01", "e3e70682c2094cac629f6fbed82c07cd"]),  # year 0 UTC
        b64(["2026-11-23T10:00:00+00:00", "not-a-uuid"]),
        # issue 16: 3,000 nested lists made json.loads raise RecursionError (a 500)
        base64.urlsafe_b64encode(b"[" * 3000).decode(),
    ],
)
async def test_a_malformed_cursor_is_400_naming_it(client: Client, cursor: str) -> None:
    c, tokens = client
    r = await c.get(
        "/api/v1/orgs/acme/sessions", params={"cursor": cursor}, headers=bearer(tokens["acme"])
    )
    assert r.status_code == 400 and cursor in r.json()["detail"]
    assert (r.json()["error"], r.json()["parameter"]) == ("bad_parameter", "cursor")


# --- admin-only routes: purge runs and retention ---------------------------------------------


def add_org(db: str, org_id: str, retention_days: int | None) -> None:
    """An org the config does not define (left from an earlier config, say), in plain SQL."""
    execute(
        db,
        "insert into orgs (id, name, retention_days, updated_at, logging) values (?, ?, ?, ?, ?)",
        org_id,
        org_id.title(),
        retention_days,
        datetime(2026, 1, 1, tzinfo=UTC),
        True,
    )


def org_rows(db: str) -> list[tuple[object, ...]]:
    return raw_query(db, "select * from orgs order by id")


RETENTION_ROUTES = [
    ("GET", "/api/v1/purge-runs", None),
    ("PATCH", "/api/v1/orgs/acme", {"retention_days": 5}),  # the auditor's own org
    ("PATCH", "/api/v1/orgs/initech", {"retention_days": 5}),  # an API-managed org
    ("PATCH", "/api/v1/orgs/globex", {"retention_days": 5}),
    ("PATCH", "/api/v1/orgs/no-such-org", {"retention_days": 5}),
]


async def test_an_auditor_token_is_403_and_no_token_401_on_admin_routes(
    client: Client, imported: str
) -> None:
    c, tokens = client
    add_org(imported, "initech", 90)
    before = org_rows(imported)
    for method, path, body in RETENTION_ROUTES:
        r = await c.request(method, path, json=body, headers=bearer(tokens["acme"]))
        # whatever the org, even one that does not exist: an auditor learns nothing from a 403
        assert (r.status_code, r.json()) == (
            403,
            {
                "error": "forbidden",
                "detail": "this needs an admin token; this one is an auditor token of org 'acme'",
            },
        ), path
        for headers in ({}, bearer(tokens["revoked"])):
            r = await c.request(method, path, json=body, headers=headers)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
    assert org_rows(imported) == before


async def test_purge_runs_list_what_real_purges_recorded_newest_first(
    client: Client, imported: str
) -> None:
    c, tokens = client
    # the purges' oracle: each org's cutoff from its retention in the config file, and README's
    # rule over the stored text (fixed width, so text order is time order)
    cutoffs = {org: NOW - timedelta(days=days) for org, days in RETENTION_IN_CONFIG.items()}
    expired = {
        org: raw_query(
            imported,
            "select count(*) from sessions where org_id = ? and status ="
            " 'completed' and ended_at < ?",
            org,
            cutoff,
        )
        for org, cutoff in cutoffs.items()
    }
    assert expired == {"acme": [(0,)], "globex": [(7,)], "unattributed": [(0,)]}  # 7 < 30 days
    engine = make_engine(imported)
    try:
        dry = await purge(engine, dry_run=True, now=NOW, holder="host-a/1")
        real = await purge(engine, now=NOW, holder="host-b/2")
    finally:
        await engine.dispose()
    for result in (dry, real):
        assert {o.org_id: (o.cutoff, o.deleted) for o in result.orgs} == {
            org: (cutoff, expired[org][0][0]) for org, cutoff in cutoffs.items()
        }
    assert raw_query(imported, "select count(*) from sessions where org_id = 'globex'") == [(0,)]
    r = await c.get("/api/v1/purge-runs", headers=bearer(tokens["admin"]))
    assert r.status_code == 200
    runs = r.json()
    expected = [(dry, o, "host-a/1") for o in dry.orgs] + [(real, o, "host-b/2") for o in real.orgs]
    assert len(runs) == len(expected) == 6
    for got, (result, part, host) in zip(runs, reversed(expected), strict=True):
        assert {k: got[k] for k in got.keys() - {"id", "started_at", "ended_at"}} == {
            "run_id": result.run_id,
            "org_id": part.org_id,
            "host": host,
            "cutoff": part.cutoff.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "dry_run": result.dry_run,
            "deleted": part.deleted,
            "outcome": "ok",
            "error": None,
        }
        started, ended = (datetime.fromisoformat(got[k]) for k in ("started_at", "ended_at"))
        assert got["started_at"].endswith("Z") and started.tzinfo == UTC and started <= ended
    stored = raw_query(imported, "select id, run_id, org_id from purge_runs order by id desc")
    assert [(x["id"], x["run_id"], x["org_id"]) for x in runs] == stored
    two = await c.get("/api/v1/purge-runs", params={"limit": 2}, headers=bearer(tokens["admin"]))
    assert two.json() == runs[:2]
    for limit in (0, 1001, "x"):
        r = await c.get(
            "/api/v1/purge-runs", params={"limit": limit}, headers=bearer(tokens["admin"])
        )
        assert (r.status_code, r.json()["parameter"]) == (400, "limit"), limit


async def test_an_org_shows_its_retention_logging_and_who_sets_it(
    client: Client, imported: str
) -> None:
    c, tokens = client
    add_org(imported, "initech", None)
    auditor, admin = bearer(tokens["acme"]), bearer(tokens["admin"])
    r = await c.get("/api/v1/orgs/acme", headers=auditor)
    assert r.json() == {
        "id": "acme",
        "name": "Acme Corp",
        "retention_days": 30,
        "logging": True,
        "source": "config",
    }
    for org in ("globex", "initech", *PREFIX_ORGS, "no-such-org"):
        r = await c.get(f"/api/v1/orgs/{org}", headers=auditor)
        assert (r.status_code, r.json()) == (404, not_found(org))
    assert (await c.get("/api/v1/orgs/globex", headers=admin)).json()["retention_days"] == 7
    r = await c.get("/api/v1/orgs/initech", headers=admin)
    assert r.json() == {
        "id": "initech",
        "name": "Initech",
        "retention_days": "forever",
        "logging": True,
        "source": "api",
    }
    assert (await c.get("/api/v1/orgs/no-such-org", headers=admin)).status_code == 404
    assert (await c.get("/api/v1/orgs/acme")).status_code == 401


async def test_a_patched_retention_is_what_the_next_purge_applies(imported: str) -> None:
    # acme as an org the config does not define: its retention is the API's to set
    engine = make_engine(imported)
    admin, _ = await create_token(engine, Role.ADMIN)
    ctx = ApiContext(engine, config_orgs=frozenset({"globex", "unattributed"}), clock=lambda: NOW)
    ends = [
        str(e)
        for (e,) in raw_query(
            imported, "select ended_at from sessions where org_id = 'acme' order by ended_at"
        )
    ]
    pivot = datetime.fromisoformat(ends[len(ends) // 2]).replace(tzinfo=UTC)
    now = pivot + timedelta(days=2)  # so that 2 days keeps the later half, 30 days keeps all
    acme_ids = "select id from sessions where org_id = 'acme' order by id"
    before = raw_query(imported, acme_ids)
    # the oracle: README's rule over the stored text (fixed width, so text order is time order)
    doomed = raw_query(
        imported,
        "select id from sessions where org_id = 'acme' and status = 'completed'"
        " and ended_at < ? order by id",
        pivot,
    )
    assert 0 < len(doomed) < len(before)
    try:
        unchanged = await purge(engine, org_id="acme", dry_run=True, now=now)
        assert [(o.org_id, o.deleted) for o in unchanged.orgs] == [("acme", 0)]  # 30 days
        transport = httpx.ASGITransport(app=create_app(ctx))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.patch(
                "/api/v1/orgs/acme", json={"retention_days": 2}, headers=bearer(admin)
            )
            assert (r.status_code, r.json()) == (
                200,
                {
                    "id": "acme",
                    "name": "Acme Corp",
                    "retention_days": 2,
                    "logging": True,
                    "source": "api",
                },
            )
            assert r.json() == (await c.get("/api/v1/orgs/acme", headers=bearer(admin))).json()
            stored = raw_query(
                imported, "select retention_days, updated_at from orgs where id = 'acme'"
            )
            assert stored == [(2, "2026-12-01 00:00:00.000000")]  # updated_at: the app's clock
            result = await purge(engine, now=now)
            acme = [o for o in result.orgs if o.org_id == "acme"]
            assert [(o.cutoff, o.deleted) for o in acme] == [(pivot, len(doomed))]
            assert raw_query(imported, acme_ids) == sorted(set(before) - set(doomed))

            r = await c.patch(
                "/api/v1/orgs/acme", json={"retention_days": "forever"}, headers=bearer(admin)
            )
            assert r.json()["retention_days"] == "forever"
            assert raw_query(imported, "select retention_days from orgs where id = 'acme'") == [
                (None,)
            ]
            later = await purge(engine, now=now + timedelta(days=3650))
            assert "acme" not in {o.org_id for o in later.orgs}  # kept forever: skipped
            assert raw_query(imported, acme_ids) == sorted(set(before) - set(doomed))
    finally:
        await engine.dispose()


BAD_BODIES = [
    (b'{"retention_days": 0}', "retention_days 0: "),
    (b'{"retention_days": -5}', "retention_days -5: "),
    (b'{"retention_days": 36501}', "retention_days 36501: "),
    (b'{"retention_days": true}', "retention_days true: "),
    (b'{"retention_days": 1.5}', "retention_days 1.5: "),
    (b'{"retention_days": 1e400}', "retention_days Infinity: "),
    (b'{"retention_days": "never"}', 'retention_days "never": '),
    (b'{"retention_days": "Forever"}', 'retention_days "Forever": '),
    (b'{"retention_days": "30"}', 'retention_days "30": '),
    (b'{"retention_days": null}', "retention_days null: "),
    (b'{"retention_days": [30]}', "retention_days [30]: "),
    (b"{}", "no retention_days: "),
    (b'{"retention_days": 5, "logging": false}', "unknown keys ['logging']: "),
    (b"[5]", "body [5]: "),
    (b"5", "body 5: "),
    (b"not json", "the body is not JSON: "),
    (b"", "the body is not JSON: "),
    (b"[" * 60_000, "the body is not JSON: "),  # under the body cap, far past recursion
]
WHY_DAYS = (
    'expected days 1-36500 or "forever" (to store none of an org\'s sessions,'
    " set logging = false in its [[orgs]] entry)"
)
WHY_SHAPE = 'send {"retention_days": N or "forever"}'


async def test_an_integral_number_of_days_is_accepted_as_the_schema_says(
    client: Client, imported: str
) -> None:
    # Oracle: JSON Schema's "integer" (the schema of the body) counts 30.0 as an integer.
    c, tokens = client
    add_org(imported, "initech", 90)
    headers = bearer(tokens["admin"]) | {"Content-Type": "application/json"}
    r = await c.patch("/api/v1/orgs/initech", content=b'{"retention_days": 30.0}', headers=headers)
    assert r.status_code == 200, r.text
    assert r.json()["retention_days"] == 30
    stored = raw_query(imported, "select retention_days from orgs where id = 'initech'")
    assert [tuple(row) for row in stored] == [(30,)]


async def test_a_bad_retention_is_400_naming_it_and_changes_nothing(
    client: Client, imported: str
) -> None:
    c, tokens = client
    add_org(imported, "initech", 90)
    before = org_rows(imported)
    headers = bearer(tokens["admin"]) | {"Content-Type": "application/json"}
    for body, named in BAD_BODIES:
        r = await c.patch("/api/v1/orgs/initech", content=body, headers=headers)
        detail = r.json()["detail"]
        assert r.status_code == 400 and detail.startswith(named), (body[:40], detail)
        assert detail.endswith(WHY_DAYS) or WHY_SHAPE in detail, detail
        # the value is at fault, or else the body as a whole
        parameter = "retention_days" if named.startswith("retention_days") else "body"
        assert r.json() == {"error": "bad_parameter", "parameter": parameter, "detail": detail}
    assert org_rows(imported) == before


async def test_a_good_retention_is_stored(client: Client, imported: str) -> None:
    c, tokens = client
    add_org(imported, "initech", 90)
    for days in (1, 36500, "forever", 30):
        r = await c.patch(
            "/api/v1/orgs/initech", json={"retention_days": days}, headers=bearer(tokens["admin"])
        )
        assert (r.status_code, r.json()["retention_days"]) == (200, days)
        stored = raw_query(imported, "select retention_days from orgs where id = 'initech'")
        assert stored == [(None if days == "forever" else days,)]


async def test_a_config_orgs_retention_is_409_and_changes_nothing(
    client: Client, imported: str
) -> None:
    c, tokens = client
    before = org_rows(imported)
    admin = bearer(tokens["admin"])
    for org in ("acme", "globex"):
        for days in (5, "forever"):
            r = await c.patch(f"/api/v1/orgs/{org}", json={"retention_days": days}, headers=admin)
            assert (r.status_code, r.json()) == (
                409,
                {
                    "error": "conflict",
                    "detail": (
                        f"org {org!r} is defined in the config file, which sets its retention: "
                        "edit retention_days in its [[orgs]] entry there"
                    ),
                },
            )
    # the default org: wg-small.toml has no [[orgs]] entry for it, so it has no entry to edit;
    # the config sets its retention all the same (README: [attribution] default_org; 30 days,
    # the [[orgs]] default), and an entry of its own would set it
    r = await c.patch("/api/v1/orgs/unattributed", json={"retention_days": 5}, headers=admin)
    said = (
        "org 'unattributed' is the config file's default org ([attribution] default_org), and"
        " the file sets its retention: set retention_days in an [[orgs]] entry with"
        ' id = "unattributed" there (without one, it is kept 30 days)'
    )
    assert (r.status_code, r.json()) == (409, {"error": "conflict", "detail": said})
    assert raw_query(imported, "select retention_days from orgs where id = 'unattributed'") == [
        (30,)
    ]  # what the import wrote from the config, without an entry
    # a bad body is a 400 first, whoever owns the org; an org that does not exist a 404
    r = await c.patch("/api/v1/orgs/acme", json={"retention_days": 0}, headers=admin)
    assert r.status_code == 400
    r = await c.patch("/api/v1/orgs/no-such-org", json={"retention_days": 5}, headers=admin)
    assert (r.status_code, r.json()) == (404, not_found("no-such-org"))
    assert org_rows(imported) == before
    assert (await c.get("/api/v1/orgs/acme", headers=admin)).json()["retention_days"] == 30


# --- one error shape (issue 15) -------------------------------------------------------------

BAD_PARAMETERS = [
    ("GET", "/api/v1/orgs/acme/sessions", {"limit": 0}, None, "limit"),
    ("GET", "/api/v1/orgs/acme/sessions", {"limit": 1001}, None, "limit"),
    ("GET", "/api/v1/orgs/acme/sessions", {"limit": "x"}, None, "limit"),
    ("GET", "/api/v1/orgs/acme/sessions", {"limit": ""}, None, "limit"),
    ("GET", "/api/v1/orgs/acme/sessions", {"cursor": "nope"}, None, "cursor"),
    ("GET", "/api/v1/orgs/acme/sessions", {"q": "dport:70000"}, None, "q"),
    ("GET", "/api/v1/orgs/acme/sessions.csv", {"q": "nokey:1"}, None, "q"),
    ("GET", "/api/v1/purge-runs", {"limit": -1}, None, "limit"),
    ("GET", "/api/v1/purge-runs", {"limit": "1.5"}, None, "limit"),
    ("PATCH", "/api/v1/orgs/initech", None, b'{"retention_days": 0}', "retention_days"),
    ("PATCH", "/api/v1/orgs/initech", None, b"[]", "body"),
]


@pytest.mark.parametrize(("method", "path", "params", "body", "parameter"), BAD_PARAMETERS)
async def test_every_bad_parameter_is_a_400_of_one_shape_naming_it(
    client: Client,
    imported: str,
    method: str,
    path: str,
    params: dict[str, object] | None,
    body: bytes | None,
    parameter: str,
) -> None:
    c, tokens = client
    add_org(imported, "initech", 90)
    headers = bearer(tokens["admin"]) | {"Content-Type": "application/json"}
    r = await c.request(method, path, params=params, content=body, headers=headers)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    got = r.json()
    filter_fields = {"token", "expected"} if parameter == "q" else set()
    assert set(got) == {"error", "parameter", "detail"} | filter_fields, got
    assert (got["error"], got["parameter"]) == ("bad_parameter", parameter)
    assert isinstance(got["detail"], str) and got["detail"].startswith(
        ("bad filter term", "bad cursor") if parameter in ("q", "cursor") else parameter
    ), got["detail"]
    if params is not None and parameter not in ("q", "cursor"):
        assert str(params[parameter]) in got["detail"]  # the value as sent


async def test_every_other_error_has_the_same_shape(client: Client) -> None:
    c, tokens = client
    admin, auditor = bearer(tokens["admin"]), bearer(tokens["acme"])
    config_org = {"retention_days": 5}
    answers = [
        (await c.get("/api/v1/orgs"), 401, "unauthorized"),
        (await c.get("/api/v1/purge-runs", headers=auditor), 403, "forbidden"),
        (await c.get("/api/v1/orgs/globex/sessions", headers=auditor), 404, "not_found"),
        (await c.get("/api/v1/no-such-route", headers=admin), 404, "not_found"),
        (await c.delete("/api/v1/orgs/acme", headers=admin), 405, "method_not_allowed"),
        (await c.patch("/api/v1/orgs/acme", json=config_org, headers=admin), 409, "conflict"),
    ]
    for r, status, error in answers:
        assert r.status_code == status and r.headers["content-type"] == "application/json"
        body = r.json()
        assert set(body) == {"error", "detail"} and body["error"] == error, (status, body)
        assert isinstance(body["detail"], str) and body["detail"], body


async def test_a_405_allows_every_method_the_path_has(client: Client) -> None:
    """RFC 9110: a 405 lists in Allow every method the resource supports, here as the OpenAPI
    description documents them, not only the first route's."""
    c, tokens = client
    admin = bearer(tokens["admin"])
    spec = (await c.get("/openapi.json")).json()
    for path, item in spec["paths"].items():
        concrete = path.replace("{org}", "acme")
        answer = await c.request("PUT", concrete, headers=admin)
        assert answer.status_code == 405, (path, answer.status_code)
        allowed = {method.strip() for method in answer.headers["allow"].split(",")}
        documented = {method.upper() for method in item}
        assert allowed - {"HEAD"} == documented, (path, allowed, documented)
        if "GET" in documented:  # and HEAD too, since it is answered
            assert "HEAD" in allowed, (path, allowed)
            assert (await c.head(concrete, headers=admin)).status_code != 405, path


async def test_the_openapi_description_documents_the_400s_and_no_422(client: Client) -> None:
    c, _ = client
    spec = (await c.get("/openapi.json")).json()
    operations = {
        f"{method.upper()} {path}": operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
    }
    assert "422" not in json.dumps({k: o["responses"] for k, o in operations.items()})
    assert not {"HTTPValidationError", "ValidationError"} & set(
        spec.get("components", {}).get("schemas", {})
    )
    # every operation that takes a query parameter or a body says what a bad one gets
    takes = {
        label
        for label, operation in operations.items()
        if "requestBody" in operation
        or any(p["in"] == "query" for p in operation.get("parameters", ()))
    }
    assert takes == {
        "GET /api/v1/orgs/{org}/sessions",
        "GET /api/v1/orgs/{org}/sessions.csv",
        "GET /api/v1/orgs/{org}/usage",
        "GET /api/v1/orgs/{org}/usage.csv",
        "GET /api/v1/purge-runs",
        "PATCH /api/v1/orgs/{org}",
    }
    for label in takes:
        schema = operations[label]["responses"]["400"]["content"]["application/json"]["schema"]
        assert set(schema["required"]) == {"error", "parameter", "detail"}, label
        assert schema["properties"]["error"]["enum"] == ["bad_parameter"], label
    for label, operation in operations.items():
        for status, response in operation["responses"].items():
            if status.startswith("4"):
                schema = response["content"]["application/json"]["schema"]
                assert {"error", "detail"} <= set(schema["required"]), (label, status)


# --- duration_s: one value in JSON and CSV (issue 15) ---------------------------------------

# Doubles next to a rounding boundary of "%.6f" (tests/test_export.py), and issue 15's value.
DURATIONS = [
    0.0010728836059570312,
    0.0078125,
    0.5000005,
    5e-07,
    7278558.884838498,
    2188789.5800754996,
    1e7,
    0.0,
]


async def test_duration_is_the_same_number_in_json_as_in_the_csv(
    client: Client, imported: str
) -> None:
    c, tokens = client
    t = table_of(SessionRecord)
    engine = create_engine(sync_url(imported), poolclass=pool.NullPool)
    try:  # acme's first session again with each duration, beside the capture's own
        with engine.begin() as conn:
            row = conn.execute(select(t).where(t.c.org_id == "acme").limit(1)).mappings().one()
            copies = [{**row, "id": uuid.uuid4(), "duration_s": d} for d in DURATIONS]
            conn.execute(insert(t), copies)
    finally:
        engine.dispose()
    auditor = bearer(tokens["acme"])
    page = await c.get("/api/v1/orgs/acme/sessions", params={"limit": 1000}, headers=auditor)
    csv_text = (await c.get("/api/v1/orgs/acme/sessions.csv", headers=auditor)).text
    cells = {r["session_id"]: r["duration_s"] for r in csv.DictReader(io.StringIO(csv_text))}
    numbers = {s["session_id"]: s["duration_s"] for s in page.json()["sessions"]}
    assert numbers.keys() == cells.keys() and len(cells) > len(DURATIONS)
    for session_id, cell in cells.items():
        number = numbers[session_id]
        assert isinstance(number, float) and number == float(cell), (session_id, number, cell)
    # the capture's durations have more digits than the cell shows: rounding is needed
    stored = [d for (d,) in raw_query(imported, "select duration_s from sessions")]
    assert any(d != float(f"{d:.6f}") for d in stored if d not in DURATIONS)


# --- /docs and /redoc without a CDN (issue 15) ----------------------------------------------


class Links(HTMLParser):
    """The URLs a page makes a browser load: scripts, stylesheets, icons, images, frames."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []  # (tag, URL)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value and (name == "src" or (tag == "link" and name == "href")):
                self.urls.append((tag, value))


WANTED_TYPES = {"script": "javascript", "link": ("text/css", "image/")}


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_the_docs_pages_load_only_what_the_app_serves(client: Client, page: str) -> None:
    c, _ = client
    r = await c.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    links = Links()
    links.feed(r.text)
    tags = {tag for tag, _ in links.urls}
    assert "script" in tags and "link" in tags, links.urls  # a script and a style or an icon
    for tag, url in links.urls:
        absolute = urljoin(str(r.url), url)
        assert urlsplit(absolute).netloc == "test", url  # this host, no CDN
        asset = await c.get(absolute)
        kind = asset.headers.get("content-type", "")
        assert asset.status_code == 200 and len(asset.content) > 0, url
        wanted = WANTED_TYPES[tag]
        assert kind.startswith(wanted) if tag == "link" else wanted in kind, (url, kind)
    # the page names no other host anywhere (not even in its inline script)
    hosts = set(re.findall(r"(?:https?:)?//([\w.-]+)", r.text))
    assert hosts <= {"test"}, hosts
    spec = await c.get(urljoin(str(r.url), "/openapi.json"))
    assert spec.status_code == 200 and "/openapi.json" in r.text
