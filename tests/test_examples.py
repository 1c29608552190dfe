"""examples/ is one deployment that works as shipped (docs/deployment.md).

promtool checks the Prometheus config and runs the unit tests of every alerting rule,
systemd-analyze verifies the units, systemd-sysusers creates the user they run as, and
`tunnelacct serve` on the example config (its paths moved into a temp dir) is scraped at the
target of the example prometheus.yml by a real Prometheus that loads the example alerts.
"""

from __future__ import annotations

import datetime
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML comes with the test extra (schemathesis)
from prometheus_client.parser import text_string_to_metric_families

import tests.helpers.prometheus as prometheus_helper
from tests.helpers.needs import INSTALL_HINT, missing_tools, require
from tests.helpers.prometheus import Prometheus, free_port
from tests.helpers.serving import Serve, dump_toml
from tests.helpers.waiting import WAIT_S, wait_until

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONFIG = EXAMPLES / "tunnelacct.toml"
PROMETHEUS_YML = EXAMPLES / "prometheus.yml"
ALERTS = EXAMPLES / "alerts.yml"
ALERTS_TESTS = EXAMPLES / "alerts.test.yml"
SYSUSERS = EXAMPLES / "tunnelacct.sysusers"
SERVICE = EXAMPLES / "tunnelacct.service"
PURGE_SERVICE = EXAMPLES / "tunnelacct-purge.service"
PURGE_TIMER = EXAMPLES / "tunnelacct-purge.timer"
UNITS = (SERVICE, PURGE_SERVICE, PURGE_TIMER)
GRAFANA_DATASOURCE = EXAMPLES / "grafana" / "provisioning" / "datasources" / "tunnelacct.yaml"
GRAFANA_DASHBOARDS = EXAMPLES / "grafana" / "provisioning" / "dashboards" / "tunnelacct.yaml"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"
DASHBOARD_JSON = ROOT / "grafana" / "dashboards"
PCAP = ROOT / "tests" / "data" / "wg-small.pcap"

# Where the deployment installs tunnelacct (docs/deployment.md): a venv in /opt/tunnelacct.
INSTALLED_ENTRY_POINT = "/opt/tunnelacct/bin/tunnelacct"
INSTALLED_CONFIG = "/etc/tunnelacct/tunnelacct.toml"
# The one file per kind of the deployment: anything else in examples/ (a Kubernetes manifest,
# a second config) is material nothing checks.
EXAMPLE_FILES = {
    "tunnelacct.toml",
    "tunnelacct.sysusers",
    "tunnelacct.service",
    "tunnelacct-purge.service",
    "tunnelacct-purge.timer",
    "prometheus.yml",
    "alerts.yml",
    "alerts.test.yml",
    "grafana/provisioning/datasources/tunnelacct.yaml",
    "grafana/provisioning/dashboards/tunnelacct.yaml",
}
METRIC_NAME = re.compile(r"\btunnelacct_[a-z_]+\b")
LAST_PURGE = "tunnelacct_retention_last_success_timestamp_seconds"
SYSTEM_UID_MAX = 999  # SYS_UID_MAX of Debian's login.defs: sysusers allocates below it


def require_tools(*tools: str) -> None:
    """Skip when a tool is missing (install: scripts/install-system-deps.sh); under CI fail."""
    require(missing_tools(*tools), f"examples/ checks with {', '.join(tools)}", hint=INSTALL_HINT)


def run_tool(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a checker; its output comes back in stdout (stderr merged)."""
    return subprocess.run(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=120,
    )


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def unit_settings(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value of a systemd unit file, in order (keys may repeat)."""
    settings: dict[str, dict[str, list[str]]] = {}
    section: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = settings.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        section.setdefault(key.strip(), []).append(value.strip())
    return settings


def service_setting(path: Path, key: str) -> str:
    """The one value of `key` in a unit's [Service] section."""
    [value] = unit_settings(path)["Service"][key]
    return value


def exec_start_argv(path: Path) -> list[str]:
    return service_setting(path, "ExecStart").split()


def option(argv: list[str], name: str) -> str:
    """The value after `name` in a command line."""
    return argv[argv.index(name) + 1]


def scraped_target(prometheus_doc: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The tunnelacct job of a prometheus.yml, and its one target."""
    jobs = {job["job_name"]: job for job in prometheus_doc["scrape_configs"]}
    job = jobs["tunnelacct"]
    [target] = [target for group in job["static_configs"] for target in group["targets"]]
    return job, target


def alerting_rules() -> dict[str, str]:
    """alert name -> PromQL expression of every rule in examples/alerts.yml."""
    rules = [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]
    assert all("alert" in rule for rule in rules), "alerts.yml holds alerting rules only"
    return {rule["alert"]: rule["expr"] for rule in rules}


def rfc3339_s(text: str) -> float:
    """Epoch seconds of a timestamp of Prometheus's API ("2026-01-02T03:04:05.123456789Z"; the
    digits past microseconds are dropped)."""
    return datetime.datetime.fromisoformat(text).timestamp()


# -- Prometheus: the config and the alerting rules ---------------------------------------------


def test_prometheus_config_is_valid_and_loads_the_example_alerting_rules() -> None:
    require_tools("promtool")
    assert load_yaml(PROMETHEUS_YML)["rule_files"] == [ALERTS.name]
    checked = run_tool(["promtool", "check", "config", str(PROMETHEUS_YML)])
    assert checked.returncode == 0, checked.stdout
    # the rule file, resolved next to prometheus.yml, with every rule alerts.yml holds
    assert "SUCCESS: 1 rule files found" in checked.stdout, checked.stdout
    assert f"Checking {ALERTS}" in checked.stdout, checked.stdout
    assert f"SUCCESS: {len(alerting_rules())} rules found" in checked.stdout, checked.stdout


def test_every_alerting_rule_is_unit_tested_firing_and_quiet_and_the_tests_pass() -> None:
    require_tools("promtool")
    checked = run_tool(["promtool", "check", "rules", str(ALERTS)])  # syntax and lint
    assert checked.returncode == 0, checked.stdout
    tests = load_yaml(ALERTS_TESTS)
    assert tests["rule_files"] == [ALERTS.name]
    firing: set[str] = set()
    quiet: set[str] = set()
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            (firing if case["exp_alerts"] else quiet).add(case["alertname"])
    rules = set(alerting_rules())
    # promtool runs only the cases it is given: a rule without both would go unchecked
    assert firing == rules, f"never tested firing: {sorted(rules - firing)}"
    assert quiet == rules, f"never tested quiet: {sorted(rules - quiet)}"
    ran = run_tool(["promtool", "test", "rules", ALERTS_TESTS.name], cwd=EXAMPLES)
    assert ran.returncode == 0, ran.stdout
    assert "SUCCESS" in ran.stdout, ran.stdout


# -- systemd: the units and their user ---------------------------------------------------------


def unit_copies(directory: Path) -> list[Path]:
    """The example units copied into `directory`, ExecStart running this checkout's tunnelacct:
    systemd-analyze verify refuses an ExecStart whose binary does not exist, and
    /opt/tunnelacct is where a deployment installs tunnelacct, not where a test runs it."""
    entry_point = Path(sys.executable).parent / "tunnelacct"
    assert entry_point.is_file(), f"{entry_point}: the installed tunnelacct command"
    copies = []
    for unit in UNITS:
        text = unit.read_text(encoding="utf-8")
        copy = directory / unit.name
        copy.write_text(text.replace(INSTALLED_ENTRY_POINT, str(entry_point)), encoding="utf-8")
        copies.append(copy)
    return copies


def verify_complaints(units: list[Path]) -> list[str]:
    """What systemd-analyze verify says about `units` (the lines that name one of them).

    An unknown key or a value that does not parse is only a warning ("..., ignoring") and the
    exit status stays 0, so a typo shows in the output alone. Lines about the host's own units
    are left out. User= is not checked by verify (the user need not exist): see the sysusers
    test.
    """
    verified = run_tool(["systemd-analyze", "verify", *map(str, units)])
    ours = {str(unit.parent) for unit in units} | {unit.name for unit in units}
    complaints = [line for line in verified.stdout.splitlines() if any(n in line for n in ours)]
    if verified.returncode != 0:
        complaints.append(f"systemd-analyze verify exited {verified.returncode}")
    return complaints


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    require_tools("systemd-analyze")
    for unit in (SERVICE, PURGE_SERVICE):
        assert exec_start_argv(unit)[0] == INSTALLED_ENTRY_POINT, unit.name
    assert verify_complaints(unit_copies(tmp_path)) == []


def test_systemd_analyze_verify_complaints_include_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above can fail: a typo'd key in the service is a complaint."""
    require_tools("systemd-analyze")
    copies = unit_copies(tmp_path)
    service = tmp_path / SERVICE.name
    text = service.read_text(encoding="utf-8")
    service.write_text(text.replace("\nProtectSystem=", "\nProtectSytem="), encoding="utf-8")
    complaints = verify_complaints(copies)
    assert any("Unknown key 'ProtectSytem'" in line for line in complaints), complaints


def test_sysusers_creates_the_system_user_and_group_the_units_run_as(tmp_path: Path) -> None:
    require_tools("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    created = run_tool(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)])
    assert created.returncode == 0, created.stdout
    passwd_lines = (tmp_path / "etc" / "passwd").read_text().splitlines()
    passwd = {fields[0]: fields for fields in (line.split(":") for line in passwd_lines)}
    group_lines = (tmp_path / "etc" / "group").read_text().splitlines()
    groups = {line.split(":")[0] for line in group_lines}
    for unit in (SERVICE, PURGE_SERVICE):
        user, group = service_setting(unit, "User"), service_setting(unit, "Group")
        assert user in passwd, f"{unit.name} User={user}: not created by {SYSUSERS.name}"
        assert group in groups, f"{unit.name} Group={group}: not created by {SYSUSERS.name}"
        _name, _password, uid, _gid, _gecos, home, shell = passwd[user]
        assert 0 < int(uid) <= SYSTEM_UID_MAX, f"uid {uid}: not a system user"
        assert shell.endswith("/nologin"), shell
        assert home == f"/var/lib/{service_setting(unit, 'StateDirectory')}"


def test_units_run_the_example_config_in_the_directories_they_provide() -> None:
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    serve_argv, purge_argv = exec_start_argv(SERVICE), exec_start_argv(PURGE_SERVICE)
    assert serve_argv[1] == "serve" and purge_argv[1] == "purge"
    for unit, argv in ((SERVICE, serve_argv), (PURGE_SERVICE, purge_argv)):
        # /etc/<ConfigurationDirectory>, /var/lib/<StateDirectory>: systemd makes them, and
        # under ProtectSystem=strict the state directory is the one the store can be written in
        config_path = PurePosixPath(option(argv, "--config"))
        assert str(config_path) == INSTALLED_CONFIG
        assert config_path.parent == PurePosixPath(
            "/etc", service_setting(unit, "ConfigurationDirectory")
        )
        store = PurePosixPath(config["database"]["url"].removeprefix("sqlite:///"))
        assert store.parent == PurePosixPath("/var/lib", service_setting(unit, "StateDirectory"))
    status = PurePosixPath(option(serve_argv, "--status-file"))
    assert status.parent == PurePosixPath("/run", service_setting(SERVICE, "RuntimeDirectory"))
    # capture and `wg show` without root: what the config's [[capture]] of the WireGuard
    # interface and its [wireguard] peers need
    assert [c["interface"] for c in config["capture"]] == config["wireguard"]["interfaces"]
    ambient = set(service_setting(SERVICE, "AmbientCapabilities").split())
    assert ambient == {"CAP_NET_RAW", "CAP_NET_ADMIN"}
    assert set(service_setting(SERVICE, "CapabilityBoundingSet").split()) == ambient
    families = set(service_setting(SERVICE, "RestrictAddressFamilies").split())
    assert {"AF_PACKET", "AF_NETLINK"} <= families, "AF_PACKET: the capture; AF_NETLINK: wg"
    assert service_setting(SERVICE, "User") != "root"
    # what the thresholds of alerts.yml assume: an hourly purge by serve and by the timer
    # (which starts the purge service of its name), and 30 s checkpoints
    assert unit_settings(PURGE_TIMER)["Timer"]["OnCalendar"] == ["hourly"]
    assert config["retention"]["interval"] == 3600
    assert config["timeouts"]["checkpoint"] == 30


# -- The rest of examples/ and its documentation ------------------------------------------------


def test_examples_hold_the_one_deployment_and_its_documentation_names_every_file() -> None:
    shipped = {str(p.relative_to(EXAMPLES)) for p in EXAMPLES.rglob("*") if p.is_file()}
    assert shipped == EXAMPLE_FILES
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    undocumented = sorted(name for name in EXAMPLE_FILES if f"examples/{name}" not in doc)
    assert undocumented == []


def test_grafana_provisioning_reads_the_example_prometheus_and_the_installed_dashboards() -> None:
    [datasource] = load_yaml(GRAFANA_DATASOURCE)["datasources"]
    assert datasource["type"] == "prometheus"
    # $__rate_interval is four of these: the scrape interval of the example Prometheus
    scrape_interval = load_yaml(PROMETHEUS_YML)["global"]["scrape_interval"]
    assert datasource["jsonData"]["timeInterval"] == scrape_interval
    [provider] = load_yaml(GRAFANA_DASHBOARDS)["providers"]
    assert provider["type"] == "file"
    installed = provider["options"]["path"]
    # the documented install command copies the dashboards JSON exactly there
    doc = DEPLOYMENT_DOC.read_text(encoding="utf-8")
    assert f"install -D -m 0644 grafana/dashboards/*.json -t {installed}/" in doc
    assert sorted(DASHBOARD_JSON.glob("*.json")), "grafana/dashboards/*.json"


# -- serve on the example config, scraped by the example Prometheus -----------------------------


def test_serve_on_the_example_config_is_scraped_at_the_example_target_with_no_alert(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The example prometheus.yml scrapes what the example config serves, and a healthy serve
    raises none of the example alerts.

    What is rewritten, and why: the store into tmp_path. The [[capture]] of wg0 becomes a
    replay of a capture recorded through a WireGuard tunnel (the same pipeline, metrics
    included): a test has no wg0 of its own, and must never capture a developer's. [wireguard]
    goes, for the same wg0. The purge interval becomes 1 s, so that the purge metrics the
    alerts read exist within the test rather than after an hour. Both listeners move to free
    ports, the same one in the config and the Prometheus target, after checking that the
    shipped files agree; Prometheus scrapes and evaluates every second instead of 15.
    """
    require_tools("prometheus")
    config = tomllib.loads(CONFIG.read_text(encoding="utf-8"))
    prometheus_doc = load_yaml(PROMETHEUS_YML)
    job, shipped_target = scraped_target(prometheus_doc)
    assert shipped_target == config["metrics"]["listen"], "prometheus.yml scrapes [metrics]"
    metrics_path = job.get("metrics_path", "/metrics")

    db = tmp_path / "tunnelacct.db"
    target, api = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    config["database"]["url"] = f"sqlite:///{db}"
    config["capture"] = [{"pcap": str(PCAP)}]
    del config["wireguard"]
    config["retention"]["interval"] = 1
    config["metrics"]["listen"], config["api"]["listen"] = target, api
    config_path = tmp_path / "tunnelacct.toml"
    config_path.write_text(dump_toml(config), encoding="utf-8")

    prometheus_doc["global"]["scrape_interval"] = "1s"
    prometheus_doc["global"]["evaluation_interval"] = "1s"
    prometheus_doc["rule_files"] = [str(ALERTS)]
    job["static_configs"] = [{"targets": [target]}]
    prometheus_yml = yaml.safe_dump(prometheus_doc)
    # the suite's Prometheus runner, on this prometheus.yml instead of the one it writes
    monkeypatch.setattr(prometheus_helper, "scrape_config", lambda *_: prometheus_yml)

    orgs = [org["id"] for org in config["orgs"]] + ["unattributed"]  # the default org too
    rules = alerting_rules()
    read_by_alerts = {name for expr in rules.values() for name in METRIC_NAME.findall(expr)}
    with (
        Serve(None, config_path, db, tmp_path) as serve,
        httpx.Client(trust_env=False, timeout=10) as http,
    ):
        serve.start(wait_for="finished")

        def names_once_purged() -> set[str]:
            """The sample names on /metrics, once the purge of every org is on it."""
            text = http.get(f"http://{target}{metrics_path}").raise_for_status().text
            samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
            purged = {s.labels.get("org") for s in samples if s.name == LAST_PURGE}
            return {s.name for s in samples} if purged >= set(orgs) else set()

        scraped = wait_until(names_once_purged, "a purge of every org on /metrics")
        assert read_by_alerts - scraped == set(), "alerts.yml reads what serve exports"
        ready = http.get(f"http://{api}/readyz")
        assert ready.status_code == 200 and ready.json() == {"ready": True, "reasons": []}

        with Prometheus(tmp_path / "prometheus", [target]) as prom:
            prom.wait_until(prom.targets_up, WAIT_S, f"{target} up")
            [active] = prom.active_targets()
            assert active["scrapeUrl"] == f"http://{target}{metrics_path}"
            assert active["labels"]["job"] == "tunnelacct"  # what TunnelacctDown selects

            def purged_in_prometheus() -> bool:
                return {row["metric"]["org"] for row in prom.query(LAST_PURGE)} == set(orgs)

            prom.wait_until(purged_in_prometheus, WAIT_S, "the purge metrics of every org")
            data_in_at = time.time()

            def evaluated_rules() -> list[dict[str, Any]]:
                groups = prom.api("rules", [("type", "alert")])["groups"]
                loaded = [rule for group in groups for rule in group["rules"]]
                evaluated = all(rfc3339_s(rule["lastEvaluation"]) > data_in_at for rule in loaded)
                return loaded if loaded and evaluated else []

            loaded = prom.wait_until(evaluated_rules, WAIT_S, "rules evaluated on that data")
            assert {rule["name"] for rule in loaded} == set(rules)
            assert [rule for rule in loaded if rule["health"] != "ok"] == []
            assert prom.api("alerts")["alerts"] == []
        assert serve.stop() == 0, serve.log()
