"""Several gateways: a series must have one writer. Agents used to send metrics over a sticky gRPC
connection to the gateway service; after a reconnect two gateways served the same series (the
Prometheus exporter keeps a series 5 minutes after its last update) and prometheus.yml scraped one
gateway. Now every agent serves its own host's metrics (a service instance sends only to its local
agent: one writer per series), and prometheus.two-tier.yml scrapes every agent and the own
telemetry of every agent and gateway."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REQUIRE_SERVICES

COLLECTOR = Path(__file__).parent.parent / "collector"
TWO_TIER = COLLECTOR / "prometheus" / "prometheus.two-tier.yml"


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((COLLECTOR / name).read_text())
    assert isinstance(data, dict)
    return data


def test_agents_serve_their_hosts_metrics_themselves() -> None:
    agent, single = load("agent.yaml"), load("otelcol.yaml")
    metrics = agent["service"]["pipelines"]["metrics"]
    assert metrics["exporters"] == ["prometheus"]  # not to the gateways: one writer per series
    assert agent["exporters"]["prometheus"] == single["exporters"]["prometheus"]  # exemplars, labels alike


def _dns_targets(job: dict[str, Any]) -> set[tuple[str, int]]:
    return {(name, sd["port"]) for sd in job["dns_sd_configs"] for name in sd["names"]}


def test_the_two_tier_prometheus_config_scrapes_every_agent_and_every_collectors_telemetry() -> None:
    config = yaml.safe_load(TWO_TIER.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["otelcol"]["honor_labels"] is True
    agents = load("agent.yaml")["exporters"]["prometheus"]["endpoint"]  # ${env:...:-0.0.0.0:8889}
    port = int(agents.rsplit(":", 1)[1].rstrip("}"))
    assert _dns_targets(jobs["otelcol"]) == {("otelcol-agent-headless", port)}
    assert _dns_targets(jobs["otelcol-telemetry"]) == {("otelcol-agent-headless", 8888),
                                                        ("otelcol-gateway-headless", 8888)}  # fmt: skip
    assert not jobs["otelcol-telemetry"].get("honor_labels")
    assert set(config["rule_files"]) == {"alerts.yaml", "collector-alerts.yaml", "database-alerts.yaml"}
    promtool = shutil.which("promtool")
    if not promtool:
        if REQUIRE_SERVICES:
            pytest.fail("promtool not installed (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip("promtool not installed")
    out = subprocess.run([promtool, "check", "config", str(TWO_TIER)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
