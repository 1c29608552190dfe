"""Browser tests of the web UI (issue 19): Debian's headless Chromium driven through Playwright's
`executable_path` (never `playwright install`), an ASGI app served by uvicorn in a thread, and
the checks every page gets: no console errors, page errors or CSP violations, zero axe-core
WCAG 2.2 AA violations, and a screenshot kept as a CI artifact.

A browser test module uses tests/conftest.py's `browser` (Chromium, launched once per module)
and `open_page` (fresh pages per test) and serves its app:

    @pytest.fixture(scope="module")
    def served() -> Iterator[ServedApp]:
        with serve_app(create_app(ctx), root_path="/acct") as served:
            yield served

    def test_login_page_is_clean(served: ServedApp, open_page: PageOpener) -> None:
        page = open_page(served.url)
        page.goto(f"{served.url}/login")
        assert_clean(page)
        assert_accessible(page, "login page")
        save_screenshot(page, "ui-login")

Playwright's sync API marks its own event loop as running in the main thread for as long as it
is started (playwright/_impl/_greenlets.py, wait_for_future), so that asyncio.run() and
pytest-asyncio's async tests and fixtures fail there with "cannot be called from a running
event loop". Hence the browser is launched once per module, not once per session: Playwright
stops when the module ends, and the rest of the suite is untouched (a launch takes ~0.6 s).
A browser test module is therefore synchronous: no async test or async fixture (such as
`engine`) may run in it after the browser started. Async setup runs on the served app's loop
with `served.run(coro)`, which is also the loop whose database connections the app uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import threading
import weakref
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import uvicorn
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright
from playwright.sync_api import Error as PlaywrightError
from starlette.types import ASGIApp, Receive, Scope, Send

from tests.helpers.needs import INSTALL_HINT, require
from tests.helpers.waiting import WAIT_S, wait_until

T = TypeVar("T")

# Debian's package (scripts/install-system-deps.sh); /usr/bin/chromium is a shell wrapper
# around the first that prints a harmless "[: …: unexpected operator" line
CHROMIUM_PATHS = (Path("/usr/lib/chromium/chromium"), Path("/usr/bin/chromium"))
# checked on this machine: /work/shared/recipes/browser-tests.md
CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)
# the tags axe-core 4.x gives the rules of WCAG 2.0, 2.1 and 2.2 levels A and AA (it has no
# "wcag22a": WCAG 2.2's new level-A criteria carry no rule of their own)
WCAG_AA_TAGS = ("wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa")
REPO = Path(__file__).parents[2]
_SCREENSHOT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_CSP_BINDING = "__tunnelacctCspViolation"  # the page's way to the test, named in _CSP_LISTENER
# An init script runs in every document before the page's own scripts, injected over the
# DevTools protocol and so exempt from the page's CSP (checked by tests/test_browser_harness.py).
# A violation is kept in the document and sent to the test. The browser fires the event in a
# later task, so when the test navigates away at once it may never fire: Chromium's console
# error for the violation, logged when it happens, is then the record that remains.
_CSP_LISTENER = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  const violation = {
    directive: event.effectiveDirective,
    blocked: event.blockedURI,
    source: `${event.sourceFile}:${event.lineNumber}`,
    sample: event.sample,
  };
  window.__cspViolations.push(violation);
  window.__tunnelacctCspViolation?.(violation);
});
"""


def chromium_path(
    candidates: tuple[Path, ...] = CHROMIUM_PATHS, environ: Mapping[str, str] = os.environ
) -> Path:
    """The Chromium binary of Debian's package; else skip the calling test with the reason, or
    under CI=true fail it (tests/helpers/needs.py)."""
    for path in candidates:
        if os.access(path, os.X_OK):
            return path
    why_not = "no Chromium at " + " or ".join(str(path) for path in candidates)
    require(why_not, "browser tests", hint=INSTALL_HINT, environ=environ)


@dataclass(frozen=True, slots=True)
class ServedApp:
    """An app served on 127.0.0.1 by `serve_app`."""

    url: str  # its base URL without a trailing slash, e.g. "http://127.0.0.1:41234/acct"
    loop: asyncio.AbstractEventLoop  # the server's event loop, in the server's thread

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = WAIT_S) -> T:
        """Run `coro` on the server's loop and return its result: async setup of a sync test,
        on the loop whose database connections the app uses.

        token, _ = served.run(create_token(engine, Role.ADMIN))
        """
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)


class _SubPathProxy:
    """What a reverse proxy serving the app under `prefix` forwards: requests under the prefix,
    stripped of it (others get 404). uvicorn, configured with root_path=prefix, puts the prefix
    back into `path` and sets `root_path`, as it does behind such a proxy in production."""

    def __init__(self, app: ASGIApp, prefix: str) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        requested = scope["path"][len(self.prefix) :]  # as the client asked for it
        if requested != self.prefix and not requested.startswith(self.prefix + "/"):
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"outside the root path"})
            return
        raw_path = scope["raw_path"][len(self.prefix) :]
        await self.app({**scope, "path": requested, "raw_path": raw_path}, receive, send)


@contextlib.contextmanager
def serve_app(app: ASGIApp, *, root_path: str = "") -> Iterator[ServedApp]:
    """Serve `app` on 127.0.0.1 (a free port) with uvicorn in a thread until the block ends.

    With `root_path` ("/acct"), the app is served under that sub-path as behind a proxy:
    `served.url` ends with it, and requests outside it get 404.
    """
    if root_path and (not root_path.startswith("/") or root_path.endswith("/")):
        raise ValueError(f"root_path {root_path!r}: expected a path like /acct")
    served_app = _SubPathProxy(app, root_path) if root_path else app
    # lifespan off: the service serves the API that way (tunnelacct/service/listeners.py)
    config = uvicorn.Config(
        served_app,
        host="127.0.0.1",
        port=0,
        log_level="warning",
        lifespan="off",
        root_path=root_path,
    )
    server = uvicorn.Server(config)
    loops: list[asyncio.AbstractEventLoop] = []

    async def serve() -> None:
        loops.append(asyncio.get_running_loop())
        await server.serve()

    # not in the main thread, uvicorn leaves the signals alone
    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="uvicorn-test")
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "uvicorn start")
        if not server.started:  # it logged why (a failed bind, say) and exited
            raise AssertionError("uvicorn stopped before it started serving")
        port = server.servers[0].sockets[0].getsockname()[1]
        yield ServedApp(url=f"http://127.0.0.1:{port}{root_path}", loop=loops[0])
    finally:
        server.should_exit = True
        thread.join(WAIT_S)
        if thread.is_alive():
            raise AssertionError(f"uvicorn did not stop within {WAIT_S:g} s")


@contextlib.contextmanager
def launch_chromium() -> Iterator[Browser]:
    """Start Playwright and Debian's headless Chromium, and stop both when the block ends;
    skips, or fails under CI=true, without Chromium. Launch it once per module, not per
    session: see the module's docstring."""
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield browser
        finally:
            browser.close()


@dataclass  # no slots: Playwright keeps its wrapper of a bound-method handler on the instance
class PageLog:
    """What went wrong in a page's documents: console errors and warnings, uncaught errors and
    CSP violations, each one line."""

    console: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    csp_violations: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type in ("error", "warning"):
            where = message.location
            self.console.append(
                f"console {message.type}: {message.text} "
                f"({where.get('url', '')}:{where.get('lineNumber', '?')})"
            )

    def on_page_error(self, error: PlaywrightError) -> None:
        self.page_errors.append(error.stack or f"{error.name}: {error.message}")

    def on_csp_violation(self, violation: Mapping[str, Any]) -> None:
        line = (
            f"CSP {violation['directive']} blocked {violation['blocked'] or 'a resource'} "
            f"at {violation['source']} ({violation['sample']!r})"
        )
        if line not in self.csp_violations:
            self.csp_violations.append(line)


# the log of each page `open_page` made, until the page is gone
_LOGS: weakref.WeakKeyDictionary[Page, PageLog] = weakref.WeakKeyDictionary()


@dataclass(slots=True)
class PageOpener:
    """Opens pages in fresh browser contexts (own cookies, UTC, en-GB, downloads accepted) that
    record their problems for `assert_clean`; closes them all when its block ends."""

    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)

    def __call__(self, base_url: str, **context_options: Any) -> Page:
        """A new page whose relative URLs resolve against `base_url`; `context_options` go to
        Browser.new_context, e.g. viewport={"width": 360, "height": 740} for a narrow screen."""
        options: dict[str, Any] = {
            "base_url": base_url,
            "accept_downloads": True,
            "timezone_id": "UTC",
            "locale": "en-GB",
            **context_options,
        }
        context = self.browser.new_context(**options)
        self.contexts.append(context)
        log = PageLog()
        context.expose_function(_CSP_BINDING, log.on_csp_violation)
        context.add_init_script(_CSP_LISTENER)
        page = context.new_page()
        page.on("console", log.on_console)
        page.on("pageerror", log.on_page_error)
        _LOGS[page] = log
        return page

    def close(self) -> None:
        """Close every context this opener made."""
        for context in self.contexts:
            context.close()
        self.contexts.clear()

    def __enter__(self) -> PageOpener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def assert_clean(page: Page) -> None:
    """Raise AssertionError listing every console error or warning, uncaught page error and CSP
    violation of `page` (opened by `open_page`) since it was opened, across navigations."""
    log = _LOGS[page]
    if not page.is_closed():
        # the round trip also delivers the events the page sent before it; a violation of the
        # current document whose event is still queued in the page is read here
        for violation in page.evaluate("window.__cspViolations ?? []"):
            log.on_csp_violation(violation)
    problems = log.console + log.page_errors + log.csp_violations
    if problems:
        listed = "\n".join(f"  {problem}" for problem in problems)
        raise AssertionError(f"{len(problems)} browser problem(s) on {page.url}:\n{listed}")


def assert_accessible(page: Page, context_name: str) -> None:
    """Run axe-core on the page's current state with the WCAG 2.0/2.1/2.2 A and AA rules, and
    raise AssertionError listing each violation (id, impact, help, target nodes)."""
    options = {"runOnly": {"type": "tag", "values": list(WCAG_AA_TAGS)}}
    violations = Axe().run(page, options={**options, "resultTypes": ["violations"]})
    found = violations.response["violations"]
    if not found:
        return
    lines = []
    for violation in found:
        targets = "; ".join(_target(node["target"]) for node in violation["nodes"])
        lines.append(
            f"  {violation['id']} ({violation['impact']}): {violation['help']} at {targets}"
        )
    listed = "\n".join(lines)
    raise AssertionError(
        f"axe-core: {len(found)} WCAG A/AA violation(s) on {context_name} ({page.url}):\n{listed}"
    )


def _target(selectors: list[Any]) -> str:
    """One node's axe target: CSS selectors, a list per iframe or shadow root crossed."""
    return " >> ".join(
        " ".join(selector) if isinstance(selector, list) else str(selector)
        for selector in selectors
    )


def screenshots_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """$TUNNELACCT_ARTIFACTS/screenshots, else artifacts/screenshots in the repository."""
    artifacts = environ.get("TUNNELACCT_ARTIFACTS")
    return (Path(artifacts) if artifacts else REPO / "artifacts") / "screenshots"


def save_screenshot(
    page: Page, name: str, environ: Mapping[str, str] = os.environ, *, full_page: bool = True
) -> Path:
    """Save a PNG of `page` (the whole page, or the viewport only) as
    <screenshots_dir>/<name>.png and return its path; a later one of the same name replaces
    it. save_screenshot(page, "ui-sessions-invalid")"""
    if not _SCREENSHOT_NAME.fullmatch(name):
        raise ValueError(f"screenshot name {name!r}: expected letters, digits, '.', '_' or '-'")
    path = screenshots_dir(environ) / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=path, full_page=full_page)
    return path
