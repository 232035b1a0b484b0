"""The database servers' side of the report: from the OTLP JSON metric lines that
``otel-dbperf dbmonitor --file`` (or a Collector's file exporter) wrote, per server and within the
report's window: the connection peak against ``max_connections``, the error rate (rollbacks of all
transactions) and the cache hit ratio (docs/report.md, docs/database.md).

Bounded: per server and series only the first and the last point of each cumulative counter, and
the peak of the connections; at most ``MAX_SERVERS`` servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_SERVERS = 1000

#: metric -> what it counts in the report, by dialect (the upstream receivers' names)
_COUNTERS = {
    "postgresql.commits": "commits",
    "postgresql.rollbacks": "rollbacks",
    "postgresql.blks_hit": "hits",
    "postgresql.blks_read": "misses",
    "postgresql.deadlocks": "deadlocks",
    "dbperf.db.server.deadlocks": "deadlocks",
}
_MAX = {"postgresql.connection.max", "dbperf.db.server.connection.max"}


def _value(point: dict[str, Any]) -> float | None:
    raw = point.get("asInt", point.get("asDouble"))
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def _attributes(items: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict) and isinstance(item.get("value"), dict) and item["value"]:
            found[str(item.get("key"))] = next(iter(item["value"].values()))
    return found


@dataclass
class Server:
    system: str = ""
    collections: set[int] = field(default_factory=set)
    #: (what, series key) -> [(time, value) first, (time, value) last]
    counters: dict[tuple[str, str], list[tuple[int, float]]] = field(default_factory=dict)
    #: time -> connections in use at that collection
    connections: dict[int, float] = field(default_factory=dict)
    max_connections: float = 0.0

    def counter(self, what: str, series: str, time: int, value: float) -> None:
        seen = self.counters.get((what, series))
        if seen is None:
            self.counters[(what, series)] = [(time, value), (time, value)]
            return
        if time < seen[0][0]:
            seen[0] = (time, value)
        if time >= seen[1][0]:
            seen[1] = (time, value)

    def delta(self, what: str) -> float:
        total = 0.0
        for (kind, _), (first, last) in self.counters.items():
            if kind == what:
                total += last[1] - first[1] if last[1] >= first[1] else last[1]  # a reset: from zero
        return total

    def as_dict(self, instance: str) -> dict[str, Any]:
        peak = max(self.connections.values(), default=0.0)
        commits, rollbacks = self.delta("commits"), self.delta("rollbacks")
        hits, misses = self.delta("hits"), self.delta("misses")
        if self.system == "mysql":  # read_requests and reads: a read from disk is also a request
            misses, hits = self.delta("reads"), self.delta("read_requests") - self.delta("reads")
        ended = commits + rollbacks
        return {
            "instance": instance,
            "db_system": self.system,
            "collections": len(self.collections),
            "connections_peak": peak,
            "max_connections": self.max_connections,
            "connections_peak_ratio": round(peak / self.max_connections, 4) if self.max_connections else None,
            "commits": commits,
            "rollbacks": rollbacks,
            "rollback_ratio": round(rollbacks / ended, 4) if ended else None,
            "deadlocks": self.delta("deadlocks"),
            "cache_hit_ratio": round(hits / (hits + misses), 4) if hits + misses > 0 else None,
        }


class ServerStats:
    """Fed one OTLP JSON metrics message at a time (``add``); ``as_list`` for the report."""

    def __init__(self, since_ns: int = 0, until_ns: int = 0) -> None:
        self.since_ns = since_ns
        self.until_ns = until_ns
        self.servers: dict[str, Server] = {}

    def add(self, message: dict[str, Any]) -> None:
        for rm in message.get("resourceMetrics") or ():
            if not isinstance(rm, dict):
                continue
            resource = _attributes((rm.get("resource") or {}).get("attributes"))
            instance = str(
                resource.get("service.instance.id")
                or f"{resource.get('server.address', '')}:{resource.get('server.port', '')}"
            )
            for sm in rm.get("scopeMetrics") or ():
                for metric in (sm or {}).get("metrics") or ():
                    if isinstance(metric, dict):
                        self._metric(instance, metric)

    def _metric(self, instance: str, metric: dict[str, Any]) -> None:
        name = str(metric.get("name", ""))
        if not name.startswith(("postgresql.", "mysql.", "dbperf.db.server.")):
            return
        body = metric.get("sum") or metric.get("gauge") or {}
        by_time: dict[int, float] = {}
        for point in body.get("dataPoints") or ():
            if not isinstance(point, dict):
                continue
            value = _value(point)
            try:
                time = int(point.get("timeUnixNano", 0))
            except (TypeError, ValueError):
                continue
            if value is None or (self.since_ns and time < self.since_ns) or (self.until_ns and time > self.until_ns):
                continue
            server = self._server(instance)
            if server is None:
                return
            attrs = _attributes(point.get("attributes"))
            server.system = str(attrs.get("db.system.name", server.system))
            series = repr(sorted(attrs.items()))
            if name == "dbperf.db.server.up":
                server.collections.add(time)
            elif name in _COUNTERS:
                server.counter(_COUNTERS[name], series, time, value)
            elif name == "mysql.handlers" and attrs.get("kind") in ("commit", "rollback"):
                server.counter("commits" if attrs["kind"] == "commit" else "rollbacks", series, time, value)
            elif name == "mysql.buffer_pool.operations" and attrs.get("operation") in ("reads", "read_requests"):
                server.counter(str(attrs["operation"]), series, time, value)
            elif name in _MAX:
                server.max_connections = value
            elif name == "postgresql.backends" or (name == "mysql.threads" and attrs.get("kind") == "connected"):
                by_time[time] = by_time.get(time, 0.0) + value
        if by_time:
            server = self.servers[instance]
            for time, used in by_time.items():
                server.connections[time] = max(server.connections.get(time, 0.0), used)

    def _server(self, instance: str) -> Server | None:
        server = self.servers.get(instance)
        if server is None and len(self.servers) < MAX_SERVERS:
            server = self.servers[instance] = Server()
        return server

    def as_list(self) -> list[dict[str, Any]]:
        return [s.as_dict(i) for i, s in sorted(self.servers.items()) if s.collections]


def render_lines(servers: list[dict[str, Any]]) -> list[str]:
    """The report's "Database servers" section (nothing without server metrics)."""
    if not servers:
        return []

    def share(value: Any) -> str:
        return "n/a" if value is None else f"{value * 100:.1f}%"

    lines = ["", "Database servers (otel-dbperf dbmonitor)"]
    for s in servers:
        lines.append(
            f"  {s['instance']} ({s['db_system']}): connections peak {s['connections_peak']:.0f}"
            f" of {s['max_connections']:.0f} ({share(s['connections_peak_ratio'])});"
            f" rollbacks {s['rollbacks']:.0f} of {s['commits'] + s['rollbacks']:.0f} transactions"
            f" ({share(s['rollback_ratio'])}); deadlocks {s['deadlocks']:.0f};"
            f" cache hit {share(s['cache_hit_ratio'])}; {s['collections']} collections"
        )
    return lines
