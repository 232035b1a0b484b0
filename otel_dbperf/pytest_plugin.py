"""otel-dbperf's pytest plugin (entry point ``pytest11``, name ``dbperf``): catch an N+1 in a test.

Inert unless asked: this module imports nothing of OpenTelemetry and changes nothing until a run
passes ``--dbperf`` (or ``--dbperf-report FILE``), sets ``dbperf = true`` in its ini file, or a
test uses the ``dbperf`` fixture or marker. Then :mod:`._testrun` builds the in-process pipeline
(no exporter, no network) and every test (with the fixture or marker alone: every test from the
first that uses them) runs under it:

- with ``--dbperf``/``dbperf = true``, a test in which a request (or the test itself, when no
  server span is around its queries) has an N+1 fails, with the location, the relationship and the
  fix; ``--dbperf-report FILE`` writes every span of the run as OTLP JSON lines for
  ``otel-dbperf report``;
- ``@pytest.mark.dbperf(max_queries=5, allow_n_plus_one=False, max_duplicates=0)``;
- ``with dbperf.max_queries(5): client.get("/orders")`` (the ``dbperf`` fixture).

See docs/testing.md.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

MARKER = "dbperf"
_MARKER_OPTIONS = ("max_queries", "allow_n_plus_one", "max_duplicates")


class _State:
    guard: Any = None  # the _testrun.Guard of this process, once asked for
    failed: bool = False  # asked for, but it could not be built (DBPERF_ENABLED=false)
    report: str | None = None  # --dbperf-report's path (this process's part under xdist)


_state = _State()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("dbperf", "otel-dbperf: N+1 and query-count guard")
    group.addoption(
        "--dbperf", action="store_true", default=None, help="fail tests in which otel-dbperf detects an N+1 query"
    )
    group.addoption(
        "--dbperf-report",
        metavar="FILE",
        default=None,
        help="with --dbperf (implied): write the run's spans as OTLP JSON lines for 'otel-dbperf report'",
    )
    parser.addini("dbperf", type="bool", default=False, help="otel-dbperf: run as with --dbperf")


def _requested(config: pytest.Config, namespace: Any = None) -> bool:
    ns = namespace if namespace is not None else config.option
    if getattr(ns, "dbperf", None) or getattr(ns, "dbperf_report", None):
        return True
    return bool(config.getini("dbperf"))


def _xdist_controller(namespace: Any) -> bool:
    """The process that hands tests to xdist's workers (it runs none itself)."""
    return bool(getattr(namespace, "numprocesses", None)) and "PYTEST_XDIST_WORKER" not in os.environ


def _report_path(config: pytest.Config, namespace: Any = None) -> str | None:
    ns = namespace if namespace is not None else config.option
    path = getattr(ns, "dbperf_report", None)
    if not path:
        return None
    path = os.path.abspath(path)
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return f"{path}.{worker}.part" if worker else path


def _activate(config: pytest.Config, report: str | None = None) -> Any:
    if _state.guard is None and not _state.failed:
        from . import _testrun

        if report and os.path.exists(report):
            os.remove(report)  # the run's spans, not the last run's too
        _state.report = report
        _state.guard = _testrun.build(str(config.rootpath), report)
        _state.failed = _state.guard is None
    return _state.guard


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser, args: list[str]) -> Any:
    """Set up before the conftests import the application (its engines and apps are then traced);
    Django's instrumentation waits for its settings (pytest-django's, made in this same hook)."""
    namespace = early_config.known_args_namespace
    if _requested(early_config, namespace) and not _xdist_controller(namespace):
        _activate(early_config, _report_path(early_config, namespace))
    return (yield)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(max_queries=None, allow_n_plus_one=False, max_duplicates=None): otel-dbperf's limits for "
        "this test (queries issued in it, its N+1, exact duplicate queries)",
    )
    if _requested(config) and _xdist_controller(config.option):
        path = _report_path(config)
        if path and os.path.exists(path):
            os.remove(path)


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    guard = _state.guard
    if guard is not None and guard.deferred:
        guard.instrument_deferred()  # Django's settings, made by a conftest


def _uses_guard(item: pytest.Item) -> bool:
    return item.get_closest_marker(MARKER) is not None or MARKER in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """The fixture or the marker without --dbperf: set up before the test's fixtures make its app."""
    if _state.guard is None and not _state.failed and _uses_guard(item):
        _activate(item.config)
        if _state.guard is not None and _state.guard.deferred:
            _state.guard.instrument_deferred()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[Any]:
    guard = _state.guard
    if guard is None:
        return (yield)
    marker = item.get_closest_marker(MARKER)
    options = _marker_options(marker)
    if not _guarded("pytest guard: test start", "this test is not checked", guard.start_test, item.nodeid):
        return (yield)
    try:
        result = yield
    except BaseException:
        _guarded("pytest guard: test end", "this test's N+1 is not shown", _after_failure, item, guard)
        raise
    if _guarded("pytest guard: test end", "this test is not checked", guard.end_test):
        _check(item, guard, options, marker is not None)
    return result


def _guarded(where: str, turned_off: str, fn: Any, *args: Any) -> bool:
    """``fn(*args)``; an internal error of the guard is reported (once per place), never the test's
    failure (re-raised in otel-dbperf's own tests). False when it failed."""
    try:
        fn(*args)
        return True
    except Exception as exc:  # noqa: BLE001 - the guard's own bug
        from ._guard import internal_error

        internal_error(where, exc, turned_off)
        return False


def _after_failure(item: pytest.Item, guard: Any) -> None:
    """A test that failed by itself keeps its failure; its N+1, if any, is shown beside it."""
    guard.end_test()
    findings = guard.findings()
    if findings:
        item.add_report_section("call", "dbperf", guard.n_plus_one_message(findings))


def _marker_options(marker: Any) -> dict[str, Any]:
    if marker is None:
        return {}
    unknown = sorted(set(marker.kwargs) - set(_MARKER_OPTIONS))
    if unknown or marker.args:
        pytest.fail(
            f"@pytest.mark.{MARKER} takes the keywords {', '.join(_MARKER_OPTIONS)} only, not {unknown or marker.args}",
            pytrace=False,
        )
    return dict(marker.kwargs)


def _check(item: pytest.Item, guard: Any, options: dict[str, Any], marked: bool) -> None:
    """The test's verdicts: its N+1 (with --dbperf or the marker), its query and duplicate counts."""
    problems: list[str] = []
    off = "this test is not checked"
    checked = _guarded("pytest guard: verdict", off, _verdicts, item, guard, options, marked, problems)
    if checked and problems:
        pytest.fail("\n".join(problems), pytrace=False)


def _verdicts(item: pytest.Item, guard: Any, options: dict[str, Any], marked: bool, problems: list[str]) -> None:
    if not options.get("allow_n_plus_one", False) and (marked or _requested(item.config)):
        findings = guard.findings()
        if findings:
            problems.append(guard.n_plus_one_message(findings))
    limit = options.get("max_queries")
    queries = guard.sink.queries
    if limit is not None and len(queries) > limit:
        headline = f"otel-dbperf: {len(queries)} queries in this test, at most {limit} expected (max_queries):"
        problems.append(guard.queries_message(headline, list(queries)))
    limit = options.get("max_duplicates")
    if limit is not None:
        duplicates = guard.duplicates()
        if len(duplicates) > limit:
            headline = (
                f"otel-dbperf: {len(duplicates)} exact duplicate queries in this test (the same SELECT with the same "
                f"parameters again in one request), at most {limit} expected (max_duplicates):"
            )
            problems.append(guard.queries_message(headline, duplicates))


class DbPerf:
    """The ``dbperf`` fixture: the current test's queries, and a limit on a block's."""

    def __init__(self, guard: Any) -> None:
        self._guard = guard

    @contextmanager
    def max_queries(self, limit: int) -> Iterator[None]:
        """Fail the test when the block issues more than ``limit`` queries (its requests' included)."""
        guard = self._guard
        guard.drain()
        start = len(guard.sink.queries)
        yield
        guard.drain()
        issued = guard.sink.queries[start:]
        if len(issued) > limit:
            headline = f"otel-dbperf: {len(issued)} queries in this block, at most {limit} expected (max_queries):"
            pytest.fail(guard.queries_message(headline, list(issued)), pytrace=False)

    @property
    def query_count(self) -> int:
        """Queries issued so far in the current test."""
        self._guard.drain()
        return len(self._guard.sink.queries)

    def n_plus_one(self) -> list[Any]:
        """The N+1 findings of the requests that ended so far in the current test."""
        self._guard.drain()
        return list(self._guard.findings())


@pytest.fixture
def dbperf(request: pytest.FixtureRequest) -> DbPerf:
    """otel-dbperf in this test: ``with dbperf.max_queries(5): ...``."""
    guard = _activate(request.config) if _state.guard is None else _state.guard
    if guard is None:
        pytest.fail("otel-dbperf is off in this process (DBPERF_ENABLED=false): the dbperf fixture cannot count")
    return DbPerf(guard)


def pytest_sessionfinish(session: pytest.Session) -> None:
    guard = _state.guard
    if guard is not None:
        guard.shutdown()
    config = session.config
    if _requested(config) and _xdist_controller(config.option):
        path = _report_path(config)
        parts = sorted(glob.glob(glob.escape(path) + ".*.part")) if path else []
        if path and parts:
            with open(path, "a", encoding="utf-8") as out:
                for part in parts:
                    with open(part, encoding="utf-8") as lines:
                        out.write(lines.read())
                    os.remove(part)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    if _requested(config):
        path = _report_path(config)
        if path and not os.environ.get("PYTEST_XDIST_WORKER"):
            terminalreporter.write_line(f"otel-dbperf: spans written to {path} (otel-dbperf report {path})")
