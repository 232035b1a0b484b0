"""sqlite3's connection shortcuts (``conn.execute`` and kin) traced as the cursor path is, in-process."""

from __future__ import annotations

import gc
import sqlite3
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from app_code import shortcuts
from opentelemetry.instrumentation import dbapi
from opentelemetry.instrumentation.sqlite3 import SQLite3Instrumentor
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind
from support.pipeline import Pipeline
from support.pipeline import line_of as marked_line

from otel_dbperf import Settings, _guard, _sqlite3
from otel_dbperf import attributes as A
from otel_dbperf.distro import install_sqlite3_shortcuts

APP_CODE = Path(shortcuts.__file__)
#: differ between two calls of the same statement from two lines
PER_CALL = {A.CODE_LINE_NUMBER, A.CODE_FUNCTION_NAME, A.CPU_TIME_MS}


def line_of(name: str) -> int:
    return marked_line(name, APP_CODE)


class Traced(Pipeline):
    """The pipeline with contrib's sqlite3 instrumentation."""

    def __init__(self) -> None:
        # no test here is about slowness: a file DB's fsync on a loaded machine must not flag one path and not the other
        super().__init__(Settings(app_paths=(str(APP_CODE.parent),), slow_query_threshold_ms=60_000))
        self.instrumentor = SQLite3Instrumentor()
        if self.instrumentor.is_instrumented_by_opentelemetry:
            self.instrumentor.uninstrument()
        self.instrumentor.instrument(tracer_provider=self.provider)

    def at(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans() if s.attributes and s.attributes.get(A.CODE_LINE_NUMBER) == line_of(name)]


@pytest.fixture
def traced() -> Iterator[Traced]:
    install_sqlite3_shortcuts()  # what the distro and configure() run
    t = Traced()
    yield t
    t.instrumentor.uninstrument()
    _sqlite3.uninstall()
    t.close()


@pytest.fixture
def conn(traced: Traced, tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = sqlite3.connect(tmp_path / "app.db", detect_types=sqlite3.PARSE_DECLTYPES)
    shortcuts.schema(c)
    yield c
    c.close()


def _comparable(span: ReadableSpan) -> dict[str, Any]:
    return {
        "name": span.name,
        "kind": span.kind,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else None,
        "status": span.status.status_code,
        "events": [e.name for e in span.events],
        "attributes": {k: v for k, v in (span.attributes or {}).items() if k not in PER_CALL},
    }


@pytest.mark.parametrize(
    ("shortcut", "cursor_path", "call"),
    [
        ("execute", "cursor", lambda f, c, tag: f(c, "ann")),
        ("many", "many_cursor", lambda f, c, tag: f(c, [(f"{tag}{i}", None) for i in range(3)])),
        ("clear_script", "clear_cursor", lambda f, c, tag: f(c)),
    ],
)
def test_each_shortcut_makes_the_span_the_cursor_path_makes(
    traced: Traced, conn: sqlite3.Connection, shortcut: str, cursor_path: str, call: Callable[..., Any]
) -> None:
    functions = {
        "execute": shortcuts.by_name,
        "cursor": shortcuts.by_name_cursor,
        "many": shortcuts.register_many,
        "many_cursor": shortcuts.register_many_cursor,
        "clear_script": shortcuts.clear_script,
        "clear_cursor": shortcuts.clear_cursor,
    }
    traced.memory.clear()
    call(functions[shortcut], conn, "a")
    call(functions[cursor_path], conn, "b")
    (short,) = traced.at(shortcut)
    (cursor,) = traced.at(cursor_path)
    assert _comparable(short) == _comparable(cursor)
    assert short.kind == SpanKind.CLIENT and short.instrumentation_scope.name == "opentelemetry.instrumentation.sqlite3"
    a = short.attributes
    assert a[A.CODE_FILE_PATH] == str(APP_CODE)
    assert a[A.CODE_FUNCTION_NAME] == functions[shortcut].__name__
    assert len(a[A.QUERY_FINGERPRINT]) == 16 and a[A.QUERY_SLOW] is False
    assert len(traced.spans()) == 2  # one span each, none nested


def test_statement_sanitized_and_located_at_the_app_line(traced: Traced, conn: sqlite3.Connection) -> None:
    traced.memory.clear()
    assert shortcuts.by_inline_name(conn) == []
    (span,) = traced.at("inline")
    assert span.attributes["db.statement"] == "SELECT id FROM user WHERE username = ?"
    assert span.attributes[A.DB_QUERY_SUMMARY] == "SELECT user"
    assert span.attributes[A.CODE_FUNCTION_NAME] == "by_inline_name"
    assert not any("alice.secret" in str(v) for s in traced.spans() for v in (s.attributes or {}).values())


def test_executescript_span_for_the_schema(traced: Traced, conn: sqlite3.Connection) -> None:
    (span,) = traced.at("script")  # from the conn fixture
    assert span.name == "DROP"  # contrib's name: the script's first word
    statement = str(span.attributes["db.statement"])
    assert "DROP TABLE IF EXISTS user" in statement and "CREATE TABLE user" in statement
    assert span.attributes[A.CODE_FUNCTION_NAME] == "schema"


def test_n_plus_one_on_a_loop_of_conn_execute(traced: Traced, conn: sqlite3.Connection) -> None:
    shortcuts.register_many(conn, [(f"user{i}", None) for i in range(6)])
    traced.memory.clear()
    with traced.tracer.start_as_current_span("GET /users", kind=SpanKind.SERVER):
        for i in range(6):
            shortcuts.by_name(conn, f"user{i}")
    (root,) = [s for s in traced.spans() if s.name == "GET /users"]
    assert root.attributes[A.DB_QUERY_COUNT] == 6
    assert root.attributes[A.N_PLUS_ONE_DETECTED] is True
    assert root.attributes[A.N_PLUS_ONE_REPEAT_COUNT] == 6
    assert root.attributes[A.N_PLUS_ONE_CODE_LOCATION] == f"{APP_CODE}:{line_of('execute')}"


class _Cursor(sqlite3.Cursor):
    pass


def _scenario(connect: Callable[..., sqlite3.Connection], path: Path) -> list[Any]:
    """Everything an app can observe of a connection used through its shortcuts."""
    seen: list[Any] = []
    conn = connect(path, detect_types=sqlite3.PARSE_DECLTYPES)
    conn.row_factory = sqlite3.Row
    cur = shortcuts.schema(conn)
    # cur.connection is the sqlite3.Connection, not contrib's proxy of it: as for contrib's conn.cursor()
    seen += [
        isinstance(cur, sqlite3.Cursor),
        cur.rowcount,
        cur.description,
        isinstance(cur.connection, sqlite3.Connection),
    ]
    joined = datetime(2024, 1, 2, 3, 4, 5)
    cur = shortcuts.register_many(conn, ((f"u{i}", joined) for i in range(4)))
    seen += [cur.rowcount, cur.lastrowid, conn.in_transaction, conn.total_changes]
    conn.commit()
    row = shortcuts.by_name(conn, "u2")
    seen += [type(row).__name__, dict(row), type(row["joined"]).__name__]
    cur = conn.execute("SELECT username FROM user WHERE id > :n ORDER BY id", {"n": 1})
    seen += [[tuple(r) for r in cur], [d[0] for d in cur.description], cur.fetchall()]
    with conn:
        conn.execute("INSERT INTO user (username) VALUES ('in-with')")
    with pytest.raises(ZeroDivisionError), conn:
        conn.execute("INSERT INTO user (username) VALUES ('rolled-back')")
        1 / 0  # noqa: B018
    seen.append([r[0] for r in conn.execute("SELECT username FROM user ORDER BY id")])
    for bad in (("SELEC 1",), (shortcuts.INSERT, ("u1", None)), ("SELECT ?",), (), ("SELECT 1; SELECT 2",)):
        with pytest.raises(Exception) as info:  # noqa: PT011 - compared below
            conn.execute(*bad)
        seen.append((type(info.value), str(info.value)))
    factory_cursor = conn.cursor(factory=_Cursor)
    seen += [isinstance(factory_cursor, _Cursor), factory_cursor.execute("SELECT count(*) FROM user").fetchone()[0]]
    conn.isolation_level = None
    conn.execute("INSERT INTO user (username) VALUES ('autocommit')")
    seen += [conn.in_transaction, conn.isolation_level]
    seen.append(conn.executescript("BEGIN; DELETE FROM user WHERE username = 'u0'; COMMIT;").rowcount)
    conn.close()
    with pytest.raises(sqlite3.ProgrammingError) as closed:
        conn.execute("SELECT 1")
    seen.append(str(closed.value))
    return seen


def test_results_identical_with_and_without_instrumentation(traced: Traced, tmp_path: Path) -> None:
    original = sqlite3.connect.__wrapped__  # type: ignore[attr-defined]
    plain = _scenario(original, tmp_path / "plain.db")
    traced.memory.clear()
    instrumented = _scenario(sqlite3.connect, tmp_path / "traced.db")
    assert instrumented == plain
    assert plain[-1] == "Cannot operate on a closed database."
    assert len(traced.spans()) >= 10  # the scenario was traced


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.disable()  # what the garbage collector would release is not released: a cycle shows
    yield
    gc.enable()


@pytest.mark.parametrize("method", ["execute", "executemany", "executescript"])
def test_a_failed_shortcut_holds_no_lock_once_the_app_closes(
    traced: Traced, conn: sqlite3.Connection, tmp_path: Path, no_gc: None, method: str
) -> None:
    shortcuts.register_many(conn, [("ann", None)])
    conn.commit()
    duplicate = {
        "execute": (shortcuts.INSERT, ("ann", None)),
        "executemany": (shortcuts.INSERT, [("bob", None), ("ann", None)]),
        "executescript": ("BEGIN; INSERT INTO user (username) VALUES ('ann');",),
    }[method]
    with pytest.raises(sqlite3.IntegrityError):
        getattr(conn, method)(*duplicate)
    assert conn.in_transaction  # the failed write's transaction, ended by close()
    conn.close()
    other = sqlite3.connect(tmp_path / "app.db", timeout=0)
    other.execute("INSERT INTO user (username) VALUES ('carl')")  # "database is locked" if close() left it open
    other.commit()
    other.close()


def test_dbapi2_connect_and_instrument_connection_get_the_shortcuts(traced: Traced) -> None:
    for conn in (
        sqlite3.dbapi2.connect(":memory:"),
        SQLite3Instrumentor.instrument_connection(
            sqlite3.connect.__wrapped__(":memory:"),  # type: ignore[attr-defined]
            tracer_provider=traced.provider,
        ),
    ):
        assert isinstance(conn, _sqlite3.SQLite3ConnectionProxy)
        traced.memory.clear()
        assert conn.execute("SELECT 7").fetchone() == (7,)
        assert [s.name for s in traced.spans()] == ["SELECT"]
        assert type(SQLite3Instrumentor.uninstrument_connection(conn)) is sqlite3.Connection


def test_a_connection_class_keeps_its_own_shortcut_and_cursor(traced: Traced) -> None:
    calls: list[str] = []

    class Own(sqlite3.Connection):
        def execute(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("execute")
            return super().execute(*args, **kwargs)

        def cursor(self, *args: Any, **kwargs: Any) -> Any:
            calls.append("cursor")
            return super().cursor(*args, **kwargs)

    conn = sqlite3.connect(":memory:", factory=Own)
    traced.memory.clear()
    assert conn.execute("SELECT 1").fetchone() == (1,)  # its own execute: untraced, as contrib leaves it
    conn.executescript("CREATE TABLE t (x)")  # ours, past its cursor() as C is
    assert conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)]).rowcount == 2
    assert calls == ["execute"]
    assert [s.name for s in traced.spans()] == ["CREATE", "INSERT"]


def test_other_drivers_connections_are_contribs_proxy_without_execute(traced: Traced) -> None:
    class Connection:
        def cursor(self) -> Any:
            raise AssertionError

    class Module:
        __name__ = "fakedb"

        @staticmethod
        def connect() -> Connection:
            return Connection()

    module = Module()
    dbapi.wrap_connect("test", module, "connect", "postgresql")  # type: ignore[arg-type]
    proxy = module.connect()
    assert type(proxy) is dbapi.TracedConnectionProxy
    assert not hasattr(proxy, "execute") and not hasattr(proxy, "executescript")


@pytest.mark.services
def test_psycopg2_connection_still_has_no_execute(traced: Traced, pg_dsn: str) -> None:
    psycopg2 = pytest.importorskip("psycopg2")
    from opentelemetry.instrumentation.psycopg2 import Psycopg2Instrumentor

    Psycopg2Instrumentor().instrument(tracer_provider=traced.provider, skip_dep_check=True)
    try:
        conn = psycopg2.connect(pg_dsn)
        try:
            assert not hasattr(conn, "execute")
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        finally:
            conn.close()
    finally:
        Psycopg2Instrumentor().uninstrument()
    assert [s.instrumentation_scope.name for s in traced.spans()] == ["opentelemetry.instrumentation.psycopg2"]


def test_uninstrument_and_instrument_again(traced: Traced) -> None:
    traced.instrumentor.uninstrument()
    for connect in (sqlite3.connect, sqlite3.dbapi2.connect):
        assert type(connect(":memory:")) is sqlite3.Connection
    traced.instrumentor.instrument(tracer_provider=traced.provider)
    traced.memory.clear()
    conn = sqlite3.connect(":memory:")
    assert isinstance(conn, _sqlite3.SQLite3ConnectionProxy)
    conn.executescript("CREATE TABLE t (x)")
    assert [s.name for s in traced.spans()] == ["CREATE"]


def test_uninstall_gives_contribs_proxy_back(traced: Traced) -> None:
    _sqlite3.uninstall()
    conn = sqlite3.connect(":memory:")
    assert type(conn) is dbapi.TracedConnectionProxy
    traced.memory.clear()
    conn.execute("SELECT 1")
    assert traced.spans() == []  # contrib alone: the shortcut is untraced
    _sqlite3.install()
    _sqlite3.install()  # idempotent
    assert dbapi.get_traced_connection_proxy is _sqlite3._connection_proxy


@pytest.fixture
def production() -> Iterator[None]:
    _guard.RERAISE = False
    _guard._seen.clear()
    yield
    _guard.RERAISE = True


def test_failing_traced_cursor_leaves_the_shortcut_working(
    traced: Traced, production: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    conn = sqlite3.connect(":memory:")
    monkeypatch.setattr(_sqlite3, "_SQLite3CursorProxy", broken)
    errors = _guard.error_count()
    traced.memory.clear()
    cur = conn.execute("SELECT 3")
    assert type(cur) is sqlite3.Cursor and cur.fetchall() == [(3,)]
    with pytest.raises(sqlite3.OperationalError):
        conn.execute("SELEC 3")  # the app's errors stay the app's
    assert traced.spans() == []
    assert _guard.error_count() == errors + 2
    err = caplog.text
    assert err.count("internal error in sqlite3 shortcut (RuntimeError") == 1
    assert "connection shortcut call is untraced" in err


def test_failing_proxy_leaves_contribs(
    traced: Traced, production: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(_sqlite3, "SQLite3ConnectionProxy", broken)
    conn = sqlite3.connect(":memory:")
    assert type(conn) is dbapi.TracedConnectionProxy
    traced.memory.clear()
    assert conn.cursor().execute("SELECT 4").fetchall() == [(4,)]
    assert [s.name for s in traced.spans()] == ["SELECT"]
    assert "internal error in sqlite3 connection (RuntimeError" in caplog.text


def test_install_refused_when_another_replacement_is_there(
    traced: Traced, production: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _sqlite3.uninstall()

    def theirs(*args: Any, **kwargs: Any) -> Any:
        return _sqlite3._contrib_proxy(*args, **kwargs)

    monkeypatch.setattr(dbapi, "get_traced_connection_proxy", theirs)
    from otel_dbperf.distro import _SQLITE3_SHORTCUTS

    _guard.step(*_SQLITE3_SHORTCUTS, install_sqlite3_shortcuts)
    assert dbapi.get_traced_connection_proxy is theirs
    assert type(sqlite3.connect(":memory:")) is dbapi.TracedConnectionProxy
    err = caplog.text
    assert "internal error in sqlite3 connection shortcuts (RuntimeError" in err and "stay untraced" in err
