"""The Collector's own telemetry: scraped by the shipped prometheus.yml, alerted on by
collector/prometheus/collector-alerts.yaml (refused data, queue drops, send failures, traces
dropped before their sampling decision), each alert with promtool cases that fire it and keep it
quiet (the real promtool)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REQUIRE_SERVICES

COLLECTOR = Path(__file__).parent.parent / "collector"
PROMETHEUS = COLLECTOR / "prometheus"
RULES = PROMETHEUS / "collector-alerts.yaml"
RULE_TEST = "collector-alerts.test.yaml"
SHIPPED = ["otelcol.yaml", "agent.yaml", "gateway.yaml"]
# The Collector 0.161 names (its own Prometheus endpoint, checked on the real binary: counters
# carry no _total suffix) for what is lost: name -> alert that covers it.
COVERED = {
    "otelcol_receiver_refused_spans": "CollectorRefusingData",
    "otelcol_receiver_refused_metric_points": "CollectorRefusingData",
    "otelcol_receiver_refused_log_records": "CollectorRefusingData",
    "otelcol_exporter_enqueue_failed_spans": "CollectorQueueDropping",
    "otelcol_exporter_enqueue_failed_metric_points": "CollectorQueueDropping",
    "otelcol_exporter_enqueue_failed_log_records": "CollectorQueueDropping",
    "otelcol_exporter_send_failed_spans": "CollectorSendFailing",
    "otelcol_exporter_send_failed_metric_points": "CollectorSendFailing",
    "otelcol_exporter_send_failed_log_records": "CollectorSendFailing",
    "otelcol_exporter_queue_size": "CollectorQueueFilling",
    "otelcol_processor_tail_sampling_sampling_trace_dropped_too_early": "TracesDroppedBeforeSampling",
}


def promtool() -> str:
    found = shutil.which("promtool")
    if not found:
        if REQUIRE_SERVICES:
            pytest.fail("promtool not installed (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip("promtool not installed")
    return found


def alerts() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_prometheus_scrapes_every_collectors_own_telemetry() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    own = jobs["otelcol-telemetry"]
    assert not own.get("honor_labels")  # job/instance are the scrape's: one series per Collector
    targets = [t for sc in own["static_configs"] for t in sc["targets"]]
    for name in SHIPPED:  # listens on every interface (a container's localhost is its own), on the scraped port
        text = (COLLECTOR / name).read_text()
        assert "host: ${env:OTELCOL_TELEMETRY_HOST:-0.0.0.0}" in text, name
        port = re.search(r"port: \$\{env:OTELCOL_TELEMETRY_PORT:-(\d+)\}", text)
        assert port and targets == [f"otelcol:{port[1]}"], (name, targets)
    assert "collector-alerts.yaml" in config["rule_files"]
    out = subprocess.run([promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml")], capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0 and f"SUCCESS: {sum(1 for _ in alerts())} rules found" in out.stdout + out.stderr, out
    compose = yaml.safe_load((COLLECTOR / "docker-compose.yaml").read_text())
    assert (
        "./prometheus/collector-alerts.yaml:/etc/prometheus/collector-alerts.yaml:ro"
        in (compose["services"]["prometheus"]["volumes"])
    )


def test_every_loss_of_data_has_an_alert() -> None:
    found = alerts()
    for metric, alert in COVERED.items():
        expr = found[alert]["expr"]
        patterns = re.findall(r'__name__=~"([^"]+)"', expr)
        assert re.search(rf"\b{metric}\b", expr) or any(re.fullmatch(p, metric) for p in patterns), (metric, alert)
    for name, rule in found.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_every_collector_alert_has_a_case_that_fires_it_and_one_that_does_not() -> None:
    out = subprocess.run([promtool(), "test", "rules", RULE_TEST], capture_output=True, text=True, cwd=PROMETHEUS)
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load((PROMETHEUS / RULE_TEST).read_text())["tests"]:
        for check in case["alert_rule_test"]:
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == set(alerts()) == quiet
