"""Django, supported: a real project (tests/apps/djsite) under opentelemetry-instrument, behind
``runserver --noreload`` and gunicorn, on SQLite and PostgreSQL (psycopg 3). A template that loops
over a related manager is the N+1 location (Django templates and Jinja2), Django's connection setup
is not counted as the view's queries."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, BIN, base_env, get, serve, server_output

from otel_dbperf import attributes as A

SITE = APPS / "djsite"
VIEWS = SITE / "polls" / "views.py"
DJANGO_TEMPLATE = SITE / "polls" / "templates" / "polls" / "choices.html"
JINJA_TEMPLATE = SITE / "polls" / "jinja2" / "polls" / "choices.jinja"
QUESTIONS = 8


def line_with(path: Path, text: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if text in line:
            return i
    raise LookupError(text)


def seed_site(url: str, python: Path = Path(sys.executable)) -> None:
    """``manage.py seed`` of the project on ``url``, run by ``python``."""
    env = {**os.environ, "APP_DB_URL": url, "DJANGO_SETTINGS_MODULE": "djsite.settings"}
    subprocess.run([str(python), "manage.py", "seed"], cwd=SITE, env=env, check=True, timeout=60)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'django.sqlite3'}"
    else:
        user = request.getfixturevalue("pg_user")
        url = f"postgresql://{user}@127.0.0.1:5432/test"
    seed_site(url)
    return url


def _statement(span: dict[str, Any]) -> str:
    return str(span["attributes"].get("db.query.text") or span["attributes"].get("db.statement") or "")


def _root(spans: list[dict[str, Any]], route: str) -> dict[str, Any]:
    roots = [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("http.route") == route]
    assert len(roots) == 1, "\n".join(
        repr((s["name"], sorted(s["attributes"].items()))) for s in spans if s["kind"] == "SERVER"
    )
    return roots[0]


def template_n_plus_one(spans: list[dict[str, Any]], route: str, template: Path, loop: str, render: str) -> Any:
    """The root span of ``route``, checked: 1 + QUESTIONS queries, the N+1 at the template's line
    with ``loop``, its Python location the view's line marked ``render``."""
    root = _root(spans, route)
    a = root["attributes"]
    assert a[A.DB_QUERY_COUNT] == 1 + QUESTIONS, a
    assert a[A.N_PLUS_ONE_DETECTED] is True
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{template}:{line_with(template, loop)}", a
    assert a[A.N_PLUS_ONE_PYTHON_LOCATION] == f"{VIEWS}:{line_with(VIEWS, f'marker: {render}')}", a
    return root


def point_query(spans: list[dict[str, Any]]) -> Any:
    """The one query of ``question/<int:question_id>`` (besides connection setup), checked: at the
    view's own line, with no template."""
    root = _root(spans, "question/<int:question_id>")
    a = root["attributes"]
    assert a[A.DB_QUERY_COUNT] == 1 and a[A.N_PLUS_ONE_DETECTED] is False
    points = [s for s in spans if s["trace_id"] == root["trace_id"] and _statement(s)]
    counted_points = [s for s in points if not s["attributes"].get(A.QUERY_SETUP)]
    assert len(counted_points) == 1, [(_statement(s), s["attributes"]) for s in points]
    point = counted_points[0]
    assert (point["attributes"][A.CODE_FILE_PATH], point["attributes"][A.CODE_LINE_NUMBER]) == (
        str(VIEWS),
        line_with(VIEWS, "marker: point"),
    )
    assert A.CODE_PYTHON_LOCATION not in point["attributes"]
    return point


@pytest.mark.parametrize("server", ["runserver", "gunicorn"])
def test_django_template_n_plus_one_and_connection_setup(receiver: Any, db_url: str, server: str) -> None:
    env = base_env(receiver, APP_DB_URL=db_url, DJANGO_SETTINGS_MODULE="djsite.settings", PYTHONPATH=str(SITE))
    if server == "runserver":
        launch = serve("runserver", "manage.py", env, cwd=SITE)
    else:
        launch = serve("gunicorn", "djsite.wsgi:application", env, "-w", "1", cwd=SITE, bin_dir=BIN)
    with launch as srv:
        for path in ("/questions", "/questions-jinja", "/question/3"):
            status, body = get(srv["url"] + path)
            assert status == 200, (path, body[:2000])
        routes = {"questions", "questions-jinja", "question/<int:question_id>"}  # not a count: /ping may be several
        spans = receiver.wait_for(
            lambda s: routes <= {x["attributes"].get("http.route") for x in s if x["kind"] == "SERVER"}
        )
        output = server_output(srv)
    assert "internal error" not in output, output

    # the Django template: one query for the questions, one per question's choice_set
    root = template_n_plus_one(spans, "questions", DJANGO_TEMPLATE, "question.choice_set.all", "render")
    a = root["attributes"]
    where, view = a[A.N_PLUS_ONE_CODE_LOCATION], a[A.N_PLUS_ONE_PYTHON_LOCATION]
    assert a[A.N_PLUS_ONE_REPEAT_COUNT] == QUESTIONS
    assert a[A.N_PLUS_ONE_QUERY_SUMMARY] == "SELECT beyondsql_dj_choice"
    trace = [s for s in spans if s["trace_id"] == root["trace_id"]]
    lazy = [s for s in trace if "beyondsql_dj_choice" in _statement(s)]
    assert len(lazy) == QUESTIONS
    for s in lazy:
        sa = s["attributes"]
        assert f"{sa[A.CODE_FILE_PATH]}:{sa[A.CODE_LINE_NUMBER]}" == where
        assert sa[A.CODE_PYTHON_LOCATION] == view
        assert sa[A.CODE_FUNCTION_NAME] == "questions"

    # the first request opened the connection: Django's setup statements are marked, not counted
    db = [s for s in spans if "db.system" in s["attributes"] or "db.system.name" in s["attributes"]]
    setup = [s for s in db if s["attributes"].get(A.QUERY_SETUP)]
    if "postgresql" in db_url:
        assert any("set_config" in _statement(s) for s in setup), [_statement(s) for s in db]
    for s in setup:
        assert A.QUERY_SLOW not in s["attributes"] and not s["events"]
        assert A.N_PLUS_ONE not in s["attributes"]
    servers = [s for s in spans if s["kind"] == "SERVER"]
    counted = sum(s["attributes"][A.DB_QUERY_COUNT] for s in servers)
    requests = {s["trace_id"] for s in servers}  # (runserver checks migrations at startup, outside any request)
    statements = [
        s for s in db if s["trace_id"] in requests and _statement(s) and not s["attributes"].get(A.QUERY_SETUP)
    ]
    assert counted == len(statements), [_statement(s) for s in statements]

    # the Jinja2 backend: the template line too
    template_n_plus_one(spans, "questions-jinja", JINJA_TEMPLATE, "choice_set.all()", "render_jinja")

    # a plain view: the view's own line, no template
    point_query(spans)
