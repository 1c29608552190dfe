"""Small things found by probing (issue 16, item 9): `token list` printed names with tabs and
newlines raw, which forged rows; database files were created 0644."""

from __future__ import annotations

import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.hardening

DATA = Path(__file__).parents[1] / "data"
FORGING_NAMES = [
    "alice\tadmin\t*",
    "bob\nforged-id\tadmin\t*\tmallory\t2026-01-01T00:00:00+00:00\tactive",
    "carol\r\x1b[2Kdave",
    "back\\slash\x85next-line",
]


def _cli(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "tunnelacct", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "TUNNELACCT_DATABASE_URL": url},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    return done


def test_token_list_shows_one_line_of_eight_fields_per_token_whatever_the_names(
    tmp_path: Path,
) -> None:
    database = tmp_path / "s.db"
    url = f"sqlite:///{database}"
    _cli("db", "upgrade", url=url)
    for name in FORGING_NAMES:
        _cli("token", "create", "--role", "admin", "--name", name, url=url)
    listed = _cli("token", "list", url=url).stdout
    with sqlite3.connect(database) as db:
        stored = dict(db.execute("SELECT id, name FROM api_tokens").fetchall())
    db.close()
    lines = listed.split("\n")
    assert lines[-1] == ""  # each line ends with a newline, and there is nothing after
    rows = [line.split("\t") for line in lines[:-1]]
    assert len(rows) == len(stored) == len(FORGING_NAMES)
    assert all(len(row) == 8 for row in rows), rows
    assert {row[0] for row in rows} == set(stored)
    for row in rows:
        shown = row[3]
        assert not any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in shown), shown
        # the escapes are Python's: decoding them gives the stored name back
        assert shown.encode("ascii", "backslashreplace").decode("unicode_escape") == stored[row[0]]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("command", ["db upgrade", "import"])
def test_a_new_sqlite_store_and_its_wal_are_readable_by_their_owner_only(
    tmp_path: Path, command: str
) -> None:
    database = tmp_path / "new" / "s.db"
    url = f"sqlite:///{database}"
    old_umask = os.umask(0o022)  # the usual umask, which made them 0644
    try:
        if command == "import":
            config = str(DATA / "wg-small.toml")
            _cli("import", "--config", config, str(DATA / "wg-small.pcap"), url=url)
        else:
            _cli("db", "upgrade", url=url)
        # a writer keeps the -wal and -shm files (serve always has one open); SQLite creates
        # them with the database file's mode
        writer = sqlite3.connect(database)
        writer.execute("DELETE FROM api_tokens")
        writer.commit()
    finally:
        os.umask(old_umask)
    try:
        files = {p.name: _mode(p) for p in database.parent.iterdir()}
    finally:
        writer.close()
    assert set(files) == {"s.db", "s.db-wal", "s.db-shm"}
    assert {name: mode & 0o077 for name, mode in files.items()} == dict.fromkeys(files, 0)
