"""Loki's OTLP endpoint makes index labels (streams) of a fixed list of resource attributes, and
Loki 3.5's default list holds service.instance.id, which the SDK makes new per process: every
worker and restart would open new streams. The compose stack's Loki takes the default list less
service.instance.id (it stays on every record as structured metadata); docs/collector.md says how
to do the same on your own Loki. Loki is not built here: checked on the configs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).parent.parent
COLLECTOR = ROOT / "collector"
FLAG = "-distributor.otlp.default_resource_attributes_as_index_labels="
# Loki 3.5's default_resource_attributes_as_index_labels (pkg/distributor, otlp config defaults)
LOKI_DEFAULT_INDEX_LABELS = [
    "service.name", "service.namespace", "service.instance.id", "deployment.environment",
    "deployment.environment.name", "cloud.region", "cloud.availability_zone", "k8s.cluster.name",
    "k8s.namespace.name", "k8s.pod.name", "k8s.container.name", "container.name", "k8s.replicaset.name",
    "k8s.deployment.name", "k8s.statefulset.name", "k8s.daemonset.name", "k8s.cronjob.name", "k8s.job.name",
]  # fmt: skip


def test_compose_loki_indexes_the_default_labels_but_service_instance_id() -> None:
    loki = yaml.safe_load((COLLECTOR / "docker-compose.yaml").read_text())["services"]["loki"]
    (flag,) = [arg for arg in loki["command"] if arg.startswith(FLAG)]
    labels = flag.removeprefix(FLAG).split(",")
    assert labels == [name for name in LOKI_DEFAULT_INDEX_LABELS if name != "service.instance.id"]


def test_the_docs_say_how_to_keep_it_out_of_your_own_lokis_index() -> None:
    text = re.sub(r"\s+", " ", (ROOT / "docs" / "collector.md").read_text())
    assert "default_resource_attributes_as_index_labels" in text
    assert "service.instance.id" in text and "structured metadata" in text
