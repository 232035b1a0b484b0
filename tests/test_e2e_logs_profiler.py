"""Slow-query log records and the profiler API, end to end under opentelemetry-instrument."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from conftest import base_env, free_port, get, get_json, listening, marker_line, seeded, serve, server_output
from sqlalchemy import create_engine

from otel_dbperf import attributes as A
from otel_dbperf.profiler.history import stack_lines

APP = "flask_app:app"


def test_slow_query_log_records_carry_the_trace_and_are_rate_limited(receiver: Any, tmp_path: Path) -> None:
    db_url = seeded(f"sqlite:///{tmp_path / 'app.db'}")
    env = base_env(
        receiver, APP_DB_URL=db_url, OTEL_LOGS_EXPORTER="otlp", OTEL_BLRP_SCHEDULE_DELAY="100",
        DBPERF_SLOW_QUERY_LOGS_PER_MINUTE="2",
    )  # fmt: skip
    with serve("gunicorn", APP, env, "-w", "1") as srv:
        for _ in range(5):
            assert get(srv["url"] + "/slow")[0] == 200
        spans = receiver.wait_for(lambda s: sum(x["kind"] == "SERVER" and x["name"].endswith("/slow") for x in s) >= 5)
        deadline_logs = receiver.wait_for_logs(
            lambda logs: (
                sum(r["body"] == "slow endpoint called" for r in logs) >= 5
                and sum(r["event_name"] == A.EVENT_SLOW_QUERY for r in logs) >= 2
            )
        )
        output = server_output(srv)
    slow_records = [r for r in deadline_logs if r["event_name"] == A.EVENT_SLOW_QUERY]
    assert len(slow_records) == 2, output  # 5 slow queries, 2 per fingerprint per minute
    slow_spans = {(s["trace_id"], s["span_id"]): s for s in spans if s["attributes"].get(A.QUERY_SLOW)}
    for record in slow_records:
        assert record["severity_text"] == "WARN" and record["severity_number"] == 13
        span = slow_spans[(record["trace_id"], record["span_id"])]  # the slow DB span itself
        a = record["attributes"]
        assert a[A.QUERY_FINGERPRINT] == span["attributes"][A.QUERY_FINGERPRINT]
        assert a[A.CODE_LINE_NUMBER] == marker_line("flask_app.py", "slow")
        assert a["http.route"] == "/slow" and a[A.EVENT_DURATION_MS] >= 300
        assert a["db.query.text"] == "SELECT dbperf_sleep(?)"  # sanitized
        assert record["body"].startswith("slow query SELECT") and "/slow" in record["body"]
    # the app's own logging records are correlated with their requests' traces
    server_traces = {s["trace_id"] for s in spans if s["kind"] == "SERVER"}
    app_records = [r for r in deadline_logs if r["body"] == "slow endpoint called"]
    assert len(app_records) == 5 and {r["trace_id"] for r in app_records} <= server_traces


def test_profiler_api_over_http_while_the_app_serves(receiver: Any, tmp_path: Path) -> None:
    port = free_port()
    env = base_env(
        receiver, APP_DB_URL=seeded(f"sqlite:///{tmp_path / 'app.db'}"), DBPERF_PROFILER_ADDR=f"127.0.0.1:{port}"
    )
    api = f"http://127.0.0.1:{port}/profiler"
    with serve("uvicorn", APP, env, "--interface", "wsgi") as srv:
        for path in ("/authors", "/slow", "/slow", "/author/3"):
            assert get(srv["url"] + path)[0] == 200
        routes = {"/authors", "/slow", "/author/<int:author_id>"}  # not a count: the readiness /ping may be several
        spans = receiver.wait_for(
            lambda s: routes <= {x["attributes"].get("http.route") for x in s if x["kind"] == "SERVER"}
        )
        deadline = time.monotonic() + 30  # a hang guard: the history is fed every 0.5 s by the derivation thread
        while (stats := get_json(f"{api}/stats")["data"])["total_queries"] < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stats["total_queries"] == 9 + 1 + 1 + 1, stats  # /authors is 1 + 8 (N+1)
        # the two 0.3 s sleeps are slow whatever the load; another query may pass 100 ms on a loaded
        # machine too, so the slow count is checked against the entries' own flags, not a constant
        entries = get_json(f"{api}/slow-queries?threshold=0&limit=100")["data"]["queries"]
        assert len(entries) == 12 and stats["slow_queries"] == sum(q["slow"] for q in entries), stats
        sleeps = [q for q in entries if q["query"] == "SELECT dbperf_sleep(?)"]
        assert len(sleeps) == 2 and all(q["slow"] and q["duration_s"] >= 0.3 for q in sleeps), sleeps
        slow = get_json(f"{api}/slow-queries?threshold=0.2&limit=100")["data"]
        assert {q["id"] for q in slow["queries"]} == {q["id"] for q in entries if q["duration_s"] >= 0.2}
        entry = get_json(f"{api}/query-details/{sleeps[0]['id']}")["data"]
        assert entry["code_location"].endswith(f"flask_app.py:{marker_line('flask_app.py', 'slow')}")
        assert entry["statement"] == entry["query"] == "SELECT dbperf_sleep(?)"
        assert entry["route"] == "/slow"  # from the request's root span
        assert entry["stack_trace"] == stack_lines(entry["stacktrace"]) and "parameters" not in entry
        assert entry["trace_id"] in {s["trace_id"] for s in spans}
        assert get_json(f"{api}/health")["status"] == "healthy"
        report = get_json(f"{api}/report?last_n_queries=100")["data"]
        assert report["total_queries"] == 12
        assert "dbperf_books" in stats["queries_by_table"]


def test_profiler_refuses_a_public_address_without_a_token(receiver: Any, tmp_path: Path) -> None:
    port = free_port()
    env = base_env(
        receiver, APP_DB_URL=seeded(f"sqlite:///{tmp_path / 'app.db'}"), DBPERF_PROFILER_ADDR=f"0.0.0.0:{port}"
    )
    with serve("uvicorn", APP, env, "--interface", "wsgi") as srv:
        assert get(srv["url"] + "/author/1")[0] == 200
        # no process of this server listens on the port (another process may have taken that free port since)
        assert port not in listening(srv["proc"].pid)
        output = server_output(srv)
    assert "profiler API is NOT started" in output and "DBPERF_PROFILER_TOKEN" in output


def test_profile_query_and_profile_session_roll_up_background_jobs(receiver: Any, tmp_path: Path) -> None:
    import subprocess

    from conftest import APPS, BIN

    env = base_env(receiver)
    cmd = [str(BIN / "opentelemetry-instrument"), str(BIN / "python"), "job_app.py", str(tmp_path / "j.db")]
    done = subprocess.run(cmd, cwd=APPS, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    spans = receiver.wait_for(lambda s: {"nightly_import", "bulk_session", "async_job"} <= {
        x["name"] for x in s})  # fmt: skip
    roots = {s["name"]: s for s in spans if not s["parent_span_id"]}
    job = roots["nightly_import"]["attributes"]
    assert job[A.DB_QUERY_COUNT] == 8 and job[A.N_PLUS_ONE_DETECTED] is True
    assert job[A.N_PLUS_ONE_CODE_LOCATION].endswith(f"job_app.py:{marker_line('job_app.py', 'job_loop')}")
    assert job[A.CPU_TIME_MS] > 0 and job[A.MEMORY_RSS_BYTES] > 0 and job["code.function.name"] == "nightly_import"
    assert roots["bulk_session"]["attributes"][A.DB_QUERY_COUNT] == 2
    assert roots["async_job"]["attributes"][A.DB_QUERY_COUNT] == 1


def test_explain_plan_on_the_slow_span_and_its_log_record(receiver: Any, pg_sync_url: str) -> None:
    from models import seed

    engine = create_engine(pg_sync_url)
    seed(engine)
    engine.dispose()
    env = base_env(
        receiver, APP_DB_URL=pg_sync_url, OTEL_LOGS_EXPORTER="otlp", OTEL_BLRP_SCHEDULE_DELAY="100",
        DBPERF_EXPLAIN="true", DBPERF_SLOW_QUERY_THRESHOLD_MS="0",
        DBPERF_EXPLAIN_TIMEOUT_MS="5000",  # not the 200 ms default: a loaded server may take longer to plan
    )  # fmt: skip
    with serve("gunicorn", APP, env, "-w", "1") as srv:
        assert get(srv["url"] + "/authors")[0] == 200  # every query is "slow" at 0 ms: rate limits apply
        try:
            spans = receiver.wait_for(lambda s: any(e["name"] == A.EVENT_EXPLAIN for x in s for e in x["events"]))
            logs = receiver.wait_for_logs(lambda r: any("dbperf.explain.plan" in x["attributes"] for x in r))
        except AssertionError as exc:  # say why there was no plan: the app's stderr has otel-dbperf's lines
            raise AssertionError(f"{exc}\n--- app output:\n{server_output(srv)[-4000:]}") from None
        output = server_output(srv)
    explained = [(s, e) for s in spans for e in s["events"] if e["name"] == A.EVENT_EXPLAIN]
    span, event = explained[0]
    assert span["attributes"][A.QUERY_SLOW] is True, output
    plan = json.loads(event["attributes"]["dbperf.explain.plan"])
    assert event["attributes"]["dbperf.explain.database"] == "postgresql" and plan[0]["Plan"]["Node Type"]
    record = next(r for r in logs if "dbperf.explain.plan" in r["attributes"])
    assert (record["trace_id"], record["span_id"]) in {(s["trace_id"], s["span_id"]) for s, _ in explained}
