"""The Grafana dashboard (dashboards/owncr.json) imports cleanly and asks only for metrics that exist: every
owncr_ family its queries name is declared in gateway/render/njs/metrics.js's HELP table, every registry_
one is a Distribution metric, every owncr_ selector is narrowed to the dashboard's `instance` variable,
and no two panels cover the same grid cells."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests import ROOT

DASHBOARD = ROOT / "dashboards" / "owncr.json"
METRICS_JS = ROOT / "gateway" / "render" / "njs" / "metrics.js"
INSTANCE = 'instance=~"$instance"'
GRID_WIDTH = 24

# Distribution 3.1.1's proxy and http metrics, as its /metrics serves them (relayed by the gateway at
# /metrics/<registry>).
DISTRIBUTION_METRICS = frozenset(
    {
        "registry_proxy_requests_total",
        "registry_proxy_hits_total",
        "registry_proxy_misses_total",
        "registry_proxy_pulled_bytes_total",
        "registry_http_requests_total",
    }
)

METRIC = re.compile(r"^(owncr|registry)_\w+")
IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def owncr_families() -> frozenset[str]:
    """The first string of each entry of metrics.js's `var HELP = [...]` table."""
    text = METRICS_JS.read_text(encoding="utf-8")
    table = re.search(r"^var HELP = \[(.*?)^\];", text, re.S | re.M)
    assert table, "no `var HELP = [...]` table in gateway/render/njs/metrics.js"
    names = frozenset(re.findall(r"\[\s*'(owncr_\w+)'\s*,\s*'(?:counter|gauge|histogram|summary)'", table[1]))
    assert "owncr_requests_total" in names, names
    return names


def metric_names(expr: str) -> set[str]:
    """The owncr_/registry_ identifiers of a PromQL expression (quoted label values left out)."""
    bare = STRING.sub('""', expr)
    return {word for word in IDENTIFIER.findall(bare) if METRIC.match(word)}


def undeclared(expr: str, owncr: frozenset[str]) -> set[str]:
    """The metric names of `expr` that neither the gateway nor Distribution serves."""
    return {
        name
        for name in metric_names(expr)
        if name not in (owncr if name.startswith("owncr_") else DISTRIBUTION_METRICS)
    }


def unfiltered(expr: str) -> list[str]:
    """The owncr_ selectors of `expr` without the instance matcher."""
    quoted = [m.span() for m in STRING.finditer(expr)]
    missing = []
    for match in re.finditer(r"(?<![\w:])owncr_\w+", expr):
        if any(start <= match.start() < end for start, end in quoted):
            continue  # a label value, not a metric
        selector = re.match(r"\s*\{([^}]*)\}", expr[match.end() :])
        if selector is None or INSTANCE not in selector[1]:
            missing.append(match[0])
    return missing


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # a collapsed row holds its panels


def exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        (panel.get("title", ""), target["expr"])
        for panel in all_panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if "expr" in target
    ]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def test_dashboard_identity(dashboard: dict[str, Any]) -> None:
    assert isinstance(dashboard, dict)
    assert dashboard["uid"] == "owncr"
    assert dashboard["title"] == "owncr registry"
    assert dashboard["schemaVersion"] == 39
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"


def test_instance_variable(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
    assert variable["multi"] and variable["includeAll"]
    assert variable["definition"] == "label_values(owncr_requests_total, instance)"


def test_datasource_is_the_input(dashboard: dict[str, Any]) -> None:
    for panel in all_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        sources = [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]
        assert all(s == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for s in sources), panel["title"]


def test_exprs_name_declared_metrics(dashboard: dict[str, Any]) -> None:
    owncr = owncr_families()
    found = exprs(dashboard)
    assert len(found) >= 10
    for title, expr in found:
        assert metric_names(expr), (title, expr)
        assert not undeclared(expr, owncr), (title, expr)


def test_name_checker_rejects_unknown_names() -> None:
    owncr = owncr_families()
    assert undeclared("rate(owncr_nope_total[5m])", owncr) == {"owncr_nope_total"}
    assert undeclared("rate(registry_nope_total[5m])", owncr) == {"registry_nope_total"}
    assert undeclared('sum by (registry) (rate(owncr_requests_total{door="registry_x"}[5m]))', owncr) == set()


def test_owncr_exprs_filter_instance(dashboard: dict[str, Any]) -> None:
    for title, expr in exprs(dashboard):
        if any(name.startswith("owncr_") for name in metric_names(expr)):
            assert INSTANCE in expr, (title, expr)
            assert not unfiltered(expr), (title, expr)
    assert unfiltered('rate(owncr_requests_total{door="mirror"}[5m])') == ["owncr_requests_total"]


def test_panels_do_not_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], int] = {}
    panels = list(all_panels(dashboard["panels"]))
    for index, panel in enumerate(panels):
        grid = panel["gridPos"]
        assert grid["w"] > 0 and grid["h"] > 0, panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= GRID_WIDTH, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                other = cells.setdefault((x, y), index)
                assert other == index, f"{panel['title']!r} overlaps {panels[other]['title']!r} at {(x, y)}"


def test_panel_ids_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids))
