"""The release of otel-dbperf (the instrumentation scope version of its meters and loggers)."""

__version__ = "0.1.0"
