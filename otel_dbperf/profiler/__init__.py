"""In-process profiler API (``DBPERF_PROFILER_ADDR``, off by default): see docs/profiler.md.

A bounded :class:`QueryHistory` fed by otel-dbperf's derivation thread (:class:`HistorySink`),
served as JSON under ``/profiler/`` by :func:`start`.
"""

from .history import QueryEntry, QueryHistory
from .server import ProfilerServer, is_loopback, parse_addr, start
from .sink import HistorySink

__all__ = ["ProfilerServer", "QueryEntry", "QueryHistory", "is_loopback", "parse_addr", "start", "HistorySink"]
