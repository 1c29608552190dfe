"""Static checks of the Grafana dashboards, their provisioning and the Prometheus example.

No Grafana and no network: the JSON and YAML are read as files, metric names are checked
against the metric table of docs/metrics.md, and (where promtool is installed) every
expression is parsed as PromQL with the dashboard variables substituted the way Grafana would.
"""

from __future__ import annotations

import itertools
import json
import re
import shutil
import subprocess
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with the test extra (schemathesis)

from tests.helpers.needs import INSTALL_HINT, require

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD_DIR = ROOT / "grafana" / "dashboards"
DATASOURCES_YAML = ROOT / "grafana" / "provisioning" / "datasources" / "tunnelacct.yaml"
PROVIDERS_YAML = ROOT / "grafana" / "provisioning" / "dashboards" / "tunnelacct.yaml"
PROMETHEUS_YML = ROOT / "examples" / "prometheus.yml"
EXAMPLE_CONFIG = ROOT / "examples" / "tunnelacct.toml"
METRICS_SPEC = ROOT / "docs" / "metrics.md"  # its metric table

DATASOURCE = "${datasource}"
# file -> (uid, {variable: allowed Grafana variable types}, {variable: metric its query reads})
DASHBOARDS: dict[str, tuple[str, dict[str, tuple[str, ...]], dict[str, str]]] = {
    "tunnelacct-traffic.json": (
        "tunnelacct-traffic",
        {
            "datasource": ("datasource",),
            "org": ("query",),
            "resource": ("query",),
            "protocol": ("custom", "query"),
            "tunnelacct_api": ("textbox",),
        },
        {"org": "tunnelacct_bytes_total", "resource": "tunnelacct_bytes_total"},
    ),
    "tunnelacct-health.json": (
        "tunnelacct-health",
        {"datasource": ("datasource",), "interface": ("query",)},
        {"interface": "tunnelacct_capture_packets_total"},
    ),
}
MULTI_VARIABLES = {"org", "resource", "protocol", "interface"}
# What Grafana puts in place of its variables when "All" is selected (allValue ".*").
SUBSTITUTIONS = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$org": ".*",
    "$resource": ".*",
    "$protocol": ".*",
    "$interface": ".*",
}
GRID_COLUMNS = 24
METRIC_NAME = re.compile(r"\btunnelacct_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_dashboard(name: str) -> dict[str, Any]:
    """The parsed dashboard JSON model of grafana/dashboards/`name`."""
    model = json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
    assert isinstance(model, dict)
    return model


def all_panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel of a dashboard, rows and the panels nested in (collapsed) rows included."""
    found: list[dict[str, Any]] = []
    for panel in model.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def query_panels(model: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (everything but rows)."""
    return [p for p in all_panels(model) if p.get("type") != "row"]


def targets(model: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every query of a dashboard."""
    return [(p.get("title", "?"), t) for p in query_panels(model) for t in p.get("targets", [])]


def variables(model: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The dashboard's template variables by name."""
    return {v["name"]: v for v in model.get("templating", {}).get("list", [])}


def variable_query(variable: dict[str, Any]) -> str:
    """A query variable's query text (Grafana stores a string or {"query": ...})."""
    query = variable.get("query", "")
    return str(query.get("query", "") if isinstance(query, dict) else query)


def substituted(expr: str) -> str:
    """`expr` as Grafana sends it with "All" selected everywhere."""
    for name in sorted(SUBSTITUTIONS, key=len, reverse=True):  # $__range before $__r...
        expr = expr.replace(name, SUBSTITUTIONS[name])
    return expr


def spec_metrics() -> dict[str, str]:
    """Metric name -> type, from the metric table of docs/metrics.md."""
    rows = re.findall(
        r"^\| `(tunnelacct_[a-z_]+)` \| ([a-z]+)", METRICS_SPEC.read_text("utf-8"), re.MULTILINE
    )
    return dict(rows)


def base_metric(name: str, spec: dict[str, str]) -> str:
    """The spec's name for `name`: a histogram's _bucket/_sum/_count series map to it."""
    for suffix in HISTOGRAM_SUFFIXES:
        stem = name.removesuffix(suffix)
        if stem != name and spec.get(stem) == "histogram":
            return stem
    return name


def overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    """Whether two gridPos rectangles share any cell."""
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


dashboard_names = pytest.mark.parametrize("name", sorted(DASHBOARDS))


def test_every_expected_dashboard_file_exists() -> None:
    missing = [n for n in DASHBOARDS if not (DASHBOARD_DIR / n).is_file()]
    assert not missing, f"missing dashboards in {DASHBOARD_DIR}: {missing}"


def test_dashboard_uids_and_titles_are_unique_across_all_dashboards() -> None:
    models = [load_dashboard(p.name) for p in sorted(DASHBOARD_DIR.glob("*.json"))]
    assert len(models) >= len(DASHBOARDS)
    uids = [m.get("uid") for m in models]
    titles = [m.get("title") for m in models]
    assert all(uids) and all(titles), "every dashboard needs a uid and a title"
    assert len(set(uids)) == len(uids), f"duplicate uids: {uids}"
    assert len(set(titles)) == len(titles), f"duplicate titles: {titles}"


@dashboard_names
def test_dashboard_has_its_uid_and_a_current_schema(name: str) -> None:
    model = load_dashboard(name)
    assert model["uid"] == DASHBOARDS[name][0]
    assert model["schemaVersion"] >= 36
    assert model.get("id") is None, "an exported id would clash with the importing Grafana's"


@dashboard_names
def test_dashboard_json_is_pretty_printed_with_two_spaces(name: str) -> None:
    text = (DASHBOARD_DIR / name).read_text(encoding="utf-8")
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


@dashboard_names
def test_dashboard_has_the_template_variables_with_their_types(name: str) -> None:
    _, expected, queried = DASHBOARDS[name]
    found = variables(load_dashboard(name))
    for var, types in expected.items():
        assert var in found, f"{name} has no ${var} variable"
        assert found[var]["type"] in types, f"${var} is a {found[var]['type']} variable"
    assert found["datasource"]["query"] == "prometheus"
    if found.get("protocol", {}).get("type") == "custom":
        assert sorted(variable_query(found["protocol"]).replace(" ", "").split(",")) == [
            "tcp",
            "udp",
        ]
    for var, metric in queried.items():
        query = variable_query(found[var])
        assert query.startswith("label_values(") and metric in query, f"${var}: {query!r}"
        assert query.rstrip(")").endswith(var), f"${var} does not list {var} values: {query!r}"
    for var in MULTI_VARIABLES & found.keys():
        v = found[var]
        assert v.get("multi") is True and v.get("includeAll") is True, f"${var} not multi+All"
        assert v.get("allValue") == ".*", f"${var} allValue is {v.get('allValue')!r}"


@dashboard_names
def test_every_panel_is_titled_described_and_uses_the_datasource_variable(name: str) -> None:
    panels = query_panels(load_dashboard(name))
    assert panels, f"{name} has no panels"
    problems = []
    for p in panels:
        title = p.get("title") or "?"
        if not p.get("title"):
            problems.append(f"panel {p.get('id')} has no title")
        if not p.get("description"):
            problems.append(f"{title}: no description")
        if p.get("datasource") != {"type": "prometheus", "uid": DATASOURCE}:
            problems.append(f"{title}: datasource {p.get('datasource')}")
        if not p.get("fieldConfig", {}).get("defaults", {}).get("unit"):
            problems.append(f"{title}: no fieldConfig.defaults.unit")
        if not p.get("targets"):
            problems.append(f"{title}: no targets")
    assert not problems, problems


@dashboard_names
def test_every_target_has_a_ref_id_an_expression_and_a_legend(name: str) -> None:
    found = targets(load_dashboard(name))
    assert found, f"{name} has no queries"
    problems = []
    for title, t in found:
        for key in ("refId", "expr", "legendFormat"):
            if not str(t.get(key, "")).strip():
                problems.append(f"{title}: target {t.get('refId')} has no {key}")
        if t.get("legendFormat") == "__auto":
            problems.append(f"{title}: legendFormat __auto (write one that reads well)")
        ds = t.get("datasource", {"uid": DATASOURCE})
        if ds.get("uid") != DATASOURCE:
            problems.append(f"{title}: target datasource {ds}")
    assert not problems, problems
    for title in {title for title, _ in found}:
        refs = [str(t["refId"]) for t_title, t in found if t_title == title]
        assert len(refs) == len(set(refs)), f"{title}: duplicate refIds {refs}"


@dashboard_names
def test_expressions_use_grafana_intervals_and_regex_matchers_for_variables(name: str) -> None:
    model = load_dashboard(name)
    defined = set(variables(model)) | {"__rate_interval", "__range", "__interval"}
    exprs = [str(t["expr"]) for _, t in targets(model)]
    assert exprs
    for expr in exprs:
        # a hard-coded [5m] breaks with other scrape intervals and zoom levels
        windows = re.findall(r"\[([^\]]*)\]", expr)
        assert set(windows) <= {"$__rate_interval", "$__range"}, f"{expr}: windows {windows}"
        for var in re.findall(r"\$\{?(\w+)", expr):
            assert var in defined, f"{expr}: ${var} is not a variable of {name}"
        # a multi-value or All selection becomes a regex, which only =~ matches
        for label, op in re.findall(r'(\w+)\s*(!?=~?)\s*"\$', expr):
            assert op == "=~", f"{expr}: {label}{op} on a variable"
        plain = substituted(expr)
        assert "$" not in plain, f"{expr}: unsubstituted variable"
        for open_, close in ("()", "[]", "{}"):
            assert plain.count(open_) == plain.count(close), f"{expr}: unbalanced {open_}{close}"
        assert plain.count('"') % 2 == 0, f"{expr}: unbalanced quotes"


@dashboard_names
def test_histogram_buckets_are_only_read_through_histogram_quantile_by_le(name: str) -> None:
    exprs = [str(t["expr"]) for _, t in targets(load_dashboard(name))]
    bucket_exprs = [e for e in exprs if "_bucket" in e]
    assert bucket_exprs, f"{name} shows no latency or size percentiles"
    for expr in bucket_exprs:
        assert expr.startswith("histogram_quantile(") and "by (le" in expr, expr


@dashboard_names
def test_every_metric_in_the_dashboard_is_in_the_metrics_spec(name: str) -> None:
    spec = spec_metrics()
    assert len(spec) >= 20, "could not read the metric table of docs/metrics.md"
    used = {m for _, t in targets(load_dashboard(name)) for m in METRIC_NAME.findall(t["expr"])}
    assert used, f"{name} uses no tunnelacct metric"
    unknown = sorted(m for m in used if base_metric(m, spec) not in spec)
    assert not unknown, f"not in the metric table of docs/metrics.md: {unknown}"


def test_every_metric_of_the_spec_is_on_some_dashboard() -> None:
    spec = spec_metrics()
    assert spec
    used = {
        base_metric(m, spec)
        for name in DASHBOARDS
        for _, t in targets(load_dashboard(name))
        for m in METRIC_NAME.findall(t["expr"])
    }
    assert sorted(spec.keys() - used) == []


@dashboard_names
def test_panel_ids_are_unique(name: str) -> None:
    ids = [p.get("id") for p in all_panels(load_dashboard(name))]
    assert ids and all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"


@dashboard_names
def test_panels_fit_the_grid_and_do_not_overlap(name: str) -> None:
    model = load_dashboard(name)
    # Top-level panels share one grid; a collapsed row keeps its panels' positions for when
    # it is expanded, so those are checked among themselves.
    groups = [model.get("panels", [])]
    groups += [p["panels"] for p in model.get("panels", []) if p.get("panels")]
    assert groups[0]
    for group in groups:
        for p in group:
            pos = p.get("gridPos", {})
            assert {"x", "y", "w", "h"} <= pos.keys(), f"{p.get('title')}: gridPos {pos}"
            assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] >= 0 and pos["y"] >= 0
            assert pos["x"] + pos["w"] <= GRID_COLUMNS, f"{p.get('title')} is wider than the grid"
        for a, b in itertools.combinations(group, 2):
            assert not overlaps(a["gridPos"], b["gridPos"]), f"{a['title']} overlaps {b['title']}"


def test_every_expression_parses_as_promql(tmp_path: Path) -> None:
    """promtool parses each expression (variables substituted) as a recording rule."""
    promtool = shutil.which("promtool")
    if promtool is None:  # skips, or under CI fails
        require("missing promtool", "PromQL syntax checks", hint=INSTALL_HINT)
    exprs = [substituted(str(t["expr"])) for n in DASHBOARDS for _, t in targets(load_dashboard(n))]
    assert exprs
    rules = [{"record": f"tunnelacct:check_{i}", "expr": e} for i, e in enumerate(exprs)]
    rules_file = tmp_path / "dashboards.rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    run = subprocess.run(
        [promtool, "check", "rules", str(rules_file)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(rules)} rules found" in run.stdout


def test_datasource_provisioning_defines_the_default_prometheus() -> None:
    doc = yaml.safe_load(DATASOURCES_YAML.read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    [source] = doc["datasources"]
    assert source["name"] == "Prometheus"
    assert source["type"] == "prometheus"
    assert source["uid"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert source["isDefault"] is True


def test_dashboard_provisioning_reads_a_directory_into_the_tunnelacct_folder() -> None:
    doc = yaml.safe_load(PROVIDERS_YAML.read_text(encoding="utf-8"))
    assert doc["apiVersion"] == 1
    providers = doc["providers"]
    assert providers
    for provider in providers:
        assert provider["type"] == "file"
        assert provider["folder"] == "tunnelacct"
        options = provider["options"]
        assert options["foldersFromFilesStructure"] is False
        path = PurePosixPath(options["path"])
        assert path.is_absolute() and path.name, f"path {options['path']!r}"
        assert not options["path"].endswith("/") and path.suffix == "", "a directory, not a file"


def test_prometheus_example_scrapes_tunnelacct_metrics() -> None:
    doc = yaml.safe_load(PROMETHEUS_YML.read_text(encoding="utf-8"))
    assert doc["global"]["scrape_interval"] == "15s"
    jobs = {job["job_name"]: job for job in doc["scrape_configs"]}
    assert "tunnelacct" in jobs, f"jobs: {sorted(jobs)}"
    job = jobs["tunnelacct"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    scraped = [t for c in job["static_configs"] for t in c["targets"]]
    # the example deployment's own metrics listener, as its config says
    example_config = tomllib.loads(EXAMPLE_CONFIG.read_text(encoding="utf-8"))
    assert scraped == [example_config["metrics"]["listen"]]
