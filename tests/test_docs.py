"""The documentation: every config key and decode reason is documented, the MkDocs site builds
with --strict, and every shell example that claims an output prints that output.

Marked examples (README.md and docs/*.md). An HTML comment on the line before a fenced block
marks it for this test:

    <!-- doc-test -->             a ```console block. Each line starting with "$ " is a command
                                  (a line ending in a backslash continues it); the lines after
                                  it, up to the next command, are what it prints, standard
                                  output and error together.
    <!-- doc-test: terminal -->   the same, each command run on a pseudo-terminal (`script`), as
                                  an admin at a terminal sees it (`tunnelacct usage`'s table).
    <!-- doc-test: file PATH -->  the block's text is written to PATH before the page's commands.

The README's `file /etc/tunnelacct/tunnelacct.toml` block is every page's config. Each page
runs in a temp dir of its own: the config there as $TUNNELACCT_CONFIG, an empty SQLite store
filled by `tunnelacct import tests/data/wg-small.pcap` (the capture the outputs describe),
`tests/data/` copied beside the working directory, and, when a command names
http://127.0.0.1:8080, a `tunnelacct serve` of that store listening on a free port. The
commands of a page run in order in one bash, so a variable set by one (`TOKEN=$(...)`) is seen
by the next. A command must exit 0, unless what it prints has a line starting with "error:".

Documented output is compared line by line, with these conventions for what varies per run:

    <word>     a placeholder ("<cutoff>", "<token>", "<uuid>"): any text within one line
    ...        a line of its own: any number of lines (none included), for elided output
    paths      /etc/tunnelacct and /var/lib/tunnelacct stand for the temp dirs that hold the
               config and the store, and 127.0.0.1:8080 for the test's serve, in commands, in
               written files and in output alike.

Any other ```console block, or a block whose first line is a "$ " command, is an example that
cannot run here (root, systemd, a real interface): the line before it must say "illustrative".
"""

from __future__ import annotations

import difflib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.helpers.needs import INSTALL_HINT, missing_tools, require
from tests.helpers.prometheus import free_port
from tests.helpers.waiting import WAIT_S, wait_until
from tunnelacct.capture.reasons import REASONS
from tunnelacct.config.model import ARRAY_SECTIONS, SECTION_KEYS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
CONFIG_REFERENCE = DOCS / "configuration.md"
DECODING_PAGE = DOCS / "internals.md"  # its "What is decoded"
VENV_BIN = Path(sys.executable).parent

CONFIG_PATH = "/etc/tunnelacct/tunnelacct.toml"  # the README's config, every page's
DOCUMENTED_DIRS = ("/etc/tunnelacct", "/var/lib/tunnelacct")
DOCUMENTED_LISTEN = "127.0.0.1:8080"
CAPTURE = "tests/data/wg-small.pcap"

FENCE = re.compile(r"^```(\S*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!-- doc-test(?::\s*(terminal|file\s+(\S+)))?\s*-->\s*\Z")
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9 _-]*>")
ELISION = "..."
COMMAND_DONE = "@@doc-test done {index} rc="


@dataclass
class Command:
    """One documented command and what the page says it prints."""

    text: str
    expected: list[str]
    terminal: bool
    where: str  # page and line, for the failure message


@dataclass
class Page:
    """The marked examples of one page."""

    path: Path
    files: dict[str, str] = field(default_factory=dict)  # documented path -> text
    commands: list[Command] = field(default_factory=list)
    unmarked: list[str] = field(default_factory=list)  # where an unmarked output example is


def parse_page(path: Path) -> Page:
    """The marked blocks of `path`, and where it shows output without a mark."""
    text = path.read_text(encoding="utf-8")
    page = Page(path)
    for block in FENCE.finditer(text):
        language, body = block.group(1), block.group(2)
        before = text[: block.start()].rstrip("\n")
        preceding_line = before.rsplit("\n", 1)[-1]
        line_no = text.count("\n", 0, block.start()) + 1
        where = f"{path.relative_to(ROOT)}:{line_no}"
        marker = MARKER.search(preceding_line)
        if marker is None:
            claims_output = language == "console" or body.startswith("$ ")
            if claims_output and "illustrative" not in preceding_line.lower():
                page.unmarked.append(where)
            continue
        if marker.group(2) is not None:
            page.files[marker.group(2)] = body
            continue
        assert language == "console", f"{where}: a doc-test block must be ```console"
        page.commands += parse_console(body, terminal=marker.group(1) == "terminal", where=where)
    return page


def parse_console(body: str, *, terminal: bool, where: str) -> list[Command]:
    """The commands of a console block, each with the lines documented as its output."""
    commands: list[Command] = []
    lines = body.rstrip("\n").split("\n")
    assert lines[0].startswith("$ "), f"{where}: a console block starts with a $ command"
    index = 0
    while index < len(lines):
        command_lines = [lines[index].removeprefix("$ ")]
        while command_lines[-1].endswith("\\"):
            index += 1
            command_lines.append(lines[index])
        index += 1
        expected: list[str] = []
        while index < len(lines) and not lines[index].startswith("$ "):
            expected.append(lines[index])
            index += 1
        commands.append(Command("\n".join(command_lines), expected, terminal, where))
    return commands


def config_block() -> str:
    """The README's example config: every page's $TUNNELACCT_CONFIG."""
    files = parse_page(README).files
    assert CONFIG_PATH in files, f"README.md has no <!-- doc-test: file {CONFIG_PATH} --> block"
    return files[CONFIG_PATH]


def expected_pattern(expected: list[str]) -> re.Pattern[str]:
    """A regex of the documented output: placeholders and elisions as the docstring says."""
    parts = []
    for line in expected:
        if line == ELISION:
            parts.append(r"(?:[^\n]*\n)*?")
            continue
        pieces = PLACEHOLDER.split(line.rstrip())
        parts.append(r".+?".join(re.escape(piece) for piece in pieces) + r"\n")
    return re.compile("".join(parts))


class Sandbox:
    """A page's temp dirs, store and serve, and the mapping of its paths to the documented."""

    def __init__(self, tmp_path: Path) -> None:
        self.work = tmp_path / "work"
        self.actual_dirs = {
            documented: tmp_path / documented.lstrip("/") for documented in DOCUMENTED_DIRS
        }
        for directory in (self.work, *self.actual_dirs.values()):
            directory.mkdir(parents=True)
        shutil.copytree(ROOT / "tests" / "data", self.work / "tests" / "data")
        self.listen = f"127.0.0.1:{free_port()}"
        self.env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("TUNNELACCT_DATABASE_URL", "TUNNELACCT_API_LISTEN")
        }
        self.env |= {
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "TUNNELACCT_CONFIG": self.to_actual(CONFIG_PATH),
            "LC_ALL": "C.UTF-8",
            "TZ": "UTC",
        }
        self.serve: subprocess.Popen[bytes] | None = None

    def to_actual(self, text: str) -> str:
        """`text` with the documented paths and address replaced by this sandbox's."""
        for documented, actual in self.actual_dirs.items():
            text = text.replace(documented, str(actual))
        return text.replace(DOCUMENTED_LISTEN, self.listen)

    def to_documented(self, text: str) -> str:
        """What a command printed, with this sandbox's paths and address as documented."""
        for documented, actual in self.actual_dirs.items():
            text = text.replace(str(actual), documented)
        return text.replace(self.listen, DOCUMENTED_LISTEN)

    def write(self, documented_path: str, text: str) -> None:
        """A marked file block, written where the sandbox keeps that path."""
        path = Path(self.to_actual(documented_path))
        (path if path.is_absolute() else self.work / path).write_text(self.to_actual(text))

    def run(self, argv: list[str]) -> subprocess.CompletedProcess[str]:
        """`argv` in the working directory, with the page's environment and no input (so
        that `script` never puts the terminal pytest runs in into raw mode)."""
        return subprocess.run(
            argv,
            cwd=self.work,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )

    def start_serve(self) -> None:
        """`tunnelacct serve` of the store, on the sandbox's address, until stop_serve()."""
        log = (self.work / "serve.log").open("wb")
        self.serve = subprocess.Popen(
            [str(VENV_BIN / "tunnelacct"), "serve"],
            cwd=self.work,
            env={**self.env, "TUNNELACCT_API_LISTEN": self.listen},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

        def ready() -> bool:
            assert self.serve is not None
            if self.serve.poll() is not None:
                raise AssertionError(f"serve exited: {(self.work / 'serve.log').read_text()}")
            try:
                return httpx.get(f"http://{self.listen}/readyz", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(ready, "ready serve")

    def stop_serve(self) -> None:
        """SIGTERM to the serve this sandbox started, and its exit."""
        if self.serve is None or self.serve.poll() is not None:
            return
        self.serve.send_signal(signal.SIGTERM)
        try:
            self.serve.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            self.serve.kill()
            self.serve.wait(WAIT_S)
            raise


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    box = Sandbox(tmp_path)
    try:
        yield box
    finally:
        box.stop_serve()


def script_of(commands: list[Command], sandbox: Sandbox) -> str:
    """One bash script running `commands` in order, each followed by a line with its status."""
    lines = ["exec 2>&1"]
    for index, command in enumerate(commands):
        text = sandbox.to_actual(command.text)
        if command.terminal:
            text = f"script -qec {shlex.quote(text)} /dev/null"
        done = COMMAND_DONE.format(index=index)
        lines += [text, f"printf '\\n%s%d\\n' '{done}' \"$?\""]
    return "\n".join(lines) + "\n"


def outputs_of(stdout: str, count: int) -> list[tuple[str, int]]:
    """Each command's output and exit status, from the script's combined output."""
    results = []
    rest = stdout.replace("\r\n", "\n")
    for index in range(count):
        done = COMMAND_DONE.format(index=index)
        output, found, rest = rest.partition(done)
        assert found, f"the script stopped before command {index + 1}:\n{output}"
        status, _, rest = rest.partition("\n")
        lines = [line.rstrip() for line in output.split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        results.append(("".join(f"{line}\n" for line in lines), int(status)))
    return results


def test_every_config_key_is_documented_in_the_reference() -> None:
    reference = CONFIG_REFERENCE.read_text(encoding="utf-8")
    missing = []
    for section, keys in SECTION_KEYS.items():
        heading = f"[[{section}]]" if section in ARRAY_SECTIONS else f"[{section}]"
        start = re.search(rf"^##+ `{re.escape(heading)}`", reference, re.MULTILINE)
        if start is None:
            missing.append(f"{heading} (no section)")
            continue
        end = re.compile(r"^##+ ", re.MULTILINE).search(reference, start.end())
        table = reference[start.start() : end.start() if end else len(reference)]
        missing += [f"{heading} {key}" for key in keys if f"| `{key}` |" not in table]
    assert not missing, f"not in docs/configuration.md: {missing}"


@pytest.mark.parametrize("reason", [r for r in REASONS if r != "ok"])
def test_every_decode_reason_is_documented(reason: str) -> None:
    assert f"`{reason}`" in DECODING_PAGE.read_text(encoding="utf-8")


def test_every_output_example_is_tested_or_marked_illustrative() -> None:
    unmarked = [where for page in PAGES for where in parse_page(page).unmarked]
    assert not unmarked, (
        "output examples neither marked <!-- doc-test --> nor said to be illustrative in the "
        f"line before them: {unmarked}"
    )


@pytest.mark.parametrize(
    "page",
    [page for page in PAGES if parse_page(page).commands],
    ids=lambda page: str(page.relative_to(ROOT)),
)
def test_documented_commands_print_what_the_page_shows(page: Path, sandbox: Sandbox) -> None:
    require(missing_tools("curl", "script"), "documentation examples", hint=INSTALL_HINT)
    parsed = parse_page(page)
    sandbox.write(CONFIG_PATH, config_block())
    for documented_path, text in parsed.files.items():
        sandbox.write(documented_path, text)
    imported = sandbox.run([str(VENV_BIN / "tunnelacct"), "import", CAPTURE])
    assert imported.returncode == 0, imported.stdout + imported.stderr
    if any(DOCUMENTED_LISTEN in command.text for command in parsed.commands):
        sandbox.start_serve()
    ran = sandbox.run(["bash", "-c", script_of(parsed.commands, sandbox)])
    mismatches = []
    for command, (output, status) in zip(
        parsed.commands, outputs_of(ran.stdout, len(parsed.commands)), strict=True
    ):
        shown = sandbox.to_documented(output)
        expected = "".join(f"{line}\n" for line in command.expected)
        fails = any(line.startswith("error:") for line in command.expected)
        if (status != 0) != fails:
            mismatches.append(f"{command.where}: `{command.text}` exited {status}:\n{shown}")
        elif not expected_pattern(command.expected).fullmatch(shown):
            diff = difflib.unified_diff(
                expected.splitlines(), shown.splitlines(), "documented", "printed", lineterm=""
            )
            mismatches.append(f"{command.where}: `{command.text}`\n" + "\n".join(diff))
    assert not mismatches, "\n\n".join(mismatches)


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of `config` into `site` (never into the checkout)."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


def test_the_site_builds_with_strict_checks(tmp_path: Path) -> None:
    built = mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    assert (tmp_path / "site" / "openapi.json").is_file()


def append_link_to_a_missing_page(docs: Path) -> None:
    with (docs / "index.md").open("a", encoding="utf-8") as page:
        page.write("\n[gone](no-such-page.md)\n")


def append_link_to_a_missing_anchor(docs: Path) -> None:
    with (docs / "index.md").open("a", encoding="utf-8") as page:
        page.write("\n[gone](api.md#no-such-anchor)\n")


def add_a_page_outside_the_nav(docs: Path) -> None:
    (docs / "orphan.md").write_text("# Orphan\n", encoding="utf-8")


@pytest.mark.parametrize(
    ("change", "complaint"),
    [
        (append_link_to_a_missing_page, "no-such-page.md"),
        (append_link_to_a_missing_anchor, "no-such-anchor"),
        (add_a_page_outside_the_nav, "orphan.md"),
    ],
)
def test_the_strict_build_fails_on(
    change: Callable[[Path], None], complaint: str, tmp_path: Path
) -> None:
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    change(tmp_path / "docs")
    built = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert built.returncode != 0 and complaint in built.stderr, built.stderr
