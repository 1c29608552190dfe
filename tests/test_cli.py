"""The CLI edges: errors rendered once with exit codes, inspect, metrics textfile, export."""

from __future__ import annotations

import csv
import io
import os
import pty
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import IP, TCP

from tests.helpers.accuracy import run_cli
from tests.helpers.pcapwrite import write_pcap
from tests.helpers.sqlite import raw_query

DATA = Path(__file__).parent / "data"
CONFIG = DATA / "wg-small.toml"


def _run(*args: str, **env: str) -> tuple[int, str, str]:
    """Run the CLI without asserting success: (exit code, stdout, stderr)."""
    done = subprocess.run(
        [sys.executable, "-m", "tunnelacct", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **env},
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def stderr_on_a_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    """Run argv with stderr on a pseudo-terminal: (exit code, what the terminal received)."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            timeout=120,
        )
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other side is closed and drained
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    return proc.returncode, seen


def test_bad_config_exits_2_naming_file_line_key_and_value(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[[orgs]]\nid = "acme"\n\n[timeouts]\nudp_idle = -5\n')
    code, _, err = _run("config", "check", "--config", str(cfg))
    assert code == 2
    assert "bad.toml line 5" in err and "udp_idle" in err and "-5" in err
    assert "Traceback" not in err


def test_import_of_a_non_capture_file_fails_clearly_and_imports_the_rest(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("not a capture\n")
    db = tmp_path / "s.db"
    code, out, err = _run(
        "import",
        "--config",
        str(CONFIG),
        str(junk),
        str(DATA / "wg-small.pcap"),
        TUNNELACCT_DATABASE_URL=f"sqlite:///{db}",
    )
    assert code == 1
    assert "notes.txt: not a pcap or pcapng file" in err
    assert "imported 1 file(s): 1,294 packets" in out


def test_inspect_names_the_reason_of_each_rejected_packet(tmp_path: Path) -> None:
    good = bytes(IP(src="100.64.0.2", dst="10.99.0.5") / TCP(sport=1, dport=2))
    bad_ihl = bytearray(good)
    bad_ihl[0] = 0x43  # IHL 3 words < 20 bytes
    pcap = tmp_path / "mixed.pcap"
    write_pcap(pcap, [(1.0, good), (2.0, bytes(bad_ihl)), (3.0, good[:10])], linktype=101)
    out = run_cli("inspect", str(pcap)).stdout.splitlines()
    assert [line.split()[0] for line in out] == ["#2", "#3"]
    assert "bad_ip_header_length" in out[0] and "truncated_ip_header" in out[1]


def test_metrics_textfile_holds_the_import_figures(tmp_path: Path) -> None:
    prom = tmp_path / "import.prom"
    pcap = DATA / "wg-small.pcap"
    run_cli(
        "import",
        "--config",
        str(CONFIG),
        "--metrics-textfile",
        str(prom),
        str(pcap),
        env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"},
    )
    samples = {
        s.name: s.value
        for family in text_string_to_metric_families(prom.read_text())
        for s in family.samples
    }
    data = pcap.read_bytes()
    records, off = 0, 24
    while off + 16 <= len(data):
        off += 16 + struct.unpack_from("<I", data, off + 8)[0]
        records += 1
    assert samples["tunnelacct_import_packets_total"] == records
    assert samples["tunnelacct_import_sessions_total"] > 0


def test_export_to_stdout_is_csv_of_only_that_org(tmp_path: Path) -> None:
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    run_cli("import", "--config", str(CONFIG), str(DATA / "wg-small.pcap"), env=env)
    out = run_cli("export", "--config", str(CONFIG), "--org", "globex", env=env).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and {r["org_id"] for r in rows} == {"globex"}
    assert all(r["started_at"].endswith("Z") for r in rows)


def test_export_with_a_filter_writes_exactly_the_matching_sessions(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"}
    run_cli("import", "--config", str(CONFIG), str(DATA / "wg-small.pcap"), env=env)
    flt = "protocol:udp dport:5353"
    out = run_cli("export", "--config", str(CONFIG), "--org", "acme", "-q", flt, env=env).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    with sqlite3.connect(db) as conn:
        expected = {
            r[0]
            for r in conn.execute(
                "select id from sessions"
                " where org_id = 'acme' and protocol = 'udp' and dst_port = 5353"
            )
        }
    conn.close()
    assert rows and {r["session_id"].replace("-", "") for r in rows} == expected
    assert len(rows) < len(
        list(
            csv.DictReader(
                io.StringIO(
                    run_cli("export", "--config", str(CONFIG), "--org", "acme", env=env).stdout
                )
            )
        )
    )


def test_export_with_a_bad_filter_names_the_term_and_writes_no_file(tmp_path: Path) -> None:
    out_file = tmp_path / "out.csv"
    code, out, err = _run(
        "export",
        "--org",
        "acme",
        "-q",
        "dport:70000",
        "-o",
        str(out_file),
        TUNNELACCT_DATABASE_URL=f"sqlite:///{tmp_path / 's.db'}",
    )
    assert code == 2
    assert "error: bad filter term 'dport:70000': expected a port 0-65535 or a range a-b" in err
    assert not out_file.exists()


def test_db_upgrade_creates_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "new" / "t.db"
    run_cli("db", "upgrade", env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{db}"})
    with sqlite3.connect(db) as conn:
        names = conn.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        tables = {r[0] for r in names}
    conn.close()
    assert {"sessions", "orgs", "clients", "resources"} <= tables


def test_export_of_an_unknown_org_is_an_error_listing_the_known_ones(tmp_path: Path) -> None:
    env = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    run_cli("import", "--config", str(CONFIG), str(DATA / "wg-small.pcap"), env=env)
    code, out, err = _run("export", "--config", str(CONFIG), "--org", "acm", **env)
    assert code == 2 and out == ""
    assert "unknown org 'acm'" in err and "acme" in err and "globex" in err


def test_import_shows_a_progress_bar_on_a_terminal_only(tmp_path: Path) -> None:
    db_url = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    env = {**os.environ, **db_url}
    argv = [
        sys.executable,
        "-m",
        "tunnelacct",
        "--log-level",
        "WARNING",
        "import",
        str(DATA / "wg-small.pcap"),
    ]
    returncode, seen = stderr_on_a_terminal(argv, env)
    assert returncode == 0
    assert b"importing" in seen and b"100%" in seen
    piped = _run("import", str(DATA / "wg-small.pcap"), **db_url)[2]
    assert "importing" not in piped


def test_export_shows_its_progress_on_a_terminal_only(tmp_path: Path) -> None:
    db_url = {"TUNNELACCT_DATABASE_URL": f"sqlite:///{tmp_path / 's.db'}"}
    run_cli("import", "--config", str(CONFIG), str(DATA / "wg-small.pcap"), env=db_url)
    out_file = tmp_path / "acme.csv"
    argv = [
        sys.executable,
        "-m",
        "tunnelacct",
        "export",
        "--config",
        str(CONFIG),
        "--org",
        "acme",
        "-o",
        str(out_file),
    ]
    returncode, seen = stderr_on_a_terminal(argv, {**os.environ, **db_url})
    assert returncode == 0
    with out_file.open(newline="") as f:
        rows = len(list(csv.DictReader(f)))
    assert f"exporting: {rows:,} rows".encode() in seen
    piped = _run("export", "--config", str(CONFIG), "--org", "acme", "-o", str(out_file), **db_url)[
        2
    ]
    assert "exporting" not in piped


def test_a_file_given_twice_is_imported_once(tmp_path: Path) -> None:
    once, twice = tmp_path / "once.db", tmp_path / "twice.db"
    pcap = DATA / "wg-small.pcap"
    run_cli(
        "import",
        "--config",
        str(CONFIG),
        str(pcap),
        env={"TUNNELACCT_DATABASE_URL": f"sqlite:///{once}"},
    )
    same_again = pcap.parent / ".." / "data" / pcap.name
    code, _, err = _run(
        "import",
        "--config",
        str(CONFIG),
        str(pcap),
        str(same_again),
        TUNNELACCT_DATABASE_URL=f"sqlite:///{twice}",
    )
    assert code == 0 and "given more than once; imported once" in err
    counts = "select count(*), sum(packets_tx + packets_rx) from sessions"
    assert raw_query(twice, counts) == raw_query(once, counts)
