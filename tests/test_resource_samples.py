"""DBPERF_RESOURCE_SAMPLES: ``request`` (default), ``query``, ``off``; ``true``/``false`` mean query/off."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from app_code import queries
from conftest import APPS, BIN, base_env
from opentelemetry.trace import SpanKind
from support.pipeline import APP_CODE, Traced

from otel_dbperf import Settings
from otel_dbperf import attributes as A
from otel_dbperf._pipeline import Query

ROOT_SAMPLES = (A.CPU_TIME_MS, A.MEMORY_RSS_BYTES, A.MEMORY_RSS_DELTA_BYTES)


@pytest.mark.parametrize(
    ("raw", "level"),
    [
        ("request", "request"),
        ("QUERY", "query"),
        (" off ", "off"),
        ("true", "query"),  # the former boolean: true sampled every query
        ("1", "query"),
        ("false", "off"),
        ("no", "off"),
    ],
)
def test_levels_and_former_booleans_are_parsed(raw: str, level: str) -> None:
    assert Settings.from_env({"DBPERF_RESOURCE_SAMPLES": raw}).resource_samples == level


def test_default_is_request() -> None:
    assert Settings.from_env({}).resource_samples == "request"
    assert Settings().resource_samples == "request"


def test_bad_value_warns_and_uses_request(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        settings = Settings.from_env({"DBPERF_RESOURCE_SAMPLES": "sometimes"})
    assert settings.resource_samples == "request"
    (record,) = [r for r in caplog.records if "DBPERF_RESOURCE_SAMPLES" in r.getMessage()]
    message = record.getMessage()
    assert "'sometimes'" in message and "request, query or off" in message and "default request" in message


def test_constructor_keeps_the_former_booleans_and_refuses_other_values() -> None:
    assert Settings(resource_samples=True).resource_samples == "query"  # type: ignore[arg-type]
    assert Settings(resource_samples=False).resource_samples == "off"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="resource_samples"):
        Settings(resource_samples="sometimes")  # type: ignore[arg-type]


def _run(level: str) -> tuple[Traced, list[Any], list[Any]]:
    t = Traced(Settings(app_paths=(str(APP_CODE.parent),), resource_samples=level))  # type: ignore[arg-type]
    records: list[Any] = []
    t.processor.attach_deriver(lambda span, payload: records.append(payload))
    with t.tracer.start_as_current_span("GET /samples", kind=SpanKind.SERVER):
        queries.n_plus_one(t.engine, 2)
    queries.point_query(t.engine, 1)  # a DB span with no request around it
    return t, t.spans(), records


@pytest.mark.parametrize("level", ["off", "request", "query"])
def test_each_level_sets_its_attributes(level: str) -> None:
    t, spans, records = _run(level)
    try:
        (root,) = [s for s in spans if s.name == "GET /samples"]
        db = [s for s in spans if A.QUERY_FINGERPRINT in (s.attributes or {})]
        assert len(db) == 3  # two in the request, one outside it
        per_query = level == "query"
        for span in db:
            assert (A.CPU_TIME_MS in span.attributes) is per_query
            if per_query:
                assert span.attributes[A.CPU_TIME_MS] >= 0
        for key in ROOT_SAMPLES:
            assert (key in root.attributes) is (level != "off")
        if level != "off":
            assert root.attributes[A.MEMORY_RSS_BYTES] > 1_000_000 and root.attributes[A.CPU_TIME_MS] > 0
        query_records = [r for r in records if r.__class__ is Query]
        assert len(query_records) == 3
        for record in query_records:
            # the record carries what the profiler reads: CPU time (-1: not sampled) and the RSS delta
            if per_query:
                assert record.cpu_ns >= 0 and isinstance(record.rss_delta, int)
            else:
                assert record.cpu_ns == -1 and record.rss_delta is None
    finally:
        t.provider.shutdown()


@pytest.mark.parametrize("level", ["off", None, "query", "false", "true"])
def test_opentelemetry_instrument_applies_each_level(receiver: Any, tmp_path: Path, level: str | None) -> None:
    env = {} if level is None else {"DBPERF_RESOURCE_SAMPLES": level}
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "script_app.py", str(tmp_path / "s.db")]
    proc = subprocess.run(cmd, cwd=APPS, env=base_env(receiver, **env), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "DBPERF_RESOURCE_SAMPLES" not in proc.stderr  # no warning for any accepted value
    spans = receiver.wait_for(lambda s: any(x["name"] == "GET /script" for x in s))
    (root,) = [s for s in spans if s["name"] == "GET /script"]
    db = [s for s in spans if A.QUERY_FINGERPRINT in s["attributes"]]
    assert len(db) >= 7
    effective = {None: "request", "true": "query", "false": "off"}.get(level, level)
    assert all((A.CPU_TIME_MS in s["attributes"]) is (effective == "query") for s in db)
    for key in ROOT_SAMPLES:
        assert (key in root["attributes"]) is (effective != "off")
