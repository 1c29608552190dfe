"""The CLI and the store it means: relative paths, a store that is not there, errors that name
it, an export that fails without touching the previous file, `--config` anywhere, and each
fact printed once."""

from __future__ import annotations

import csv
import io
import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.sqlite import raw_query

DATA = Path(__file__).parent / "data"
CONFIG = DATA / "wg-small.toml"
PCAP = DATA / "wg-small.pcap"
PASSWORD = "hunter2-secret"


def _run(*args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    """The real CLI in a subprocess, without $TUNNELACCT_CONFIG or a database URL of the
    caller's environment: (exit code, stdout, stderr) in a CompletedProcess."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name not in ("TUNNELACCT_CONFIG", "TUNNELACCT_DATABASE_URL")
    }
    return subprocess.run(
        [sys.executable, "-m", "tunnelacct", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
        env={**inherited, "PYTHONPATH": str(Path(__file__).parents[1]), **env},
        timeout=300,
    )


def _config_with_relative_db(directory: Path) -> Path:
    """wg-small.toml's orgs and clients in `directory`, storing in `acct.db` (relative)."""
    directory.mkdir(parents=True, exist_ok=True)
    text = CONFIG.read_text().replace(
        'url = "sqlite:///tunnelacct.db"', 'url = "sqlite:///acct.db"'
    )
    assert 'url = "sqlite:///acct.db"' in text
    path = directory / "tunnelacct.toml"
    path.write_text(text)
    return path


def _import(url: str) -> None:
    done = _run("import", "--config", str(CONFIG), str(PCAP), TUNNELACCT_DATABASE_URL=url)
    assert done.returncode == 0, done.stderr


def _databases_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".db", ".db-wal", ".db-shm"))


def _refused_port() -> int:
    """A loopback TCP port nothing listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


READ_OR_PURGE = [
    ["export", "--org", "acme"],
    ["export", "--org", "acme", "-o", "out.csv"],
    ["purge"],
    ["purge", "--dry-run"],
    ["token", "create", "--role", "admin"],
    ["token", "list"],
    ["token", "revoke", "0123"],
    ["db", "partition"],
]


@pytest.mark.parametrize("command", READ_OR_PURGE, ids=[" ".join(c) for c in READ_OR_PURGE])
def test_a_command_that_reads_or_purges_never_creates_a_database(
    tmp_path: Path, command: list[str]
) -> None:
    config = _config_with_relative_db(tmp_path / "etc")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = _run(*command, "--config", str(config), cwd=elsewhere)
    assert done.returncode == 2, done
    assert f"no database at {tmp_path / 'etc' / 'acct.db'}" in done.stderr
    assert "Traceback" not in done.stderr
    assert _databases_under(tmp_path) == []
    assert not (elsewhere / "out.csv").exists()


def test_the_database_beside_the_config_is_the_one_used_from_any_directory(
    tmp_path: Path,
) -> None:
    config = _config_with_relative_db(tmp_path / "etc")
    first, second = tmp_path / "one", tmp_path / "two"
    first.mkdir()
    second.mkdir()
    imported = _run("import", "--config", str(config), str(PCAP), cwd=first)
    assert imported.returncode == 0, imported.stderr
    database = tmp_path / "etc" / "acct.db"
    assert database.is_file()
    assert not any(p.is_relative_to(first) for p in _databases_under(tmp_path))
    with sqlite3.connect(database) as conn:
        stored = conn.execute("SELECT count(*) FROM sessions WHERE org_id = 'acme'").fetchone()[0]
    conn.close()
    exported = _run("export", "--config", str(config), "--org", "acme", cwd=second)
    assert exported.returncode == 0, exported.stderr
    assert stored > 0
    assert len(list(csv.DictReader(io.StringIO(exported.stdout)))) == stored
    purged = _run("purge", "--dry-run", "--config", str(config), cwd=second)
    assert purged.returncode == 0, purged.stderr
    assert not any(p.is_relative_to(second) for p in _databases_under(tmp_path))


STORE_COMMANDS = [
    ["import", str(PCAP)],
    ["export", "--org", "acme"],
    ["purge"],
    ["token", "list"],
    ["db", "upgrade"],
    ["db", "partition"],
]


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=[" ".join(c[:2]) for c in STORE_COMMANDS])
def test_an_unreachable_store_is_named_with_its_password_masked(
    tmp_path: Path, command: list[str]
) -> None:
    port = _refused_port()
    url = f"postgresql://acct:{PASSWORD}@127.0.0.1:{port}/acct"
    done = _run(*command, "--config", str(CONFIG), TUNNELACCT_DATABASE_URL=url)
    assert done.returncode == 2, done
    assert f"postgresql://acct:***@127.0.0.1:{port}/acct" in done.stderr
    assert PASSWORD not in done.stderr + done.stdout
    assert "Connection refused" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unmigrated_sqlite_store_is_named(tmp_path: Path) -> None:
    database = tmp_path / "empty.db"
    sqlite3.connect(database).close()  # a file with no schema
    url = f"sqlite:///{database}"
    done = _run("export", "--org", "acme", "--config", str(CONFIG), TUNNELACCT_DATABASE_URL=url)
    assert done.returncode == 2
    assert f"database {database}: database is not migrated" in done.stderr
    assert "Traceback" not in done.stderr


PREVIOUS = "the previous export,kept\r\n"


@pytest.mark.parametrize("failure", ["unknown org", "unmigrated store", "unreachable store"])
def test_a_failed_export_leaves_the_previous_file_as_it_was(tmp_path: Path, failure: str) -> None:
    database = tmp_path / "s.db"
    url = f"sqlite:///{database}"
    org = "acme"
    if failure == "unknown org":
        _import(url)
        org = "nosuch"
    elif failure == "unmigrated store":
        sqlite3.connect(database).close()
    else:
        url = f"postgresql://acct:{PASSWORD}@127.0.0.1:{_refused_port()}/acct"
    target = tmp_path / "prev.csv"
    target.write_bytes(PREVIOUS.encode())
    args = ["export", "--config", str(CONFIG), "--org", org, "-o", str(target)]
    done = _run(*args, TUNNELACCT_DATABASE_URL=url)
    assert done.returncode == 2, done
    assert "Traceback" not in done.stderr
    assert target.read_bytes().decode() == PREVIOUS
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize("org", ["acme", "globex"])  # globex: under one buffer of stdout
def test_an_export_to_a_file_replaces_it_whole_with_what_stdout_gets(
    tmp_path: Path, org: str
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _import(url)
    target = tmp_path / "prev.csv"
    target.write_bytes(PREVIOUS.encode())
    args = ["export", "--config", str(CONFIG), "--org", org]
    to_file = _run(*args, "-o", str(target), TUNNELACCT_DATABASE_URL=url)
    # stdout block-buffered, as in a user's pipe: what the CLI leaves in its buffer is lost
    to_stdout = _run(*args, TUNNELACCT_DATABASE_URL=url, PYTHONUNBUFFERED="")
    assert to_file.returncode == to_stdout.returncode == 0, to_file.stderr
    written = target.read_bytes().decode()
    assert written.splitlines() == to_stdout.stdout.splitlines()  # text mode reads \r\n as \n
    assert written.endswith("\r\n")  # RFC 4180, as written
    stored = raw_query(tmp_path / "s.db", "SELECT count(*) FROM sessions WHERE org_id = ?", org)
    assert len(to_stdout.stdout.splitlines()) == 1 + int(str(stored[0][0])) > 1
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_config_may_come_before_the_command_and_the_commands_own_wins(tmp_path: Path) -> None:
    before = _run("--config", str(CONFIG), "config", "check")
    assert before.returncode == 0, before.stderr
    assert before.stdout.startswith(f"{CONFIG}: ok")
    other = _config_with_relative_db(tmp_path / "etc")
    both = _run("--config", str(CONFIG), "config", "check", "--config", str(other))
    assert both.returncode == 0, both.stderr
    assert both.stdout.startswith(f"{other}: ok")
    assert str(tmp_path / "etc" / "acct.db") in both.stdout


def test_config_check_without_a_config_says_none_was_given() -> None:
    done = _run("config", "check")
    assert done.returncode == 2
    assert "no config file given" in done.stderr
    assert ": ok" not in done.stdout
    from_environment = _run("config", "check", TUNNELACCT_CONFIG=str(CONFIG))
    assert from_environment.returncode == 0, from_environment.stderr
    assert from_environment.stdout.startswith(f"{CONFIG}: ok")


def test_purge_and_other_commands_show_each_fact_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    upgraded = _run("db", "upgrade", TUNNELACCT_DATABASE_URL=url)
    assert upgraded.returncode == 0, upgraded.stderr
    listed = _run("token", "list", TUNNELACCT_DATABASE_URL=url)
    assert listed.returncode == 0 and listed.stderr == "", listed.stderr
    purged = _run("purge", "--config", str(CONFIG), TUNNELACCT_DATABASE_URL=url)
    assert purged.returncode == 0, purged.stderr
    terminal = purged.stdout + purged.stderr
    orgs = ["acme", "globex"]
    assert all(terminal.count(f"org {org}:") == 1 for org in orgs), terminal
    assert "database schema at" not in terminal
