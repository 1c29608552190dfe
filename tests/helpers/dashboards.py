"""Read the PromQL out of Grafana dashboard JSON and make it runnable on Prometheus (tests only).

doc = json.loads(Path("grafana/dashboards/traffic.json").read_text())
for e in expressions(doc):
    promql = grafana_substitute(e.expr, variable_values(doc))
    # rate(tunnelacct_bytes_total{org=~".*"}[1m])
for q in template_queries(doc):
    # TemplateQuery(dashboard="Traffic", name="resource",
    #               selector='tunnelacct_bytes_total{org=~"$org"}', label="resource")
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

# What Grafana puts in for its global variables when a dashboard shows the last 5 minutes with
# a 15 s step (the values only have to be valid PromQL durations and numbers of that range).
BUILTINS: dict[str, str] = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}

# Grafana's own variable syntax (public/app/features/variables/utils.ts variableRegex):
# $var, [[var]] or [[var:format]], ${var}, ${var.fieldpath} or ${var:format}.
VARIABLE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}")

METRIC = re.compile(r"(?<![A-Za-z0-9_:])tunnelacct_[a-z0-9_]+")

# label_values(label) or label_values(selector, label), as Grafana's Prometheus data source
# takes them in a query variable.
LABEL_VALUES = re.compile(
    r"^\s*label_values\s*\(\s*(?:(?P<selector>.*\S)\s*,\s*)?(?P<label>\w+)\s*\)\s*$", re.S
)


@dataclass(frozen=True, slots=True)
class Expr:
    """One target's PromQL, with where it sits in the dashboard."""

    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def where(self) -> str:
        return f"{self.dashboard!r} panel {self.panel!r} ref {self.ref_id}"


@dataclass(frozen=True, slots=True)
class TemplateQuery:
    """A query variable's label_values(selector, label); selector None for label_values(label)."""

    dashboard: str
    name: str
    selector: str | None
    label: str


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # a collapsed row holds its panels; an expanded one is followed by them
        yield from _panels(panel.get("panels") or [])


def panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, those in collapsed rows and in pre-v5 `rows` included."""
    yield from _panels(dashboard.get("panels") or [])
    for row in dashboard.get("rows") or []:  # schema < 16
        yield from _panels(row.get("panels") or [])


def expressions(dashboard: Mapping[str, Any]) -> list[Expr]:
    """Each panel target's non-empty `expr`, in panel order."""
    title = str(dashboard.get("title", "?"))
    found = []
    for panel in panels(dashboard):
        name = panel.get("title") or f"id {panel.get('id', '?')}"
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if isinstance(expr, str) and expr.strip():
                found.append(Expr(title, str(name), str(target.get("refId", "?")), expr))
    return found


def grafana_substitute(expr: str, values: Mapping[str, str]) -> str:
    """`expr` with every Grafana variable form replaced: `values` for the dashboard's own
    (e.g. {"org": ".*"} for a multi-value variable used with `=~`), BUILTINS for $__rate_interval
    and friends; ValueError naming a variable that is in neither (Grafana would leave it as is).

    grafana_substitute('rate(x{org=~"${org:regex}"}[$__rate_interval])', {"org": ".*"})
    -> 'rate(x{org=~".*"}[1m])'
    """
    table = {**BUILTINS, **values}

    def replace(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        if name.isdigit():  # "$1" in a label_replace() replacement is PromQL's, not Grafana's
            return m.group(0)
        if name not in table:
            raise ValueError(
                f"{m.group(0)} is neither a dashboard variable nor one of Grafana's builtins"
            )
        return table[name]

    return VARIABLE.sub(replace, expr)


def _query_text(variable: Mapping[str, Any]) -> str:
    query = variable.get("query")
    if isinstance(query, Mapping):  # Grafana 10's variable query editor stores an object
        query = query.get("query")
    if not query:
        query = variable.get("definition")
    return str(query or "")


def template_queries(dashboard: Mapping[str, Any]) -> list[TemplateQuery]:
    """The query variables' label_values(...) queries; ValueError for a query variable of
    another form (metrics(), query_result(), ...), which the tests do not evaluate yet."""
    title = str(dashboard.get("title", "?"))
    found = []
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        if variable.get("type") != "query":
            continue
        text = _query_text(variable)
        m = LABEL_VALUES.match(text)
        if m is None:
            raise ValueError(
                f"{title!r} variable {variable.get('name')!r}: not label_values(...): {text!r}"
            )
        found.append(TemplateQuery(title, str(variable["name"]), m["selector"], m["label"]))
    return found


def metric_names(expr: str) -> set[str]:
    """The tunnelacct_* names `expr` mentions, as written (a histogram's `_bucket` included)."""
    return set(METRIC.findall(expr))


def variable_values(dashboard: Mapping[str, Any]) -> dict[str, str]:
    """A value for each templating variable that selects everything it can: ".*" for query,
    custom and textbox variables (dashboards use them with `=~`), an interval variable's current
    (or first) interval, "1m" for its `auto`, a constant's value.
    """
    values = {}
    for variable in (dashboard.get("templating") or {}).get("list") or []:
        name, kind = str(variable["name"]), variable.get("type")
        current = (variable.get("current") or {}).get("value")
        if kind == "interval":
            options = [o.strip() for o in str(variable.get("query", "")).split(",")]
            interval = current if isinstance(current, str) and current else options[0]
            auto = not interval or interval == "auto" or interval.startswith("$__auto")
            values[name] = "1m" if auto else interval
        elif kind == "constant":
            values[name] = str(variable.get("query", ""))
        elif kind == "datasource":
            values[name] = str(current or "prometheus")
        else:
            values[name] = ".*"
    return values
