"""A real OTLP/HTTP (protobuf) receiver for end-to-end tests."""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def _value(v: AnyValue) -> Any:
    field = v.WhichOneof("value")
    if field == "array_value":
        return [_value(x) for x in v.array_value.values]
    if field == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, field) if field else None


class Receiver:
    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.metrics: list[dict[str, Any]] = []  # one entry per data point, in arrival order
        self.logs: list[dict[str, Any]] = []
        self.raw: list[bytes] = []  # every request body, decompressed
        self.paths: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver._store(self.path, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def _store(self, path: str, body: bytes) -> None:
        with self._lock:
            self.raw.append(body)
            self.paths.append(path)
        if path == "/v1/logs":
            records = _log_records(body)
            with self._lock:
                self.logs.extend(records)
            return
        if path == "/v1/metrics":
            points = _metric_points(body)
            with self._lock:
                self.metrics.extend(points)
            return
        if path != "/v1/traces":
            return
        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        decoded = []
        for rs in req.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    decoded.append(
                        {
                            "name": s.name,
                            "kind": KINDS.get(s.kind, str(s.kind)),
                            "trace_id": s.trace_id.hex(),
                            "span_id": s.span_id.hex(),
                            "parent_span_id": s.parent_span_id.hex(),
                            "start": s.start_time_unix_nano,
                            "end": s.end_time_unix_nano,
                            "scope": ss.scope.name,
                            "attributes": {kv.key: _value(kv.value) for kv in s.attributes},
                            "events": [
                                {"name": e.name, "attributes": {kv.key: _value(kv.value) for kv in e.attributes}}
                                for e in s.events
                            ],
                            "status": {"code": s.status.code, "message": s.status.message},
                            "resource": resource,
                        }
                    )
        with self._lock:
            self.spans.extend(decoded)

    def _wait(
        self, signal: str, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                snapshot = list(getattr(self, signal))
            if predicate(snapshot):
                return snapshot
            if time.monotonic() > deadline:
                seen = [x.get("name", x.get("body")) for x in snapshot][:50]
                raise AssertionError(f"timed out waiting for {signal}; got {len(snapshot)}: {seen}")
            time.sleep(0.05)

    def wait_for(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        return self._wait("spans", predicate, timeout)

    def wait_for_metrics(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        return self._wait("metrics", predicate, timeout)

    def wait_for_logs(
        self, predicate: Callable[[list[dict[str, Any]]], bool], timeout: float = 20.0
    ) -> list[dict[str, Any]]:
        return self._wait("logs", predicate, timeout)

    def clear(self) -> None:
        with self._lock:
            self.metrics.clear()
            self.logs.clear()
            self.spans.clear()
            self.raw.clear()
            self.paths.clear()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _metric_points(body: bytes) -> list[dict[str, Any]]:
    req = ExportMetricsServiceRequest()
    req.ParseFromString(body)
    points = []
    for rm in req.resource_metrics:
        resource = {kv.key: _value(kv.value) for kv in rm.resource.attributes}
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                for p in getattr(m, kind).data_points:
                    point: dict[str, Any] = {
                        "name": m.name,
                        "unit": m.unit,
                        "kind": kind,
                        "scope": sm.scope.name,
                        "resource": resource,
                        "attributes": {kv.key: _value(kv.value) for kv in p.attributes},
                        "start": p.start_time_unix_nano,
                        "time": p.time_unix_nano,
                        "exemplars": [{"trace_id": e.trace_id.hex(), "span_id": e.span_id.hex()} for e in p.exemplars],
                    }
                    if kind == "histogram":
                        point.update(count=p.count, sum=p.sum, bounds=list(p.explicit_bounds))
                    else:
                        point["value"] = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                    points.append(point)
    return points


def _log_records(body: bytes) -> list[dict[str, Any]]:
    req = ExportLogsServiceRequest()
    req.ParseFromString(body)
    return [
        {
            "body": _value(r.body),
            "severity_text": r.severity_text,
            "severity_number": r.severity_number,
            "event_name": r.event_name,
            "trace_id": r.trace_id.hex(),
            "span_id": r.span_id.hex(),
            "scope": sl.scope.name,
            "attributes": {kv.key: _value(kv.value) for kv in r.attributes},
            "resource": {kv.key: _value(kv.value) for kv in rl.resource.attributes},
        }
        for rl in req.resource_logs
        for sl in rl.scope_logs
        for r in sl.log_records
    ]
