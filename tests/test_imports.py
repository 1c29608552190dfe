"""The package's imports form no cycle and point down the flow (issue 17): read from the
source with `ast`, every `import tunnelacct...` and `from tunnelacct... import ...`, at module
level or inside a function, is an edge between two modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tunnelacct"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The package's modules that the file at `path` imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in found if name in known}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    known = set(files)
    # a module's package is imported with it, but that is not an edge of the module's own
    return {name: imported_modules(path, known) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowest[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                lowest[node] = min(lowest[node], lowest[target])
            elif target in on_stack:
                lowest[node] = min(lowest[node], index[target])
        if lowest[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# The rooms in the order data flows through them: packets are captured, become sessions, are
# written to the store (ingest wires the first three together), and are read back by query,
# reports, retention, metrics and the web API; service wires everything. A room imports only rooms
# before it. BASE is imported by any room; cli and __main__ import anything, and nothing but
# __main__ imports cli.
BASE = ("tunnelacct", "tunnelacct.errors", "tunnelacct.enums", "tunnelacct.log", "tunnelacct.heap")
ROOMS = (
    "config",
    "capture",
    "collector",
    "sessions",
    "store",
    "ingest",
    "query",
    "reports",
    "retention",
    "metrics",
    "web",
    "service",
)
TOP = ("tunnelacct.cli", "tunnelacct.__main__")


def room_of(module: str) -> str | None:
    """The room of a module (`tunnelacct.store.sqlite.layout` -> "store"); None for BASE and TOP."""
    if module in BASE or module in TOP:
        return None
    return module.split(".")[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a room's module from a later room, or of cli, as "importer -> imported"."""
    wrong = []
    for importer, imported in sorted(graph.items()):
        for target in sorted(imported):
            if target in TOP:
                if importer not in TOP:
                    wrong.append(f"{importer} -> {target}")
                continue
            source_room, target_room = room_of(importer), room_of(target)
            if source_room is None or target_room is None:
                continue
            if ROOMS.index(target_room) > ROOMS.index(source_room):
                wrong.append(f"{importer} -> {target}")
    return wrong


def test_every_module_lives_in_a_room() -> None:
    homeless = [m for m in import_graph() if m not in BASE + TOP and room_of(m) not in ROOMS]
    assert homeless == []


def test_imports_point_down_the_flow() -> None:
    assert upward_imports(import_graph()) == []


def test_the_package_imports_form_no_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 40  # the whole package was read
    assert cycles(graph) == []


def test_an_upward_import_is_found() -> None:
    graph = {
        "tunnelacct.capture.decode": {"tunnelacct.store.writer"},
        "tunnelacct.store.writer": set(),
    }
    assert upward_imports(graph) == ["tunnelacct.capture.decode -> tunnelacct.store.writer"]
    assert upward_imports({"tunnelacct.store.writer": {"tunnelacct.capture.decode"}}) == []


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
        ({"a": {"b"}, "b": set(), "c": {"b"}}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(
    graph: dict[str, set[str]], expected: list[list[str]]
) -> None:
    assert cycles(graph) == expected


def test_the_web_app_loads_no_capture_path_numpy_or_writer() -> None:
    # a query-only node serves the API: it should not pay for the capture path (issue 17)
    heavy = (
        "numpy",
        "tunnelacct.capture.decode",
        "tunnelacct.ingest.pipeline",
        "tunnelacct.sessions.flowtable",
        "tunnelacct.store.writer",
    )
    probe = (
        "import sys, tunnelacct.web.app\n"
        f"print(' '.join(sorted(m for m in sys.modules if m in {heavy!r})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split() == []


def test_the_importers_own_process_loads_no_sqlalchemy() -> None:
    # `tunnelacct import` starts on the capture at once: the store's modules (SQLAlchemy,
    # SQLModel, Alembic: 0.5 s) load in its writer child only, although this process builds
    # the rows of the sessions complete in one write (store/complete.py)
    probe = (
        "import sys, tunnelacct.ingest.importer\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(done.stdout.split())
    assert "tunnelacct" in loaded
    assert loaded & {"sqlalchemy", "sqlmodel", "alembic", "aiosqlite", "asyncpg"} == set()


# Only store/ knows the engines apart (issue 17): what differs is behind store/backend.py.
ENGINE_MODULES = ("tunnelacct.store.sqlite", "tunnelacct.store.postgres", "sqlalchemy.dialects")


def engine_questions(path: Path) -> list[str]:
    """Where the module at `path` asks which engine it talks to: a read of `.dialect.name`, or
    an import of an engine's own modules, as "line: what"."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Attribute) and node.attr == "name":
            value = node.value
            if isinstance(value, ast.Attribute) and value.attr == "dialect":
                found.append(f"{node.lineno}: {ast.unparse(node)}")
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules = [node.module]
        for module in modules:
            if module.startswith(ENGINE_MODULES):
                found.append(f"{node.lineno}: import {module}")
    return found


def test_nothing_outside_the_store_asks_which_engine_it_talks_to() -> None:
    outside = [p for p in PACKAGE.rglob("*.py") if room_of(module_name(p)) != "store"]
    assert len(outside) > 30
    asked = {
        module_name(path): questions for path in outside if (questions := engine_questions(path))
    }
    assert asked == {}


def test_an_engine_question_is_found(tmp_path: Path) -> None:
    source = tmp_path / "asks.py"
    source.write_text(
        "from sqlalchemy.dialects.postgresql import INET\n"
        "def f(engine):\n"
        "    return engine.dialect.name == 'sqlite'\n"
    )
    assert engine_questions(source) == [
        "1: import sqlalchemy.dialects.postgresql",
        "3: engine.dialect.name",
    ]
