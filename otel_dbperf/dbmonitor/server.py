"""What ``postgres.py`` and ``mysql.py`` share: the metric table's rows and one collection's points."""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

#: ``counter``: cumulative and monotonic (an observable counter: Prometheus ``_total``);
#: ``updown``: a cumulative non-monotonic sum; ``gauge``: a gauge
Kind = Literal["counter", "updown", "gauge"]


class Metric(NamedTuple):
    name: str
    kind: Kind
    unit: str
    description: str


class Point(NamedTuple):
    name: str
    value: float
    attributes: dict[str, Any]


#: the monitor's own metrics, for every dialect
UP = Metric(
    "dbperf.db.server.up", "gauge", "{up}", "1 when the last collection read the server's statistics, 0 when it failed"
)
COLLECTION_DURATION = Metric(
    "dbperf.db.server.collection.duration", "gauge", "s", "How long the last collection took (its queries, end to end)"
)
COLLECTION_QUERIES = Metric(
    "dbperf.db.server.collection.queries", "counter", "{query}", "Queries the monitor issued to the server"
)
OWN = (UP, COLLECTION_DURATION, COLLECTION_QUERIES)

#: upstream has no name for these, on either dialect
TRANSACTION_MAX_AGE = Metric(
    "dbperf.db.server.transaction.max_age", "gauge", "s", "Age of the oldest open transaction on the server (0: none)"
)
IDLE_IN_TRANSACTION_MAX_AGE = Metric(
    "dbperf.db.server.idle_in_transaction.max_age",
    "gauge",
    "s",
    "Longest time a session has sat idle inside an open transaction (0: none)",
)
SESSIONS_WAITING = Metric("dbperf.db.server.sessions.waiting", "gauge", "{session}", "Sessions waiting for a lock now")
SESSIONS_BLOCKING = Metric(
    "dbperf.db.server.sessions.blocking", "gauge", "{session}", "Sessions holding a lock that another session waits for"
)
SESSION_METRICS = (TRANSACTION_MAX_AGE, IDLE_IN_TRANSACTION_MAX_AGE, SESSIONS_WAITING, SESSIONS_BLOCKING)


def rows(conn: Any, sql: str) -> list[tuple[Any, ...]]:
    """One statement on the monitor's (autocommit) connection, every row."""
    cur = conn.cursor()
    try:
        cur.execute(sql)
        return list(cur.fetchall())
    finally:
        cur.close()
