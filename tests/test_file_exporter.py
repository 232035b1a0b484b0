"""``DBPERF_FILE_PATH``: the exporter creates its file, never a directory."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from otel_dbperf.exporters.otlp_json_file import OTLPJsonFileSpanExporter


def _export_one(exporter: OTLPJsonFileSpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    provider.get_tracer("t").start_span("one").end()
    provider.shutdown()


def test_missing_directory_warns_once_and_disables_the_exporter(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "typo" / "deeper" / "spans.jsonl"
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        exporter = OTLPJsonFileSpanExporter(str(path))
        _export_one(exporter)
        _export_one(exporter)
    assert not (tmp_path / "typo").exists()  # no directory tree made
    (message,) = [r.getMessage() for r in caplog.records]
    assert "DBPERF_FILE_PATH" in message and str(tmp_path / "typo" / "deeper") in message and "disabled" in message
    assert exporter.export([object()]) is SpanExportResult.FAILURE  # type: ignore[list-item]


def test_existing_directory_gets_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "spans.jsonl"
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        _export_one(OTLPJsonFileSpanExporter(str(path)))
    assert caplog.records == [] and len(path.read_text().splitlines()) == 1
