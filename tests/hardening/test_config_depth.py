"""A config nested 100,000 deep (issue 16, item 8): RecursionError in `config check`, and the
end of a running serve at its next purge's config reload. Now a clean error, and a purge that
goes on with the retention last stored."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from tunnelacct.config.load import load_config
from tunnelacct.service.service import Service
from tunnelacct.store.engine import make_engine
from tunnelacct.store.migrate import migrate

pytestmark = pytest.mark.hardening

DEPTH = 100_000
TOO_DEEP = "a = " + "[" * DEPTH + "]" * DEPTH + "\n"


def test_config_check_of_a_config_nested_too_deep_is_a_clean_error(tmp_path: Path) -> None:
    config = tmp_path / "deep.toml"
    config.write_text(TOO_DEEP)
    done = subprocess.run(
        [sys.executable, "-m", "tunnelacct", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert f"config error: {config}: TOML syntax: " in done.stderr
    assert "nested too deeply" in done.stderr
    assert "Traceback" not in done.stderr


async def test_a_purge_goes_on_when_the_config_is_rewritten_too_deep_to_read(
    tmp_path: Path,
) -> None:
    config_path = tmp_path / "tunnelacct.toml"
    config_path.write_text('[[orgs]]\nid = "acme"\nretention_days = 7\n')
    url = f"sqlite:///{tmp_path / 's.db'}"
    migrate(url)
    service = Service(load_config(config_path, environ={"TUNNELACCT_DATABASE_URL": url}))
    engine = make_engine(url)
    try:
        await service.purge_once(engine)  # stores acme's retention, purges
        config_path.write_text(TOO_DEEP)  # what the next purge re-reads
        await service.purge_once(engine)
    finally:
        await engine.dispose()
    with sqlite3.connect(tmp_path / "s.db") as db:
        runs = db.execute(
            "SELECT count(DISTINCT run_id) FROM purge_runs WHERE org_id = 'acme' AND outcome = 'ok'"
        )
        purges = runs.fetchone()[0]
    db.close()
    assert purges == 2  # the second ran too, with the retention stored before
