"""The web UI in Debian's real headless Chromium (Playwright's executable_path, no browser
download), served by uvicorn under a sub-path on 127.0.0.1, on a SQLite store filled by
importing a capture recorded through a real WireGuard tunnel. Every page is checked for console
errors and CSP violations and with axe-core (WCAG 2.2 AA), and saved as a screenshot artifact;
rows are compared with the API's answers. The same pages without a browser: tests/test_ui.py.

Synchronous on purpose: Playwright's sync API holds the main thread's event loop (see
tests/helpers/browser.py), so async setup runs on the served app's loop (`served.run`).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.helpers.browser import (
    PageOpener,
    ServedApp,
    assert_accessible,
    assert_clean,
    save_screenshot,
    serve_app,
)
from tests.helpers.replicate import replicate
from tests.helpers.stores import execute, imported_store
from tests.helpers.stores import query as raw_query
from tunnelacct.store.engine import make_engine
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token
from tunnelacct.web.users import create_user

PASSWORD = "correct horse battery staple"
ROOT = "/acct"  # served under a sub-path, as behind a proxy: every URL must be built from it
SESSION_ROW = "table.sessions tbody tr[id^='s-']"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with imported_store("sqlite", tmp_path_factory.mktemp("ui-browser")) as url:
        replicate(url, 10, 60, "acme")  # 154 acme sessions: pages to walk
        yield url


@pytest.fixture(scope="module")
def served(store: str) -> Iterator[tuple[ServedApp, str]]:
    """The app under ROOT, with users admin and audrey (acme), and an admin API token."""
    engine = make_engine(store)
    app = create_app(ApiContext(engine, config_orgs=frozenset({"acme", "globex"})))
    with serve_app(app, root_path=ROOT) as served_app:
        served_app.run(create_user(engine, "admin", Role.ADMIN, org_id=None, password=PASSWORD))
        served_app.run(
            create_user(engine, "audrey", Role.AUDITOR, org_id="acme", password=PASSWORD)
        )
        token, _row = served_app.run(create_token(engine, Role.ADMIN))
        yield served_app, token
        served_app.run(engine.dispose())


def api_ids(served: tuple[ServedApp, str], q: str) -> list[str]:
    """Every acme session id the API gives for `q`, newest first."""
    app, token = served
    ids: list[str] = []
    cursor = None
    with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {token}"}) as api:
        while True:
            params = {"q": q, "limit": "1000", **({"cursor": cursor} if cursor else {})}
            body = api.get("/api/v1/orgs/acme/sessions", params=params).json()
            ids += [s["session_id"] for s in body["sessions"]]
            cursor = body["next_cursor"]
            if cursor is None:
                return ids[::-1]


def set_session(store: str, assignments: str, session_id: object) -> None:
    """UPDATE one session in whichever SQLite partition holds it (`sessions` is their view)."""
    names = raw_query(
        store,
        "SELECT name FROM sqlite_master WHERE type = 'table'"
        " AND (name = 'sessions_default' OR name LIKE 'sessions_p%')",
    )
    for (name,) in names:
        execute(store, f"UPDATE {name} SET {assignments} WHERE id = ?", session_id)
    status = raw_query(store, "SELECT status FROM sessions WHERE id = ?", session_id)
    assert status, "no such session"


ONGOING = "status = 'ongoing', ended_at = NULL, close_reason = NULL"
ENDED = "status = 'completed', ended_at = last_seen_at, close_reason = 'fin'"


def signed_in(served: tuple[ServedApp, str], open_page: PageOpener, user: str = "admin") -> Page:
    """A page signed in through the login form, typed with the keyboard."""
    app, _token = served
    page = open_page(app.url)
    page.goto(f"{app.url}/orgs/acme/sessions")
    expect(page).to_have_url(re.compile(r"/acct/login\?next="))
    page.get_by_label("User name").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/acct/orgs/acme/sessions$"))
    return page


def shown_ids(page: Page) -> list[str]:
    return [
        row_id[2:]
        for row_id in page.locator(SESSION_ROW).evaluate_all("rows => rows.map(r => r.id)")
    ]


def checked(page: Page, name: str) -> None:
    """The checks of every page and state: clean console, axe, a screenshot."""
    assert_clean(page)
    assert_accessible(page, name)
    save_screenshot(page, f"ui-{name}")


def test_login_page_and_wrong_password(
    served: tuple[ServedApp, str], open_page: PageOpener
) -> None:
    app, _token = served
    page = open_page(app.url)
    page.goto(f"{app.url}/")
    expect(page).to_have_url(f"{app.url}/login")
    checked(page, "login")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    alert = page.get_by_role("alert")
    expect(alert).to_have_text("Wrong user name or password.")
    expect(page.get_by_label("User name")).to_have_attribute("aria-describedby", "login-error")
    checked(page, "login-wrong-password")


def test_filter_apply_shows_the_api_rows_and_a_bad_term_is_named(
    served: tuple[ServedApp, str], open_page: PageOpener
) -> None:
    page = signed_in(served, open_page)
    checked(page, "sessions")
    page.get_by_label("Filter", exact=True).fill("protocol:tcp")
    page.get_by_label("From").fill("")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"q=protocol%3Atcp"))
    expected = api_ids(served, "protocol:tcp")
    assert shown_ids(page) == expected[:50]
    checked(page, "sessions-filtered")
    page.get_by_label("Filter", exact=True).fill("protocol:tcp dport:70000")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_role("alert")).to_contain_text("dport:70000")
    expect(page.get_by_label("Filter", exact=True)).to_have_value("protocol:tcp dport:70000")
    checked(page, "sessions-invalid")
    page.get_by_label("Filter", exact=True).fill("dport:1")
    page.get_by_role("button", name="Apply").click()
    expect(page.get_by_text("No sessions match this filter and range.")).to_be_visible()
    checked(page, "sessions-empty")


def test_older_visits_every_row_once(served: tuple[ServedApp, str], open_page: PageOpener) -> None:
    app, _token = served
    page = signed_in(served, open_page)
    page.goto(f"{app.url}/orgs/acme/sessions?rows=40")
    seen = shown_ids(page)
    while page.get_by_role("link", name="Older →").count():
        page.get_by_role("link", name="Older →").click()
        page.wait_for_load_state()
        seen += shown_ids(page)
    assert seen == api_ids(served, "")
    assert len(seen) == len(set(seen)) == 154


def test_export_csv_downloads_the_api_csv(
    served: tuple[ServedApp, str], open_page: PageOpener, tmp_path: Path
) -> None:
    app, token = served
    page = signed_in(served, open_page)
    page.get_by_label("Filter", exact=True).fill("protocol:udp")
    page.get_by_role("button", name="Apply").click()
    expect(page).to_have_url(re.compile(r"q=protocol%3Audp"))
    with page.expect_download() as download_info:
        page.get_by_role("link", name=re.compile("Export CSV")).click()
    saved = tmp_path / "ui.csv"
    download_info.value.save_as(saved)
    with httpx.Client(base_url=app.url, headers={"Authorization": f"Bearer {token}"}) as api:
        expected = api.get("/api/v1/orgs/acme/sessions.csv", params={"q": "protocol:udp"})
    assert saved.read_bytes() == expected.content
    assert expected.content.count(b"\n") > 1


def test_keyboard_only_pass(served: tuple[ServedApp, str], open_page: PageOpener) -> None:
    app, _token = served
    page = signed_in(served, open_page)
    page.keyboard.press("Tab")
    skip = page.locator(":focus")
    expect(skip).to_have_text("Skip to content")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile("#main$"))
    # Tab through the form to the first row's disclosure, then open it with the keyboard
    for _ in range(60):
        page.keyboard.press("Tab")
        focused = page.locator(":focus")
        if focused.get_attribute("class") == "disclose":
            break
    else:
        raise AssertionError("no row disclosure reached with Tab")
    expect(focused).to_have_attribute("aria-expanded", "false")
    panel = page.locator(f"#{focused.get_attribute('aria-controls')}")
    expect(panel).to_be_hidden()
    page.keyboard.press("Enter")
    expect(focused).to_have_attribute("aria-expanded", "true")
    expect(panel).to_be_visible()
    checked(page, "sessions-row-open")
    # the README's picture (docs/images/ui-sessions.png is a copy of it)
    page.evaluate("window.scrollTo(0, 0)")
    save_screenshot(page, "readme-ui-sessions", full_page=False)
    panel.get_by_role("link", name="Every field of this session").focus()
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/acct/orgs/acme/sessions/[0-9a-f-]{36}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Session")
    checked(page, "session-detail")


def test_live_refresh_sees_a_session_end_without_reload(
    served: tuple[ServedApp, str], store: str, open_page: PageOpener
) -> None:
    app, _token = served
    newest = raw_query(
        store,
        "SELECT id FROM sessions WHERE org_id = 'acme' ORDER BY started_at DESC LIMIT 1",
    )[0][0]
    set_session(store, ONGOING, newest)
    try:
        page = signed_in(served, open_page)
        page.goto(f"{app.url}/orgs/acme/sessions?q=status%3Aongoing")
        expect(page.locator(SESSION_ROW)).to_have_count(1)
        page.evaluate("window.__notReloaded = true")
        checked(page, "sessions-live")
        set_session(store, ENDED, newest)
        # the page polls every 5 s: the row leaves within a few polls, without a reload
        expect(page.locator(SESSION_ROW)).to_have_count(0, timeout=60_000)
        assert page.evaluate("window.__notReloaded") is True
        expect(page.locator("#live-status")).to_have_text("0 ongoing sessions")
        assert_clean(page)
        # the login ends: the next refresh lands on the sign-in page, and the log says so
        # instead of showing that page inside its results
        page.context.clear_cookies()
        expect(page.locator("#live-status")).to_contain_text("signed out", timeout=60_000)
        expect(page.get_by_role("heading", name="Sessions of acme")).to_be_visible()
        assert page.evaluate("window.__notReloaded") is True
    finally:
        set_session(store, ENDED, newest)


def test_admin_pages(served: tuple[ServedApp, str], open_page: PageOpener) -> None:
    app, _token = served
    page = signed_in(served, open_page)
    page.goto(f"{app.url}/orgs")
    expect(page.get_by_role("heading", name="Orgs")).to_be_visible()
    checked(page, "orgs")
    page.goto(f"{app.url}/retention")
    expect(page.get_by_role("heading", name="Retention")).to_be_visible()
    checked(page, "retention")
    page.goto(f"{app.url}/orgs/acme/usage?from=2026-11-01&to=2026-11-30&by=user")
    expect(page.locator("svg.chart rect.bar")).to_have_count(30)
    checked(page, "usage")
    save_screenshot(page, "readme-ui-usage", full_page=False)
    page.goto(f"{app.url}/access-log")
    expect(page.get_by_role("heading", name="Access log")).to_be_visible()
    expect(page.locator("tbody tr").first).to_contain_text("user:admin")
    checked(page, "access-log")
    page.goto(f"{app.url}/tokens")
    checked(page, "tokens")
    page.get_by_label("Org (auditors)").fill("acme")
    page.get_by_label("Name").fill("auditor laptop")
    page.get_by_role("button", name="Create").click()
    created = page.get_by_label("Token")
    expect(created).to_have_value(re.compile(r"^tat_[0-9a-f]{16}_"))
    checked(page, "tokens-created")


def test_narrow_viewport_and_auditor(served: tuple[ServedApp, str], open_page: PageOpener) -> None:
    app, _token = served
    page = signed_in(served, open_page, user="audrey")
    page.set_viewport_size({"width": 360, "height": 740})
    page.goto(f"{app.url}/orgs/acme/sessions")
    expect(page.locator(SESSION_ROW).first).to_be_visible()
    checked(page, "sessions-narrow")
    response = page.goto(f"{app.url}/orgs/globex/sessions")
    assert response is not None and response.status == 404
    # the 404 page itself must be clean and accessible (its console error is the 404)
    assert_accessible(page, "not-found")
    save_screenshot(page, "ui-not-found")
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(f"{app.url}/login")


def test_started_times_are_utc(
    served: tuple[ServedApp, str], store: str, open_page: PageOpener
) -> None:
    page = signed_in(served, open_page)
    first_row = page.locator(SESSION_ROW).first
    session_id = (first_row.get_attribute("id") or "")[2:]
    stored = raw_query(
        store,
        "SELECT started_at FROM sessions WHERE id = ?",
        session_id.replace("-", ""),  # SQLite keeps a UUID as 32 hex digits
    )
    started = datetime.fromisoformat(str(stored[0][0])).replace(tzinfo=UTC)
    expect(first_row.locator("button.disclose")).to_contain_text(
        started.strftime("%Y-%m-%d %H:%M:%S")
    )


def test_everything_but_the_live_refresh_works_without_javascript(
    served: tuple[ServedApp, str], open_page: PageOpener
) -> None:
    app, _token = served
    page = open_page(app.url, java_script_enabled=False)
    page.goto(f"{app.url}/orgs/acme/sessions")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/acct/orgs/acme/sessions$"))
    page.get_by_label("Filter", exact=True).fill("protocol:udp")
    page.get_by_role("button", name="Apply").click()
    assert shown_ids(page) == api_ids(served, "protocol:udp")[:50]
    expect(page.locator("button.disclose").first).to_be_hidden()  # needs the script
    page.locator("a.detail-link").first.click()
    expect(page).to_have_url(re.compile(r"/acct/orgs/acme/sessions/[0-9a-f-]{36}$"))
    expect(page.get_by_role("heading", level=1)).to_contain_text("Session")
    # no console or axe checks here: both run scripts in the page, which this one refuses
    save_screenshot(page, "ui-session-detail-no-js")
