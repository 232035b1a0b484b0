from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest

from otel_dbperf import _guard

sys.path.insert(0, str(Path(__file__).parent / "apps"))
sys.path.insert(0, str(Path(__file__).parent))

from otlp_receiver import Receiver  # noqa: E402

TESTS = Path(__file__).parent
APPS = TESTS / "apps"
BIN = Path(sys.executable).parent
#: the pytest guard's example suites: each runs in its own pytest process (tests/test_guard_*.py)
collect_ignore = ["guard_suites"]

PG_HOST, PG_PORT = "127.0.0.1", 5432
REQUIRE_SERVICES = os.environ.get("DBPERF_REQUIRE_SERVICES") == "1"
SERVER_DB = "test"  # the database scripts/test sets the servers up with: a session's own is made from it
# Each test session works in a database of its own on PostgreSQL and on MariaDB (``dbperf_<pid>``),
# made when first needed and dropped at the end; one left by a killed session is dropped at the next
# start. A second suite running beside this one on the same servers never touches its tables.
PG_DB = MARIA_DB = f"dbperf_{os.getpid()}"
_OWN_DB = re.compile(r"dbperf_([0-9]+)")
_made: set[str] = set()  # "postgresql", "mariadb": the session's databases made so far


def _stale(name: str) -> bool:
    """A session database whose process is gone."""
    match = _OWN_DB.fullmatch(name)
    if not match or name == PG_DB:
        return False
    try:
        os.kill(int(match[1]), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _pg_reachable() -> str | None:
    try:
        import psycopg

        with psycopg.connect(
            host=PG_HOST,
            port=PG_PORT,
            dbname=SERVER_DB,
            user=os.environ.get("PGUSER", "postgres"),
            connect_timeout=3,
            autocommit=True,
        ) as conn:
            if "postgresql" not in _made:
                names = [r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'dbperf%'")]
                for name in filter(_stale, names):
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                if PG_DB not in names:
                    conn.execute(f'CREATE DATABASE "{PG_DB}"')
                _made.add("postgresql")
            return None
    except Exception as exc:  # noqa: BLE001
        return f"PostgreSQL at {PG_HOST}:{PG_PORT}/{SERVER_DB} not reachable: {exc}"


@pytest.fixture(scope="session")
def pg_user() -> str:
    reason = _pg_reachable()
    if reason:
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return os.environ.get("PGUSER", "postgres")


MARIA_URL = f"mysql+pymysql://root:@127.0.0.1:3306/{MARIA_DB}"


def maria_connect(autocommit: bool = False, **options: Any) -> Any:
    """A PyMySQL connection to MariaDB on 127.0.0.1:3306, the session's database (skips without it,
    fails under DBPERF_REQUIRE_SERVICES=1)."""
    import pymysql

    try:
        if "mariadb" not in _made:
            admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=SERVER_DB)
            with admin, admin.cursor() as cur:
                cur.execute("SHOW DATABASES LIKE 'dbperf%'")
                for name in [r[0] for r in cur.fetchall() if _stale(r[0])]:
                    cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{MARIA_DB}`")
            _made.add("mariadb")
        return pymysql.connect(
            host="127.0.0.1", port=3306, user="root", password="", database=MARIA_DB, autocommit=autocommit, **options
        )
    except Exception as exc:  # noqa: BLE001
        reason = f"MariaDB at 127.0.0.1:3306/{SERVER_DB} not reachable: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Drop the session's own databases (connections the tests left open are ended)."""
    try:
        if "postgresql" in _made:
            import psycopg

            user = os.environ.get("PGUSER", "postgres")
            with psycopg.connect(host=PG_HOST, port=PG_PORT, dbname=SERVER_DB, user=user, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{PG_DB}" WITH (FORCE)')
        if "mariadb" in _made:
            import pymysql

            admin = pymysql.connect(host="127.0.0.1", port=3306, user="root", password="", database=SERVER_DB)
            with admin, admin.cursor() as cur:
                cur.execute(f"DROP DATABASE IF EXISTS `{MARIA_DB}`")
    except Exception as exc:  # noqa: BLE001 - left for the next session's start to drop
        print(f"conftest: could not drop the session's databases: {exc}", file=sys.stderr)


REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
REDIS_DB = 11  # the tests' own Redis database number (the server may be shared); 12: test_stock_install's


@pytest.fixture(scope="session")
def redis_db() -> int:
    """A reachable Redis on 127.0.0.1:6379 (skips without it, fails under DBPERF_REQUIRE_SERVICES=1)."""
    try:
        import redis

        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        reason = f"Redis at {REDIS_HOST}:{REDIS_PORT} not reachable: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return REDIS_DB


@pytest.fixture(scope="session")
def pg_sync_url(pg_user: str) -> str:
    return f"postgresql+psycopg://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}"


@pytest.fixture(scope="session")
def pg_dsn(pg_user: str) -> str:
    return f"host={PG_HOST} port={PG_PORT} dbname={PG_DB} user={pg_user}"


@pytest.fixture(scope="session")
def pg_async_url(pg_user: str) -> str:
    return f"postgresql+asyncpg://{pg_user}@{PG_HOST}:{PG_PORT}/{PG_DB}"


@pytest.fixture(autouse=True)
def _reraise_internal_errors() -> Iterator[None]:
    _guard.RERAISE = True
    yield
    _guard.RERAISE = None


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


_EPHEMERAL = _ephemeral_range()


def free_port() -> int:
    """A loopback port that is free now, for a server a test starts later. Taken below the kernel's
    ephemeral range: a port the kernel handed out (bind to 0) may meanwhile become the source port
    of any outgoing connection on a busy machine ("Address already in use" when the server starts)."""
    low, high = (10000, _EPHEMERAL[0] - 1) if _EPHEMERAL[0] > 11000 else (_EPHEMERAL[1] + 1, 65535)
    for _ in range(200):
        port = random.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # everything tried was taken: the kernel's choice
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def marker_line(app_file: str, name: str) -> int:
    for i, line in enumerate((APPS / app_file).read_text().splitlines(), start=1):
        if line.rstrip().endswith(f"# marker: {name}"):
            return i
    raise LookupError(name)


def get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def get_json(url: str, token: str | None = None) -> Any:
    """The JSON body of a GET (with a bearer token if given); raises on an HTTP error."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=10) as resp:
        return json.loads(resp.read())


def base_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DBPERF_"))}
    env.update(
        OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_SERVICE_NAME="dbperf-test",
        PYTHONUNBUFFERED="1",
        # the test venv holds aiohttp's client instrumentation (tests/test_httpasync_*): loading it
        # imports aiohttp, ~0.1 s of every app's start-up; the tests that need it pass their own list
        OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="aiohttp-client",
    )
    env.update(extra)
    return env


@contextmanager
def serve(
    kind: str,
    app: str,
    env: dict[str, str],
    *extra_args: str,
    bin_dir: Path = BIN,
    cwd: Path = APPS,
    instrument: bool = True,
) -> Iterator[dict[str, Any]]:
    """Run ``app`` under opentelemetry-instrument (or without it: ``instrument=False``) behind a real
    server (from ``bin_dir``); yield its base URL.

    ``kind`` "runserver": Django's development server, ``app`` the project's manage.py (in ``cwd``)."""
    port = free_port()
    if kind == "runserver":
        server = [str(bin_dir / "python"), app, "runserver", f"127.0.0.1:{port}", "--noreload", *extra_args]
    elif kind == "gunicorn":
        server = [str(bin_dir / "gunicorn"), "-b", f"127.0.0.1:{port}", "--graceful-timeout", "5", *extra_args, app]
    else:
        server = [
            str(bin_dir / "uvicorn"),
            app,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *extra_args,
        ]
        if "--workers" in extra_args and "--timeout-worker-healthcheck" not in extra_args:
            # uvicorn kills a spawned worker that has not answered in 5 s: a loaded machine's first import
            server += ["--timeout-worker-healthcheck", "60"]
    cmd = [str(bin_dir / "opentelemetry-instrument"), *server] if instrument else server
    log = open(TESTS / f".server-{port}.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    info: dict[str, Any] = {"url": base, "proc": proc, "log": log}
    try:
        deadline = time.monotonic() + 120  # a hang guard: a loaded 2-core machine starts servers slowly
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise AssertionError(f"server exited: {log.read()}")
            try:  # refused until the server listens; once it does, the one probe waits to be served
                if get(base + "/ping", timeout=60)[0] == 200:  # (a probe given up on is served later, twice)
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                log.seek(0)
                raise AssertionError(f"server did not start: {log.read()}")
            time.sleep(0.1)
        yield info
    finally:
        stop_group(proc, log, info, 15)


def server_output(info: dict[str, Any]) -> str:
    log = info["log"]
    log.flush()
    with open(log.name) as f:
        return f.read()


def statement(span: dict[str, Any]) -> str:
    """A received span's statement (the current or the older attribute name), or ""."""
    return str(span["attributes"].get("db.query.text") or span["attributes"].get("db.statement") or "")


def system(span: dict[str, Any]) -> str:
    """A received span's database system (the current or the older attribute name), or ""."""
    return str(span["attributes"].get("db.system.name") or span["attributes"].get("db.system") or "")


def listening(pid: int) -> set[int]:
    """The TCP ports that process ``pid`` and its descendants listen on."""
    import psutil

    parent = psutil.Process(pid)
    return {
        c.laddr.port
        for p in (parent, *parent.children(recursive=True))
        for c in p.net_connections("tcp")
        if c.status == psutil.CONN_LISTEN
    }


def until(read: Callable[[], Any], done: Callable[[Any], bool], timeout: float = 30.0) -> Any:
    """Poll ``read`` until ``done(value)``, at most ``timeout`` s: a hang guard, not a timing test."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.1)
        value = read()
    return value


#: the kit's binaries (scripts/build-kit builds them; scripts/test runs that first)
KIT_BIN = Path(os.environ.get("DBPERF_KIT_BIN") or Path(__file__).parent.parent / ".cache" / "kit" / "bin")


def kit_binary(name: str) -> Path:
    """The kit's ``name`` binary; its tests skip without it (fail under DBPERF_REQUIRE_SERVICES=1)."""
    path = KIT_BIN / name
    if not os.access(path, os.X_OK):
        reason = f"{path} missing (scripts/build-kit builds it; scripts/test runs that first)"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return path


T = TypeVar("T")
HANG_GUARD_S = 180.0  # how long wait_for waits on a loaded machine: generous, never a verdict


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = HANG_GUARD_S) -> T:
    """Poll ``probe`` until it returns something true (an ``OSError`` counts as not yet), at most
    ``timeout`` s: a hang guard on a loaded machine, never a verdict."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            found = probe()
        except OSError as exc:
            found, last = None, exc
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def spans_named(spans: list[dict[str, Any]], pattern: str) -> list[dict[str, Any]]:
    rx = re.compile(pattern)
    return [s for s in spans if rx.search(s["name"])]


def seeded(url: str) -> str:
    """``url`` with the test apps' models (tests/apps/models.py) seeded into it."""
    from models import seed
    from sqlalchemy import create_engine

    engine = create_engine(url)
    seed(engine)
    engine.dispose()
    return url


def seeded_db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_name: str, seed: Any) -> str:
    """For a fixture parametrized ``sqlite``/``postgresql``: the database URL, seeded by ``seed(engine)``."""
    from sqlalchemy import create_engine

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / sqlite_name}"
    else:
        url = request.getfixturevalue("pg_sync_url")
    engine = create_engine(url)
    seed(engine)
    engine.dispose()
    return str(url)


def stop_group(proc: subprocess.Popen[Any], log: Any, info: dict[str, Any], timeout: float) -> None:
    """End a server started in its own process group (SIGTERM, then SIGKILL after ``timeout`` s);
    its output (a temporary file) goes to ``info["output"]``."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.seek(0)
    info["output"] = log.read()
    log.close()
    os.unlink(log.name)


def data_points(data: Any, name: str) -> list[Any]:
    """The data points of metric ``name`` in an in-memory reader's collection (None: none)."""
    found: list[Any] = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found
