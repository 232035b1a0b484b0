"""``otel-dbperf dbmonitor``: the database server's side (docs/database.md).

A small process beside the Collector, one per database server: it connects with a
least-privilege monitoring role, reads the server's statistics views every
``DBPERF_DBMONITOR_INTERVAL`` seconds and exports them as OTLP metrics (the upstream
Collector receivers' names where one exists), plus query samples and workload statistics
as OTLP log records (``samples.py``, ``statements.py``).
"""
