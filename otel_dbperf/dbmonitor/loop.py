"""The monitor's loop: one connection, three schedules, OTLP out.

Every ``DBPERF_DBMONITOR_INTERVAL`` seconds the dialect's ``Collector`` reads the server's
statistics and the metrics are exported at once (the reader has no timer of its own: one export
per collection); every ``DBPERF_DBMONITOR_SAMPLE_INTERVAL`` and ``..._STATEMENTS_INTERVAL``
seconds ``samples.emit_samples`` and ``statements.emit_statements`` run on the same connection
and thread. A database that is down or refuses the monitor is said once on stderr (masked), shown
as ``dbperf.db.server.up`` 0, and retried; nothing here ends the process but a signal.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.metrics.export import MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource

from .._guard import internal_error
from .._version import __version__
from ..settings import Settings, mask_url
from . import samples, statements
from .server import COLLECTION_DURATION, COLLECTION_QUERIES, OWN, UP, Metric, Point

_log = logging.getLogger("otel_dbperf.dbmonitor")

APPLICATION_NAME = "otel-dbperf-dbmonitor"
CONNECT_TIMEOUT_S = 5
#: each of the monitor's statements is cancelled by the server after this long (PostgreSQL:
#: statement_timeout; MariaDB: max_statement_time), so a stuck catalog never piles up monitors
STATEMENT_TIMEOUT_S = 5


class Target(NamedTuple):
    """The database server to watch, from the DSN (the password is kept only to connect and to be
    masked wherever it could appear)."""

    dialect: str  # "postgresql" or "mysql"
    host: str
    port: int
    database: str
    secrets: tuple[str, ...]
    connect: Callable[[], Any]

    def describe(self) -> str:
        return f"{self.dialect} {self.host}:{self.port}/{self.database}"


def parse_target(dsn: str) -> Target:
    """``postgresql://``/``postgres://`` URLs or libpq ``key=value`` strings; ``mysql://`` or
    ``mariadb://`` URLs (``?unix_socket=``, ``?charset=``). A ValueError's text never holds the DSN."""
    dsn = dsn.strip()
    scheme = dsn.split("://", 1)[0].lower() if "://" in dsn else ""
    if scheme in ("postgresql", "postgres") or (not scheme and "=" in dsn):
        return _postgres_target(dsn)
    if scheme in ("mysql", "mariadb", "mysql+pymysql", "mariadb+pymysql"):
        return _mysql_target(dsn)
    raise ValueError(
        "expected a postgresql:// or mysql:// (mariadb://) URL, or a libpq key=value string"
        + (f"; the scheme is {scheme!r}" if scheme else "")
    )


def _postgres_target(dsn: str) -> Target:
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ValueError("not a valid libpq connection string or URL") from None
    password = str(params.get("password") or "")
    host = str(params.get("host") or params.get("hostaddr") or "localhost")
    port = int(str(params.get("port") or 5432).split(",")[0])
    database = str(params.get("dbname") or params.get("user") or "")
    extra: dict[str, Any] = {"autocommit": True, "application_name": APPLICATION_NAME}
    if "connect_timeout" not in params:
        extra["connect_timeout"] = CONNECT_TIMEOUT_S
    if "options" not in params:
        extra["options"] = f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}"

    def connect() -> Any:
        return psycopg.connect(dsn, **extra)

    return Target("postgresql", host, port, database, _secrets(password), connect)


def _mysql_target(dsn: str) -> Target:
    url = urllib.parse.urlsplit(dsn)
    try:
        port = url.port or 3306
    except ValueError:
        raise ValueError("the URL's port is not a number") from None
    password = urllib.parse.unquote(url.password or "")
    user = urllib.parse.unquote(url.username or "")
    host = url.hostname or "localhost"
    database = urllib.parse.unquote(url.path.lstrip("/"))
    query = dict(urllib.parse.parse_qsl(url.query))
    unknown = sorted(set(query) - {"unix_socket", "charset"})
    if unknown:
        raise ValueError(f"unknown URL parameters {', '.join(unknown)} (known: unix_socket, charset)")

    def connect() -> Any:
        import pymysql

        conn = pymysql.connect(
            host=host,
            port=port,
            user=user,
            password=password,
            database=database or None,
            unix_socket=query.get("unix_socket"),
            charset=query.get("charset", "utf8mb4"),
            autocommit=True,
            connect_timeout=CONNECT_TIMEOUT_S,
            read_timeout=60,
            write_timeout=60,
            program_name=APPLICATION_NAME,
        )
        try:
            with conn.cursor() as cur:  # MariaDB's name; MySQL's max_execution_time covers SELECTs only
                cur.execute(f"SET SESSION max_statement_time = {STATEMENT_TIMEOUT_S}")
        except pymysql.err.MySQLError:
            pass
        return conn

    return Target("mysql", host, port, database, _secrets(password), connect)


def _secrets(password: str) -> tuple[str, ...]:
    if not password:
        return ()
    return tuple({password, urllib.parse.quote(password, safe=""), urllib.parse.quote(password)})


class Masker(logging.Filter):
    """Every record that reaches the monitor's stderr handler: URL userinfo, secret-looking
    ``key=value`` pairs and the password itself (plain or URL-quoted) masked."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: tuple[str, ...] = ()

    def mask(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return mask_url(text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = self.mask(record.getMessage())
        if record.exc_info:
            message += "\n" + self.mask(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        record.msg, record.args = message, None
        return True


def read_dsn(settings: Settings) -> str:
    """The DSN: the file's content when ``DBPERF_DBMONITOR_DSN_FILE`` is set, else
    ``DBPERF_DBMONITOR_DSN``. Raises ValueError (its text names the variable, never the DSN)."""
    if settings.dbmonitor_dsn_file:
        try:
            with open(settings.dbmonitor_dsn_file, encoding="utf-8") as file:
                text = file.read(64 * 1024).strip()
        except OSError as exc:
            raise ValueError(
                f"cannot read DBPERF_DBMONITOR_DSN_FILE {settings.dbmonitor_dsn_file!r}: {exc.strerror}"
            ) from None
        if not text:
            raise ValueError(f"DBPERF_DBMONITOR_DSN_FILE {settings.dbmonitor_dsn_file!r} is empty")
        if settings.dbmonitor_dsn:
            _log.warning("otel-dbperf dbmonitor: DBPERF_DBMONITOR_DSN_FILE is set: DBPERF_DBMONITOR_DSN is ignored")
        return text
    if settings.dbmonitor_dsn:
        return settings.dbmonitor_dsn
    raise ValueError(
        "no database to watch: set DBPERF_DBMONITOR_DSN_FILE (a file holding the DSN) or DBPERF_DBMONITOR_DSN"
    )


def resource_for(target: Target) -> Resource:
    """The SDK's resource (``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_SERVICE_NAME``) plus the server."""
    detected = Resource.create({})
    ours: dict[str, Any] = {"server.address": target.host, "server.port": target.port}
    if str(detected.attributes.get(SERVICE_NAME, "unknown_service")).startswith("unknown_service"):
        ours[SERVICE_NAME] = APPLICATION_NAME
    # the watched server is the instance (Prometheus' ``instance`` label): the same series across
    # the monitor's restarts, unless OTEL_RESOURCE_ATTRIBUTES names one
    if "service.instance.id" not in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", ""):
        ours[SERVICE_INSTANCE_ID] = f"{target.host}:{target.port}"
    return detected.merge(Resource(ours))


def _is_driver_error(dialect: str, exc: BaseException) -> bool:
    if dialect == "postgresql":
        import psycopg

        return isinstance(exc, psycopg.Error)
    import pymysql

    return isinstance(exc, pymysql.err.MySQLError)


def _is_disconnect(dialect: str, conn: Any, exc: BaseException) -> bool:
    """Whether ``exc`` cost the connection (reconnect) or was the server refusing one statement (a
    missing grant, a timeout: keep it). Asked of the connection itself, not the error's class: both
    drivers raise OperationalError for either."""
    if dialect == "postgresql":
        import psycopg

        if isinstance(exc, psycopg.InterfaceError) or conn is None:
            return True
        return bool(conn.closed or getattr(conn, "broken", False))
    import pymysql

    if isinstance(exc, pymysql.err.InterfaceError) or conn is None or not conn.open:
        return True
    code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else 0
    return code >= 2000 or code in (1053, 1927, 4031)  # client-side errors; shutdown, killed, idle timeout


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


class Monitor:
    """One database server, one connection, one thread (``run``)."""

    def __init__(
        self,
        target: Target,
        settings: Settings,
        metric_exporter: MetricExporter,
        log_exporter: LogRecordExporter,
        resource: Resource | None = None,
    ) -> None:
        self.target = target
        self.settings = settings
        if target.dialect == "postgresql":
            from . import postgres as dialect
        else:
            from . import mysql as dialect  # type: ignore[no-redef]
        self.collector: Any = dialect.Collector()
        self.metrics: tuple[Metric, ...] = (*OWN, *dialect.METRICS)
        self.conn: Any = None
        self.points: dict[str, list[Point]] = {}
        self.queries_total = 0
        self.up = False
        self._said: set[str] = set()
        resource = resource or resource_for(target)
        self.reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=math.inf)
        # imported here: the class holds a lock of its own, which no fork renews (a module-level name of
        # the package would put it in tests/test_fork.py's reach; this process never forks anyway)
        from opentelemetry.sdk.metrics import MeterProvider

        self.meter_provider = MeterProvider(resource=resource, metric_readers=[self.reader])
        self.logger_provider = LoggerProvider(resource=resource)
        self.logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        self.logger = self.logger_provider.get_logger("otel_dbperf.dbmonitor", __version__)
        meter = self.meter_provider.get_meter("otel_dbperf.dbmonitor", __version__)
        make = {
            "counter": meter.create_observable_counter,
            "updown": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        for metric in self.metrics:
            make[metric.kind](
                metric.name, callbacks=[self._observer(metric.name)], unit=metric.unit, description=metric.description
            )

    def _observer(self, name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        system = {"db.system.name": self.target.dialect}

        def observe(options: CallbackOptions) -> Iterable[Observation]:
            return [Observation(p.value, {**system, **p.attributes}) for p in self.points.get(name, ())]

        return observe

    # -- saying things once

    def _say(self, key: str, level: int, message: str, *args: Any) -> None:
        if key not in self._said:
            self._said.add(key)
            _log.log(level, "otel-dbperf dbmonitor: " + message, *args)

    def _forget(self, prefix: str) -> None:
        self._said = {k for k in self._said if not k.startswith(prefix)}

    # -- the connection

    def _connected(self) -> bool:
        if self.conn is not None:
            return True
        try:
            self.conn = self.target.connect()
        except Exception as exc:  # noqa: BLE001 - any driver error: down, retried
            self._say(
                "down", logging.WARNING, "cannot connect to %s (%s); retrying every %g s",
                self.target.describe(), _first_line(exc), self._retry_s(),
            )  # fmt: skip
            return False
        if "down" in self._said or "lost" in self._said:
            _log.warning("otel-dbperf dbmonitor: connected to %s again", self.target.describe())
        else:
            _log.info("otel-dbperf dbmonitor: watching %s", self.target.describe())
        self._forget("down")
        self._forget("lost")
        return True

    def _retry_s(self) -> float:
        return min(self.settings.dbmonitor_interval, 10.0)

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - a dead connection may refuse to close
                pass

    def _failed(self, what: str, exc: BaseException) -> None:
        if not _is_driver_error(self.target.dialect, exc):  # a bug of ours: re-raised under pytest
            internal_error(f"dbmonitor {what}", exc, "that round is skipped; the monitor goes on")
            return
        if _is_disconnect(self.target.dialect, self.conn, exc):
            self._say(
                "lost", logging.WARNING, "lost the connection to %s during %s (%s); reconnecting",
                self.target.describe(), what, _first_line(exc),
            )  # fmt: skip
            self._drop()
        else:
            self._say(
                f"error {what} {type(exc).__name__}", logging.WARNING,
                "%s on %s failed (%s); the monitoring role may lack a grant (docs/database.md)",
                what, self.target.describe(), _first_line(exc),
            )  # fmt: skip

    # -- the work

    def collect_metrics(self) -> bool:
        """One collection and one export; True when the server's statistics were read."""
        start = time.perf_counter()
        points: list[Point] = []
        self.up = False
        if self._connected():
            try:
                points = self.collector.collect(self.conn)
                self.up = True
            except Exception as exc:  # noqa: BLE001 - never crash: said once, up=0
                self._failed("the metrics collection", exc)
            self.queries_total += self.collector.queries
        by_name: dict[str, list[Point]] = {}
        for point in points:
            by_name.setdefault(point.name, []).append(point)
        by_name[UP.name] = [Point(UP.name, 1 if self.up else 0, {})]
        by_name[COLLECTION_QUERIES.name] = [Point(COLLECTION_QUERIES.name, self.queries_total, {})]
        if self.up:
            by_name[COLLECTION_DURATION.name] = [Point(COLLECTION_DURATION.name, time.perf_counter() - start, {})]
        self.points = by_name
        self.meter_provider.force_flush(timeout_millis=30_000)
        return self.up

    def emit(self, what: str, fn: Callable[[Any, str, Any], int]) -> int:
        if not self._connected():
            return 0
        try:
            return int(fn(self.conn, self.target.dialect, self.logger))
        except Exception as exc:  # noqa: BLE001 - the functions are guarded; this is the last line
            self._failed(what, exc)
            return 0

    def run(self, stop: threading.Event, once: bool = False) -> bool:
        """Until ``stop`` is set (``once``: one round of everything). Returns whether the last
        collection read the server."""
        s = self.settings
        due = {"metrics": 0.0, "samples": 0.0, "statements": 0.0}
        every = {
            "metrics": s.dbmonitor_interval,
            "samples": s.dbmonitor_sample_interval,
            "statements": s.dbmonitor_statements_interval,
        }
        while not stop.is_set():
            now = time.monotonic()
            if now >= due["metrics"]:
                self.collect_metrics()
                due["metrics"] = now + (every["metrics"] if self.up else self._retry_s())
            if every["samples"] and now >= due["samples"]:
                self.emit("the query samples", samples.emit_samples)
                due["samples"] = now + every["samples"]
            if every["statements"] and now >= due["statements"]:
                self.emit("the statement statistics", statements.emit_statements)
                due["statements"] = now + every["statements"]
            if once:
                break
            active = [due[k] for k in due if every[k]]
            stop.wait(max(0.0, min(active) - time.monotonic()))
        return self.up

    def close(self) -> None:
        timeout_ms = max(int(self.settings.shutdown_timeout_ms), 1)
        try:
            self.logger_provider.force_flush(timeout_millis=timeout_ms)
        finally:
            self.logger_provider.shutdown()
            self.meter_provider.shutdown(timeout_millis=timeout_ms)
            self._drop()
