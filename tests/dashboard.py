"""The Grafana dashboard and the alert rules in collector/, as the tests read them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

COLLECTOR = Path(__file__).parent.parent / "collector"
DASHBOARD = COLLECTOR / "grafana" / "dashboards" / "otel-dbperf.json"
RULES = COLLECTOR / "prometheus" / "alerts.yaml"

# What Grafana puts in place of its variables, for a query run outside Grafana.
RANGES = {"$__rate_interval": "1m", "$__range": "5m"}


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def targets(kind: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(panel, target) of every query of datasource type ``kind`` ("prometheus" or "loki")."""
    return [(p, t) for p in load_dashboard()["panels"] for t in p["targets"] if t["datasource"]["type"] == kind]


def concrete(expr: str, job: str = ".+", query_type: str = ".*") -> str:
    """``expr`` with the dashboard's variables replaced by what Grafana would send."""
    for name, value in RANGES.items():
        expr = expr.replace(name, value)
    return expr.replace('"$job"', f'"{job}"').replace('"$query_type"', f'"{query_type}"')


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for r in rules() if "alert" in r}


def recorded() -> set[str]:
    """The names of the recording rules (usable as metric names in alerts and panels)."""
    return {r["record"] for r in rules() if "record" in r}


def comparison_sides(expr: str) -> tuple[str, str]:
    """The two sides of an alert expression's top-level ``>`` (outside any parentheses)."""
    depth = 0
    for i, ch in enumerate(expr):
        depth += ch in "([{"
        depth -= ch in ")]}"
        if ch == ">" and depth == 0:
            return expr[:i].strip(), expr[i + 1 :].strip()
    raise AssertionError(f"no top-level comparison in {expr!r}")


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or labels."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    expr = re.sub(r"\[[^\]]*\]|\boffset\s+[\w]+", "", expr)  # ranges, offsets
    names = set(re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:]*\s*\()", expr))
    return names - {"by", "without", "on", "ignoring", "and", "or", "unless", "bool", "inf", "nan"}
