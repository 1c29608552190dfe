"""The web UI in-process (httpx ASGI transport) on a real store, SQLite and PostgreSQL, filled
by importing a capture recorded through a real WireGuard tunnel: sign-in and its security, org
scoping, and every page's rows checked against the API's answers and the rows read back
without tunnelacct's types. The same pages in a real Chromium: tests/test_ui_browser.py."""

from __future__ import annotations

import csv
import html
import io
import json
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from tests.helpers.replicate import replicate
from tests.helpers.stores import ENGINES, copied_store, execute, imported_store
from tests.helpers.stores import query as raw_query
from tunnelacct.config.model import WriterConfig
from tunnelacct.enums import CloseReason, EventKind, IpProto
from tunnelacct.retention.purge import purge
from tunnelacct.sessions.events import Attribution, SessionEvent
from tunnelacct.store.engine import make_engine
from tunnelacct.store.writer import SessionWriter
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token
from tunnelacct.web.ui.headers import CONTENT_SECURITY_POLICY
from tunnelacct.web.ui.logins import LoginExpiry
from tunnelacct.web.users import create_user

PASSWORD = "correct horse battery staple"
CONFIG_ORGS = frozenset({"acme", "globex", "unattributed"})  # wg-small.toml (+ default)
ROOT = Path(__file__).resolve().parents[1]
SESSION_ROW = re.compile(r'<tr id="s-([0-9a-f-]{36})">')


@dataclass
class Clock:
    """The app's clock, moved by the tests (login expiry, relative ranges)."""

    now: datetime = field(default_factory=lambda: datetime(2026, 12, 1, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module", params=ENGINES)
def capture_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """wg-small.pcap imported by the real CLI, once per engine, its acme sessions copied 10
    times a minute apart (154 in all: pages to walk); copied, never used, by tests."""
    with imported_store(request.param, tmp_path_factory.mktemp("ui")) as url:
        replicate(url, 10, 60, "acme")
        yield url


@pytest.fixture
def store_url(capture_store: str, tmp_path: Path) -> Iterator[str]:
    with copied_store(capture_store, tmp_path) as url:
        yield url


@dataclass
class Site:
    """A UI client, the API client beside it, and what the test may move."""

    ui: httpx.AsyncClient
    api: httpx.AsyncClient
    admin_token: str
    clock: Clock
    url: str

    async def sign_in(self, user: str = "admin", password: str = PASSWORD) -> httpx.Response:
        form = await self.ui.get("/login")
        return await self.ui.post(
            "/login",
            data={"csrf": csrf_of(form.text), "user": user, "password": password},
        )

    async def api_ids(self, org: str, q: str) -> list[str]:
        """Every session id the API gives for `q`, newest first (the log's order)."""
        ids: list[str] = []
        cursor = None
        while True:
            params = {"q": q, "limit": "1000", **({"cursor": cursor} if cursor else {})}
            r = await self.api.get(f"/api/v1/orgs/{org}/sessions", params=params)
            assert r.status_code == 200, r.text
            ids += [s["session_id"] for s in r.json()["sessions"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                return ids[::-1]


def csrf_of(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no CSRF field on the page"
    return match.group(1)


def alert_of(page: str) -> str:
    match = re.search(r'role="alert">(.*?)</p>', page, re.DOTALL)
    return html.unescape(match.group(1)) if match else ""


def field_value(page: str, field_id: str) -> str:
    match = re.search(rf'<input id="{field_id}"[^>]*? value="([^"]*)"', page, re.DOTALL)
    assert match, f"no input {field_id}"
    return html.unescape(match.group(1))


def as_time(stored: object) -> datetime:
    """A time as raw_query reads it (SQLite: text in UTC) as an aware datetime."""
    if isinstance(stored, datetime):
        return stored.astimezone(UTC)
    return datetime.fromisoformat(str(stored)).replace(tzinfo=UTC)


def started_times(url: str, org: str) -> list[datetime]:
    rows = raw_query(url, "SELECT started_at FROM sessions WHERE org_id = ? ORDER BY 1", org)
    return [as_time(t) for (t,) in rows]


def shown_ids(page: str) -> list[str]:
    return SESSION_ROW.findall(page)


def link_with(page: str, rel: str) -> str | None:
    match = re.search(rf'<a rel="{rel}" href="([^"]+)"', page)
    return html.unescape(match.group(1)) if match else None


@pytest.fixture
async def site(store_url: str) -> AsyncIterator[Site]:
    engine = make_engine(store_url)
    await create_user(engine, "admin", Role.ADMIN, org_id=None, password=PASSWORD)
    await create_user(engine, "audrey", Role.AUDITOR, org_id="acme", password=PASSWORD)
    token, _row = await create_token(engine, Role.ADMIN)
    clock = Clock()
    ctx = ApiContext(
        engine,
        config_orgs=CONFIG_ORGS,
        clock=clock,
        login_expiry=LoginExpiry(idle_s=600, max_age_s=3600),
    )
    app = create_app(ctx)
    transport = httpx.ASGITransport(app=app)
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        httpx.AsyncClient(transport=transport, base_url="http://ui.test") as ui,
        httpx.AsyncClient(transport=transport, base_url="http://ui.test", headers=headers) as api,
    ):
        yield Site(ui=ui, api=api, admin_token=token, clock=clock, url=store_url)
    await engine.dispose()


# --- signing in and out ---------------------------------------------------------------------


async def test_signed_out_pages_lead_to_the_login_form_and_back(site: Site) -> None:
    r = await site.ui.get("/orgs/acme/sessions", params={"q": "protocol:tcp"})
    assert r.status_code == 303
    target = urlsplit(r.headers["location"])
    assert target.path == "/login"
    back_to = parse_qs(target.query)["next"][0]
    assert back_to == "/orgs/acme/sessions?q=protocol%3Atcp"
    form = await site.ui.get(r.headers["location"])
    signed = await site.ui.post(
        "/login",
        data={"csrf": csrf_of(form.text), "user": "admin", "password": PASSWORD, "next": back_to},
    )
    assert signed.status_code == 303 and signed.headers["location"] == back_to
    cookie = signed.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # plain http, no trusted proxy saying https
    assert (await site.ui.get(back_to)).status_code == 200


async def test_next_never_leads_to_another_site(site: Site) -> None:
    form = await site.ui.get("/login")
    r = await site.ui.post(
        "/login",
        data={
            "csrf": csrf_of(form.text),
            "user": "admin",
            "password": PASSWORD,
            "next": "//evil.example/x",
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/"


async def test_a_post_without_its_csrf_token_is_403_login_included(site: Site) -> None:
    r = await site.ui.post("/login", data={"user": "admin", "password": PASSWORD})
    assert r.status_code == 403 and "CSRF" in r.text
    await site.ui.get("/login")  # the cookie half, without the field
    r = await site.ui.post("/login", data={"csrf": "guess", "user": "admin", "password": PASSWORD})
    assert r.status_code == 403
    assert (await site.sign_in()).status_code == 303
    r = await site.ui.post("/logout")
    assert r.status_code == 403
    assert (await site.ui.get("/orgs")).status_code == 200  # still signed in


async def test_wrong_password_is_told_without_saying_which_part(site: Site) -> None:
    for user in ("admin", "nobody"):
        r = await site.sign_in(user, "wrong password!")
        assert r.status_code == 200  # the form again, its error at the fields
        assert alert_of(r.text) == "Wrong user name or password."
        assert f'value="{user}"' in r.text  # the name is kept
        assert "set-cookie" not in r.headers or "tunnelacct_login=" not in r.headers["set-cookie"]


async def test_sign_in_rotates_the_cookie_and_logout_ends_it_on_the_server(site: Site) -> None:
    first = await site.sign_in()
    first_cookie = site.ui.cookies["tunnelacct_login"]
    second = await site.sign_in("audrey")
    assert first.status_code == second.status_code == 303
    second_cookie = site.ui.cookies["tunnelacct_login"]
    assert second_cookie.split(".")[0] != first_cookie.split(".")[0]
    page = await site.ui.get("/orgs/acme/sessions")
    assert (await site.ui.get("/logout")).status_code == 405  # a GET never changes state
    out = await site.ui.post("/logout", data={"csrf": csrf_of(page.text)})
    assert out.status_code == 303 and out.headers["location"] == "/login"
    # the browser might keep the cookie: the server refuses it
    site.ui.cookies.set("tunnelacct_login", second_cookie)
    assert (await site.ui.get("/orgs/acme/sessions")).status_code == 303
    ended = raw_query(
        site.url, "SELECT ended_at FROM web_logins WHERE id = ?", second_cookie.split(".")[0]
    )
    assert ended[0][0] is not None


async def test_a_login_ends_when_idle_and_at_its_absolute_age(site: Site) -> None:
    await site.sign_in()
    start = site.clock.now
    for minutes in (9, 18, 27, 36, 45, 54):  # a page every 9 min: never 10 idle
        site.clock.now = start + timedelta(minutes=minutes)
        assert (await site.ui.get("/orgs")).status_code == 200, minutes
    site.clock.now = start + timedelta(minutes=60)  # 6 idle, but an hour after sign-in
    assert (await site.ui.get("/orgs")).status_code == 303
    await site.sign_in()
    site.clock.now += timedelta(minutes=10)  # idle for 10 min
    assert (await site.ui.get("/orgs")).status_code == 303


async def test_failed_sign_ins_are_rate_limited_even_the_right_password(site: Site) -> None:
    for _ in range(5):
        assert "Wrong user name" in alert_of((await site.sign_in("admin", "not a password")).text)
    r = await site.sign_in("admin", PASSWORD)
    assert r.status_code == 429 and int(r.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in alert_of(r.text)
    assert "tunnelacct_login" not in site.ui.cookies


# --- scoping ----------------------------------------------------------------------------------


async def test_an_auditor_sees_only_their_org(site: Site) -> None:
    await site.sign_in("audrey")
    landing = await site.ui.get("/")
    assert landing.headers["location"] == "/orgs/acme/sessions"
    for path in ("/orgs/globex/sessions", "/orgs/globex/usage", "/orgs/nope/sessions"):
        r = await site.ui.get(path)
        assert r.status_code == 404 and r.headers["content-type"].startswith("text/html"), path
    globex_id = raw_query(site.url, "SELECT id FROM sessions WHERE org_id = 'globex' LIMIT 1")
    detail = await site.ui.get(f"/orgs/acme/sessions/{uuid_text(globex_id[0][0])}")
    assert detail.status_code == 404  # another org's session through one's own org
    assert (await site.ui.get("/retention")).status_code == 403


def uuid_text(stored: object) -> str:
    hex_id = stored.hex() if isinstance(stored, bytes) else str(stored).replace("-", "")
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"


# --- the session log ---------------------------------------------------------------------------

FILTERS = (
    "",
    "protocol:tcp",
    "protocol:udp",
    "dport:443",
    "-protocol:tcp bytes>1k",
    "status:completed duration>0.5",
)


@pytest.mark.parametrize("q", FILTERS)
async def test_the_log_shows_exactly_the_api_rows_for_a_filter(site: Site, q: str) -> None:
    await site.sign_in()
    expected = await site.api_ids("acme", q)
    seen: list[str] = []
    path: str | None = "/orgs/acme/sessions?" + httpx.QueryParams({"q": q, "rows": "25"}).__str__()
    while path is not None:
        r = await site.ui.get(path)
        assert r.status_code == 200
        seen += shown_ids(r.text)
        path = link_with(r.text, "next")
    assert seen == expected  # every row once, newest first, as the API has them
    oracle = raw_query(site.url, "SELECT count(*) FROM sessions WHERE org_id = 'acme'")[0][0]
    assert len(seen) <= oracle
    if not q:
        assert len(seen) == oracle


async def test_newer_walks_back_over_the_same_pages(site: Site) -> None:
    await site.sign_in()
    pages: list[list[str]] = []
    path: str | None = "/orgs/acme/sessions?rows=40"
    while path is not None:
        r = await site.ui.get(path)
        pages.append(shown_ids(r.text))
        last = r.text
        path = link_with(r.text, "next")
    assert len(pages) == 4  # 154 rows, 40 a page
    back: list[list[str]] = [shown_ids(last)]
    path = link_with(last, "prev")
    while path is not None:
        r = await site.ui.get(path)
        back.append(shown_ids(r.text))
        path = link_with(r.text, "prev")
    assert back[::-1] == pages


async def test_a_bad_filter_names_its_token_and_keeps_the_text(site: Site) -> None:
    await site.sign_in()
    q = 'protocol:tcp dport:70000 client:"bob laptop"'
    r = await site.ui.get("/orgs/acme/sessions", params={"q": q})
    assert r.status_code == 200  # a state of the page, the error at the field
    assert "dport:70000" in alert_of(r.text)
    assert field_value(r.text, "q") == q
    assert 'aria-invalid="true"' in r.text and 'aria-describedby="q-help filter-error"' in r.text
    assert not shown_ids(r.text) and "No sessions match" not in r.text
    bad_range = await site.ui.get("/orgs/acme/sessions", params={"from": "yesterday"})
    assert "from 'yesterday'" in alert_of(bad_range.text)


async def test_a_range_from_a_dashboard_link_is_the_api_filter_on_start(site: Site) -> None:
    await site.sign_in()
    rows = started_times(site.url, "acme")
    first = rows[3]
    last = rows[-4]
    from_ms = int(first.timestamp() * 1000)
    to_ms = int(last.timestamp() * 1000)
    r = await site.ui.get(
        "/orgs/acme/sessions", params={"from": str(from_ms), "to": str(to_ms), "rows": "500"}
    )
    start = datetime.fromtimestamp(from_ms / 1000, UTC)
    end = datetime.fromtimestamp(to_ms / 1000, UTC)
    oracle = [t for t in rows if start <= t < end]
    assert len(shown_ids(r.text)) == len(oracle) > 0
    site.clock.now = last + timedelta(hours=1)
    relative = await site.ui.get("/orgs/acme/sessions", params={"from": "now-2h", "rows": "500"})
    in_two_hours = [t for t in rows if t >= site.clock.now - timedelta(hours=2)]
    assert len(shown_ids(relative.text)) == len(in_two_hours)
    assert 'value="now-2h"' in relative.text  # stays relative on refresh


async def test_clicking_a_value_adds_its_term(site: Site) -> None:
    await site.sign_in()
    r = await site.ui.get("/orgs/acme/sessions", params={"q": "protocol:tcp", "rows": "5"})
    table = r.text[r.text.index("<tbody>") :]
    links = re.findall(r'href="(/orgs/acme/sessions\?[^"]+)"', table)
    wanted = [html.unescape(link) for link in links if "dport%3A" in link]
    assert wanted
    q = parse_qs(urlsplit(wanted[0]).query)["q"][0]
    assert q.startswith("protocol:tcp dport:")
    follow = await site.ui.get(wanted[0])
    assert shown_ids(follow.text) and set(shown_ids(follow.text)) <= set(
        await site.api_ids("acme", q)
    )


async def test_the_count_is_capped(site: Site) -> None:
    replicate(site.url, 65, 60, "acme")  # 154 x 66 = 10,164 sessions
    await site.sign_in()
    total = raw_query(site.url, "SELECT count(*) FROM sessions WHERE org_id = 'acme'")[0][0]
    assert total > 10_000
    r = await site.ui.get("/orgs/acme/sessions")
    assert "10,000+ sessions match" in r.text
    for q, protocol in (("protocol:udp", "udp"), ("protocol:tcp", "tcp")):
        count = raw_query(
            site.url,
            "SELECT count(*) FROM sessions WHERE org_id = 'acme' AND protocol = ?",
            protocol,
        )[0][0]
        page = await site.ui.get("/orgs/acme/sessions", params={"q": q})
        shown = f"{count:,} sessions match" if count <= 10_000 else "10,000+ sessions match"
        assert shown in page.text, q


async def test_empty_states_say_why(site: Site) -> None:
    await site.sign_in()
    no_match = await site.ui.get("/orgs/acme/sessions", params={"q": "dport:1"})
    assert "No sessions match this filter and range." in no_match.text
    execute(site.url, "UPDATE orgs SET retention_days = 3 WHERE id = 'acme'")
    engine = make_engine(site.url)
    try:
        done = await purge(engine, org_id="acme", now=site.clock.now)
    finally:
        await engine.dispose()
    assert done.deleted > 0
    purged = await site.ui.get("/orgs/acme/sessions")
    assert "purged by its retention" in purged.text
    after_cutoff = await site.ui.get("/orgs/acme/sessions", params={"from": "now-1d"})
    assert "No sessions match this filter and range." in after_cutoff.text
    execute(site.url, "UPDATE orgs SET logging = ? WHERE id = 'globex'", False)
    execute(site.url, "DELETE FROM sessions WHERE org_id = 'globex'")
    off = await site.ui.get("/orgs/globex/sessions")
    assert "Logging is off for org globex" in off.text


async def test_export_is_the_api_csv_of_the_same_filter_and_range(site: Site) -> None:
    await site.sign_in()
    rows = started_times(site.url, "acme")
    start = rows[20]
    params = {"q": "protocol:tcp", "from": start.isoformat()}
    ui_csv = await site.ui.get("/orgs/acme/sessions.csv", params=params)
    api_q = f"protocol:tcp started_after:{start.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}"
    api_csv = await site.api.get("/api/v1/orgs/acme/sessions.csv", params={"q": api_q})
    assert ui_csv.status_code == api_csv.status_code == 200
    assert ui_csv.content == api_csv.content
    parsed = list(csv.DictReader(io.StringIO(ui_csv.text)))
    tcp_after = rows[20:]
    assert len(parsed) <= len(tcp_after) and parsed
    assert {r["protocol"] for r in parsed} == {"tcp"}


def shown_as(name: str, value: object) -> str:
    """A field of the API's JSON as the detail page shows it: true and false as yes and no,
    null as null (a payload's as not known: a session from flow records)."""
    if value is None:
        text = "not known (flow record)" if name.startswith("payload_bytes_") else "null"
        return f'<span class="none">{text}</span>'
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def detail_cells(page: str) -> dict[str, str]:
    """Field -> the cell of the detail page's table, unescaped."""
    rows = re.findall(r"<tr><th scope=\"row\"><code>(\w+)</code></th><td>(.*?)</td></tr>", page)
    return {name: html.unescape(cell) for name, cell in rows}


async def test_detail_shows_every_field_as_the_api_does(site: Site) -> None:
    await site.sign_in()
    r = await site.api.get("/api/v1/orgs/acme/sessions", params={"limit": "1"})
    session = r.json()["sessions"][0]
    page = await site.ui.get(f"/orgs/acme/sessions/{session['session_id']}")
    assert page.status_code == 200
    cells = detail_cells(page.text)
    assert set(cells) == set(session)
    for name, value in session.items():
        assert cells[name] == shown_as(name, value), name
    assert (cells["midstream"], cells["estimated"], cells["incomplete"]) == ("no", "no", "no")
    assert session["community_id"] and session["community_id"] in page.text
    assert "flow record" not in page.text  # a captured session: payloads known, no notes


async def test_detail_of_a_flow_session_says_payloads_not_known_and_shows_its_flags(
    site: Site,
) -> None:
    """A session built from flow records (issue 20): NULL payloads, sampled, records lost."""
    (started,) = raw_query(site.url, "SELECT MIN(started_at) FROM sessions WHERE org_id = 'acme'")
    start = as_time(started[0]).timestamp()
    session_id = uuid.UUID("0196a0c0-0000-7000-8000-00000000f10a")
    event = SessionEvent(
        kind=EventKind.CLOSED,
        session_id=session_id,
        proto=IpProto.UDP,
        family=4,
        src_addr="100.64.0.2",
        src_port=51000,
        dst_addr="10.99.0.53",
        dst_port=53,
        started_ts=start,
        last_ts=start + 2,
        ended_ts=start + 2,
        bytes_tx=1000,
        bytes_rx=4000,
        packets_tx=10,
        packets_rx=10,
        payload_bytes_tx=None,
        payload_bytes_rx=None,
        close_reason=CloseReason.EXPORTER_FORCED,
        midstream=False,
        community_id="1:x",
        attribution=Attribution("acme"),
        interface="ipfix:10.0.0.9",
        estimated=True,
        incomplete=True,
        gateway="exporter-1",
    )
    engine = make_engine(site.url)
    try:
        writer = SessionWriter(engine, WriterConfig(), gateway="gw-own")
        await writer.submit([event])
        await writer.close()
    finally:
        await engine.dispose()
    await site.sign_in()
    r = await site.api.get("/api/v1/orgs/acme/sessions", params={"q": "estimated:true"})
    (session,) = r.json()["sessions"]
    page = await site.ui.get(f"/orgs/acme/sessions/{session_id}")
    assert page.status_code == 200
    cells = detail_cells(page.text)
    for name, value in session.items():
        assert cells[name] == shown_as(name, value), name
    assert cells["payload_bytes_tx"] == '<span class="none">not known (flow record)</span>'
    assert (cells["estimated"], cells["incomplete"]) == ("yes", "yes")
    assert (cells["gateway"], cells["close_reason"]) == ("exporter-1", "exporter_forced")
    assert "<strong>Estimated</strong>" in page.text
    assert "<strong>Incomplete</strong>" in page.text


# --- pages around the log --------------------------------------------------------------------


async def test_headers_of_every_ui_answer(site: Site) -> None:
    await site.sign_in()
    for path in ("/login", "/orgs/acme/sessions", "/static/ui/app.js", "/static/ui/app.css"):
        r = await site.ui.get(path)
        assert r.headers["content-security-policy"] == CONTENT_SECURITY_POLICY, path
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "same-origin"
    assert "content-security-policy" not in (await site.ui.get("/docs")).headers


async def test_static_files_fit_the_budget() -> None:
    static = Path(__file__).resolve().parents[1] / "tunnelacct" / "web" / "ui" / "static"
    assert sum(f.stat().st_size for f in static.iterdir()) < 50 * 1024


async def test_usage_page_is_the_api_report_with_links_to_the_log(site: Site) -> None:
    await site.sign_in()
    params = {"by": "user", "interval": "day", "from": "2026-11-01", "to": "2026-11-30"}
    page = await site.ui.get("/orgs/acme/usage", params=params)
    api = await site.api.get("/api/v1/orgs/acme/usage", params=params)
    assert page.status_code == api.status_code == 200
    body_rows = re.findall(r"<tr>\s*<th scope=\"row\">(.*?)</tr>", page.text, re.DOTALL)
    assert len(body_rows) == len(api.json()["rows"]) > 0
    for shown, row in zip(body_rows, api.json()["rows"], strict=True):
        numbers = [int(n.replace(",", "")) for n in re.findall(r'class="num">([\d,]+)<', shown)]
        assert numbers == [row[c] for c in api.json()["columns"][2:]]
        if row["user"]:
            link = html.unescape(re.search(r'href="([^"]+)"', shown).group(1))
            query = parse_qs(urlsplit(link).query)
            assert query["q"] == [f"user:{row['user']}"] and query["from"] == [row["day"]]
    assert page.text.count('<rect class="bar"') == 30  # a bar a day, zero where nothing ran
    ui_csv = await site.ui.get("/orgs/acme/usage.csv", params=params)
    api_csv = await site.api.get("/api/v1/orgs/acme/usage.csv", params=params)
    assert ui_csv.content == api_csv.content


async def test_retention_is_set_by_an_admin_for_orgs_the_api_owns(site: Site) -> None:
    await site.sign_in()
    page = await site.ui.get("/retention")
    assert page.status_code == 200
    token = csrf_of(page.text)
    owned = "acme-east"  # one of the API's orgs (not in the config)
    execute(
        site.url,
        "INSERT INTO orgs (id, name, logging, retention_days, updated_at) VALUES (?, ?, ?, ?, ?)",
        owned,
        owned,
        True,
        30,
        site.clock.now,
    )
    r = await site.ui.post(f"/retention/{owned}", data={"csrf": token, "retention_days": "45"})
    assert r.status_code == 303
    api = await site.api.get(f"/api/v1/orgs/{owned}")
    assert api.json()["retention_days"] == 45
    r = await site.ui.post(f"/retention/{owned}", data={"csrf": token, "retention_days": "0"})
    assert "retention_days '0'" in alert_of(r.text)
    r = await site.ui.post("/retention/acme", data={"csrf": token, "retention_days": "5"})
    assert r.status_code == 409 and "config file" in r.text
    r = await site.ui.post(f"/retention/{owned}", data={"retention_days": "forever"})
    assert r.status_code == 403
    assert (await site.api.get(f"/api/v1/orgs/{owned}")).json()["retention_days"] == 45


async def test_the_ui_works_under_a_root_path(store_url: str) -> None:
    engine = make_engine(store_url)
    await create_user(engine, "admin", Role.ADMIN, org_id=None, password=PASSWORD)
    app = create_app(ApiContext(engine))
    transport = httpx.ASGITransport(app=app, root_path="/ta")
    async with httpx.AsyncClient(transport=transport, base_url="http://ui.test") as ui:
        r = await ui.get("/ta/orgs/acme/sessions")
        assert r.status_code == 303 and r.headers["location"].startswith("/ta/login?next=")
        form = await ui.get("/ta/login")
        assert 'action="/ta/login"' in form.text and 'href="/ta/static/ui/app.css' in form.text
        signed = await ui.post(
            "/ta/login",
            data={"csrf": csrf_of(form.text), "user": "admin", "password": PASSWORD},
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/ta/"
        assert "Path=/ta" in signed.headers["set-cookie"]
        page = await ui.get("/ta/orgs/acme/sessions")
        hrefs = re.findall(r'href="([^"#]+)"', page.text)
        assert hrefs and all(h.startswith(("/ta/", "data:")) for h in hrefs), hrefs[:5]
    await engine.dispose()


def grafana_expanded(url: str, org: str, first: datetime, last: datetime) -> str:
    """A dashboard data link's URL as Grafana expands it for `org`'s bar over first..last:
    `${__from}` is epoch milliseconds, `:date:iso` RFC 3339 UTC, `:percentencode` encodes."""
    expansions = {
        "${tunnelacct_api}": "",
        "${__field.labels.org:percentencode}": quote(org, safe=""),
        "${__from:date:iso}": first.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "${__to:date:iso}": last.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "${__from}": str(int(first.timestamp() * 1000)),
        "${__to}": str(int(last.timestamp() * 1000)),
    }
    for variable, value in expansions.items():
        url = url.replace(variable, value)
    assert "$" not in url, f"a variable the test does not expand: {url}"
    return url


async def test_dashboard_links_open_the_orgs_log_and_usage_for_the_range(site: Site) -> None:
    model = json.loads((ROOT / "grafana/dashboards/tunnelacct-traffic.json").read_text("utf-8"))
    links = [
        link["url"]
        for panel in model["panels"]
        for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])
        if link["url"].startswith("${tunnelacct_api}/orgs/")
    ]
    assert {urlsplit(url).path.rsplit("/", 1)[1] for url in links} == {"sessions", "usage"}
    await site.sign_in()
    rows = started_times(site.url, "acme")
    first = rows[10].replace(microsecond=0)
    last = rows[-10].replace(microsecond=0)
    for url in links:
        page = await site.ui.get(grafana_expanded(url, "acme", first, last))
        assert page.status_code == 200 and not alert_of(page.text), url
        if "/sessions" in url:
            expected = [t for t in rows if first <= t < last]
            count = re.search(r'data-count="(\d+)"', page.text)
            assert count and int(count.group(1)) == len(expected) > 0
        else:
            params = {"by": "user", "interval": "day", "from": first.date().isoformat()}
            api = await site.api.get(
                "/api/v1/orgs/acme/usage", params={**params, "to": last.date().isoformat()}
            )
            body_rows = re.findall(r"<tr>\s*<th scope=\"row\">", page.text)
            assert len(body_rows) == len(api.json()["rows"]) > 0


async def test_tokens_are_made_shown_once_and_revoked_by_an_admin(site: Site) -> None:
    await site.sign_in()
    page = await site.ui.get("/tokens")
    token = csrf_of(page.text)
    bad = await site.ui.post(
        "/tokens", data={"csrf": token, "role": "auditor", "org": "acme", "expires": "90x"}
    )
    assert "--expires '90x'" in alert_of(bad.text)
    made = await site.ui.post(
        "/tokens",
        data={"csrf": token, "role": "auditor", "org": "acme", "name": "audit", "expires": "90d"},
    )
    text = field_value(made.text, "new-token")
    assert text.startswith("tat_")
    assert text not in (await site.ui.get("/tokens")).text  # shown once
    token_id = text.split("_")[1]
    stored = raw_query(
        site.url, "SELECT role, org_id, name, expires_at FROM api_tokens WHERE id = ?", token_id
    )
    assert stored[0][:3] == ("auditor", "acme", "audit")
    assert as_time(stored[0][3]) == site.clock.now + timedelta(days=90)
    bearer = {"Authorization": f"Bearer {text}"}
    assert (await site.ui.get("/api/v1/orgs/acme/sessions", headers=bearer)).status_code == 200
    assert (await site.ui.get("/api/v1/orgs/globex/sessions", headers=bearer)).status_code == 404
    listed = (await site.ui.get("/tokens")).text
    row = re.search(rf"<code>{token_id}</code>.*?</tr>", listed, re.DOTALL)
    assert row and "2026-12-01 00:00:00" in row.group(0)  # last used, on the app's clock
    revoked = await site.ui.post(f"/tokens/{token_id}/revoke", data={"csrf": token})
    assert revoked.status_code == 303
    assert (await site.ui.get("/api/v1/orgs/acme/sessions", headers=bearer)).status_code == 401
    no_csrf = await site.ui.post("/tokens", data={"role": "admin", "expires": "never"})
    assert no_csrf.status_code == 403
    await site.sign_in("audrey")
    assert (await site.ui.get("/tokens")).status_code == 403
    assert (await site.ui.get("/access-log")).status_code == 403


async def test_the_access_log_records_ui_and_api_reads(site: Site) -> None:
    await site.sign_in()
    page = await site.ui.get("/orgs/acme/sessions", params={"q": "protocol:udp", "rows": "7"})
    shown = len(shown_ids(page.text))
    export = await site.ui.get("/orgs/acme/sessions.csv", params={"q": "protocol:tcp"})
    exported = len(list(csv.DictReader(io.StringIO(export.text))))
    await site.api.get("/api/v1/orgs/globex/sessions")
    logged = raw_query(
        site.url,
        "SELECT actor, via, what, filter_text, rows, status FROM access_log ORDER BY id",
    )
    assert logged == [
        ("user:admin", "ui", "sessions", "protocol:udp", shown, 200),
        ("user:admin", "ui", "sessions.csv", "protocol:tcp", exported, 200),
        (f"token:{site.admin_token.split('_')[1]}", "api", "sessions", "", 7, 200),
    ]
    listing = await site.ui.get("/access-log", params={"org": "acme"})
    body = listing.text[listing.text.index("<tbody>") :]
    assert body.count("<tr>") == 2 and "user:admin" in body and "token:" not in body


async def test_a_form_of_too_many_fields_is_400_not_500(site: Site) -> None:
    await site.sign_in()
    body = "&".join(f"f{n}=x" for n in range(100))
    r = await site.ui.post(
        "/logout", content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 400 and "more than 32 fields" in r.text
    assert (await site.ui.get("/orgs")).status_code == 200  # still signed in
