"""In-process profiler API (``DBPERF_PROFILER_ADDR``, off by default): see docs/profiler.md.

A bounded :class:`QueryHistory` fed from the export thread (:func:`record_span` or
:meth:`QueryHistory.add`), served as JSON under ``/profiler/`` by :func:`start`.
"""

from .history import QueryEntry, QueryHistory, record_span
from .server import ProfilerServer, is_loopback, parse_addr, start

__all__ = ["ProfilerServer", "QueryEntry", "QueryHistory", "is_loopback", "parse_addr", "record_span", "start"]
