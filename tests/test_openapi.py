"""docs/openapi.json is the OpenAPI description the app serves, byte for byte."""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

import httpx
from sqlalchemy.ext.asyncio import create_async_engine

from tunnelacct.web.app import ApiContext, create_app

ROOT = Path(__file__).resolve().parents[1]
DOCUMENT = ROOT / "docs" / "openapi.json"
EXPORTER = ROOT / "scripts" / "export-openapi.py"


def exporter() -> ModuleType:
    """scripts/export-openapi.py as a module (its name is not an identifier)."""
    spec = importlib.util.spec_from_file_location("export_openapi", EXPORTER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_docs_openapi_json_is_what_the_app_serves() -> None:
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        transport = httpx.ASGITransport(app=create_app(ApiContext(engine)))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            served = await client.get("/openapi.json")
    finally:
        await engine.dispose()
    assert served.status_code == 200
    documented = json.loads(DOCUMENT.read_text(encoding="utf-8"))
    if documented != served.json():
        module = exporter()
        diff = difflib.unified_diff(
            DOCUMENT.read_text(encoding="utf-8").splitlines(),
            module.openapi_text(served.json()).splitlines(),
            "docs/openapi.json",
            "the app's /openapi.json",
            lineterm="",
            n=2,
        )
        raise AssertionError(
            f"docs/openapi.json is out of date: run {module.REGENERATE}\n" + "\n".join(diff)
        )


def test_docs_openapi_json_is_written_as_the_exporter_writes_it() -> None:
    module = exporter()
    text = DOCUMENT.read_text(encoding="utf-8")
    assert text == module.openapi_text(json.loads(text)), (
        f"docs/openapi.json is not sorted, indented by 2 and ended by a newline: run "
        f"{module.REGENERATE}"
    )
