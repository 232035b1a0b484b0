"""The Django project of tests/apps/djsite: where its files and lines are, its seeding, and the checks
of its template N+1 and point query that the Django tests and the stock-install test share."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from conftest import APPS, statement

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


def root_of(spans: list[dict[str, Any]], route: str) -> dict[str, Any]:
    roots = [s for s in spans if s["kind"] == "SERVER" and s["attributes"].get("http.route") == route]
    assert len(roots) == 1, "\n".join(
        repr((s["name"], sorted(s["attributes"].items()))) for s in spans if s["kind"] == "SERVER"
    )
    return roots[0]


def template_n_plus_one(spans: list[dict[str, Any]], route: str, template: Path, loop: str, render: str) -> Any:
    """The root span of ``route``, checked: 1 + QUESTIONS queries, the N+1 at the template's line
    with ``loop``, its Python location the view's line marked ``render``."""
    root = root_of(spans, route)
    a = root["attributes"]
    assert a[A.DB_QUERY_COUNT] == 1 + QUESTIONS, a
    assert a[A.N_PLUS_ONE_DETECTED] is True
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{template}:{line_with(template, loop)}", a
    assert a[A.N_PLUS_ONE_PYTHON_LOCATION] == f"{VIEWS}:{line_with(VIEWS, f'marker: {render}')}", a
    return root


def point_query(spans: list[dict[str, Any]]) -> Any:
    """The one query of ``question/<int:question_id>`` (besides connection setup), checked: at the
    view's own line, with no template."""
    root = root_of(spans, "question/<int:question_id>")
    a = root["attributes"]
    assert a[A.DB_QUERY_COUNT] == 1 and a[A.N_PLUS_ONE_DETECTED] is False
    points = [s for s in spans if s["trace_id"] == root["trace_id"] and statement(s)]
    counted_points = [s for s in points if not s["attributes"].get(A.QUERY_SETUP)]
    assert len(counted_points) == 1, [(statement(s), s["attributes"]) for s in points]
    point = counted_points[0]
    assert (point["attributes"][A.CODE_FILE_PATH], point["attributes"][A.CODE_LINE_NUMBER]) == (
        str(VIEWS),
        line_with(VIEWS, "marker: point"),
    )
    assert A.CODE_PYTHON_LOCATION not in point["attributes"]
    return point
