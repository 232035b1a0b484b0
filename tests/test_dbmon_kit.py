"""The kit's database side, structurally and with the real promtool: collector/dbhost.yaml, the alert
rules in collector/prometheus/database-alerts.yaml and their promtool cases, the database dashboard,
the compose services and the ``dbmonitor`` extra. (Their run on the real Collector and Prometheus:
test_dbmon_e2e.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REQUIRE_SERVICES

from otel_dbperf.dbmonitor import mysql, postgres
from otel_dbperf.dbmonitor.server import OWN

ROOT = Path(__file__).parent.parent
COLLECTOR = ROOT / "collector"
PROMETHEUS = COLLECTOR / "prometheus"
RULES = PROMETHEUS / "database-alerts.yaml"
RULE_TEST = "database-alerts.test.yaml"
DASHBOARD = COLLECTOR / "grafana" / "dashboards" / "otel-dbperf-database.json"
#: what collector/dbhost.yaml's hostmetrics receiver serves (seen on the real Collector, test_dbmon_e2e.py)
HOSTMETRICS = {
    "system_filesystem_utilization_ratio", "system_filesystem_usage_bytes", "system_filesystem_inodes_usage",
    "system_memory_usage_bytes", "system_memory_utilization_ratio",
}  # fmt: skip
METRIC = re.compile(r"\b((?:postgresql|mysql|dbperf_db_server|system)_[a-z0-9_]+)\b")


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        if REQUIRE_SERVICES:
            pytest.fail(f"{name} not installed (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(f"{name} not installed")
    return found


def prometheus_name(name: str, kind: str, unit: str) -> str:
    """How the Collector's Prometheus exporter names the monitor's metrics (as served by 0.161)."""
    suffix = {"s": "_seconds", "By": "_bytes"}.get(unit, "")
    return name.replace(".", "_") + suffix + ("_total" if kind == "counter" else "")


def monitor_names() -> set[str]:
    return {prometheus_name(m.name, m.kind, m.unit) for m in (*OWN, *postgres.METRICS, *mysql.METRICS)}


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def panels() -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(DASHBOARD.read_text())["panels"]
    return data


def test_every_database_alert_has_a_promtool_case_that_fires_it_and_one_that_does_not() -> None:
    out = subprocess.run([tool("promtool"), "test", "rules", RULE_TEST], capture_output=True, text=True, cwd=PROMETHEUS)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load((PROMETHEUS / RULE_TEST).read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == set(alerts()) == quiet


def test_the_alerts_cover_the_issue_and_use_only_series_the_kit_produces() -> None:
    found = alerts()
    assert {
        "DatabaseDown", "DatabaseConnectionsHigh", "DatabaseCacheHitRatioLow", "DatabaseDeadlocks",
        "DatabaseRollbackRatioHigh", "DatabaseLockWaits", "DatabaseLongTransaction", "DatabaseIdleInTransaction",
        "DatabaseDeadTuplesHigh", "DatabaseReplicationLag", "DatabaseDiskUsageHigh", "DatabaseDiskUsageCritical",
    } == set(found)  # fmt: skip
    known = monitor_names() | HOSTMETRICS
    for name, rule in found.items():
        names = set(METRIC.findall(rule["expr"])) | {
            alt for p in re.findall(r'__name__=~"([^"]+)"', rule["expr"]) for alt in p.split("|")
        }
        assert names and names <= known, (name, names - known)
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
    # seed 003's disk tiers
    assert found["DatabaseDiskUsageHigh"]["expr"].endswith("> 0.85")
    assert found["DatabaseDiskUsageCritical"]["expr"].endswith("> 0.95")
    assert found["DatabaseDiskUsageCritical"]["labels"]["severity"] == "critical"


def test_prometheus_loads_the_rules_and_scrapes_the_database_hosts_collector() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert "database-alerts.yaml" in config["rule_files"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["otelcol-dbhost"]["honor_labels"] is True
    port = re.search(r"OTELCOL_PROMETHEUS_ENDPOINT:-0\.0\.0\.0:(\d+)", (COLLECTOR / "dbhost.yaml").read_text())
    assert port and jobs["otelcol-dbhost"]["static_configs"][0]["targets"] == [f"otelcol-dbhost:{port[1]}"]
    out = subprocess.run(
        [tool("promtool"), "check", "config", str(PROMETHEUS / "prometheus.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0 and f"SUCCESS: {len(alerts())} rules found" in out.stdout + out.stderr, out
    inhibits = yaml.safe_load((COLLECTOR / "alertmanager" / "alertmanager.yaml").read_text())["inhibit_rules"]
    assert {
        "source_matchers": ['alertname="DatabaseDiskUsageCritical"'],
        "target_matchers": ['alertname="DatabaseDiskUsageHigh"'],
        "equal": ["job", "instance", "mountpoint"],
    } in inhibits


def test_dbhost_config_pipelines() -> None:
    config = yaml.safe_load((COLLECTOR / "dbhost.yaml").read_text())
    pipelines = config["service"]["pipelines"]
    assert pipelines["metrics"]["receivers"] == ["otlp", "host_metrics"]
    assert pipelines["metrics"]["exporters"] == ["prometheus"]
    assert pipelines["logs"]["receivers"] == ["otlp"]
    for spec in pipelines.values():
        assert spec["processors"][0] == "memory_limiter"
    scrapers = config["receivers"]["host_metrics"]["scrapers"]
    assert scrapers["filesystem"]["metrics"]["system.filesystem.utilization"]["enabled"] is True
    assert set(scrapers) == {"filesystem", "memory"}
    assert config["exporters"]["prometheus"]["resource_constant_labels"] == {"included": ["*"]}
    manifest = yaml.safe_load((COLLECTOR / "builder-config.yaml").read_text())
    assert any("receiver/hostmetricsreceiver v0.161.0" in r["gomod"] for r in manifest["receivers"])


def test_the_dashboard_has_the_issues_panels_and_only_known_series(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "otel-dbperf-database"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "instance", "host"} <= set(variables)
    titles = " | ".join(p["title"] for p in panels()).lower()
    for needed in ("max_connections", "cache hit ratio", "deadlocks", "rollback", "waiting for locks",
                   "longest transaction", "idle in transaction", "dead rows", "replication lag", "disk used",
                   "database up", "monitor cost"):  # fmt: skip
        assert needed in titles, needed
    disk = next(p for p in panels() if p["title"].startswith("Disk used"))
    steps = disk["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.85, 0.95]
    exprs = []
    known = monitor_names() | HOSTMETRICS
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            assert target["datasource"]["uid"] == "${datasource}"
            names = set(METRIC.findall(expr))
            assert names and names <= known, (panel["title"], names - known)
            if names - HOSTMETRICS:
                assert 'job=~"$job",instance=~"$instance"' in expr, panel["title"]
            else:
                assert 'instance=~"$host"' in expr, panel["title"]
            exprs.append(expr.replace("$__rate_interval", "1m"))
    group = {"name": "dashboard", "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)]}
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    out = subprocess.run([tool("promtool"), "check", "rules", str(path)], capture_output=True, text=True)
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout, out.stdout + out.stderr


def test_compose_runs_the_monitor_with_its_dsn_from_a_file_only() -> None:
    compose = yaml.safe_load((COLLECTOR / "docker-compose.yaml").read_text())
    services = compose["services"]
    monitor, dbhost = services["dbmonitor"], services["otelcol-dbhost"]
    assert monitor["profiles"] == dbhost["profiles"] == ["database"]
    assert monitor["environment"]["DBPERF_DBMONITOR_DSN_FILE"] == "/run/secrets/dbmonitor-dsn"
    assert "DBPERF_DBMONITOR_DSN" not in monitor["environment"]
    assert "./secrets/dbmonitor-dsn:/run/secrets/dbmonitor-dsn:ro" in monitor["volumes"]
    assert monitor["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otelcol-dbhost:4318"
    assert dbhost["image"] == services["otelcol"]["image"]
    assert (
        "./prometheus/database-alerts.yaml:/etc/prometheus/database-alerts.yaml:ro"
        in (services["prometheus"]["volumes"])
    )
    text = (COLLECTOR / "docker-compose.yaml").read_text() + (COLLECTOR / "dbhost.yaml").read_text()
    assert not re.search(r"(postgres(ql)?|mysql|mariadb)://\S*:\S*@", text)  # no credentials committed


def test_the_test_extra_holds_the_dbmonitor_extra() -> None:
    import tomllib
    from packaging.requirements import Requirement

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    test = {Requirement(r).name: Requirement(r).specifier for r in extras["test"]}
    for need in map(Requirement, extras["dbmonitor"]):
        assert test.get(need.name) == need.specifier, str(need)
    assert {Requirement(r).name for r in extras["dbmonitor"]} == {"psycopg", "pymysql"}
