"""Throughput and peak memory of ``otel-dbperf report`` on a generated file.

    python bench/report_throughput.py [--spans 1000000] [--keep FILE]

Writes a file of OTLP JSON lines (requests of 1 root and 9 DB spans, 50 requests a
line, 500 distinct statements, every 7th request an N+1), then runs the report on
it in a child process and prints spans per second and the child's peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _kv(key: str, value: object) -> dict[str, object]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": str(value)}}


def generate(path: str, spans: int) -> int:
    written = 0
    request = 0
    t0 = 1_763_800_000_000_000_000
    with open(path, "w", encoding="utf-8") as f:
        while written < spans:
            batch = []
            for _ in range(50):
                request += 1
                trace = f"{request:032x}"
                root = f"{request:015x}0"
                n1 = request % 7 == 0
                start = t0 + request * 10_000_000
                for q in range(9):
                    stmt = (request * 9 + q) % 500 if not n1 else 42
                    batch.append(
                        {
                            "traceId": trace,
                            "spanId": f"{request:015x}{q + 1:x}",
                            "parentSpanId": root,
                            "name": "SELECT app",
                            "kind": 3,
                            "startTimeUnixNano": str(start + q * 100_000),
                            "endTimeUnixNano": str(start + q * 100_000 + 50_000 + stmt * 1000),
                            "attributes": [
                                _kv("db.system.name", "postgresql"),
                                _kv("db.query.text", f"SELECT * FROM table_{stmt} WHERE id = $1"),
                                _kv("dbperf.query.fingerprint", f"{stmt:016x}"),
                                _kv("db.query.summary", f"SELECT table_{stmt}"),
                                _kv("dbperf.query.slow", stmt == 499),
                                _kv("code.file.path", f"/srv/app/module_{stmt % 40}.py"),
                                _kv("code.line.number", 10 + stmt % 90),
                            ],
                        }
                    )
                batch.append(
                    {
                        "traceId": trace,
                        "spanId": root,
                        "name": f"GET /route/{request % 30}",
                        "kind": 2,
                        "startTimeUnixNano": str(start),
                        "endTimeUnixNano": str(start + 2_000_000),
                        "attributes": [
                            _kv("http.route", f"/route/{request % 30}"),
                            _kv("dbperf.db.query_count", 9),
                            _kv("dbperf.db.duration_ms", 1.2),
                            _kv("dbperf.db.slow_query_count", 0),
                            _kv("dbperf.n_plus_one.detected", n1),
                            *(
                                [
                                    _kv("dbperf.n_plus_one.fingerprint", f"{42:016x}"),
                                    _kv("dbperf.n_plus_one.repeat_count", 9),
                                    _kv("dbperf.n_plus_one.code_location", "/srv/app/module_2.py:52"),
                                ]
                                if n1
                                else []
                            ),
                        ],
                    }
                )
            line = {
                "resourceSpans": [
                    {
                        "resource": {"attributes": [_kv("service.name", "bench")]},
                        "scopeSpans": [{"scope": {"name": "bench"}, "spans": batch}],
                    }
                ]
            }
            f.write(json.dumps(line, separators=(",", ":")) + "\n")
            written += len(batch)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spans", type=int, default=1_000_000)
    parser.add_argument("--keep", help="write the generated file here and keep it")
    args = parser.parse_args()
    path = args.keep or tempfile.mktemp(suffix=".jsonl")
    t = time.perf_counter()
    spans = generate(path, args.spans)
    size = os.path.getsize(path)
    print(f"generated {spans} spans, {size / 2**20:.0f} MiB, in {time.perf_counter() - t:.1f} s")
    try:
        t = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "otel_dbperf.report.cli", "report", "--json", path],
            capture_output=True,
            text=True,
            check=True,
        )
        elapsed = time.perf_counter() - t
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        data = json.loads(proc.stdout)
        assert data["input"]["spans"] == spans, data["input"]
        print(f"report: {spans / elapsed:,.0f} spans/s ({elapsed:.1f} s, {size / 2**20 / elapsed:.1f} MiB/s)")
        print(f"peak RSS of the report process: {peak:.0f} MiB")
        print(f"findings: {len(data['top_queries'])} top queries, {len(data['n_plus_one'])} N+1 findings")
    finally:
        if not args.keep:
            os.unlink(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
