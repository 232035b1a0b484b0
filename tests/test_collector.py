"""The Collector configs, checked structurally and against the package's contract.

The configs run on the real Collector in test_kit.py; these tests check their shape and contract.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from otel_dbperf import attributes as A

COLLECTOR = Path(__file__).parent.parent / "collector"
CONFIGS = ["otelcol.yaml", "agent.yaml", "gateway.yaml"]

# Component types of otelcol-contrib 0.161.0 (the release of our own distribution,
# collector/builder-config.yaml): each module's type name as the Collector registers it (0.161's
# names: otlp_grpc, otlp_http, load_balancing; the old otlp, otlphttp, loadbalancing only warn
# that they are deprecated). Only the kinds this project may use.
OTELCOL_CONTRIB_0_161 = {
    "receivers": {
        "otlp", "prometheus", "hostmetrics", "filelog", "jaeger", "zipkin", "otlpjsonfile", "postgresql", "mysql",
        "redis", "kafka", "loki", "nop",
    },
    "processors": {
        "batch", "memory_limiter", "attributes", "cumulativetodelta", "deltatocumulative", "filter",
        "groupbyattrs", "groupbytrace", "k8sattributes", "metricstransform", "probabilistic_sampler", "redaction",
        "resourcedetection", "resource", "span", "tail_sampling", "transform",
    },
    "exporters": {
        "debug", "nop", "otlp_grpc", "otlp_http", "file", "kafka", "load_balancing", "prometheus",
        "prometheusremotewrite", "zipkin",
    },
    "extensions": {
        "health_check", "zpages", "pprof", "file_storage", "basicauth", "bearertokenauth", "headers_setter",
        "oauth2client", "opamp",
    },
    "connectors": {"forward", "count", "routing", "spanmetrics", "servicegraph", "exceptions", "failover"},
}  # fmt: skip
KINDS = ("receivers", "processors", "exporters", "connectors")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((COLLECTOR / name).read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("name", CONFIGS)
def test_every_component_is_defined_used_and_known(name: str) -> None:
    config = load(name)
    used: dict[str, set[str]] = {kind: set() for kind in KINDS}
    for pipeline, spec in config["service"]["pipelines"].items():
        assert pipeline.split("/")[0] in {"traces", "metrics", "logs"}
        assert spec["receivers"] and spec["exporters"], pipeline
        for kind in ("receivers", "processors", "exporters"):
            for component in spec.get(kind, []):
                assert component in (config.get(kind) or {}), f"{pipeline} uses undefined {kind} {component}"
                used[kind].add(component)
        assert spec["processors"][0] == "memory_limiter", f"{pipeline}: memory_limiter must come first"
    for kind in KINDS:
        defined = set(config.get(kind) or {})
        assert defined == used[kind], f"{kind} defined but unused: {defined - used[kind]}"
        for component in defined:
            assert component.split("/")[0] in OTELCOL_CONTRIB_0_161[kind], f"unknown {kind[:-1]} type {component}"
    extensions = set(config.get("extensions") or {})
    assert extensions == set(config["service"]["extensions"])
    assert {e.split("/")[0] for e in extensions} <= OTELCOL_CONTRIB_0_161["extensions"]
    assert {"health_check", "zpages"} <= {e.split("/")[0] for e in extensions}


def _walk(node: Any, path: str = "") -> list[tuple[str, Any]]:
    if isinstance(node, dict):
        return [item for k, v in node.items() for item in _walk(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [item for i, v in enumerate(node) for item in _walk(v, f"{path}[{i}]")]
    return [(path, node)]


@pytest.mark.parametrize("name", CONFIGS)
def test_endpoints_rates_and_limits_are_env_placeholders_with_defaults(name: str) -> None:
    tunable = re.compile(
        r"^(endpoint|hostname|port|directory|limit_percentage|spike_limit_percentage|sampling_percentage|"
        r"num_traces|decision_wait|expected_new_traces_per_sec|queue_size|send_batch_size|send_batch_max_size|threshold_ms|timeout|insecure|"
        r"max_elapsed_time)$"
    )
    placeholder = re.compile(r"^\$\{env:[A-Z][A-Z0-9_]*:-[^}]+\}$")
    checked = 0
    for path, value in _walk(load(name)):
        key = path.rsplit(".", 1)[-1]
        if tunable.search(key) and not path.startswith("extensions.file_storage/queue.timeout"):
            assert isinstance(value, str) and placeholder.match(value), f"{name}: {path} = {value!r}"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", ["otelcol.yaml", "gateway.yaml"])
def test_tail_sampling_keeps_errors_slow_queries_and_n_plus_one(name: str) -> None:
    config = load(name)
    policies = {p["type"]: p for p in config["processors"]["tail_sampling"]["policies"]}
    assert policies["status_code"]["status_code"]["status_codes"] == ["ERROR"]
    booleans = [p["boolean_attribute"] for p in config["processors"]["tail_sampling"]["policies"]
                if p["type"] == "boolean_attribute"]  # fmt: skip
    # the keys are the package's own constants, not retyped strings
    assert {(b["key"], b["value"]) for b in booleans} == {
        (A.QUERY_SLOW, True),
        (A.N_PLUS_ONE_DETECTED, True),
        # the request findings beyond N+1
        (A.REQUEST_CPU_BOUND, True),
        (A.REQUEST_HTTP_N_PLUS_ONE_DETECTED, True),
        (A.REQUEST_EVENT_LOOP_BLOCKED, True),
        (A.REQUEST_SEQUENTIAL_DETECTED, True),
    }
    assert "probabilistic" in policies
    # a slow request that is none of those (its p99 exemplar must link to a kept trace)
    assert policies["latency"]["latency"]["threshold_ms"] == "${env:OTELCOL_TAIL_LATENCY_THRESHOLD_MS:-1000}"
    traces = config["service"]["pipelines"]["traces"]["processors"]
    assert traces.index("tail_sampling") < traces.index("batch")


@pytest.mark.parametrize("name", ["otelcol.yaml", "gateway.yaml"])
def test_backends_have_persistent_queues_and_exemplars(name: str) -> None:
    config = load(name)
    exporters = config["exporters"]
    for exporter in ("otlp_grpc/jaeger", "otlp_http/loki"):
        assert exporters[exporter]["sending_queue"]["storage"] == "file_storage/queue"
        assert exporters[exporter]["retry_on_failure"]["enabled"] is True
    assert exporters["prometheus"]["enable_open_metrics"] is True  # exemplars need OpenMetrics
    assert exporters["otlp_http/loki"]["endpoint"].endswith("/otlp}")  # Loki's native OTLP endpoint


def test_agent_routes_traces_by_trace_id() -> None:
    config = load("agent.yaml")
    lb = config["exporters"]["load_balancing"]
    assert lb["routing_key"] == "traceID"
    assert config["service"]["pipelines"]["traces"]["exporters"] == ["load_balancing"]
    assert "tail_sampling" not in config["processors"]  # sampling happens where whole traces meet


def test_agent_queues_traces_on_disk_before_routing_them() -> None:
    """loadbalancingexporter 0.161 (README, "Resilience and scaling considerations"): a persistent
    queue is NOT supported in ``protocol.otlp`` (one sub-exporter per gateway address, all sharing that
    config); the exporter's own top-level ``sending_queue``/``retry_on_failure`` are, and a retry from
    there routes again on the current list of gateways. The per-gateway sub-exporter keeps no queue and
    no retry of its own, so a failure comes back to the top level instead of waiting in memory for an
    address that may have left DNS."""
    lb = load("agent.yaml")["exporters"]["load_balancing"]
    assert lb["sending_queue"]["storage"] == "file_storage/queue"
    assert lb["sending_queue"].get("enabled", True) is True
    assert lb["retry_on_failure"]["enabled"] is True
    otlp = lb["protocol"]["otlp"]
    assert "storage" not in otlp.get("sending_queue", {})
    assert otlp["sending_queue"]["enabled"] is False
    assert otlp["retry_on_failure"]["enabled"] is False


def test_gateway_has_the_single_node_pipelines() -> None:
    def body(name: str) -> str:
        return "\n".join(line for line in (COLLECTOR / name).read_text().splitlines() if not line.startswith("#"))

    assert body("gateway.yaml") == body("otelcol.yaml")


@pytest.mark.parametrize("name", ["otelcol.yaml", "gateway.yaml", "agent.yaml"])
def test_slow_query_log_records_reach_loki_with_their_attributes(name: str) -> None:
    """The dashboard's top-slow-queries table groups by the records' attributes as Loki's OTLP
    endpoint stores them: no processor on the way may drop, rename or sample them."""
    logs = load(name)["service"]["pipelines"]["logs"]
    assert logs["receivers"] == ["otlp"]
    assert logs["processors"] == ["memory_limiter", "batch"]  # nothing that edits attributes or samples
    if name == "agent.yaml":  # to the gateways, over OTLP
        (exporter,) = logs["exporters"]
        assert exporter.split("/")[0] in {"otlp_grpc", "otlp_http"}
    else:
        assert logs["exporters"] == ["otlp_http/loki"]


@pytest.mark.parametrize("name", CONFIGS)
def test_batches_stay_under_the_grpc_receivers_4_mib(name: str) -> None:
    """Every batch is one OTLP message; otlp receivers (Jaeger's, a gateway's) refuse gRPC messages over
    4 MiB. The batch processor caps its batches (send_batch_max_size) at a count that leaves each
    span ~4 KB of those 4 MiB."""
    batch = load(name)["processors"]["batch"]
    size = int(PLACEHOLDER_DEFAULT.match(batch["send_batch_size"]).group(1))  # type: ignore[union-attr]
    cap = int(PLACEHOLDER_DEFAULT.match(batch["send_batch_max_size"]).group(1))  # type: ignore[union-attr]
    assert size <= cap <= 4 * 1024 * 1024 // 4096


PLACEHOLDER_DEFAULT = re.compile(r"^\$\{env:[A-Z0-9_]+:-(\d+)\}$")
