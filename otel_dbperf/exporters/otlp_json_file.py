"""``OTEL_TRACES_EXPORTER=otlp_json_file``: spans as OTLP JSON lines in a local file.

Each line is one ``ExportTraceServiceRequest`` in the OTLP/JSON encoding (hex trace
and span ids, integer enums, 64-bit integers as strings): the format of the
Collector's file exporter, so ``otel-dbperf report`` reads both. The path is
``DBPERF_FILE_PATH`` (default ``dbperf-spans.jsonl``); lines are appended.

Only the file is created, never a directory: when the file's directory does not exist,
one warning says so and the exporter is disabled (its spans are dropped), rather than a
directory tree appearing wherever a typo points.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from typing import Any

from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from .. import _forksafe
from .._guard import internal_error
from .._startup_log import startup_warning
from ..settings import current_settings

_ID_KEYS = ("traceId", "spanId", "parentSpanId")


def _hex_ids(node: Any) -> None:
    """OTLP/JSON writes ids as hex, protobuf's JSON mapping as base64: convert in place."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            else:
                _hex_ids(value)
    elif isinstance(node, list):
        for item in node:
            _hex_ids(item)


def to_otlp_json(spans: Sequence[ReadableSpan]) -> str:
    message = json_format.MessageToDict(encode_spans(spans), use_integers_for_enums=True)
    _hex_ids(message)
    return json.dumps(message, separators=(",", ":"))


class OTLPJsonFileSpanExporter(SpanExporter):
    def __init__(self, path: str | None = None) -> None:
        self.path = path or current_settings().file_path
        self._lock = _forksafe.lock("otlp_json_file")
        self._file: Any = None
        directory = os.path.dirname(os.path.abspath(self.path))
        self.disabled = not os.path.isdir(directory)
        if self.disabled:
            startup_warning(
                "otel-dbperf: DBPERF_FILE_PATH=%s: the directory %s does not exist; the otlp_json_file exporter "
                "is disabled and its spans are dropped (otel-dbperf creates the file, never directories)",
                self.path,
                directory,
            )

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        if not spans:
            return SpanExportResult.SUCCESS
        if self.disabled:
            return SpanExportResult.FAILURE
        try:
            line = to_otlp_json(spans)
            with self._lock:
                if self._file is None:
                    self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
                self._file.write(line + "\n")
                self._file.flush()
            return SpanExportResult.SUCCESS
        except Exception as exc:  # noqa: BLE001 - an exporter reports failure, never raises
            internal_error("otlp_json_file export", exc)
            return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
