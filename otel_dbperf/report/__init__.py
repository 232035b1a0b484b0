"""The `otel-dbperf` command: the slow-query report, its comparison with a baseline, and the demo."""
