"""sqlite3's ``conn.execute``/``executemany``/``executescript`` traced end to end: opentelemetry-instrument
(gunicorn, a flaskr-shaped app) and ``otel_dbperf.configure()``."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, BIN, base_env, get, marker_line, serve, server_output

from otel_dbperf import attributes as A
from otel_dbperf.metric_names import DB_CLIENT_OPERATION_DURATION

SQLITE3 = "opentelemetry.instrumentation.sqlite3"


def _at(spans: list[dict[str, Any]], app: str, marker: str) -> list[dict[str, Any]]:
    line = marker_line(app, marker)
    return [s for s in spans if s["attributes"].get(A.CODE_LINE_NUMBER) == line]


def _db(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for s in spans if "db.system.name" in s["attributes"]]


@pytest.mark.parametrize("how", ["instrument", "configure", "disabled"])
def test_script_shortcuts_traced(receiver: Any, tmp_path: Path, how: str) -> None:
    cmd = [str(BIN / "python"), "sqlite3_script.py", str(tmp_path / "s.db")]
    if how == "configure":
        cmd.append("--configure")
    else:
        cmd.insert(0, str(BIN / "opentelemetry-instrument"))
    env = base_env(receiver, OTEL_METRICS_EXPORTER="otlp", **({"DBPERF_ENABLED": "false"} if how == "disabled" else {}))
    proc = subprocess.run(cmd, cwd=APPS, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1])["owners"] == [f"owner{i}" for i in range(6)]
    spans = receiver.wait_for(lambda s: any(x["name"] == "GET /shortcuts" for x in s))
    assert "otel-dbperf" not in proc.stderr
    if how == "disabled":  # contrib alone: the shortcuts bypass its traced cursor
        assert _db(spans) == []
        return
    app = "sqlite3_script.py"
    (script,), (many,), loop = _at(spans, app, "script"), _at(spans, app, "many"), _at(spans, app, "loop")
    assert len(loop) == 6 and len(_db(spans)) == 8
    assert {s["scope"] for s in _db(spans)} == {SQLITE3}
    assert {s["attributes"][A.CODE_FILE_PATH] for s in _db(spans)} == {str(APPS / app)}
    assert (script["name"], many["name"]) == ("CREATE", "INSERT")
    assert {s["attributes"]["db.query.text"] for s in loop} == {"SELECT owner FROM items WHERE id = ?"}
    assert len({s["attributes"][A.QUERY_FINGERPRINT] for s in loop}) == 1
    (root,) = [s for s in spans if s["name"] == "GET /shortcuts"]
    assert root["attributes"][A.DB_QUERY_COUNT] == 8
    assert root["attributes"][A.N_PLUS_ONE_DETECTED] is True
    assert root["attributes"][A.N_PLUS_ONE_REPEAT_COUNT] == 6
    assert root["attributes"][A.N_PLUS_ONE_CODE_LOCATION] == f"{APPS / app}:{marker_line(app, 'loop')}"
    # the derived query-duration metric counts them, by operation (flushed at exit)
    points = receiver.wait_for_metrics(lambda p: _metric_count(p) >= 8)
    by_operation = {
        p["attributes"]["db.operation.name"]: p["count"]
        for p in _latest(points, DB_CLIENT_OPERATION_DURATION.name).values()
    }
    assert by_operation == {"CREATE": 1, "INSERT": 1, "SELECT": 6}


def _post(url: str, **form: Any) -> tuple[int, Any]:
    data = urllib.parse.urlencode(form).encode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null") if "json" in resp.headers["Content-Type"] else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _latest(points: list[dict[str, Any]], name: str) -> dict[tuple[str, str], dict[str, Any]]:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for p in points:
        if p["name"] == name:
            latest[(p["resource"]["service.instance.id"], repr(sorted(p["attributes"].items())))] = p
    return latest


def _metric_count(points: list[dict[str, Any]]) -> int:
    return sum(p["count"] for p in _latest(points, DB_CLIENT_OPERATION_DURATION.name).values())


def test_flaskr_shaped_app_under_gunicorn(receiver: Any, tmp_path: Path) -> None:
    app = "flaskr_app.py"
    app_file = str(APPS / app)
    env = base_env(receiver, FLASKR_DB=str(tmp_path / "flaskr.sqlite"))
    users = [f"user{i}" for i in range(6)]
    with serve("gunicorn", "flaskr_app:app", env, "-w", "2") as srv:
        url = srv["url"]
        assert _post(url + "/init-db")[0] == 200
        for name in users:
            assert _post(url + "/auth/register", username=name, password="pw-" + name)[0] == 200
        status, body = _post(url + "/auth/register", username="user0", password="again")
        assert (status, body) == (400, {"error": "User user0 is already registered."})
        for author in (1, 1, 3):
            assert _post(url + "/create", title=f"t{author}", body="b", author_id=author)[0] == 200
        status, raw = get(url + "/")
        posts = json.loads(raw)
        assert status == 200 and sorted(p["username"] for p in posts) == ["user0", "user0", "user2"]
        assert all(len(p["created"]) == 19 for p in posts)  # a datetime (detect_types), ISO formatted
        status, raw = get(url + "/authors")
        assert status == 200 and json.loads(raw) == [
            {"username": u, "posts": (2, 0, 1, 0, 0, 0)[i]} for i, u in enumerate(users)
        ]
        db_count = 1 + (2 * 6 + 1) + 3 + 1 + 7
        spans = receiver.wait_for(lambda s: len(_db(s)) >= db_count and any(x["name"] == "GET /authors" for x in s))
        output = server_output(srv)

    assert "internal error" not in output, output
    db = _db(spans)
    assert len(db) == db_count and {s["scope"] for s in db} == {SQLITE3}
    assert all(s["attributes"][A.CODE_FILE_PATH] == app_file for s in db)
    roots = defaultdict(list)
    for s in spans:
        if s["kind"] == "SERVER":
            roots[s["name"]].append(s)

    # executescript: the schema, under its request
    (schema,) = _at(spans, app, "schema")
    assert schema["name"] == "DROP" and "CREATE TABLE post" in schema["attributes"]["db.query.text"]
    (init,) = roots["POST /init-db"]
    assert schema["parent_span_id"] == init["span_id"] and init["attributes"][A.DB_QUERY_COUNT] == 1

    # register: the insert, and the duplicate's failed insert with its error
    inserts = _at(spans, app, "register")
    assert len(inserts) == 7
    assert {s["attributes"]["db.query.text"] for s in inserts} == {
        "INSERT INTO user (username, password) VALUES (?, ?)"
    }
    assert sorted(s["status"]["code"] for s in inserts) == [0] * 6 + [2]
    assert sorted(r["attributes"][A.DB_QUERY_COUNT] for r in roots["POST /auth/register"]) == [1] + [2] * 6

    # the join
    (index,) = _at(spans, app, "index")
    assert "JOIN user u ON p.author_id = u.id" in index["attributes"]["db.query.text"]
    assert index["attributes"][A.CODE_FUNCTION_NAME] == "index"

    # N+1 on a loop of db.execute
    (authors,) = roots["GET /authors"]
    a = authors["attributes"]
    assert a[A.DB_QUERY_COUNT] == 7 and a[A.N_PLUS_ONE_DETECTED] is True and a[A.N_PLUS_ONE_REPEAT_COUNT] == 6
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{app_file}:{marker_line(app, 'n1')}"
    assert a[A.N_PLUS_ONE_QUERY_SUMMARY] == "SELECT post"
    assert sum(bool(s["attributes"].get(A.N_PLUS_ONE)) for s in _at(spans, app, "n1")) == 6 - 5 + 1
