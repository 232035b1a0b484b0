"""RED metrics end to end: real servers under opentelemetry-instrument, a real Prometheus, OTLP push."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import base_env, free_port, get, listening, seeded, serve, server_output
from dashboard import RULES, alerts, comparison_sides, concrete, recorded, targets
from prometheus_server import prometheus

from otel_dbperf import attributes as A
from otel_dbperf import metric_names as M

APP = "flask_app:app"
COLLECTOR = Path(__file__).parent.parent / "collector"
JOB = "dbperf-test"
# traffic: route -> (requests, status). /authors is an ORM N+1 (1 + 8 queries), /slow one 0.3 s query,
# /fail one failing query (500), /ping no query.
TRAFFIC = {"/authors": (24, 200), "/slow": (14, 200), "/fail": (5, 500), "/ping": (10, 200)}
QUERIES = {"/authors": 9, "/slow": 1, "/fail": 1, "/ping": 0}


def _drive(base: str, concurrency: int = 4, counts: dict[str, int] | None = None) -> None:
    counts = counts or {route: n for route, (n, _) in TRAFFIC.items()}
    paths = [route for route, n in counts.items() for _ in range(n)]
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda p: (p, get(base + p)[0]), paths))
    for path, status in results:
        assert status == TRAFFIC[path][1], (path, status)


def _pull_env(receiver: Any, tmp_path: Path, **extra: str) -> tuple[dict[str, str], int]:
    """The app's environment with the Prometheus pull exporter on a free port, and that port."""
    port = free_port()
    env = base_env(
        receiver,
        APP_DB_URL=seeded(f"sqlite:///{tmp_path / 'app.db'}"),
        OTEL_METRICS_EXPORTER="prometheus",
        OTEL_EXPORTER_PROMETHEUS_HOST="127.0.0.1",
        OTEL_EXPORTER_PROMETHEUS_PORT=str(port),
        **extra,
    )
    return env, port


def test_prometheus_scrapes_red_metrics_and_every_dashboard_and_alert_expression(receiver: Any, tmp_path: Path) -> None:
    # slow at 250 ms (a bucket boundary): the 0.3 s sleeps always, an ordinary query only on a very loaded machine
    env, metrics_port = _pull_env(
        receiver, tmp_path, OTEL_SERVICE_NAME=JOB, OTEL_LOGS_EXPORTER="otlp", OTEL_BLRP_SCHEDULE_DELAY="100",
        DBPERF_SLOW_QUERY_THRESHOLD_MS="250",
    )  # fmt: skip
    # a real single-process server: Flask through uvicorn's WSGI interface; Prometheus evaluates
    # collector/'s recording and alert rules every second
    with (
        serve("uvicorn", APP, env, "--interface", "wsgi") as srv,
        prometheus([f"127.0.0.1:{metrics_port}"], JOB, tmp_path, rule_files=(RULES,)) as prom,
    ):
        # one request per route first, so that every series exists in Prometheus before the rest
        # of the traffic: rate() only sees increases between samples it scraped
        _drive(srv["url"], counts=dict.fromkeys(TRAFFIC, 1))
        prom.wait_until("count(http_server_request_duration_seconds_count)", len(TRAFFIC))
        _drive(srv["url"], counts={route: n - 1 for route, (n, _) in TRAFFIC.items()})
        # + serve()'s readiness /ping: one, or more when a loaded machine made a probe time out and retry
        ping = 'sum(http_server_request_duration_seconds_count{http_route="/ping"})'
        prom.wait_until(f"{ping} >= bool {TRAFFIC['/ping'][0] + 1}", 1)
        others = sum(n for route, (n, _) in TRAFFIC.items() if route != "/ping")
        prom.wait_until('sum(http_server_request_duration_seconds_count{http_route!="/ping"})', others)
        readiness = prom.value(ping) - TRAFFIC["/ping"][0]
        total_requests = sum(n for n, _ in TRAFFIC.values()) + readiness
        prom.wait_until("sum(http_server_request_duration_seconds_count)", total_requests)
        total_queries = sum(TRAFFIC[r][0] * QUERIES[r] for r in TRAFFIC)
        prom.wait_until("sum(db_client_operation_duration_seconds_count)", total_queries)
        # rate() needs two samples of a series in its window: wait until the newest has three
        prom.wait_until("min(count_over_time(http_server_request_duration_seconds_count[1m])) >= bool 3", 1)
        output = server_output(srv)

        # request rate, error ratio and p99 by route
        counts = prom.by("sum by (http_route) (http_server_request_duration_seconds_count)", "http_route")
        expected = {route: float(n) for route, (n, _) in TRAFFIC.items()}
        expected["/ping"] += readiness
        assert counts == expected, output
        rates = prom.by("sum by (http_route) (rate(http_server_request_duration_seconds_count[1m]))", "http_route")
        assert set(rates) == set(TRAFFIC) and all(r > 0 for r in rates.values())
        errors = prom.value(
            'sum(http_server_request_duration_seconds_count{http_response_status_code=~"5.."})'
            " / sum(http_server_request_duration_seconds_count)"
        )
        assert errors == pytest.approx(TRAFFIC["/fail"][0] / total_requests)
        p99 = prom.by(
            "histogram_quantile(0.99, sum by (le, http_route) (rate(http_server_request_duration_seconds_bucket[1m])))",
            "http_route",
        )
        # 0.3 s requests: in the (0.25, 0.5] bucket on a quiet machine; in seconds (not ms) on any
        assert 0.25 <= p99["/slow"] < 5
        assert p99["/ping"] < p99["/slow"]

        # DB p99 by operation and table; the slow threshold (250 ms) is a bucket boundary
        db_p99 = prom.query(
            "histogram_quantile(0.99, sum by (le, db_operation_name, db_collection_name) "
            "(rate(db_client_operation_duration_seconds_bucket[1m])))"
        )
        by_table = {(s["metric"].get("db_operation_name"), s["metric"].get("db_collection_name")) for s in db_p99}
        assert {("SELECT", "dbperf_authors"), ("SELECT", "dbperf_books"), ("SELECT", "no_such_table")} <= by_table
        slow_p99 = [float(s["value"][1]) for s in db_p99 if "db_collection_name" not in s["metric"]]
        assert slow_p99 and 0.25 <= slow_p99[0] < 5
        # the slow ones are those above the threshold's bucket: the 14 sleeps (they read no table), and
        # any other query a loaded machine made slow
        slow_queries = prom.value("sum(dbperf_db_slow_queries_total)")
        assert slow_queries == total_queries - prom.value('sum(db_client_operation_duration_seconds_bucket{le="0.25"})')
        assert prom.value('sum(dbperf_db_slow_queries_total{db_collection_name=""})') == TRAFFIC["/slow"][0]
        # slow-query ratio
        assert prom.value(
            "sum(dbperf_db_slow_queries_total) / sum(db_client_operation_duration_seconds_count)"
        ) == pytest.approx(slow_queries / total_queries)
        # N+1 by route: every /authors request loads 8 authors' books one query each
        assert prom.by("sum by (http_route) (dbperf_db_n_plus_one_total)", "http_route") == {"/authors": 24.0}
        failed = prom.by("sum by (error_type) (db_client_operation_duration_seconds_count)", "error_type")
        assert failed.get("sqlite3.OperationalError") == 5
        queries = prom.by("sum by (http_route) (dbperf_request_db_queries_sum)", "http_route")
        assert queries == {route: float(TRAFFIC[route][0] * QUERIES[route]) for route in TRAFFIC}
        assert prom.value("sum(process_memory_usage_bytes)") > 10_000_000
        assert prom.value("sum(process_cpu_time_seconds_total)") > 0
        # the connection pool (issue 13): one checkout per request that queries, each back in the pool
        checkouts = sum(n for route, (n, _) in TRAFFIC.items() if QUERIES[route])
        prom.wait_until("sum(db_client_connection_use_time_seconds_count)", checkouts)
        assert prom.value("sum(db_client_connection_wait_time_seconds_count)") == checkouts
        assert prom.value('sum(db_client_connection_count{db_client_connection_state="used"})') == 0
        assert prom.value('sum(db_client_connection_count{db_client_connection_state="idle"})') >= 1
        assert prom.value("sum(db_client_connection_max)") == 15  # SQLAlchemy's default 5 + 10 overflow
        assert prom.value("sum(dbperf_db_errors_total)") == 0  # a missing table is none of the kinds
        assert not prom.query("db_client_connections_usage")  # contrib's deprecated gauge: dropped by a view
        # no unbounded label anywhere
        labels = {k for s in prom.query(f'{{job="{JOB}"}}') for k in s["metric"]}
        assert not labels & {"db_query_text", "db_statement", "dbperf_query_fingerprint", "trace_id"}

        # every dashboard and alert expression returns data from this app, and the alerts this
        # traffic breaches are pending (or firing) in Prometheus's own rule evaluation
        _alerts_under_this_traffic(prom)
        _every_dashboard_expression_returns_data(prom)
        _every_alert_expression_returns_data(prom)
        # the slow-query log records carry what the dashboard's Loki query groups by
        logs = receiver.wait_for_logs(lambda r: any(x["event_name"] == A.EVENT_SLOW_QUERY for x in r))
    _slow_query_records_have_the_loki_labels_the_dashboard_uses(logs)


def _every_dashboard_expression_returns_data(prom: Any) -> None:
    empty = []
    for panel, target in targets("prometheus"):
        expr = concrete(target["expr"], job=JOB)
        if not prom.query(expr):
            empty.append((panel["title"], expr))
    assert not empty, f"dashboard expressions with no data: {empty}"


# what this traffic breaches: 14 of 235 queries slow (6%: the warning, not the critical), every
# /authors request an N+1 (24 in 10 minutes), every /fail request a 500
ALERTS_UNDER_THIS_TRAFFIC = {"SlowQueryRateWarning", "NPlusOneSpike", "ErrorRateWarning", "ErrorRateCritical"}


def _alerts_under_this_traffic(prom: Any) -> None:
    deadline = time.monotonic() + 60  # a hang guard: rules are evaluated every second
    while True:
        active = {s["metric"]["alertname"] for s in prom.query("ALERTS")}
        if active >= ALERTS_UNDER_THIS_TRAFFIC or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert active >= ALERTS_UNDER_THIS_TRAFFIC, active
    assert "SlowQueryRateCritical" not in active and "QueryLatencyP99Critical" not in active, active
    errors = {s["metric"].get("http_route") for s in prom.query('ALERTS{alertname="ErrorRateCritical"}')}
    assert errors == {"/fail"}


def _every_alert_expression_returns_data(prom: Any) -> None:
    empty = [name for name in sorted(recorded()) if not prom.query(name)]
    for name, rule in alerts().items():
        for side in comparison_sides(rule["expr"].strip()):
            if not re.fullmatch(r"[0-9.]+", side) and not prom.query(side.removeprefix("2 *")):
                empty.append(f"{name}: {side}")
    assert not empty, f"recording rules and alert quantities with no data: {empty}"


def _slow_query_records_have_the_loki_labels_the_dashboard_uses(logs: list[dict[str, Any]]) -> None:
    ((_, target),) = targets("loki")
    expr = target["expr"]
    used = set(re.findall(r"sum by \(([^)]*)\)", expr)[0].replace(" ", "").split(","))
    used |= set(re.findall(r"\{\{\.(\w+)\}\}", expr)) | set(re.findall(r"unwrap (\w+)", expr))
    used |= set(re.findall(r"\| (\w+) != \"\"", expr))
    used -= {"location"}  # made by the query's label_format from code_file_path and code_line_number
    records = [r for r in logs if r["event_name"] == A.EVENT_SLOW_QUERY]
    for record in records:
        # Loki's OTLP mapping: service.name is the service_name label, attributes are structured
        # metadata with every character but [a-zA-Z0-9_] turned into "_"
        labels = {re.sub(r"\W", "_", k): v for k, v in record["attributes"].items()}
        labels["service_name"] = record["resource"]["service.name"]
        assert used <= set(labels), used - set(labels)
        assert labels["service_name"] == JOB  # what the job variable selects
        assert labels["db_query_text"] and labels["code_line_number"] > 0
        assert isinstance(labels["dbperf_slow_query_suppressed"], int)  # unwrap needs a number
    # the sleeps, sanitized (another query's only if a loaded machine made it slow)
    assert "SELECT dbperf_sleep(?)" in {r["attributes"]["db.query.text"] for r in records}


def _latest(points: list[dict[str, Any]], name: str) -> dict[tuple[str, str], dict[str, Any]]:
    """The last cumulative point of each (worker, attributes) series of metric ``name``."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for p in points:
        if p["name"] == name:
            latest[(p["resource"]["service.instance.id"], repr(sorted(p["attributes"].items())))] = p
    return latest


def test_otlp_metrics_from_two_gunicorn_workers(receiver: Any, pg_sync_url: str) -> None:
    seeded(pg_sync_url)
    env = base_env(receiver, APP_DB_URL=pg_sync_url, OTEL_METRICS_EXPORTER="otlp", OTEL_METRIC_EXPORT_INTERVAL="500")
    with serve("gunicorn", APP, env, "-w", "2", "--preload") as srv:
        _drive(srv["url"], concurrency=6)
        total_queries = sum(TRAFFIC[r][0] * QUERIES[r] for r in TRAFFIC)

        def complete(points: list[dict[str, Any]]) -> bool:
            db = _latest(points, M.DB_CLIENT_OPERATION_DURATION.name)
            routes: dict[str, int] = defaultdict(int)
            for p in _latest(points, M.HTTP_SERVER_REQUEST_DURATION.name).values():
                routes[p["attributes"].get("http.route", "")] += p["count"]
            return sum(p["count"] for p in db.values()) >= total_queries and all(
                routes[route] >= n for route, (n, _) in TRAFFIC.items()
            )

        points = receiver.wait_for_metrics(complete, timeout=30)
        exemplars = [e for p in points if p["name"] == M.DB_CLIENT_OPERATION_DURATION.name for e in p["exemplars"]]
        exemplar_spans = {(e["trace_id"], e["span_id"]) for e in exemplars}
        # every exemplar names a span that was exported (spans may arrive after the metrics)
        spans = receiver.wait_for(lambda s: exemplar_spans <= {(x["trace_id"], x["span_id"]) for x in s})
        output = server_output(srv)
    # counts add up across workers, each worker its own series
    db = _latest(points, M.DB_CLIENT_OPERATION_DURATION.name)
    assert sum(p["count"] for p in db.values()) == total_queries, output
    http = _latest(points, M.HTTP_SERVER_REQUEST_DURATION.name)
    workers = {instance for instance, _ in http}
    assert len(workers) == 2, "both workers served and are told apart by service.instance.id"
    per_route: dict[str, int] = defaultdict(int)
    for p in http.values():
        per_route[p["attributes"]["http.route"]] += p["count"]
    assert per_route["/authors"] == 24 and per_route["/fail"] == 5 and per_route["/slow"] == TRAFFIC["/slow"][0]
    scopes = {p["scope"] for p in points if p["name"] == M.HTTP_SERVER_REQUEST_DURATION.name}
    assert scopes == {"opentelemetry.instrumentation.flask"}  # the framework's, not derived a second time
    # cumulative series never go back (no jumping between workers' values)
    series: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for p in points:
        key = (p["name"], p["resource"]["service.instance.id"], repr(sorted(p["attributes"].items())))
        series[key].append(p.get("count", p.get("value", 0)))
    counters = {m.name for m in M.ALL if m.kind == "counter"}
    checked = 0
    for key, values in series.items():
        if key[0] in counters or any(p["kind"] == "histogram" for p in points if p["name"] == key[0]):
            assert values == sorted(values), key
            checked += 1
    assert checked >= 10
    # exemplars point at exported DB spans (ORM level: the driver spans inside are not counted)
    by_id = {(s["trace_id"], s["span_id"]): s for s in spans}
    assert exemplar_spans and all(
        by_id[e]["scope"] == "opentelemetry.instrumentation.sqlalchemy" for e in exemplar_spans
    )
    n1 = _latest(points, M.DB_N_PLUS_ONE.name)
    assert sum(p["value"] for p in n1.values()) == 24
    assert {p["attributes"]["db.collection.name"] for p in n1.values()} == {"dbperf_books"}
    # process metrics: one series per worker (and the master), CPU by mode
    cpu = _latest(points, M.PROCESS_CPU_TIME.name)
    assert workers <= {instance for instance, _ in cpu}
    assert {p["attributes"].get("type") for p in cpu.values()} == {"user", "system"}


def test_prometheus_pull_is_refused_under_gunicorn(receiver: Any, tmp_path: Path) -> None:
    env, metrics_port = _pull_env(receiver, tmp_path)
    with serve("gunicorn", APP, env, "-w", "2") as srv:
        assert get(srv["url"] + "/authors")[0] == 200  # the app is unaffected
        receiver.wait_for(lambda s: any(x["kind"] == "SERVER" for x in s))  # and traces still flow
        # nothing serves wrong numbers: no process of this server listens on the port (another
        # process of the machine may have taken that free port since)
        assert metrics_port not in listening(srv["proc"].pid), "nothing serves wrong numbers"
        output = server_output(srv)
    refusals = [line for line in output.splitlines() if "OTEL_METRICS_EXPORTER=prometheus is refused" in line]
    assert len(refusals) == 1, output
    assert "under gunicorn" in refusals[0] and "OTEL_METRICS_EXPORTER=otlp" in refusals[0]
