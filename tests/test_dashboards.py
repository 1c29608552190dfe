"""The Grafana dashboards on a real Prometheus that scrapes a real `tunnelacct serve` replaying a
capture and collecting NetFlow: every PromQL expression parses and returns data, every template
variable query finds series, and every metric a dashboard names is on the service's GET /metrics."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.netflow import NetflowHeader, NetflowHeaderV5, NetflowRecordV5

from tests.helpers.dashboards import (
    expressions,
    grafana_substitute,
    metric_names,
    template_queries,
    variable_values,
)
from tests.helpers.needs import require
from tests.helpers.prometheus import JOB, Prometheus, PromQLError, free_port, prometheus_binary
from tests.helpers.serving import Serve, dump_toml, write_config
from tests.helpers.waiting import WAIT_S

ROOT = Path(__file__).parent.parent
DASHBOARDS = ROOT / "grafana" / "dashboards"
SPEC = ROOT / "docs" / "metrics.md"  # its metric table
DATA = Path(__file__).parent / "data"
SCRAPES = 5  # successful scrapes before the checks: rate() over 1m needs two samples
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
EXPORTER = "127.0.0.1"  # the one address in serve's [[collector.exporters]]
STRANGER = "127.0.0.2"  # a loopback address outside that allow-list
EXPORTER_GATEWAY = "lab-netflow"

pytestmark = pytest.mark.slow


class NetflowExporter:
    """A NetFlow v5 exporter on a thread, sending to serve's collector at 127.0.0.1:`port`.

    Every SEND_EVERY_S it sends from EXPORTER one datagram of three records (TCP and UDP from the
    lab's clients to its resources, source ports changing, and an ICMP record that serve skips),
    with a contiguous flow sequence and the current time. Every TRUNCATED_EVERY-th datagram is cut
    inside its header instead (a `truncated_header` drop), and every STRANGER_EVERY-th tick one
    more datagram goes out from STRANGER (`not_allowed`).
    """

    SEND_EVERY_S = 0.2
    TRUNCATED_EVERY = 20
    STRANGER_EVERY = 10
    TRUNCATED_BYTES = 12  # half of the 24-byte v5 header
    SYN_PSH_ACK = 0x1A

    def __init__(self, port: int) -> None:
        self.target = (EXPORTER, port)
        self.sent = 0
        self.send_errors: list[str] = []
        self._stop = threading.Event()
        self._boot = time.monotonic() - 60.0  # sysUptime starts a minute after "boot"
        self._sequence = 0  # records in the whole datagrams sent so far
        self._thread = threading.Thread(target=self._run, name="netflow-exporter", daemon=True)

    def records(self, tick: int, uptime_ms: int) -> list[NetflowRecordV5]:
        """The records of `tick`: TCP and UDP from the lab's clients to its resources (source
        ports changing with `tick`) and one ICMP record, each ending 50 ms before `uptime_ms`."""
        src_port = 40000 + tick % 64
        return [
            self.record(uptime_ms, "100.64.0.2", 6, src_port, 8080, self.SYN_PSH_ACK),
            self.record(uptime_ms, "100.64.0.3", 17, src_port, 5353),
            self.record(uptime_ms, "100.64.0.3", 1),  # neither TCP nor UDP: skipped
        ]

    @staticmethod
    def record(
        uptime_ms: int,
        src: str,
        protocol: int,
        src_port: int = 0,
        dst_port: int = 0,
        flags: int = 0,
    ) -> NetflowRecordV5:
        """A record of 10 packets, 4200 bytes from `src` to 10.99.0.5 over 100 ms."""
        return NetflowRecordV5(
            src=src,
            dst="10.99.0.5",
            dpkts=10,
            dOctets=4200,
            first=uptime_ms - 150,
            last=uptime_ms - 50,
            srcport=src_port,
            dstport=dst_port,
            tcpFlags=flags,
            prot=protocol,
        )

    def datagram(self, tick: int) -> tuple[bytes, int]:
        """The whole v5 datagram of `tick`, stamped now, and how many records it holds."""
        now = time.time()
        uptime_ms = int((time.monotonic() - self._boot) * 1000)
        records = self.records(tick, uptime_ms)
        packet = NetflowHeader(version=5) / NetflowHeaderV5(
            count=len(records),
            sysUptime=uptime_ms,
            unixSecs=int(now),
            unixNanoSeconds=int(now % 1 * 1e9),
            flowSequence=self._sequence,
        )
        for record in records:
            packet = packet / record
        return bytes(packet), len(records)

    def _run(self) -> None:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as exporter,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger,
        ):
            exporter.bind((EXPORTER, 0))
            stranger.bind((STRANGER, 0))
            tick = 0
            while not self._stop.wait(self.SEND_EVERY_S):  # pacing, as a real exporter's
                tick += 1
                whole, count = self.datagram(tick)
                sends = [(exporter, whole)]
                if tick % self.TRUNCATED_EVERY == 0:  # dropped before its sequence is read
                    sends = [(exporter, whole[: self.TRUNCATED_BYTES])]
                else:
                    self._sequence += count
                if tick % self.STRANGER_EVERY == 0:
                    sends.append((stranger, whole))
                for sock, payload in sends:
                    try:
                        sock.sendto(payload, self.target)
                        self.sent += 1
                    except OSError as e:  # e.g. no buffer space: shown in Stack.logs()
                        self.send_errors.append(repr(e))

    def __enter__(self) -> NetflowExporter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        assert not self._thread.is_alive(), "the NetFlow exporter thread did not stop"


@dataclass(slots=True)
class Stack:
    """A running serve, the prometheus scraping it, serve's own /metrics URL, and the NetFlow
    exporter sending to serve's collector."""

    serve: Serve
    prom: Prometheus
    metrics_url: str
    exporter: NetflowExporter

    def metrics_text(self) -> str:
        """serve's own GET /metrics, fetched directly (not through prometheus)."""
        with self.prom.http.open(self.metrics_url, timeout=10) as r:
            return str(r.read().decode("utf-8"))

    def logs(self) -> str:
        """Both logs and prometheus's view of the target, for failure messages."""
        try:
            targets = json.dumps(self.prom.active_targets(), indent=1)
        except (OSError, PromQLError) as e:  # prometheus is gone: its log says why
            targets = repr(e)
        errors = self.exporter.send_errors
        return (
            f"--- netflow exporter: {self.exporter.sent} datagrams sent, {len(errors)} send "
            f"errors {errors[-3:]} ---\n"
            f"--- prometheus log ---\n{self.prom.log()}\n"
            f"--- prometheus targets ---\n{targets}\n"
            f"--- serve log ---\n{self.serve.log()}"
        )


def ensure_prometheus() -> str:
    """The prometheus binary, installed by scripts/install-system-deps.sh when missing."""
    binary = prometheus_binary()
    if binary is not None:
        return binary
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "install-system-deps.sh")],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=900,
    )
    binary = prometheus_binary()
    if binary is None:
        why = (
            f"prometheus missing and scripts/install-system-deps.sh (exit {run.returncode}) "
            f"did not install it:\n{run.stdout}{run.stderr}"
        )
        require(why, "Prometheus dashboard tests")  # skips, or under CI fails
    return binary


# What the stack must show before the checks, as PromQL that returns data once it does.
READY = {
    f"{SCRAPES} successful scrapes": f'sum_over_time(up{{job="{JOB}"}}[1m]) >= {SCRAPES}',
    "captured traffic": "increase(tunnelacct_capture_packets_total[1m]) > 0",
    "collected flow records": "increase(tunnelacct_collector_records_total[1m]) > 0",
    "a collector drop": (
        'increase(tunnelacct_collector_dropped_total{reason="truncated_header"}[1m]) > 0'
    ),
    "a datagram from outside the allow-list": (
        "increase(tunnelacct_collector_not_allowed_datagrams_total[1m]) > 0"
    ),
    # absent before the first purge, and the health dashboard shows it
    "a completed purge": "tunnelacct_retention_last_success_timestamp_seconds",
}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """serve replaying wg-small.pcap in a loop at 0.2x (traffic all along, ~500 packets/s),
    collecting the NetflowExporter's datagrams on a loopback port, and purging every 3 s, scraped
    every second by our own prometheus, once it shows READY."""
    binary = ensure_prometheus()
    tmp = tmp_path_factory.mktemp("dashboards")
    port = free_port()
    config = write_config(
        DATA / "wg-small.toml",
        tmp / "serve.toml",
        {
            "api": {"listen": f"127.0.0.1:{port}"},
            "retention": {"interval": 3},
            "collector": {"listen": [f"{EXPORTER}:0"]},  # port 0: serve binds a free one
        },
        captures=[{"pcap": str(DATA / "wg-small.pcap"), "speed": 0.2, "loop": True}],
    )
    # write_config merges tables only; this array of tables goes after them
    exporters = [{"address": f"{EXPORTER}/32", "gateway": EXPORTER_GATEWAY}]
    with config.open("a", encoding="utf-8") as f:
        f.write(dump_toml({"collector.exporters": exporters}))
    target = f"127.0.0.1:{port}"
    with Serve(None, config, tmp / "serve.db", tmp) as serve:
        serve.start()
        status = serve.wait(
            lambda s: bool((s["collector"] or {}).get("listening")), WAIT_S, "collector listening"
        )
        [listening] = status["collector"]["listening"]
        collector_port = int(listening.rpartition(":")[2])
        with (
            NetflowExporter(collector_port) as exporter,
            Prometheus(tmp / "prometheus", [target], "1s", binary=binary) as prom,
        ):
            stack = Stack(serve, prom, f"http://{target}/metrics", exporter)

            missing = list(READY)

            def ready() -> bool:
                missing[:] = [what for what, expr in READY.items() if not prom.query(expr)]
                return not missing

            try:
                prom.wait_until(ready, WAIT_S, ", ".join(READY))
            except AssertionError as e:
                first = e.args[0].splitlines()[0]
                raise AssertionError(f"{first}\nmissing: {missing}\n{stack.logs()}") from None
            yield stack


def exported(metrics_text: str) -> tuple[set[str], set[str]]:
    """(names a dashboard may use, histogram base names) of a Prometheus text exposition: every
    sample name and every `# TYPE` name."""
    names, histograms = set(), set()
    for line in metrics_text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            names.add(name)
            if kind.strip() == "histogram":
                histograms.add(name)
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names, histograms


def spec_histograms() -> set[str]:
    """Histogram names in the metric table of docs/metrics.md."""
    return set(re.findall(r"^\| `(tunnelacct_\w+)` \| histogram", SPEC.read_text(), re.M))


def base_name(name: str, histograms: set[str]) -> str:
    """`name` without a histogram series suffix (`_bucket`, `_sum`, `_count`)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
            return name.removesuffix(suffix)
    return name


def dashboard_problems(stack: Stack, docs: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every way the dashboards (file name -> JSON) fail on the live stack, one entry each."""
    problems: list[str] = []
    names, histograms = exported(stack.metrics_text())
    histograms |= spec_histograms()
    used: dict[str, str] = {}  # metric name -> where it is first used
    for file, doc in docs.items():
        values = variable_values(doc)
        exprs = expressions(doc)
        if not exprs:
            problems.append(f"{file}: no panel has a PromQL expression")
        for e in exprs:
            where = f"{file} {e.where()}"
            for name in metric_names(e.expr):
                used.setdefault(name, where)
            try:
                promql = grafana_substitute(e.expr, values)
                rows = stack.prom.query(promql)
            except ValueError as err:
                problems.append(f"{where}: {err}\n    {e.expr}")
                continue
            except PromQLError as err:
                problems.append(f"{where}: {err.error_type}: {err.error}\n    {promql}")
                continue
            if not rows:
                problems.append(f"{where}: no data\n    {promql}")
        try:
            queries = template_queries(doc)
        except ValueError as err:
            problems.append(f"{file}: {err}")
            queries = []
        for q in queries:
            where = f"{file} {q.dashboard!r} variable {q.name!r}"
            query = f"label_values({q.selector}, {q.label})" if q.selector else q.label
            for name in metric_names(q.selector or ""):
                used.setdefault(name, where)
            try:
                if q.selector is None:
                    found = stack.prom.label_values(q.label)
                else:
                    selector = grafana_substitute(q.selector, values)
                    found = [s[q.label] for s in stack.prom.series(selector) if q.label in s]
            except (ValueError, PromQLError) as err:
                problems.append(f"{where}: {err}\n    {query}")
                continue
            if not found:
                problems.append(f"{where}: no series with label {q.label!r}\n    {query}")
    for name, where in sorted(used.items()):
        if base_name(name, histograms) not in names:
            problems.append(f"{where}: {name} is not on serve's GET /metrics")
    return problems


def load_dashboards(directory: Path) -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON of each *.json in `directory`."""
    return {p.name: json.loads(p.read_text("utf-8")) for p in sorted(directory.glob("*.json"))}


def test_every_dashboard_expression_parses_and_returns_data_on_a_real_scrape(
    stack: Stack,
) -> None:
    docs = load_dashboards(DASHBOARDS)
    assert docs, f"no dashboards in {DASHBOARDS}"
    problems = dashboard_problems(stack, docs)
    assert not problems, f"{len(problems)} dashboard problems:\n" + "\n".join(problems)


# -- the harness itself: it passes a good dashboard and reports every kind of bad one ----------


def panel(title: str, *exprs: str, **extra: Any) -> dict[str, Any]:
    """A Grafana panel with one target per expression, refIds A, B, ..."""
    targets = [{"refId": chr(ord("A") + i), "expr": e} for i, e in enumerate(exprs)]
    return {"type": "timeseries", "title": title, "targets": targets, **extra}


def dashboard(title: str, panels: list[dict[str, Any]], variables: list[dict[str, Any]]) -> Any:
    """A Grafana dashboard's JSON with these panels and templating variables."""
    return {"title": title, "panels": panels, "templating": {"list": variables}}


INTERFACES = "label_values(tunnelacct_capture_packets_total, interface)"


def query_variable(name: str, query: str | dict[str, str]) -> dict[str, Any]:
    """A multi-value query variable with an "All" option, as the dashboards declare theirs."""
    return {"name": name, "type": "query", "multi": True, "includeAll": True, "query": query}


def test_a_dashboard_over_todays_metrics_passes_in_every_variable_form(
    stack: Stack, tmp_path: Path
) -> None:
    good = dashboard(
        "Capture",
        [
            panel(
                "Packets/s",
                'sum by (interface) (rate(tunnelacct_capture_packets_total{interface=~"$interface"}'
                "[$__rate_interval]))",
                'sum(increase(tunnelacct_capture_packets_total{interface=~"${interface}"}'
                "[$__range])) / $__range_s",
            ),
            {
                "type": "row",
                "title": "Writer",
                "collapsed": True,
                "panels": [
                    panel("Queue", "tunnelacct_writer_queue_depth"),
                    panel("Rows", "increase(tunnelacct_store_rows_written_total[${__range}])"),
                    panel(
                        "Decode errors",
                        'sum(tunnelacct_decode_errors_total{interface=~"[[interface]]"})',
                        'tunnelacct_capture_open_sessions{interface=~"${interface:regex}"}',
                    ),
                ],
            },
            panel(
                "Deleted",
                'sum(tunnelacct_retention_deleted_sessions_total{org=~"$org"})',
                "sum(increase(tunnelacct_retention_deleted_sessions_total[$window]))",
            ),
        ],
        [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            query_variable("interface", INTERFACES),
            query_variable("org", {"query": "label_values(org)", "refId": "V"}),  # Grafana 10
            {"name": "window", "type": "interval", "query": "5m,1h", "current": {"value": "5m"}},
        ],
    )
    (tmp_path / "capture.json").write_text(json.dumps(good), encoding="utf-8")
    docs = load_dashboards(tmp_path)
    assert [e.panel for e in expressions(docs["capture.json"])] == (
        ["Packets/s"] * 2
        + ["Queue", "Rows", "Decode errors", "Decode errors", "Deleted", "Deleted"]
    )
    assert dashboard_problems(stack, docs) == []


def test_each_kind_of_broken_dashboard_is_reported(stack: Stack) -> None:
    bad = dashboard(
        "Broken",
        [
            panel("Unclosed", "sum(rate(tunnelacct_capture_packets_total[1m])"),
            panel("Missing", "rate(tunnelacct_no_such_metric_total[$__rate_interval])"),
            panel("Undeclared", "rate(tunnelacct_capture_packets_total[$window])"),
            panel("Equals", 'tunnelacct_capture_open_sessions{interface="$interface"}'),
        ],
        [
            query_variable("interface", INTERFACES),
            query_variable("org", "label_values(tunnelacct_no_such_series_total, org)"),
        ],
    )
    problems = dashboard_problems(stack, {"broken.json": bad})
    expected = [
        ("'Unclosed'", "parse error: unclosed left parenthesis"),
        ("'Missing'", "no data\n    rate(tunnelacct_no_such_metric_total[1m])"),
        ("'Undeclared'", "$window is neither a dashboard variable nor one of Grafana's builtins"),
        ("'Equals'", 'no data\n    tunnelacct_capture_open_sessions{interface=".*"}'),
        ("variable 'org'", "no series with label 'org'"),
        ("'Missing'", "tunnelacct_no_such_metric_total is not on serve's GET /metrics"),
        ("variable 'org'", "tunnelacct_no_such_series_total is not on serve's GET /metrics"),
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for (where, what), problem in zip(expected, problems, strict=True):
        assert where in problem and what in problem, problem


def test_a_broken_expression_raises_with_prometheus_parse_error(stack: Stack) -> None:
    with pytest.raises(PromQLError, match="parse error") as raised:
        stack.prom.query("sum(rate(tunnelacct_capture_packets_total[1m])")
    assert raised.value.error_type == "bad_data"


def test_a_metric_that_does_not_exist_has_no_series_and_one_that_does_has(stack: Stack) -> None:
    assert stack.prom.query("tunnelacct_no_such_metric_total") == []
    assert stack.prom.series("tunnelacct_no_such_metric_total") == []
    rows = stack.prom.query(f'up{{job="{JOB}"}}')
    assert [r["value"][1] for r in rows] == ["1"]
    assert stack.prom.targets_up()
