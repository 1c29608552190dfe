"""A NUL character in a filter value or an org id (issue 16, item 7): 500s on PostgreSQL, whose
text cannot hold one; a 400 naming the term, or a 404, on both engines."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from tests.helpers.stores import imported_store
from tunnelacct.store.engine import make_engine
from tunnelacct.web.app import ApiContext, create_app
from tunnelacct.web.auth import Role, create_token

pytestmark = pytest.mark.hardening


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    with imported_store(request.param, tmp_path_factory.mktemp("nul")) as url:
        yield url


@pytest.fixture
async def api(store: str) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    engine = make_engine(store)
    token = (await create_token(engine, Role.ADMIN))[0]
    transport = httpx.ASGITransport(app=create_app(ApiContext(engine)))
    async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
        yield client, {"Authorization": f"Bearer {token}"}
    await engine.dispose()


@pytest.mark.parametrize("key", ["client", "user", "resource"])
@pytest.mark.parametrize("route", ["sessions", "sessions.csv"])
async def test_a_nul_in_a_filter_value_is_a_400_naming_the_term(
    api: tuple[httpx.AsyncClient, dict[str, str]], key: str, route: str
) -> None:
    client, auth = api
    term = f"{key}:a\x00b"
    r = await client.get(f"/api/v1/orgs/acme/{route}", params={"q": term}, headers=auth)
    assert r.status_code == 400, r.text
    body = r.json()
    assert (body["parameter"], body["token"]) == ("q", term)
    assert "NUL" in body["expected"]


async def test_a_nul_in_an_org_id_is_a_404(api: tuple[httpx.AsyncClient, dict[str, str]]) -> None:
    client, auth = api
    for path in ("/api/v1/orgs/acme%00", "/api/v1/orgs/acme%00/sessions"):
        r = await client.get(path, headers=auth)
        assert r.status_code == 404, (path, r.text)
        assert r.json()["error"] == "not_found"
