"""Benchmark: two revisions of tunnelacct side by side, rounds alternating which goes first
(issue 17: a restructure must not be slower).

Each revision is checked out into a temporary git worktree and run with the same .venv,
`PYTHONPATH` pointing at its worktree, so the package and its benchmarks are that
revision's. Per round and revision:

- import: `bench_import.py` on a bulk capture (2M packets, 20,000 sessions) and on a
  session-heavy one (`--flows 200000`); the import's own packets/s;
- flow table: the instructions callgrind counts for `flowtable_work.py` on a capture of
  200,000 packets in 2,000 sessions, minus those of its `--decode-only` run;
- CSV export: `bench_export_engines.py --rows 200000 --runs 1`, rows/s of the SQLite export
  with two workers;
- filtered page: `bench_query.py --no-export --db STORE` on a SQLite store of `--sessions`
  sessions built once (by the first revision) and reused; the filtered page's p99.

It prints each figure per revision and round, and the median per revision. Asserts nothing.

    .venv/bin/python tests/benchmarks/bench_revisions.py BEFORE AFTER [--rounds 3]
        [--sessions 10000000] [--store /var/tmp/bench-10m.db] [--only import]

`--only` keeps the figures whose name starts with it (`import`: the two imports only, for a
change that touches only the decoder's path).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
PYTHON = CHECKOUT / ".venv" / "bin" / "python"
BULK = ["--packets", "2000000", "--flows", "20000"]
SESSION_HEAVY = ["--flows", "200000"]
FIGURES = (
    "import bulk (packets/s)",
    "import session-heavy (packets/s)",
    "flow table (M instructions)",
    "CSV export (rows/s)",
    "filtered page p99 (ms)",
)


def run(argv: list[str], tree: Path, cwd: Path | None = None) -> str:
    """Run `argv` with revision `tree` on PYTHONPATH; stdout and stderr together."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        argv, cwd=cwd or tree, env=env, capture_output=True, text=True, timeout=7200
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done.stdout + done.stderr


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"no {pattern!r} in:\n{text}")
    return float(match[1].replace(",", ""))


def import_rate(tree: Path, flags: list[str]) -> float:
    """The import's own packets/s (bench_import.py's RESULT line)."""
    out = run([str(PYTHON), "tests/benchmarks/bench_import.py", *flags], tree)
    return number(r"\(([\d,]+) packets/s\)", out)


def flowtable_instructions(tree: Path, capture: Path) -> float:
    """The flow table's instructions on `capture`, in millions: callgrind's count of a run
    minus that of a `--decode-only` run (this VM has no hardware counters for perf)."""

    def instructions(*flags: str) -> float:
        argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(PYTHON)]
        argv += [str(CHECKOUT / "tests/benchmarks/flowtable_work.py"), str(capture), *flags]
        return number(r"Collected : (\d+)", run(argv, tree))

    return (instructions() - instructions("--decode-only")) / 1e6


def export_rate(tree: Path) -> float:
    """Rows/s of the CSV export with two workers, SQLite, 200,000 rows."""
    out = run(
        [
            str(PYTHON),
            "tests/benchmarks/bench_export_engines.py",
            "--rows",
            "200000",
            "--runs",
            "1",
        ],
        tree,
    )
    return number(r"sqlite\s+workers=2: [\d,]+ rows, best ([\d,]+) rows/s", out)


def filtered_p99_ms(tree: Path, sessions: int, store: Path) -> float:
    """The filtered page's p99 in ms on the SQLite store of `sessions` sessions."""
    argv = [str(PYTHON), "tests/benchmarks/bench_query.py", "--no-export"]
    argv += ["--sessions", str(sessions), "--db", str(store)]
    out = run(argv, tree)
    return number(r"filtered page.*?p99\s+([\d.]+) ms", out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=10_000_000)
    parser.add_argument("--store", type=Path, default=Path("/var/tmp/tunnelacct-bench-query.db"))
    parser.add_argument("--only", default="", help="the figures whose name starts with this")
    args = parser.parse_args()
    wanted = [what for what in FIGURES if what.startswith(args.only)]
    if not wanted:
        parser.error(f"--only {args.only!r} names no figure")
    with tempfile.TemporaryDirectory(prefix="tunnelacct-revisions-") as tmp:
        home = Path(tmp)
        trees = {}
        for name in (args.before, args.after):
            tree = home / name.replace("/", "_")
            subprocess.run(
                ["git", "-C", str(CHECKOUT), "worktree", "add", "-f", "--detach", str(tree), name],
                check=True,
                capture_output=True,
            )
            trees[name] = tree
        capture = home / "flows.pcap"
        figures: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        measures: dict[str, Callable[[Path], float]] = {
            "import bulk (packets/s)": lambda tree: import_rate(tree, BULK),
            "import session-heavy (packets/s)": lambda tree: import_rate(tree, SESSION_HEAVY),
            "flow table (M instructions)": lambda tree: flowtable_instructions(tree, capture),
            "CSV export (rows/s)": export_rate,
            "filtered page p99 (ms)": lambda tree: filtered_p99_ms(tree, args.sessions, args.store),
        }
        assert list(measures) == list(FIGURES), "FIGURES names every measure, in order"
        measures = {what: measure for what, measure in measures.items() if what in wanted}
        _write_flow_capture(capture)
        try:
            for round_no in range(args.rounds):
                order = list(trees) if round_no % 2 == 0 else list(reversed(trees))
                for name in order:
                    for what, measure in measures.items():
                        value = measure(trees[name])
                        figures[name].setdefault(what, []).append(value)
                        print(
                            f"round {round_no + 1} {name[:12]:12} {what:34} {value:,.2f}",
                            flush=True,
                        )
        finally:
            for tree in trees.values():
                subprocess.run(
                    ["git", "-C", str(CHECKOUT), "worktree", "remove", "--force", str(tree)],
                    check=False,
                    capture_output=True,
                )
        print(f"machine: {_machine()}")
        for what in measures:
            medians = [statistics.median(figures[name][what]) for name in trees]
            cells = "  ".join(
                f"{name[:12]}: {m:,.2f}" for name, m in zip(trees, medians, strict=True)
            )
            print(f"MEDIAN {what:34} {cells}")


def _write_flow_capture(path: Path) -> None:
    """The flow-table benchmark's capture: 200,000 packets in 2,000 sessions."""
    sys.path.insert(0, str(CHECKOUT))
    from tests.benchmarks.synth import synth_pcap

    synth_pcap(path, 200_000, 2_000, seed=1)


def _machine() -> str:
    sys.path.insert(0, str(CHECKOUT))
    from tests.benchmarks.machine import machine

    return machine()


if __name__ == "__main__":
    main()
