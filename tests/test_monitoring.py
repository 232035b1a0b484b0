"""Alert rules and Alertmanager config, with the real promtool and amtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REQUIRE_SERVICES

from otel_dbperf import metric_names

COLLECTOR = Path(__file__).parent.parent / "collector"
RULES = COLLECTOR / "prometheus" / "alerts.yaml"
ALERTMANAGER = COLLECTOR / "alertmanager" / "alertmanager.yaml"


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        reason = f"{name} not installed (scripts/test installs Debian's prometheus and prometheus-alertmanager)"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return found


def run(*cmd: str, stdout_only: bool = False) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=RULES.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def test_rules_parse() -> None:
    out = run(tool("promtool"), "check", "rules", str(RULES))
    assert "SUCCESS: 6 rules found" in out


def test_every_rule_has_a_unit_test_that_fires_it() -> None:
    out = run(tool("promtool"), "test", "rules", "alerts.test.yaml")
    assert "SUCCESS" in out
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((RULES.parent / "alerts.test.yaml").read_text())["tests"]
    fired = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert fired == rules


def test_rules_use_the_contract_metric_names() -> None:
    names = {m.prometheus for m in metric_names.ALL}
    suffixes = ("_bucket", "_count", "_sum", "")
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = set()
    for rule in rules:
        for metric in re.findall(r"\b([a-z_][a-z0-9_]*)(?=\s*[{\[])", rule["expr"]):
            if metric in ("by", "without", "rate", "increase", "sum", "histogram_quantile"):
                continue
            assert any(metric == n + s for n in names for s in suffixes), f"{rule['alert']}: unknown metric {metric}"
            used.add(metric)
    assert {"dbperf_db_slow_queries_total", "dbperf_db_n_plus_one_total"} <= used
    assert {r["labels"]["severity"] for r in rules} == {"critical", "warning", "info"}


def test_alertmanager_config_and_routing() -> None:
    amtool = tool("amtool")
    out = run(amtool, "check-config", str(ALERTMANAGER))
    assert "SUCCESS" in out
    for severity, receiver in (("critical", "pager"), ("warning", "chat"), ("info", "low-noise"), ("", "chat")):
        labels = [f"severity={severity}"] if severity else ["alertname=Unknown"]
        routed = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels, stdout_only=True)
        assert routed.strip() == receiver, (severity, routed)


def test_no_secret_is_committed() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    for receiver in config["receivers"]:
        for kind, entries in receiver.items():
            if kind == "name":
                continue
            for entry in entries:
                secret_keys = [k for k in entry if re.search(r"(key|url|token|password)$", k)]
                assert not secret_keys, f"{receiver['name']}: {secret_keys} must be *_file"
                assert any(k.endswith("_file") for k in entry)


DASHBOARD = COLLECTOR / "grafana" / "dashboards" / "otel-dbperf.json"


def test_dashboard_expressions_parse_and_use_contract_metrics(tmp_path: Path) -> None:
    import json

    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 13
    # Grafana variables replaced by what they expand to, then every expression goes through
    # Prometheus's own parser as a recording rule
    concrete = [e.replace("$__rate_interval", "1m").replace('"$job"', '".*"') for e in exprs]
    rules = {
        "groups": [
            {"name": "dashboard", "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(concrete)]}
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = run(tool("promtool"), "check", "rules", str(path))
    assert f"SUCCESS: {len(exprs)} rules found" in out
    names = {m.prometheus for m in metric_names.ALL}
    for expr in concrete:
        for metric in re.findall(r"\b([a-z_][a-z0-9_]*)(?=\{)", expr):
            assert any(metric == n + s for n in names for s in ("_bucket", "_count", "_sum", "")), metric
    titles = " | ".join(p["title"] for p in dashboard["panels"]).lower()
    for needed in ("db query rate by operation", "p50 / p95 / p99", "slow queries", "top tables by db time",
                   "n+1", "requests per second", "error ratio", "p95", "db time share per route", "process cpu",
                   "process memory"):  # fmt: skip
        assert needed in titles, needed
    assert all(t.get("exemplar") for p in dashboard["panels"] for t in p["targets"])


def test_grafana_links_exemplars_and_log_trace_ids_to_jaeger() -> None:
    datasources = yaml.safe_load(
        (COLLECTOR / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )["datasources"]
    by_type = {d["type"]: d for d in datasources}
    assert set(by_type) == {"prometheus", "jaeger", "loki"}
    jaeger_uid = by_type["jaeger"]["uid"]
    assert by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"] == jaeger_uid
    (derived,) = by_type["loki"]["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == jaeger_uid and derived["matcherRegex"] == "trace_id"


def test_prometheus_config_and_compose_stack() -> None:
    out = run(tool("promtool"), "check", "config", str(COLLECTOR / "prometheus" / "prometheus.yml"))
    assert "SUCCESS: 6 rules found" in out
    compose = yaml.safe_load((COLLECTOR / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"otelcol", "jaeger", "prometheus", "alertmanager", "loki", "grafana", "shop"} <= set(services)
    for name, service in services.items():
        if "image" in service:
            image, _, tag = service["image"].rpartition(":")
            assert image and re.match(r"v?\d+\.\d+\.\d+$", tag), f"{name}: pin {service['image']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and "secrets" not in source:
                assert (COLLECTOR / source).exists(), f"{name}: {source} missing"
    assert services["otelcol"]["image"].endswith(":0.136.0")  # the release the configs are checked against
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
