"""The access log (issue 19) through the real API in-process, on SQLite and PostgreSQL, filled
by importing the recorded WireGuard capture: each read of sessions or usage is a row of
`access_log` and one "tunnelacct.access" line, with the rows the answer's body holds (counted
from the JSON and from the CSV parsed by the csv module); denied requests leave no row."""

from __future__ import annotations

import asyncio
import csv
import errno
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator, MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.helpers.stores import (
    ENGINES,
    REFUSED,
    copied_store,
    imported_store,
    refuse_writes,
)
from tests.helpers.stores import query as raw_query
from tunnelacct.query import export as export_module
from tunnelacct.store.engine import make_engine
from tunnelacct.web.accesslog import (
    Access,
    AccessTarget,
    AccessVia,
    recent_access,
    record_access,
)
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)  # the app's clock: each access's time
ACCESS_COLUMNS = "org_id, actor, role, via, what, filter_text, rows, status, at"


@pytest.fixture(scope="module", params=ENGINES)
def capture_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """wg-small.pcap imported by the real CLI, once per engine: copied, never used, by tests."""
    with imported_store(request.param, tmp_path_factory.mktemp("access")) as url:
        yield url


@pytest.fixture
def imported(capture_store: str, tmp_path: Path) -> Iterator[str]:
    """The URL of this test's own copy of the imported capture."""
    with copied_store(capture_store, tmp_path) as url:
        yield url


class Api:
    """The app on a test's store, an httpx client of it, and tokens by name."""

    def __init__(self, app: FastAPI, client: httpx.AsyncClient, ids: dict[str, str]) -> None:
        self.app = app
        self.client = client
        self.ids = ids  # token ids by name
        self.headers: dict[str, dict[str, str]] = {}

    async def get(self, token: str, path: str, **params: str) -> httpx.Response:
        return await self.client.get(path, params=params, headers=self.headers[token])


@pytest.fixture
async def api(imported: str) -> AsyncIterator[Api]:
    engine = make_engine(imported)
    tokens = {
        "acme": await create_token(engine, Role.AUDITOR, org_id="acme"),
        "admin": await create_token(engine, Role.ADMIN),
    }
    app = create_app(ApiContext(engine, clock=lambda: NOW))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        api = Api(app, client, {name: row.id for name, (_text, row) in tokens.items()})
        for name, (text, _row) in tokens.items():
            api.headers[name] = {"Authorization": f"Bearer {text}"}
        yield api
    await engine.dispose()


def access_rows(url: str) -> list[tuple[Any, ...]]:
    """The access log as stored, oldest first, read without tunnelacct's types."""
    return raw_query(url, f"select {ACCESS_COLUMNS} from access_log order by id")


def csv_records(body: bytes) -> list[dict[str, str]]:
    """The records of a CSV body, by the csv module (a quoted line break is no new record)."""
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))


AT = NOW.strftime("%Y-%m-%d %H:%M:%S.%f")  # NOW as the store holds it (pg.py `plain`)


async def test_a_page_of_sessions_is_logged_with_who_what_filter_and_its_rows(
    api: Api, imported: str
) -> None:
    q = "protocol:udp"
    answer = await api.get("acme", "/api/v1/orgs/acme/sessions", q=q, limit="1")
    assert answer.status_code == 200
    shown = len(answer.json()["sessions"])
    assert shown == 1  # a page cut by its limit: its rows, not the count of matches
    assert answer.json()["count"] > shown
    everything = await api.get("admin", "/api/v1/orgs/acme/sessions")
    every_row = len(everything.json()["sessions"])
    actor = f"token:{api.ids['acme']}"
    admin = f"token:{api.ids['admin']}"
    assert access_rows(imported) == [
        ("acme", actor, "auditor", "api", "sessions", q, shown, 200, AT),
        ("acme", admin, "admin", "api", "sessions", "", every_row, 200, AT),
    ]


async def test_a_csv_export_is_logged_with_the_rows_its_body_holds(api: Api, imported: str) -> None:
    q = "-protocol:udp"
    answer = await api.get("admin", "/api/v1/orgs/acme/sessions.csv", q=q)
    assert answer.status_code == 200
    records = csv_records(answer.content)
    assert len(records) > 0
    admin = f"token:{api.ids['admin']}"
    assert access_rows(imported) == [
        ("acme", admin, "admin", "api", "sessions.csv", q, len(records), 200, AT),
    ]


async def cut_download(app: FastAPI, path: str, token_headers: dict[str, str], kept: int) -> bytes:
    """GET `path` straight through the ASGI interface from a client whose connection breaks
    (EPIPE) when the answer's body message after the first `kept` is sent; the body it got."""
    got: list[bytes] = []
    requested = False

    async def receive() -> dict[str, Any]:
        nonlocal requested
        if not requested:
            requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # a client that sends nothing more, until cancelled
        raise AssertionError("a wait that nothing ends ended")

    async def send(message: MutableMapping[str, Any]) -> None:
        if message["type"] != "http.response.body":
            return
        if len(got) == kept:
            raise OSError(errno.EPIPE, "the client went away")
        got.append(message["body"])

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")]
        + [(name.lower().encode(), value.encode()) for name, value in token_headers.items()],
        "client": ("127.0.0.1", 40000),
        "server": ("test", 80),
    }
    with pytest.raises(OSError, match="the client went away"):
        await app(scope, receive, send)
    return b"".join(got)


async def test_a_cut_export_is_logged_with_the_rows_sent_before_the_cut(
    api: Api, imported: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ranges of 3 sessions: the header, then 3 sessions a body message
    monkeypatch.setattr(export_module, "PAGE_SIZE", 3)
    (total,) = raw_query(imported, "select count(*) from sessions where org_id = 'acme'")[0]
    assert total > 6
    body = await cut_download(api.app, "/api/v1/orgs/acme/sessions.csv", api.headers["acme"], 2)
    records = csv_records(body)
    assert len(records) == 3  # what the client got: the header and one range
    actor = f"token:{api.ids['acme']}"
    # 499: nginx's status of a request whose client went away before the answer was whole
    assert access_rows(imported) == [
        ("acme", actor, "auditor", "api", "sessions.csv", "", len(records), 499, AT),
    ]


def usage_range(url: str) -> dict[str, str]:
    """The from and to of every day the usage rollup holds of acme."""
    ((first, last),) = raw_query(
        url, "select min(day), max(day) from usage_days where org_id = 'acme'"
    )
    return {"from": str(first), "to": str(last)}


async def test_usage_reports_are_logged_with_their_filter_and_rows(api: Api, imported: str) -> None:
    params = {**usage_range(imported), "by": "user,protocol"}
    answer = await api.get("acme", "/api/v1/orgs/acme/usage", **params, q="user:alice")
    as_csv = await api.get("acme", "/api/v1/orgs/acme/usage.csv", **params)
    assert answer.status_code == as_csv.status_code == 200
    report_rows = len(answer.json()["rows"])
    csv_rows = len(csv_records(as_csv.content))
    assert report_rows > 0 and csv_rows > 0
    actor = f"token:{api.ids['acme']}"
    assert access_rows(imported) == [
        ("acme", actor, "auditor", "api", "usage", "user:alice", report_rows, 200, AT),
        ("acme", actor, "auditor", "api", "usage.csv", "", csv_rows, 200, AT),
    ]


async def test_denied_requests_leave_no_row(api: Api, imported: str) -> None:
    for tail in ("sessions", "sessions.csv", "usage", "usage.csv"):
        # another org's: 404, exactly like an org that does not exist
        assert (await api.get("acme", f"/api/v1/orgs/globex/{tail}")).status_code == 404
        assert (await api.client.get(f"/api/v1/orgs/acme/{tail}")).status_code == 401
    # a filter that does not parse reads nothing either
    bad = await api.get("acme", "/api/v1/orgs/acme/sessions", q="dport:70000")
    assert bad.status_code == 400
    assert access_rows(imported) == []


# key=value pairs of an access line: a value as is, or a JSON string
_PAIR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def pairs(line: str) -> dict[str, str]:
    """An access line's pairs, JSON strings decoded; the whole line must be pairs."""
    found = {
        key: json.loads(value) if value.startswith('"') else value
        for key, value in _PAIR.findall(line)
    }
    assert " ".join(f"{key}={value}" for key, value in _PAIR.findall(line)) == line
    return found


async def test_each_read_is_one_structured_log_line_too(
    api: Api, imported: str, caplog: pytest.LogCaptureFixture
) -> None:
    q = 'client:"alice laptop" protocol:tcp'
    with caplog.at_level(logging.INFO, logger="tunnelacct.access"):
        answer = await api.get("acme", "/api/v1/orgs/acme/sessions", q=q)
    assert answer.status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "tunnelacct.access"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert pairs(lines[0]) == {
        "at": NOW.isoformat(),
        "org": "acme",
        "actor": f"token:{api.ids['acme']}",
        "role": "auditor",
        "via": "api",
        "what": "sessions",
        "filter": q,
        "rows": str(len(answer.json()["sessions"])),
        "status": "200",
    }


async def test_an_access_the_store_refuses_is_logged_and_fails_no_read(
    api: Api, imported: str, caplog: pytest.LogCaptureFixture
) -> None:
    refuse_writes(imported, "access_log", "INSERT")
    with caplog.at_level(logging.INFO):
        answer = await api.get("acme", "/api/v1/orgs/acme/sessions.csv")
    assert answer.status_code == 200 and len(csv_records(answer.content)) > 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(REFUSED in w for w in warnings), warnings
    lines = [r.getMessage() for r in caplog.records if r.name == "tunnelacct.access"]
    assert len(lines) == 1 and pairs(lines[0])["rows"] == str(len(csv_records(answer.content)))
    assert access_rows(imported) == []


async def read_every_page(engine: AsyncEngine, org_id: str | None, limit: int) -> list[int]:
    """The ids of recent_access's pages of `org_id`, `limit` rows each, followed to the end."""
    seen: list[int] = []
    before_id = None
    while True:
        page = await recent_access(engine, org_id=org_id, limit=limit, before_id=before_id)
        assert org_id is None or {row.org_id for row in page} <= {org_id}
        seen += [int(row.id or 0) for row in page]
        if len(page) < limit:
            return seen
        before_id = page[-1].id


async def test_recent_access_pages_newest_first_by_id_each_row_once(imported: str) -> None:
    engine = make_engine(imported)
    try:
        for n in range(7):
            for org in ("acme", "globex"):
                access = Access(
                    at=NOW + timedelta(minutes=n),
                    org_id=org,
                    actor="user:alice",
                    role="admin",
                    via=AccessVia.UI,
                    what=AccessTarget.SESSION,
                    filter_text=f"read {n}",
                    rows=1,
                )
                await record_access(engine, access)
        newest_first = "select id from access_log order by id desc"
        every_id = [int(i) for (i,) in raw_query(imported, newest_first)]
        acme_first = "select id from access_log where org_id = ? order by id desc"
        acme_ids = [int(i) for (i,) in raw_query(imported, acme_first, "acme")]
        assert len(every_id) == 14 and len(acme_ids) == 7
        assert await read_every_page(engine, None, 3) == every_id
        assert await read_every_page(engine, "acme", 3) == acme_ids
    finally:
        await engine.dispose()
