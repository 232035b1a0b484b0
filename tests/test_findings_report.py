"""The request findings beyond N+1 in ``otel-dbperf report`` (text, JSON, HTML) and ``--baseline``
(a finding the baseline did not have is a regression)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from support.otlp_lines import DAY, T0, _kv, request, write

from otel_dbperf import attributes as A
from otel_dbperf.report.cli import main
from otel_dbperf.report.compare import EXIT_REGRESSION

CPU = {
    A.REQUEST_CPU_BOUND: True,
    A.CPU_TIME_MS: 420.0,
    A.REQUEST_CPU_BOUND_CODE_LOCATION: "/srv/app.py:40",
    A.REQUEST_CPU_BOUND_FUNCTION: "build_document",
    A.REQUEST_CPU_BOUND_SUGGESTION: "move the CPU-bound work out of the request",
}
HTTP = {
    A.REQUEST_HTTP_N_PLUS_ONE_DETECTED: True,
    A.REQUEST_HTTP_N_PLUS_ONE_ROUTE: "GET http://api.local/users/{id}",
    A.REQUEST_HTTP_N_PLUS_ONE_REPEAT_COUNT: 6,
    A.REQUEST_HTTP_N_PLUS_ONE_CODE_LOCATION: "/srv/app.py:30",
    A.REQUEST_HTTP_N_PLUS_ONE_SUGGESTION: "6 calls of GET http://api.local/users/{id} in one request: batch them",
}
LOOP = {
    A.REQUEST_EVENT_LOOP_BLOCKED_COUNT: 1,
    A.REQUEST_EVENT_LOOP_BLOCKED_MS: 500.0,
    A.REQUEST_EVENT_LOOP_CODE_LOCATION: "/srv/app.py:12",
}
SEQ = {
    A.REQUEST_SEQUENTIAL_DETECTED: True,
    A.REQUEST_SEQUENTIAL_COUNT: 3,
    A.REQUEST_SEQUENTIAL_SAVING_MS: 8.0,
    A.REQUEST_SEQUENTIAL_CODE_LOCATION: "/srv/app.py:50",
    A.REQUEST_SEQUENTIAL_SUGGESTION: "run them concurrently (asyncio.gather)",
}


def with_root(line: str, attrs: dict[str, Any]) -> str:
    """``line`` with ``attrs`` added to its request (server) span."""
    data = json.loads(line)
    for span in data["resourceSpans"][0]["scopeSpans"][0]["spans"]:
        if span["kind"] == 2:
            span["attributes"] += [_kv(k, v) for k, v in attrs.items()]
    return json.dumps(data)


def report(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    code = main(["report", *args], out=out)
    return code, out.getvalue()


def test_the_report_lists_each_finding_with_its_location_and_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path / "spans.jsonl",
        [
            with_root(request("/report", [("aaaa", 1.0)], start=T0), CPU),
            with_root(request("/report", [("aaaa", 1.0)], start=T0 + 1), {**CPU, A.CPU_TIME_MS: 600.0}),
            with_root(request("/users", [], start=T0 + 2), HTTP),
            with_root(request("/block", [], start=T0 + 3), LOOP),
            with_root(request("/dashboard", [], start=T0 + 4), SEQ),
            request("/plain", [("aaaa", 1.0)], start=T0 + 5),
        ],
    )
    _, out = report(path, "--json")
    found = {(f["finding"], f["route"]): f for f in json.loads(out)["request_findings"]}
    assert set(found) == {
        ("cpu_bound", "/report"),
        ("http_n_plus_one", "/users"),
        ("event_loop_blocked", "/block"),
        ("sequential_queries", "/dashboard"),
    }
    cpu = found[("cpu_bound", "/report")]
    assert (cpu["requests"], cpu["worst"], cpu["code_location"], cpu["detail"]) == (
        2,
        600.0,
        "/srv/app.py:40",
        "build_document",
    )
    http = found[("http_n_plus_one", "/users")]
    assert (http["worst"], http["detail"], http["code_location"]) == (
        6,
        "GET http://api.local/users/{id}",
        "/srv/app.py:30",
    )
    assert "batch" in http["suggestion"]
    assert found[("event_loop_blocked", "/block")]["worst"] == 500.0
    assert "to_thread" in found[("event_loop_blocked", "/block")]["suggestion"]
    assert found[("sequential_queries", "/dashboard")]["worst"] == 8.0

    _, text = report(path)
    assert "Request findings beyond N+1 queries" in text
    assert "/users: HTTP N+1, GET http://api.local/users/{id} called up to 6x in 1 request(s) at /srv/app.py:30" in text
    assert "/report: CPU-bound, up to 600 ms of CPU in build_document in 2 request(s) at /srv/app.py:40" in text
    html = tmp_path / "report.html"
    report(path, "--html", str(html))
    page = html.read_text()
    assert "Request findings" in page and "GET http://api.local/users/{id}" in page and "/srv/app.py:12" in page


def test_a_new_finding_against_the_baseline_is_a_regression(tmp_path: Path) -> None:
    old = write(
        tmp_path / "old.jsonl",
        [with_root(request("/report", [("aaaa", 1.0)], start=T0 + i), CPU) for i in range(3)]
        + [request("/users", [("aaaa", 1.0)], start=T0 + 10)]
        + [with_root(request("/dashboard", [], start=T0 + 20), SEQ)],
    )
    new = write(
        tmp_path / "new.jsonl",
        [with_root(request("/report", [("aaaa", 1.0)], start=T0 + DAY + i), CPU) for i in range(3)]
        + [with_root(request("/users", [("aaaa", 1.0)], start=T0 + DAY + 10), HTTP)]
        + [request("/dashboard", [], start=T0 + DAY + 20)],
    )
    out = io.StringIO()
    code = main(["report", new, "--baseline", old, "--json", "--fail-on-regression"], out=out)
    data = json.loads(out.getvalue())
    assert code == EXIT_REGRESSION
    assert data["regressed"] is True and data["regression_count"] == 1
    (added,) = data["routes"]["new_findings"]
    assert (added["finding"], added["route"], added["detail"]) == (
        "http_n_plus_one",
        "/users",
        HTTP[A.REQUEST_HTTP_N_PLUS_ONE_ROUTE],
    )
    (fixed,) = data["routes"]["fixed_findings"]
    assert (fixed["finding"], fixed["route"]) == ("sequential_queries", "/dashboard")
    # the same finding on both sides (CPU-bound /report) is neither
    text = io.StringIO()
    main(["report", new, "--baseline", old], out=text)
    assert "New request findings" in text.getvalue() and "GET http://api.local/users/{id}" in text.getvalue()
    html = tmp_path / "compare.html"
    main(["report", new, "--baseline", old, "--html", str(html)], out=io.StringIO())
    assert "New request findings" in html.read_text()
