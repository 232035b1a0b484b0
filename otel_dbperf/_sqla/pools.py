"""SQLAlchemy connection pools: how long a request waited for a connection, and the pools' state.

SQLAlchemy has no event before a checkout starts waiting, so the hook is
``Pool.connect`` itself, replaced at the class level (``Pool`` and the subclasses
that define their own, ``SingletonThreadPool``): every engine's pool, sync or async,
created before or after us, goes through it. Per checkout the request thread pays two
``perf_counter_ns`` reads, a ``deque`` append and pop (the pending-request count: both
are atomic, no lock), one lookup of the current request and one ``deque`` append of the
measurement; the metrics are recorded by a background thread (and by every metric
collection, which drains first). ``Pool._return_conn`` (the check-in of a connection
record) is replaced likewise for the use time, and a class-level ``connect`` pool event
gives the create time (``_ConnectionRecord.starttime`` is taken just before the driver's
connect).

The wait is what ``Pool.connect`` takes: waiting for a free connection, opening a new one
when the pool may grow, and the ``pool_pre_ping`` round trip. A checkout that times out
(``sqlalchemy.exc.TimeoutError``) counts in ``db.client.connection.timeouts`` and
``dbperf.db.errors{dbperf.db.error.kind=pool_timeout}``; its wait counts in the request's
``dbperf.db.pool_wait_ms`` but not in the wait-time histogram (whose count is the checkouts).

The pool's name (``db.client.connection.pool.name``): the ``pool_logging_name`` given to
``create_engine``, else the engine's URL without user, password and query
(``postgresql+psycopg://db:5432/shop``), found once per pool from the engine that asks
for its first connection; a pool used without an engine is named after its dialect.
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Iterable
from itertools import islice
from typing import Any

from opentelemetry.metrics import CallbackOptions, Observation

from .. import _error_kind, _forksafe
from .. import attributes as A
from .. import metric_names as M
from .._error_kind import POOL_TIMEOUT
from .._guard import internal_error
from .._pipeline.record import Thresholds
from ..metrics import METER_NAME

POOL_NAME = A.DB_CLIENT_CONNECTION_POOL_NAME
STATE = "db.client.connection.state"
_KEY = "_dbperf_pool"  # on a Pool instance: its _PoolState
_OUT = "_dbperf_out"  # on a checked-out _ConnectionRecord: perf_counter_ns at its checkout
_MAX_QUEUE = 100_000  # measurements awaiting the metrics thread; past it they are dropped
_MAX_REQUESTS = 10_000  # requests whose distinct connections are remembered
_DRAIN_INTERVAL_S = 0.5
_MAX_FRAMES = 8  # frames looked at for the engine that asks a new pool for a connection
# measurement kinds in the queue
_WAIT, _USE, _CREATE, _TIMEOUT, _ERROR = range(5)

_now = time.perf_counter_ns


class _PoolState:
    """What otel-dbperf keeps for one pool."""

    __slots__ = ("name", "attrs", "pending", "out", "pool", "__weakref__")

    def __init__(self, pool: Any, name: str) -> None:
        self.name = name
        self.attrs = {POOL_NAME: name}
        self.pending: deque[None] = deque()  # checkouts in progress (atomic append/pop: no lock)
        self.out: deque[None] = deque()  # connections checked out and not yet returned
        self.pool = weakref.ref(pool)


class _State:
    """This module's state: the thresholds, the metrics queue, the originals that were replaced."""

    def __init__(self) -> None:
        self.slow_ns = 100_000_000  # Thresholds.slow_ns: a wait this long is a pool_wait event
        self.queue: deque[tuple[Any, ...]] | None = None  # None: no metrics
        self.dropped = 0
        self.metrics: Any = None
        self.originals: dict[Any, tuple[Any, Any]] = {}
        self.connect_listener: Any = None
        self.pools: weakref.WeakSet[Any] = weakref.WeakSet()
        self.conns: dict[int, set[int]] = {}  # request root id -> ids of the connection records it checked out
        self.records: Any = None  # the DbPerfSpanProcessor whose requests the hooks add to (install's records)
        self.lock = _forksafe.lock("pools.hooks")  # install/uninstall and new pools only


_state = _State()


def pool_name(pool: Any, engine: Any = None) -> str:
    """The ``db.client.connection.pool.name`` of ``pool`` (of ``engine``, when known)."""
    explicit = getattr(pool, "_orig_logging_name", None)
    if isinstance(explicit, str) and explicit:
        return explicit
    url = getattr(engine, "url", None)
    if url is not None:
        try:
            bare = type(url).create(url.drivername, host=url.host, port=url.port, database=url.database)
            return str(bare.render_as_string(hide_password=True))
        except Exception:  # noqa: BLE001 - an odd URL object: fall back to the dialect
            pass
    dialect = getattr(pool, "_dialect", None)
    name = getattr(dialect, "name", None)
    driver = getattr(dialect, "driver", None)
    if isinstance(name, str) and name:
        return f"{name}+{driver}" if isinstance(driver, str) and driver else name
    return type(pool).__name__


def _register(pool: Any) -> _PoolState:
    """A pool's first checkout: its state, named after the engine that asked (found on the stack)."""
    engine = None
    frame: Any = sys._getframe(2)  # noqa: SLF001 - the caller of Pool.connect
    for _ in range(_MAX_FRAMES):
        if frame is None:
            break
        candidate = frame.f_locals.get("self")
        if candidate is not None and getattr(candidate, "pool", None) is pool:
            engine = candidate
            break
        frame = frame.f_back
    with _state.lock:
        state = pool.__dict__.get(_KEY)
        if state is None:
            state = _PoolState(pool, pool_name(pool, engine))
            pool.__dict__[_KEY] = state
            _state.pools.add(pool)
    queue = _state.queue
    if queue is not None:  # the pool's timeout counter starts at 0, so increase() sees its first timeout
        _put(queue, (_TIMEOUT, state, 0))
    return state  # type: ignore[no-any-return]


def _wrap_connect(original: Any) -> Any:
    def connect(self: Any) -> Any:
        try:
            state = self.__dict__.get(_KEY) or _register(self)
            pending = state.pending
            pending.append(None)
        except Exception as exc:  # noqa: BLE001 - never into the application
            internal_error("pools.connect", exc)
            return original(self)
        t0 = _now()
        try:
            fairy = original(self)
        except BaseException as exc:
            waited = _now() - t0
            pending.pop()
            _failed(state, exc, waited)
            raise
        t1 = _now()
        pending.pop()
        _checked_out(self, state, fairy, t1 - t0, t1)
        return fairy

    connect.__wrapped__ = original  # type: ignore[attr-defined]
    connect.__doc__ = original.__doc__
    return connect


def _checked_out(pool: Any, state: _PoolState, fairy: Any, waited: int, t1: int) -> None:
    try:
        record = fairy._connection_record  # noqa: SLF001
        if record is not None:
            extra = record.__dict__
            if _OUT not in extra:
                state.out.append(None)
            extra[_OUT] = t1
        queue = _state.queue
        if queue is not None:
            _put(queue, (_WAIT, state, waited))
        records = _state.records
        request = records.current_request() if records is not None else None
        if request is None:
            return
        request.add(A.DB_POOL_WAIT_MS, waited / 1e6)
        if record is not None:
            conns = _state.conns
            seen = conns.get(request.root_id)
            if seen is None:
                if len(conns) >= _MAX_REQUESTS:
                    for key in list(islice(conns, _MAX_REQUESTS // 10)):
                        conns.pop(key, None)
                seen = conns[request.root_id] = set()
            key = id(record)
            if key not in seen:
                seen.add(key)
                request.add(A.DB_CONNECTIONS_USED, 1)
        if waited >= _state.slow_ns:
            request.event(A.EVENT_POOL_WAIT, _wait_event(pool, state, waited))
    except Exception as exc:  # noqa: BLE001
        internal_error("pools.checkout", exc)


def _failed(state: _PoolState, exc: BaseException, waited: int) -> None:
    try:
        timed_out = type(exc).__name__ == "TimeoutError" and type(exc).__module__ == "sqlalchemy.exc"
        queue = _state.queue
        if queue is not None and timed_out:
            _put(queue, (_TIMEOUT, state, 1))
        records = _state.records
        request = records.current_request() if records is not None else None
        if request is None:
            return
        request.add(A.DB_POOL_WAIT_MS, waited / 1e6)
        if timed_out:
            request.add(A.DB_POOL_TIMEOUTS, 1)
            pool = state.pool()
            if pool is not None:
                request.event(A.EVENT_POOL_WAIT, _wait_event(pool, state, waited, timed_out=True))
    except Exception as err:  # noqa: BLE001
        internal_error("pools.checkout", err)


def _wait_event(pool: Any, state: _PoolState, waited: int, timed_out: bool = False) -> dict[str, Any]:
    """The ``dbperf.pool_wait`` event's attributes: the pool and its state now."""
    attrs: dict[str, Any] = {
        POOL_NAME: state.name,
        A.EVENT_DURATION_MS: waited / 1e6,
        A.EVENT_THRESHOLD_MS: _state.slow_ns / 1e6,
        A.POOL_CLASS: type(pool).__name__,
        A.POOL_PENDING_REQUESTS: len(state.pending),
    }
    if timed_out:
        attrs[A.POOL_TIMED_OUT] = True
    size, used, idle, overflow, _ = _snapshot(pool, state)
    if size is not None:
        attrs[A.POOL_SIZE] = size
    attrs[A.POOL_CHECKED_OUT] = used
    attrs[A.POOL_IDLE] = idle
    if overflow is not None:
        attrs[A.POOL_OVERFLOW] = overflow
    return attrs


def _wrap_return(original: Any) -> Any:
    def _return_conn(self: Any, record: Any) -> Any:
        try:
            extra = getattr(record, "__dict__", None)
            started = extra.pop(_OUT, None) if extra is not None else None
            if started is not None:
                state = self.__dict__.get(_KEY)
                if state is not None:
                    if state.out:
                        state.out.pop()
                    queue = _state.queue
                    if queue is not None:
                        _put(queue, (_USE, state, _now() - started))
        except Exception as exc:  # noqa: BLE001
            internal_error("pools.checkin", exc)
        return original(self, record)

    _return_conn.__wrapped__ = original  # type: ignore[attr-defined]
    return _return_conn


def _on_pool_connect(dbapi_connection: Any, record: Any) -> None:
    """Pool ``connect`` event: a new DB-API connection was made (``record.starttime`` is when it began)."""
    try:
        queue = _state.queue
        if queue is None:
            return
        started = getattr(record, "starttime", 0)
        pool = getattr(record, "_ConnectionRecord__pool", None)
        if not started or pool is None:
            return
        state = pool.__dict__.get(_KEY) or _register(pool)
        _put(queue, (_CREATE, state, max(0.0, time.time() - started)))
    except Exception as exc:  # noqa: BLE001
        internal_error("pools.connect_event", exc)


def _put(queue: deque[tuple[Any, ...]], item: tuple[Any, ...]) -> None:
    metrics = _state.metrics
    if metrics is not None and metrics.needs_thread:
        metrics.start()
    if len(queue) < _MAX_QUEUE:
        queue.append(item)
    else:
        _state.dropped += 1


def count_error(kind: str) -> None:
    """A DB span failed with a classified error (the processor's error counter: errors only)."""
    queue = _state.queue
    if queue is not None:
        _put(queue, (_ERROR, kind, 1))


def _snapshot(pool: Any, state: _PoolState) -> tuple[int | None, int, int, int | None, int | None]:
    """(size, used, idle, overflow, max) of ``pool``; None where the pool has no such figure."""
    out = len(state.out)
    cls = type(pool)
    names = {c.__name__ for c in cls.__mro__}
    if "QueuePool" in names:
        size = pool.size()
        idle = pool.checkedin()
        used = pool.checkedout()
        overflow = max(0, pool.overflow())
        max_overflow = pool._max_overflow  # noqa: SLF001
        return size, max(0, used), idle, overflow, (None if max_overflow < 0 or size == 0 else size + max_overflow)
    if "StaticPool" in names:
        made = "connection" in pool.__dict__
        used = 1 if out and made else 0
        return 1, used, (1 - used) if made else 0, None, 1
    if "SingletonThreadPool" in names:
        opened = len(getattr(pool, "_all_conns", ()))
        used = min(out, opened)
        return pool.size, used, opened - used, None, None
    if "AssertionPool" in names:
        return 1, min(out, 1), 0, None, 1
    return None, out, 0, None, None  # NullPool (every connection is opened and closed) and others


class PoolMetrics:
    """The ``db.client.connection.*`` instruments and the thread that records the queued measurements."""

    def __init__(self, meter_provider: Any, version: str = "") -> None:
        meter = meter_provider.get_meter(METER_NAME, version)
        self._wait = meter.create_histogram(
            M.DB_CLIENT_CONNECTION_WAIT_TIME.name,
            unit="s",
            description="Time to obtain an open connection from the pool.",
        )
        self._use = meter.create_histogram(
            M.DB_CLIENT_CONNECTION_USE_TIME.name,
            unit="s",
            description="Time between borrowing a connection and returning it to the pool.",
        )
        self._create = meter.create_histogram(
            M.DB_CLIENT_CONNECTION_CREATE_TIME.name, unit="s", description="Time it took to create a new connection."
        )
        self._timeouts = meter.create_counter(
            M.DB_CLIENT_CONNECTION_TIMEOUTS.name,
            unit="{timeout}",
            description="Connection attempts that timed out waiting for the pool.",
        )
        self._errors = meter.create_counter(
            M.DB_ERRORS.name,
            unit="{error}",
            description="Database timeouts, lock waits, deadlocks, serialization failures and pool timeouts.",
        )
        for kind in _error_kind.KINDS:  # every kind's series exists from 0: increase() sees the first error
            self._errors.add(0, {A.DB_ERROR_KIND: kind})
        meter.create_observable_up_down_counter(
            M.DB_CLIENT_CONNECTION_COUNT.name,
            callbacks=[self._count],
            unit="{connection}",
            description="Connections in the pool, by state (idle, used).",
        )
        meter.create_observable_up_down_counter(
            M.DB_CLIENT_CONNECTION_MAX.name,
            callbacks=[self._max],
            unit="{connection}",
            description="The most open connections the pool allows.",
        )
        meter.create_observable_up_down_counter(
            M.DB_CLIENT_CONNECTION_IDLE_MAX.name,
            callbacks=[self._idle_max],
            unit="{connection}",
            description="The most idle open connections the pool keeps.",
        )
        meter.create_observable_up_down_counter(
            M.DB_CLIENT_CONNECTION_PENDING_REQUESTS.name,
            callbacks=[self._pending],
            unit="{request}",
            description="Checkouts waiting for a connection.",
        )
        self.queue: deque[tuple[Any, ...]] = deque()
        self._drain_lock = _forksafe.lock("pools.drain")
        self._start_lock = _forksafe.lock("pools.start")
        self.needs_thread = True

    def start(self) -> None:
        with self._start_lock:
            if self.needs_thread:
                threading.Thread(target=self._run, name="otel-dbperf-pools", daemon=True).start()
                self.needs_thread = False

    def after_fork_in_child(self) -> None:
        self.needs_thread = True  # the locks: renewed by _forksafe
        self.queue.clear()

    def _run(self) -> None:
        while True:
            time.sleep(_DRAIN_INTERVAL_S)
            self.drain()

    def drain(self) -> None:
        queue = self.queue
        if not self._drain_lock.acquire(timeout=5.0):
            return
        try:
            for _ in range(len(queue)):  # what is queued now: a faster producer never keeps the lock
                try:
                    kind, subject, value = queue.popleft()
                except IndexError:
                    return
                try:
                    if kind == _WAIT:
                        self._wait.record(value / 1e9, subject.attrs)
                    elif kind == _USE:
                        self._use.record(value / 1e9, subject.attrs)
                    elif kind == _CREATE:
                        self._create.record(value, subject.attrs)
                    elif kind == _TIMEOUT:
                        self._timeouts.add(value, subject.attrs)
                        if value:
                            self._errors.add(value, {A.DB_ERROR_KIND: POOL_TIMEOUT})
                    else:
                        self._errors.add(1, {A.DB_ERROR_KIND: subject})
                except Exception as exc:  # noqa: BLE001
                    internal_error("pools.metrics", exc)
        finally:
            self._drain_lock.release()

    def _per_name(self) -> dict[str, list[Any]]:
        """Each pool name's [size, used, idle, max, idle_max, pending]; pools that share a name add up."""
        totals: dict[str, list[Any]] = {}
        for pool in list(_state.pools):
            state = pool.__dict__.get(_KEY)
            if state is None:
                continue
            try:
                size, used, idle, _, most = _snapshot(pool, state)
            except Exception as exc:  # noqa: BLE001
                internal_error("pools.metrics", exc)
                continue
            row = totals.get(state.name)
            if row is None:
                row = totals[state.name] = [0, 0, 0, 0, 0, 0]
            row[1] += used
            row[2] += idle
            row[3] = None if most is None or row[3] is None else row[3] + most
            row[4] += size if size is not None else 0
            row[5] += len(state.pending)
        return totals

    def _count(self, options: CallbackOptions) -> Iterable[Observation]:
        self.drain()
        for name, row in self._per_name().items():
            yield Observation(row[2], {POOL_NAME: name, STATE: "idle"})
            yield Observation(row[1], {POOL_NAME: name, STATE: "used"})

    def _max(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, row in self._per_name().items():
            if row[3] is not None:
                yield Observation(row[3], {POOL_NAME: name})

    def _idle_max(self, options: CallbackOptions) -> Iterable[Observation]:
        for name, row in self._per_name().items():
            yield Observation(row[4], {POOL_NAME: name})

    def _pending(self, options: CallbackOptions) -> Iterable[Observation]:
        self.drain()
        for name, row in self._per_name().items():
            yield Observation(row[5], {POOL_NAME: name})


def _pool_classes() -> list[Any]:
    """``Pool`` and every pool class of SQLAlchemy's that defines its own ``connect``."""
    from sqlalchemy import pool as sa_pool

    base = sa_pool.Pool
    subclasses = (getattr(sa_pool, name) for name in dir(sa_pool))
    own = [c for c in subclasses if isinstance(c, type) and issubclass(c, base) and "connect" in vars(c)]
    return [base, *(c for c in own if c is not base)]


def install(thresholds: Thresholds, meter_provider: Any = None, version: str = "", records: Any = None) -> bool:
    """Hook every SQLAlchemy pool (idempotent); metrics when ``meter_provider`` is given.

    ``records``: the ``DbPerfSpanProcessor`` whose requests get the per-request figures (None: none),
    and which, with metrics, counts classified DB errors into ``dbperf.db.errors`` through
    :func:`count_error`. False when SQLAlchemy cannot be imported.
    """
    try:
        from sqlalchemy import event
        from sqlalchemy import pool as sa_pool
    except ImportError:
        return False
    with _state.lock:
        _state.slow_ns = thresholds.slow_ns
        if meter_provider is not None and _state.metrics is None:
            _state.metrics = PoolMetrics(meter_provider, version)
            _state.queue = _state.metrics.queue
        _state.records = records
        if records is not None:
            records.attach_error_counter(count_error if _state.metrics is not None else None)
        if _state.originals:
            return True
        for cls in _pool_classes():
            original = vars(cls)["connect"]
            cls.connect = _wrap_connect(original)
            _state.originals[(cls, "connect")] = (cls, original)
        original_return = vars(sa_pool.Pool)["_return_conn"]
        sa_pool.Pool._return_conn = _wrap_return(original_return)  # type: ignore[method-assign]
        _state.originals[(sa_pool.Pool, "_return_conn")] = (sa_pool.Pool, original_return)
        event.listen(sa_pool.Pool, "connect", _on_pool_connect)
        _state.connect_listener = _on_pool_connect
    return True


def uninstall(metrics: bool = True) -> None:
    """Undo :func:`install` (tests); ``metrics`` False keeps the instruments for a later install (bench)."""
    with _state.lock:
        for (_, attr), (cls, original) in _state.originals.items():
            setattr(cls, attr, original)
        _state.originals = {}
        if _state.connect_listener is not None:
            from sqlalchemy import event
            from sqlalchemy import pool as sa_pool

            event.remove(sa_pool.Pool, "connect", _state.connect_listener)
            _state.connect_listener = None
        if metrics:
            _state.queue = None
            _state.metrics = None
            if _state.records is not None:
                _state.records.attach_error_counter(None)
        _state.records = None
        _state.conns = {}


def after_fork_in_child() -> None:
    """The child forgets the parent's requests and queued measurements (see ``_sqla.after_fork_in_child``)."""
    _state.conns = {}
    if _state.metrics is not None:
        _state.metrics.after_fork_in_child()
