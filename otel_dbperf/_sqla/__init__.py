"""The class-level SQLAlchemy listeners and the instrumentation fix-ups: one install, one uninstall,
one fork reset.

- :mod:`.instrument`: contrib's SQLAlchemy instrumentation beyond its declared range, sqlcommenter;
- :mod:`.duplicates` (with :mod:`.params`, the parameters' digest): exact duplicate queries;
- :mod:`.explain`: EXPLAIN plans for slow SELECTs (``DBPERF_EXPLAIN``);
- :mod:`.pools`: connection pools (waits, use, timeouts; the ``db.client.connection.*`` metrics);
- :mod:`.transactions`: transactions per request.

:func:`install` (from the post-instrument hook or :func:`otel_dbperf.configure`) starts each one as
an independent step: one that fails turns off its own feature, never the next. The listeners are
imported when they are installed, not before (start-up time).
"""

from __future__ import annotations

import sys
from typing import Any

from .. import _forksafe
from .._guard import step
from .._pipeline.record import Thresholds
from .._startup_log import startup_warning
from ..settings import Settings


class _State:
    """What :func:`install` made in this process."""

    def __init__(self) -> None:
        self.explainer: Any = None  # the Explainer, with DBPERF_EXPLAIN
        self.fork_reset = False  # after_fork_in_child registered


_state = _State()
_lock = _forksafe.lock("sqla.install")


def install(
    settings: Settings, thresholds: Thresholds, meter_provider: Any = None, version: str = "", records: Any = None
) -> None:
    """Every listener the settings ask for, on every SQLAlchemy engine (idempotent). ``records``: the
    ``DbPerfSpanProcessor`` whose open queries and requests the listeners write to (None: none)."""
    with _lock:
        if not _state.fork_reset:
            _forksafe.register(after_fork_in_child)
            _state.fork_reset = True
    if settings.explain:
        step("EXPLAIN setup", "no EXPLAIN plans (DBPERF_EXPLAIN)", install_explain, settings, thresholds, records)
    step("duplicate-query setup", "no dbperf.db.duplicate_count", _install_duplicates, records)
    step(
        "connection pool setup",
        "no pool metrics, waits or transactions",
        install_pools,
        thresholds,
        meter_provider,
        version,
        records,
    )


def install_explain(settings: Settings, thresholds: Thresholds, records: Any = None) -> None:
    """``DBPERF_EXPLAIN``: EXPLAIN slow SELECTs of every SQLAlchemy engine (see docs/explain.md)."""
    if _state.explainer is not None:
        return
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        startup_warning(
            "otel-dbperf: DBPERF_EXPLAIN=true but SQLAlchemy is not installed: plans are taken on "
            "SQLAlchemy engines only, so there will be none"
        )
        return
    from .explain import ExplainConfig, Explainer
    from .explain import install as listen

    explainer = Explainer(ExplainConfig(analyze=settings.explain_analyze, timeout_ms=settings.explain_timeout_ms))
    listen(explainer, thresholds.slow_ns, records=records)
    _state.explainer = explainer


def _install_duplicates(records: Any) -> None:
    if records is None:
        return
    from . import duplicates

    duplicates.install(records)


def install_pools(thresholds: Thresholds, meter_provider: Any = None, version: str = "", records: Any = None) -> None:
    """Connection pools and transactions; only once SQLAlchemy is imported (never imported here)."""
    if "sqlalchemy" not in sys.modules:
        return
    from . import pools, transactions

    pools.install(thresholds, meter_provider, version, records)
    transactions.install(thresholds, records)


def explainer() -> Any:
    """The Explainer :func:`install` made, or None."""
    return _state.explainer


def uninstall() -> None:
    """Undo :func:`install` (tests, bench): every listener taken off, the pool classes restored."""
    if "sqlalchemy" not in sys.modules:
        return
    from . import duplicates, pools, transactions
    from .explain import uninstall as unlisten

    unlisten()
    duplicates.uninstall()
    pools.uninstall()
    transactions.uninstall()
    _state.explainer = None


def after_fork_in_child() -> None:
    """A forked child forgets the parent's per-request state of every listener (its locks: renewed)."""
    for name in ("pools", "transactions"):
        module = sys.modules.get(f"{__name__}.{name}")
        if module is not None:
            module.after_fork_in_child()
