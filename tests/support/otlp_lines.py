"""OTLP JSON lines of requests and their DB spans, written to files for the report tests."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

T0 = 1_763_800_000_000_000_000  # ns
DAY = 86_400 * 10**9
_ids = itertools.count(1)


def _kv(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def request(
    route: str,
    queries: Iterable[tuple[str, float]] = (),
    *,
    start: int = T0,
    slow_ms: float = 100.0,
    n_plus_one: tuple[str, int] | None = None,
) -> str:
    """One request's trace as an OTLP JSON line: its DB spans (fingerprint, ms), then the server span."""
    n = next(_ids)
    trace, root = f"{n:032x}", f"{n:016x}"
    spans, at, db_ms, count = [], start + 1000, 0.0, 0
    for fp, ms in queries:
        count += 1
        db_ms += ms
        spans.append(
            {
                "traceId": trace,
                "spanId": f"{n:08x}{count:08x}",
                "parentSpanId": root,
                "name": "SELECT",
                "kind": 3,
                "startTimeUnixNano": str(at),
                "endTimeUnixNano": str(at + int(ms * 1e6)),
                "attributes": [
                    _kv("db.system.name", "sqlite"),
                    _kv("dbperf.query.fingerprint", fp),
                    _kv("db.query.summary", f"SELECT t_{fp}"),
                    _kv("db.query.text", f"SELECT * FROM t_{fp} WHERE id = ?"),
                    _kv("dbperf.query.slow", ms >= slow_ms),
                    _kv("code.file.path", "/srv/app.py"),
                    _kv("code.line.number", 10),
                ],
            }
        )
        at += int(ms * 1e6)
    attrs = [
        _kv("http.route", route),
        _kv("dbperf.db.query_count", count),
        _kv("dbperf.db.duration_ms", float(db_ms)),
        _kv("dbperf.n_plus_one.detected", n_plus_one is not None),
    ]
    if n_plus_one:
        attrs += [
            _kv("dbperf.n_plus_one.fingerprint", n_plus_one[0]),
            _kv("dbperf.n_plus_one.query_summary", f"SELECT t_{n_plus_one[0]}"),
            _kv("dbperf.n_plus_one.repeat_count", n_plus_one[1]),
            _kv("dbperf.n_plus_one.code_location", "/srv/app.py:20"),
        ]
    spans.append(
        {
            "traceId": trace,
            "spanId": root,
            "name": f"GET {route}",
            "kind": 2,
            "startTimeUnixNano": str(start),
            "endTimeUnixNano": str(at + 1000),
            "attributes": attrs,
        }
    )
    resource = {"attributes": [_kv("service.name", "shop")]}
    return json.dumps({"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": spans}]}]})


def write(path: Path, lines: Iterable[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def two_windows(tmp_path: Path, requests: int = 50, new_requests: int = 50) -> tuple[str, str]:
    """Each fingerprint below exercises one rule; one request per sample on route /r."""

    def traffic(now: bool, n: int, start: int) -> list[str]:
        lines = []
        for i in range(n):
            q = [
                ("aaaa", 20.0 if now else 10.0),  # p95 and total doubled: regressed
                ("cccc", 14.0 if now else 10.0),  # 1.4x: within the ratio
                ("dddd", 2.0 if now else 1.0),  # doubled, but by only 1 ms: below --min-delta-ms
                ("ffff", 10.0 if now else 25.0),  # 2.5x faster
            ]
            if i < 49:
                q.append(("bbbb", 30.0 if now else 10.0))  # tripled, but 49 samples: not judged
            q.append(("eeee", 30.0 if now and i < 5 else 10.0))  # p95 tripled, DB time 1.2x only
            if not now:
                q.append(("gggg", 5.0))  # vanished
            else:
                q.append(("hhhh", 3.0))  # new, fast
                q.append(("iiii", 150.0 if i % 10 == 0 else 8.0))  # new, 10% slow: new slow query
                q.append(("jjjj", 150.0 if i == 0 else 8.0))  # new, 2% slow: not a new slow query
                if i < 49:
                    q.append(("kkkk", 150.0))  # new, all slow, but 49 samples
            lines.append(request("/r", q, start=start + i * 10**9))
        return lines

    old = write(tmp_path / "old.jsonl", traffic(False, requests, T0))
    new = write(tmp_path / "new.jsonl", traffic(True, new_requests, T0 + DAY))
    return new, old
