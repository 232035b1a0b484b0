"""Fix suggestions end to end: a lazy-loading relationship and exact duplicate queries, under
opentelemetry-instrument behind uvicorn, seen in the spans, the slow-query log records, the
profiler API and ``otel-dbperf report``; and the duplicate queries' parameters in none of them."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

from conftest import base_env, free_port, get, get_json, serve, server_output
from sqlalchemy import create_engine

from otel_dbperf import attributes as A
from otel_dbperf.report.cli import main

APP = "suggest_app:app"
NUMBER = 5_180_273_349 + 1


def test_lazy_load_n_plus_one_names_its_fix_and_duplicates_are_counted(receiver: Any, tmp_path: Path) -> None:
    from models import seed

    url = f"sqlite:///{tmp_path / 'app.db'}"
    engine = create_engine(url)
    seed(engine)
    engine.dispose()
    spans_file = tmp_path / "spans.jsonl"
    port = free_port()
    api = f"http://127.0.0.1:{port}/profiler"
    env = base_env(
        receiver,
        APP_DB_URL=url,
        OTEL_TRACES_EXPORTER="otlp,otlp_json_file",
        DBPERF_FILE_PATH=str(spans_file),
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_BLRP_SCHEDULE_DELAY="100",
        DBPERF_SLOW_QUERY_THRESHOLD_MS="0",  # every query is slow: each fingerprint reaches the log
        DBPERF_PROFILER_ADDR=f"127.0.0.1:{port}",
    )
    with serve("uvicorn", APP, env, "--interface", "wsgi") as srv:
        for path in ("/authors", "/books", "/dupes"):
            assert get(srv["url"] + path)[0] == 200, path
        routes = {"/authors", "/books", "/dupes"}  # not a count: the readiness /ping may be several
        spans = receiver.wait_for(
            lambda s: routes <= {x["attributes"].get("http.route") for x in s if x["kind"] == "SERVER"}
        )
        logs = receiver.wait_for_logs(lambda r: sum(x.get(A.N_PLUS_ONE_SUGGESTION) is not None
                                                    for x in (y["attributes"] for y in r)) >= 2)  # fmt: skip
        deadline = time.monotonic() + 30  # a hang guard: the history is fed every 0.5 s
        while (stats := get_json(f"{api}/stats")["data"])["total_queries"] < 24 and time.monotonic() < deadline:
            time.sleep(0.1)
        kept = get_json(f"{api}/report?last_n_queries=100&top=100")["data"]["top_slow_queries"]
        details = [json.dumps(get_json(f"{api}/query-details/{q['id']}")) for q in kept]
        output = server_output(srv)
    assert "internal error" not in output, output

    # the request spans: relationship and loader option, duplicates
    roots = {s["attributes"]["http.route"]: s["attributes"] for s in spans if s["kind"] == "SERVER"}
    assert roots["/authors"][A.N_PLUS_ONE_RELATIONSHIP] == "Author.books"
    assert roots["/authors"][A.N_PLUS_ONE_SUGGESTION] == "selectinload(Author.books)"
    assert roots["/books"][A.N_PLUS_ONE_RELATIONSHIP] == "Book.author"
    assert roots["/books"][A.N_PLUS_ONE_SUGGESTION] == "joinedload(Book.author)"
    assert roots["/dupes"][A.DB_QUERY_COUNT] == 6 and roots["/dupes"][A.DB_DUPLICATE_COUNT] == 2
    assert roots["/dupes"][A.DB_DUPLICATE_DURATION_MS] > 0
    assert roots["/authors"][A.DB_DUPLICATE_COUNT] == 0  # 8 lazy loads, each with its own parameters
    duplicated = [s for s in spans if s["attributes"].get(A.QUERY_DUPLICATE)]
    assert len(duplicated) == 2 and all(s["scope"].endswith("sqlalchemy") for s in duplicated)

    # the slow-query log records of the lazy loads
    fixes = {(r["attributes"][A.N_PLUS_ONE_RELATIONSHIP], r["attributes"][A.N_PLUS_ONE_SUGGESTION]) for r in logs
             if A.N_PLUS_ONE_SUGGESTION in r["attributes"]}  # fmt: skip
    assert fixes == {("Author.books", "selectinload(Author.books)"), ("Book.author", "joinedload(Book.author)")}

    # the profiler: every lazy load names its relationship
    assert stats["total_queries"] == 9 + 9 + 6, stats
    lazy = {(q["relationship"], q["suggestion"]) for q in kept if q["relationship"]}
    assert lazy == {("Author.books", "selectinload(Author.books)"), ("Book.author", "joinedload(Book.author)")}

    # the report, from the spans file
    out = io.StringIO()
    assert main(["report", str(spans_file), "--json"], out=out) == 0
    data = json.loads(out.getvalue())
    found = {f["route"]: (f["relationship"], f["suggestion"]) for f in data["n_plus_one"]}
    assert found == {
        "/authors": ("Author.books", "selectinload(Author.books)"),
        "/books": ("Book.author", "joinedload(Book.author)"),
        "/dupes": ("", ""),  # six runs of one statement is an N+1 too, but no lazy load: no loader option
    }
    (dup,) = data["duplicates"]
    assert dup["duplicates"] == 2 and dup["count"] == 6 and dup["routes"] == ["/dupes"] and dup["saved_ms"] > 0
    text, html = io.StringIO(), tmp_path / "report.html"
    assert main(["report", str(spans_file), "--html", str(html)], out=text) == 0
    assert "load it with selectinload(Author.books)" in text.getvalue()
    assert "joinedload(Book.author)" in html.read_text()

    # the parameters of the duplicates: in no output
    outputs = {
        "OTLP bodies": b"".join(receiver.raw).decode("utf-8", "replace"),
        "spans file": spans_file.read_text(),
        "report": out.getvalue() + text.getvalue() + html.read_text(),
        "profiler": json.dumps(kept) + "".join(details),
        "server output": output,
    }
    for name, value in outputs.items():
        assert "CANARY_e2e_dup" not in value and "91c2d7_YRANAC" not in value, name
        assert str(NUMBER) not in value and str(NUMBER + 1) not in value, name
