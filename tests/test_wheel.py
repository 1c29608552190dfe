"""A wheel install works on its own (issue 17): the wheel built from this checkout, installed
non-editable into a fresh venv outside the checkout, creates a database with the migrations it
ships, imports a capture and exports it. The store is read back with sqlite3 (the schema at
the newest migration, one row per session the summary reports) and the CSV with `csv`."""

from __future__ import annotations

import csv
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent
DATA = CHECKOUT / "tests" / "data"
VERSIONS = CHECKOUT / "tunnelacct" / "store" / "migrations" / "versions"

IGNORED = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "__pycache__")

pytestmark = pytest.mark.slow


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    assert done.returncode == 0, f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def installed() -> Iterator[Path]:
    """The bin/ directory of a fresh venv outside the checkout holding the wheel, non-editable."""
    with tempfile.TemporaryDirectory(prefix="tunnelacct-wheel-") as tmp:
        home = Path(tmp)
        # built from a copy, so that the build leaves nothing in the checkout
        source = home / "source"
        shutil.copytree(CHECKOUT, source, symlinks=True, ignore=IGNORED)
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "-q",
                "-w",
                str(home),
                str(source),
            ],
            home,
        )
        (wheel,) = home.glob("tunnelacct-*.whl")
        run([sys.executable, "-m", "venv", str(home / "venv")], home)
        bin_dir = home / "venv" / "bin"
        run(
            [str(bin_dir / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)], home
        )
        yield bin_dir


def test_a_wheel_installed_outside_the_checkout_migrates_imports_and_exports(
    installed: Path, tmp_path: Path
) -> None:
    # not the checkout's package: the venv's own copy, installed from the wheel
    where = run(
        [str(installed / "python"), "-c", "import tunnelacct; print(tunnelacct.__file__)"], tmp_path
    )
    assert Path(where.strip()).is_relative_to(installed.parent), where
    assert not Path(where.strip()).is_relative_to(CHECKOUT)

    database = tmp_path / "store.db"
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{database}", "PYTHONPATH": ""}
    tunnelacct = str(installed / "tunnelacct")
    run([tunnelacct, "db", "upgrade"], tmp_path, env)
    newest = max(path.name.split("_", 1)[0] for path in VERSIONS.glob("0*.py"))
    with sqlite3.connect(database) as db:
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    db.close()
    assert version == newest

    summary = run(
        [
            tunnelacct,
            "import",
            "--config",
            str(DATA / "wg-small.toml"),
            str(DATA / "wg-small.pcap"),
        ],
        tmp_path,
        env,
    )
    sessions = int(re.search(r"sessions: ([0-9,]+)", summary)[1].replace(",", ""))  # type: ignore[index]
    with sqlite3.connect(database) as db:
        (stored,) = db.execute("SELECT count(*) FROM sessions").fetchone()
        (acme,) = db.execute("SELECT count(*) FROM sessions WHERE org_id = 'acme'").fetchone()
    db.close()
    assert stored == sessions > 0

    out = tmp_path / "acme.csv"
    run(
        [
            tunnelacct,
            "export",
            "--config",
            str(DATA / "wg-small.toml"),
            "--org",
            "acme",
            "-o",
            str(out),
        ],
        tmp_path,
        env,
    )
    with out.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == acme > 0
    assert {row["org_id"] for row in rows} == {"acme"}
