"""``otel-dbperf dbmonitor --file PATH``: metrics and log records as OTLP JSON lines (one
``ExportMetricsServiceRequest`` or ``ExportLogsServiceRequest`` a line, the Collector file
exporter's format)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from .. import _forksafe
from ..exporters.otlp_json_file import _hex_ids

_LOCK = _forksafe.lock("dbmonitor.filesink")


def _append(path: str, message: Any) -> bool:
    data = json_format.MessageToDict(message, use_integers_for_enums=True)
    _hex_ids(data)
    line = json.dumps(data, separators=(",", ":")) + "\n"
    try:
        with _LOCK, open(path, "a", encoding="utf-8") as file:
            file.write(line)
    except OSError:
        return False
    return True


class JsonLinesMetricExporter(MetricExporter):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any) -> MetricExportResult:
        ok = _append(self.path, encode_metrics(metrics_data))
        return MetricExportResult.SUCCESS if ok else MetricExportResult.FAILURE

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


class JsonLinesLogExporter(LogRecordExporter):
    def __init__(self, path: str) -> None:
        self.path = path

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        ok = _append(self.path, encode_logs(batch))
        return LogRecordExportResult.SUCCESS if ok else LogRecordExportResult.FAILURE

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True

    def shutdown(self) -> None:
        return None
