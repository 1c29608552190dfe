"""The browser-test harness (tests/helpers/browser.py, issue 19) against a tiny app of its own:
its checks pass on a clean page and fail on a broken one, so that a UI test passing means
something. The oracles are the pages' own markup: a script the CSP must block, an input without
a label, and the PNG format's signature.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.helpers.browser import (
    PageOpener,
    ServedApp,
    assert_accessible,
    assert_clean,
    chromium_path,
    save_screenshot,
    screenshots_dir,
    serve_app,
)

CSP = "default-src 'self'; script-src 'self'"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"  # RFC 2083, 12.11


def html_page(request: Request, body: str, *, script: str = "") -> HTMLResponse:
    """An HTML page under CSP; `script` is the name of a same-origin script it loads."""
    root = request.scope.get("root_path", "")
    tag = f'<script src="{root}/{script}"></script>' if script else ""
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>harness</title>'
        f'<link rel="icon" href="{root}/favicon.svg">{tag}</head>'
        f"<body><main><h1>Harness</h1>{body}</main></body></html>"
    )
    return HTMLResponse(html, headers={"Content-Security-Policy": CSP})


async def clean(request: Request) -> HTMLResponse:
    return html_page(request, '<p id="out">script did not run</p>', script="app.js")


async def inline_script(request: Request) -> HTMLResponse:
    inline = '<script>document.getElementById("out").textContent = "inline ran"</script>'
    return html_page(request, f'<p id="out">inline did not run</p>{inline}')


async def throws(request: Request) -> HTMLResponse:
    return html_page(request, "<p>a script that throws</p>", script="throws.js")


async def unlabelled(request: Request) -> HTMLResponse:
    return html_page(request, '<form><input type="text" name="q"></form>')


async def labelled(request: Request) -> HTMLResponse:
    return html_page(request, '<form><label for="q">Filter</label><input id="q" name="q"></form>')


async def app_js(request: Request) -> Response:
    # deferred until the body exists: the script is in <head>
    code = (
        'document.addEventListener("DOMContentLoaded", () => {'
        ' document.getElementById("out").textContent = "script ran"; });'
    )
    return Response(code, media_type="text/javascript")


async def throws_js(request: Request) -> Response:
    return Response('throw new Error("harness boom");', media_type="text/javascript")


async def favicon(request: Request) -> Response:
    # without an icon, the browser's own request for /favicon.ico is a console 404
    icon = '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16"/>'
    return Response(icon, media_type="image/svg+xml")


def harness_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/", clean),
            Route("/inline", inline_script),
            Route("/throws", throws),
            Route("/unlabelled", unlabelled),
            Route("/labelled", labelled),
            Route("/app.js", app_js),
            Route("/throws.js", throws_js),
            Route("/favicon.svg", favicon),
        ]
    )


@pytest.fixture(scope="module")
def served() -> Iterator[ServedApp]:
    with serve_app(harness_app()) as served:
        yield served


def test_a_page_with_only_same_origin_script_is_clean(
    served: ServedApp, open_page: PageOpener
) -> None:
    page = open_page(served.url)
    page.goto("/")
    assert page.text_content("#out") == "script ran"
    # the CSP listener is an init script: it ran although the page's CSP forbids inline script
    assert page.evaluate("window.__cspViolations") == []
    assert_clean(page)


def test_an_inline_script_under_csp_fails_the_clean_check(
    served: ServedApp, open_page: PageOpener
) -> None:
    page = open_page(served.url)
    page.goto("/inline")
    assert page.text_content("#out") == "inline did not run"  # the browser enforced the CSP
    # the init script's listener saw it (the event comes in a task after the violation)
    page.wait_for_function("window.__cspViolations.length === 1")
    with pytest.raises(AssertionError, match=r"CSP script-src-elem blocked inline"):
        assert_clean(page)


def test_a_csp_violation_is_still_reported_after_navigating_away(
    served: ServedApp, open_page: PageOpener
) -> None:
    page = open_page(served.url)
    page.goto("/inline")
    page.goto("/")
    assert page.text_content("#out") == "script ran"
    # the console error, logged at once; the event may not have fired before the navigation
    with pytest.raises(AssertionError, match="inline script violates the following Content Sec"):
        assert_clean(page)


def test_an_uncaught_script_error_fails_the_clean_check(
    served: ServedApp, open_page: PageOpener
) -> None:
    page = open_page(served.url)
    page.goto("/throws")
    with pytest.raises(AssertionError, match="harness boom"):
        assert_clean(page)


def test_an_unlabelled_input_fails_the_accessibility_check(
    served: ServedApp, open_page: PageOpener
) -> None:
    page = open_page(served.url)
    page.goto("/unlabelled")
    with pytest.raises(AssertionError, match=r"label \(critical\): .* at input"):
        assert_accessible(page, "unlabelled form")


def test_a_labelled_input_passes_the_accessibility_check(
    served: ServedApp, open_page: PageOpener
) -> None:
    page = open_page(served.url)
    page.goto("/labelled")
    assert_accessible(page, "labelled form")
    assert_clean(page)  # axe-core, injected over the DevTools protocol, is not blocked by CSP


def test_a_screenshot_is_a_full_page_png(
    served: ServedApp, open_page: PageOpener, tmp_path: Path
) -> None:
    page = open_page(served.url, viewport={"width": 360, "height": 200})
    page.goto("/labelled")
    path = save_screenshot(page, "harness-labelled", {"TUNNELACCT_ARTIFACTS": str(tmp_path)})
    assert path == tmp_path / "screenshots" / "harness-labelled.png"
    png = path.read_bytes()
    assert png[:8] == PNG_SIGNATURE
    # IHDR, the first chunk: width and height in pixels, big-endian
    width, height = struct.unpack(">II", png[16:24])
    assert width == 360
    assert height == page.evaluate("document.documentElement.scrollHeight")


async def running_thread_name() -> str:
    return threading.current_thread().name


def test_served_run_runs_a_coroutine_on_the_servers_loop(served: ServedApp) -> None:
    assert served.run(running_thread_name()) == "uvicorn-test"


def test_screenshots_go_to_the_repository_artifacts_by_default() -> None:
    assert screenshots_dir({}) == Path(__file__).parents[1] / "artifacts" / "screenshots"


def test_an_app_under_a_root_path_is_served_there_only(open_page: PageOpener) -> None:
    with serve_app(harness_app(), root_path="/acct") as served:
        assert served.url.endswith("/acct")
        page = open_page(served.url)
        page.goto(f"{served.url}/")
        assert page.text_content("#out") == "script ran"  # its script URL carries the root
        assert_clean(page)
        outside = httpx.get(served.url.removesuffix("/acct") + "/app.js")
        assert outside.status_code == 404


def test_a_missing_chromium_skips_or_under_ci_fails(tmp_path: Path) -> None:
    nowhere = (tmp_path / "chromium",)
    with pytest.raises(pytest.skip.Exception, match="BROWSER TESTS NOT RUN: no Chromium at"):
        chromium_path(nowhere, environ={})
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        chromium_path(nowhere, environ={"CI": "true"})
