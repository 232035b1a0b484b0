"""The findings' pure parts: route templates by structure, the CPU-bound and HTTP N+1 verdicts."""

from __future__ import annotations

import pytest

from otel_dbperf._pipeline.findings import findings_of, url_template
from otel_dbperf._pipeline.record import Request, Thresholds


@pytest.mark.parametrize(
    ("url", "template"),
    [
        ("http://api.local:8080/users/42", "http://api.local:8080/users/{id}"),
        ("https://api.example.com/v2/users/42/orders/7?expand=1", "https://api.example.com/v2/users/{id}/orders/{id}"),
        (
            "https://x.io/items/3f2b8c1e-9a4d-4c2b-8e1f-0a1b2c3d4e5f",
            "https://x.io/items/{uuid}",
        ),
        ("https://x.io/blobs/deadbeef01", "https://x.io/blobs/{hex}"),
        ("https://x.io/export/42.json", "https://x.io/export/{id}.json"),
        ("https://x.io/u/alice%40example.com", "https://x.io/u/{value}"),
        ("https://user:secret@x.io/users/1", "https://x.io/users/{id}"),
        ("https://x.io/users", "https://x.io/users"),
        ("https://x.io", "https://x.io/"),
        ("not a url", ""),
    ],
)
def test_url_template_by_structure(url: str, template: str) -> None:
    assert url_template(url) == template


def test_url_template_prefers_the_instrumentation_s() -> None:
    assert url_template("https://x.io/users/alice", "/users/{name}") == "https://x.io/users/{name}"


def _request(**fields: object) -> Request:
    request = Request(1, 0, 0)
    request.ended = True
    for key, value in fields.items():
        setattr(request, key, value)
    return request


T = Thresholds(slow_ns=1, stack_ns=1, n_plus_one=5, statement_max_length=4096, cpu_bound_ns=100, http_n_plus_one=3)


@pytest.mark.parametrize(
    ("cpu_ns", "duration_ns", "bound"),
    [(100, 150, True), (100, 250, False), (99, 100, False), (0, 0, False)],
)
def test_cpu_bound_needs_both_the_threshold_and_the_ratio(cpu_ns: int, duration_ns: int, bound: bool) -> None:
    f = findings_of(_request(cpu_ns=cpu_ns, duration_ns=duration_ns), T, True)
    assert f.cpu_bound is bound
    assert findings_of(_request(cpu_ns=cpu_ns, duration_ns=duration_ns), T, False).cpu_bound is False


def test_the_hottest_sampled_line_wins() -> None:
    samples = [("a.py", 3, "f"), ("a.py", 9, "g"), ("a.py", 9, "g.<locals>.<listcomp>"), ("a.py", 9, "g"), ("", 0, "")]
    f = findings_of(_request(cpu_ns=100, duration_ns=100, samples=samples), T, True)
    assert (f.hot_location, f.hot_function, f.samples) == ("a.py:9", "g", 5)


def test_http_n_plus_one_counts_one_method_and_template() -> None:
    loc = ("app.py", 7, "view")
    calls = [(None, f"http://api/users/{i}", "GET", 10, loc) for i in range(3)]
    calls += [(None, "http://api/users/9", "POST", 10, None), (None, "http://api/teams/1", "GET", 10, None)]
    f = findings_of(_request(http=calls), T, True)
    assert (f.http_count, f.http_ns, f.http_detected) == (5, 50, True)
    assert (f.http_route, f.http_repeats, f.http_location) == ("GET http://api/users/{id}", 3, "app.py:7")
    assert findings_of(_request(http=calls[1:]), T, True).http_detected is False


def test_the_watchdog_thread_ends_with_its_processor() -> None:
    import gc
    import threading

    from otel_dbperf._pipeline.processor import DbPerfSpanProcessor
    from otel_dbperf.settings import Settings

    before = set(threading.enumerate())
    processor = DbPerfSpanProcessor(Settings())
    processor.watchdog.started(1, Request(1, 0, 0))
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name == "otel-dbperf-watchdog"]
    del processor
    gc.collect()
    thread.join(timeout=30)  # a hang guard: it notices within one interval (0.5 s at most)
    assert not thread.is_alive()


def test_nothing_to_watch_starts_no_thread() -> None:
    from otel_dbperf._pipeline.processor import DbPerfSpanProcessor
    from otel_dbperf.settings import Settings

    processor = DbPerfSpanProcessor(Settings(resource_samples="off", event_loop_blocked_ms=0))
    assert processor.watchdog.active is False and processor._watch is None


def test_the_dashboard_charts_the_findings_by_route_and_kind() -> None:
    from dashboard import targets

    from otel_dbperf import metric_names as M

    (panel,) = [p for p, t in targets("prometheus") if M.REQUEST_FINDINGS.prometheus in t["expr"]]
    (target,) = panel["targets"]
    assert "by (http_route, dbperf_finding)" in target["expr"] and 'job=~"$job"' in target["expr"]
    assert "http.n_plus_one.detected=true" in panel["description"]
