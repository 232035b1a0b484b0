"""otel-dbperf dbmonitor: the database server's side (server metrics, query samples, workload statistics)."""
