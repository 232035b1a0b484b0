"""otel-dbperf installed the way users install it, into an app it has never seen.

Each test runs in a venv built by a real ``pip install "<repo>[EXTRA]"`` plus only the
app's own dependencies: nothing from the test extra (no greenlet, no pytest, no other
instrumentation). The venv is cached under ``.cache/stock-venvs/`` (git-ignored), keyed by
``pyproject.toml``, the extra, the app's dependencies and the Python version, so it is
built once; when otel-dbperf's own files change, the package alone is uninstalled and
``pip install "<repo>[EXTRA]"`` resolves again (every dependency already satisfied).

The Django and Celery tests run the apps of the e2e tests (``tests/apps/djsite``,
``tests/apps/celery_tasks.py``: neither imports the test suite) on SQLite, once plainly and once
under ``opentelemetry-instrument``: the app's console output must not change.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import APPS, base_env, get, marker_line, serve, statement
from support.celery_worker import APP_FILE, purge, worker
from support.celery_worker import client as celery_client
from support.django_site import (
    DJANGO_TEMPLATE,
    JINJA_TEMPLATE,
    SITE,
    point_query,
    seed_site,
    template_n_plus_one,
)
from support.stock_venv import FLASK_DEPS, stock_venv

from otel_dbperf import attributes as A

REPO = Path(__file__).resolve().parent.parent

FASTAPI_DEPS = ("fastapi", "uvicorn", "sqlalchemy", "psycopg[binary]")
DJANGO_DEPS = ("django", "gunicorn", "jinja2")  # tests/apps/djsite on SQLite (its settings name a Jinja2 backend)
CELERY_DEPS = ("celery[redis]", "sqlalchemy")  # tests/apps/celery_tasks.py: Redis broker, SQLAlchemy on SQLite


@pytest.fixture(scope="module")
def flask_venv() -> Path:
    return stock_venv("flask", "flask", FLASK_DEPS)


@pytest.fixture(scope="module")
def fastapi_venv() -> Path:
    return stock_venv("fastapi", "fastapi", FASTAPI_DEPS)


@pytest.fixture(scope="module")
def django_venv() -> Path:
    return stock_venv("django", "django", DJANGO_DEPS)


@pytest.fixture(scope="module")
def celery_venv() -> Path:
    return stock_venv("celery", "celery", CELERY_DEPS)


@pytest.fixture
def items_table(pg_dsn: str) -> Iterator[None]:
    import psycopg

    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS dbperf_stock_items")
        conn.execute("CREATE TABLE dbperf_stock_items (id integer PRIMARY KEY, name varchar(100))")
        conn.execute("INSERT INTO dbperf_stock_items SELECT i, 'item ' || i FROM generate_series(1, 20) i")
    yield


def _venv_env(receiver: Any, **extra: str) -> dict[str, str]:
    """``base_env`` without PYTHONPATH: the stock venv's Python sees only what is installed in it."""
    env = base_env(receiver, **extra)
    env.pop("PYTHONPATH", None)
    return env


def _stock_env(receiver: Any, pg_sync_url: str) -> dict[str, str]:
    # EXPLAIN timeout 5 s, not the 200 ms default: a loaded server may take longer to plan
    return _venv_env(receiver, APP_DB_URL=pg_sync_url, DBPERF_EXPLAIN="true", DBPERF_EXPLAIN_TIMEOUT_MS="5000")


def _runs(venv: Path, code: str) -> bool:
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, timeout=60)
    return proc.returncode == 0


def _imports(venv: Path, module: str) -> bool:
    return _runs(venv, f"import {module}")


def console_lines(output: str) -> list[str]:
    """A console output's lines, sorted (processes interleave theirs), with numbers and addresses
    masked: times, pids and ports differ from run to run, and so does the UTC offset of gunicorn's
    master under contrib's Django instrumentation, which loads the settings (Django then sets TZ
    from TIME_ZONE) in the master, where without it only the workers load them."""
    return sorted(re.sub(r"0x[0-9a-f]+|[+-]?\d+", "#", line).rstrip() for line in output.splitlines())


def assert_console_unchanged(plain: str, instrumented: str) -> None:
    """No internal error, and the app prints under opentelemetry-instrument with otel-dbperf what it
    prints when run plainly (``plain``), line for line."""
    assert "internal error" not in instrumented and "Traceback" not in instrumented, instrumented
    assert console_lines(instrumented) == console_lines(plain), f"without:\n{plain}\nwith:\n{instrumented}"


def stop_main(info: dict[str, Any]) -> None:
    """SIGTERM to the main process alone (as ``kill PID`` and systemd's KillMode=mixed do), which stops
    its workers, for a console output that does not depend on timing. A worker process signalled by
    the harness's SIGTERM to the whole group as well as by its parent may die by the second signal,
    and that is logged (gunicorn: "Worker (pid:N) was sent SIGTERM!"; Celery: "Process
    'ForkPoolWorker-1' ... exited with 'signal 15 (SIGTERM)'"), more or less often with or without
    instrumentation."""
    info["proc"].send_signal(signal.SIGTERM)
    info["proc"].wait(timeout=30)


def served_both_ways(
    kind: str, app: str, env: dict[str, str], paths: tuple[str, ...], *args: str, bin_dir: Path,
    cwd: Path = APPS, while_instrumented: Any = None,
) -> list[tuple[int, bytes]]:  # fmt: skip
    """Serve ``app`` plainly, then under opentelemetry-instrument with otel-dbperf, GET ``paths`` from
    each; the responses and the console output must be the same. ``while_instrumented()`` runs before
    the instrumented server stops (to wait for its spans). Returns the responses."""
    outputs, responses = {}, {}
    for instrument in (False, True):
        with serve(kind, app, env, *args, bin_dir=bin_dir, cwd=cwd, instrument=instrument) as srv:
            responses[instrument] = [get(srv["url"] + p) for p in paths]
            if instrument and while_instrumented is not None:
                while_instrumented()
            stop_main(srv)
        outputs[instrument] = srv["output"]
    assert responses[True] == responses[False], responses
    assert_console_unchanged(outputs[False], outputs[True])
    return responses[True]


def _assert_explained_slow_span(receiver: Any, app_file: str, output: str) -> None:
    def explained(spans: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # the pg_sleep's: a loaded machine may make the other SELECT slow (and explained) too
        return [
            s for s in spans
            if "pg_sleep" in statement(s) and any(e["name"] == A.EVENT_EXPLAIN for e in s["events"])
        ]  # fmt: skip

    span = explained(receiver.wait_for(lambda s: bool(explained(s))))[0]
    assert span["scope"] == "opentelemetry.instrumentation.sqlalchemy", span
    assert span["attributes"][A.QUERY_SLOW] is True, output
    assert span["attributes"][A.CODE_LINE_NUMBER] == marker_line(app_file, "stock_slow")
    event = next(e for e in span["events"] if e["name"] == A.EVENT_EXPLAIN)
    assert event["attributes"]["dbperf.explain.database"] == "postgresql"


def test_stock_flask_gunicorn_explains_with_no_internal_error(
    flask_venv: Path, receiver: Any, pg_sync_url: str, items_table: None
) -> None:
    assert not _imports(flask_venv, "greenlet"), "the stock [flask] install must not bring greenlet"
    assert not _imports(flask_venv, "pytest")
    env = _stock_env(receiver, pg_sync_url)
    responses = served_both_ways(
        "gunicorn", "stock_flask_app:app", env, ("/items", "/slow"), "-w", "2", bin_dir=flask_venv / "bin",
        while_instrumented=lambda: _assert_explained_slow_span(receiver, "stock_flask_app.py", ""),
    )  # fmt: skip
    assert responses[0] == (200, b'{"count":20}\n') and responses[1][0] == 200


def test_stock_flask_failing_view_traceback_reaches_gunicorn_stderr(
    flask_venv: Path, receiver: Any, pg_sync_url: str
) -> None:
    env = _stock_env(receiver, pg_sync_url)
    with serve("gunicorn", "stock_flask_app:app", env, "-w", "2", bin_dir=flask_venv / "bin") as srv:
        assert get(srv["url"] + "/boom")[0] == 500
    output = srv["output"]
    assert "Traceback (most recent call last)" in output and "RuntimeError: stock-app-boom" in output, output


def test_stock_fastapi_uvicorn_explains_with_no_internal_error(
    fastapi_venv: Path, receiver: Any, pg_sync_url: str, items_table: None
) -> None:
    assert not _imports(fastapi_venv, "greenlet"), "the stock [fastapi] install must not bring greenlet"
    assert not _imports(fastapi_venv, "pytest")
    env = _stock_env(receiver, pg_sync_url)
    responses = served_both_ways(
        "uvicorn", "stock_fastapi_app:app", env, ("/items", "/slow"), bin_dir=fastapi_venv / "bin",
        while_instrumented=lambda: _assert_explained_slow_span(receiver, "stock_fastapi_app.py", ""),
    )  # fmt: skip
    assert responses[0] == (200, b'{"count":20}') and responses[1][0] == 200


def test_stock_missing_exporter_package_is_left_out_not_fatal(flask_venv: Path, receiver: Any, tmp_path: Path) -> None:
    """``OTEL_METRICS_EXPORTER=prometheus`` without the [prometheus] extra: the SDK alone raises and
    opentelemetry-instrument then instruments nothing; otel-dbperf leaves that exporter out and says so."""
    assert not _imports(flask_venv, "opentelemetry.exporter.prometheus")
    app = tmp_path / "app.py"
    app.write_text(
        "import sqlalchemy\n"
        "engine = sqlalchemy.create_engine('sqlite://')\n"
        "with engine.connect() as conn:\n"
        "    print(conn.execute(sqlalchemy.text('SELECT 42')).scalar())\n"
    )
    env = _venv_env(receiver, OTEL_METRICS_EXPORTER="prometheus,otlp")
    bin_dir = flask_venv / "bin"
    proc = subprocess.run(
        [str(bin_dir / "opentelemetry-instrument"), str(bin_dir / "python"), str(app)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout == "42\n", proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("otel-dbperf:")]
    assert len(lines) == 1 and "OTEL_METRICS_EXPORTER=prometheus,otlp" in lines[0], proc.stderr
    assert "'otel-dbperf[prometheus]'" in lines[0]
    assert "Failed to auto initialize" not in proc.stderr
    spans = receiver.wait_for(lambda s: any(x["scope"] == "opentelemetry.instrumentation.sqlalchemy" for x in s))
    assert any(A.QUERY_FINGERPRINT in s["attributes"] for s in spans)  # traced and enriched


def test_stock_django_gunicorn_orm_queries_rolled_up_output_unchanged(
    django_venv: Path, receiver: Any, tmp_path: Path
) -> None:
    """``[django]`` alone, SQLite, gunicorn -w 2: the ORM's queries are traced (the extra brings the
    driver instrumentations of Django's SQLite and PostgreSQL backends: without them a request with
    an N+1 reported 0 queries), enriched and rolled up, with the template N+1 location."""
    assert not _imports(django_venv, "greenlet") and not _imports(django_venv, "sqlalchemy")
    # installed without their drivers (which they import): opentelemetry-instrument passes them over, silently
    drivers = ("opentelemetry-instrumentation-psycopg", "opentelemetry-instrumentation-psycopg2")
    assert _runs(django_venv, f"from importlib.metadata import version\nfor d in {drivers!r}: version(d)")
    assert not _imports(django_venv, "psycopg") and not _imports(django_venv, "psycopg2")
    url = f"sqlite:///{tmp_path / 'django.sqlite3'}"
    seed_site(url, django_venv / "bin" / "python")
    env = _venv_env(receiver, APP_DB_URL=url, DJANGO_SETTINGS_MODULE="djsite.settings")
    got: list[Any] = []
    routes = {"questions", "questions-jinja", "question/<int:question_id>"}  # not a count: /ping may be several

    def served(spans: list[dict[str, Any]]) -> bool:
        return routes <= {x["attributes"].get("http.route") for x in spans if x["kind"] == "SERVER"}

    responses = served_both_ways(
        "gunicorn", "djsite.wsgi:application", env, ("/questions", "/questions-jinja", "/question/3"), "-w", "2",
        bin_dir=django_venv / "bin", cwd=SITE,
        while_instrumented=lambda: got.extend(receiver.wait_for(served)),
    )  # fmt: skip
    assert {status for status, _ in responses} == {200}, responses
    spans = got

    template_n_plus_one(spans, "questions", DJANGO_TEMPLATE, "question.choice_set.all", "render")
    template_n_plus_one(spans, "questions-jinja", JINJA_TEMPLATE, "choice_set.all()", "render_jinja")
    point = point_query(spans)
    assert point["scope"] == "opentelemetry.instrumentation.sqlite3", point
    queries = [s for s in spans if statement(s)]  # the counts are checked above
    assert all(A.QUERY_FINGERPRINT in s["attributes"] for s in queries), queries


def test_stock_celery_prefork_task_rolled_up_output_unchanged(
    celery_venv: Path, receiver: Any, redis_db: int, tmp_path: Path
) -> None:
    """``[celery]`` alone (not ``[redis]``: that extra traces the app's own Redis calls, and a broker
    is not the app's), Redis broker and result backend, SQLAlchemy on SQLite, the default prefork
    pool: the task's root span carries the roll-up and its name."""
    from beyondsql_models import seed
    from sqlalchemy import create_engine

    assert not _imports(celery_venv, "greenlet") and not _imports(celery_venv, "opentelemetry.instrumentation.redis")
    engine = create_engine(url := f"sqlite:///{tmp_path / 'celery.db'}")
    seed(engine)
    engine.dispose()
    db = redis_db + 1  # not the database of test_e2e_celery's workers: neither takes the other's tasks
    env = _venv_env(receiver, APP_DB_URL=url, APP_REDIS_DB=str(db))
    outputs = {}
    for instrument in (False, True):
        purge(db)
        with worker(env, "prefork", celery_venv / "bin", instrument) as w:
            assert celery_client(db).send_task("beyondsql.writers_report").get(timeout=60) == {
                "books": 20,
                "statements": 11,
            }
            if instrument:
                spans = receiver.wait_for(lambda s: any(x["kind"] == "CONSUMER" for x in s), timeout=60)
            stop_main(w)
        outputs[instrument] = w["output"]
    assert_console_unchanged(outputs[False], outputs[True])

    (task,) = [s for s in spans if s["kind"] == "CONSUMER"]
    a = task["attributes"]
    assert a["celery.task_name"] == "beyondsql.writers_report", a
    assert a[A.DB_QUERY_COUNT] == 11 and a[A.N_PLUS_ONE_DETECTED] is True, a
    assert a[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_FILE}:{marker_line('celery_tasks.py', 'task_lazy')}"
    queries = [s for s in spans if s["trace_id"] == task["trace_id"] and statement(s)]
    assert len(queries) == 11, queries
    for s in queries:
        assert A.QUERY_FINGERPRINT in s["attributes"] and s["attributes"][A.CODE_FILE_PATH] == APP_FILE, s
