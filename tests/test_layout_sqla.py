"""The SQLAlchemy listeners' one install, one uninstall and one fork reset (``otel_dbperf._sqla``)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy
from sqlalchemy import text
from support.pipeline import Pipeline

from otel_dbperf import Settings, _sqla
from otel_dbperf._sqla import pools, transactions

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


@pytest.fixture
def installed() -> Iterator[Pipeline]:
    pipeline = Pipeline(Settings())
    _sqla.install(pipeline.settings, pipeline.processor.thresholds, records=pipeline.processor)
    yield pipeline
    _sqla.uninstall()
    pipeline.close()


def _in_child(check: Callable[[], bool]) -> int:
    """The exit code of a forked child that calls ``check`` (0: it returned True)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 2
        try:
            code = 0 if check() else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_a_forked_child_forgets_the_parents_open_transactions_and_requests(installed: Pipeline) -> None:
    """A transaction open at the fork is the parent's: the child's copy of its connection keeps the
    same id, so a child that ends it must not find the parent's entry (its request is the parent's)."""
    engine = sqlalchemy.create_engine("sqlite://")
    with installed.request("/orders"), engine.connect() as conn:
        conn.begin()
        conn.execute(text("SELECT 1"))
        assert transactions._state.open, "the parent follows its open transaction"
        pools._state.conns[-1] = {-2}  # a request of the parent's and its connection (its pool is not ours here)
        assert _in_child(lambda: not transactions._state.open and not pools._state.conns) == 0
        conn.rollback()
    engine.dispose()


def test_uninstall_takes_every_listener_off(installed: Pipeline) -> None:
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.pool import Pool

    assert event.contains(Engine, "begin", transactions._begin)
    assert pools._state.originals
    _sqla.uninstall()
    assert not event.contains(Engine, "begin", transactions._begin)
    assert not pools._state.originals and "_dbperf" not in repr(vars(Pool)["connect"])
