#!/usr/bin/env python3
"""Write the REST API's OpenAPI description to docs/openapi.json (or check that it is current).

    .venv/bin/python scripts/export-openapi.py           # regenerate docs/openapi.json
    .venv/bin/python scripts/export-openapi.py --check   # exit 1 when it differs from the app

The document is what `create_app(ctx)` serves at /openapi.json, with sorted keys, an indent of
2 and a trailing newline, so that a change of the API shows as a readable diff of the file.
tests/test_openapi.py fails when the file and the app differ.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import create_async_engine

from tunnelacct.web.app import ApiContext, create_app

DOCUMENT = Path(__file__).resolve().parents[1] / "docs" / "openapi.json"
REGENERATE = ".venv/bin/python scripts/export-openapi.py"


def openapi_schema() -> dict[str, Any]:
    """The app's OpenAPI description. Building it opens no database connection: the engine
    is only the context the app is made with."""
    engine = create_async_engine("sqlite+aiosqlite://")
    try:
        return create_app(ApiContext(engine)).openapi()
    finally:
        engine.sync_engine.dispose()


def openapi_text(schema: dict[str, Any]) -> str:
    """`schema` as docs/openapi.json holds it."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args()
    text = openapi_text(openapi_schema())
    if args.check:
        current = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else ""
        if current != text:
            print(f"{DOCUMENT} is not the app's OpenAPI description: run {REGENERATE}")
            return 1
        return 0
    DOCUMENT.write_text(text, encoding="utf-8")
    print(f"wrote {DOCUMENT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
