"""Django, supported: a real project (tests/apps/djsite) under opentelemetry-instrument, behind
``runserver --noreload`` and gunicorn, on SQLite and PostgreSQL (psycopg 3). A template that loops
over a related manager is the N+1 location (Django templates and Jinja2), Django's connection setup
is not counted as the view's queries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, PG_DB, base_env, get, serve, server_output, statement
from support.django_site import (
    DJANGO_TEMPLATE,
    JINJA_TEMPLATE,
    QUESTIONS,
    SITE,
    point_query,
    seed_site,
    template_n_plus_one,
)

from otel_dbperf import attributes as A


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'django.sqlite3'}"
    else:
        user = request.getfixturevalue("pg_user")
        url = f"postgresql://{user}@127.0.0.1:5432/{PG_DB}"
    seed_site(url)
    return url


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
    lazy = [s for s in trace if "beyondsql_dj_choice" in statement(s)]
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
        assert any("set_config" in statement(s) for s in setup), [statement(s) for s in db]
    for s in setup:
        assert A.QUERY_SLOW not in s["attributes"] and not s["events"]
        assert A.N_PLUS_ONE not in s["attributes"]
    servers = [s for s in spans if s["kind"] == "SERVER"]
    counted = sum(s["attributes"][A.DB_QUERY_COUNT] for s in servers)
    requests = {s["trace_id"] for s in servers}  # (runserver checks migrations at startup, outside any request)
    statements = [
        s for s in db if s["trace_id"] in requests and statement(s) and not s["attributes"].get(A.QUERY_SETUP)
    ]
    assert counted == len(statements), [statement(s) for s in statements]

    # the Jinja2 backend: the template line too
    template_n_plus_one(spans, "questions-jinja", JINJA_TEMPLATE, "choice_set.all()", "render_jinja")

    # a plain view: the view's own line, no template
    point_query(spans)
