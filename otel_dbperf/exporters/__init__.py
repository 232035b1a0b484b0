"""Exporters shipped with otel-dbperf (selected by name through ``OTEL_*_EXPORTER``)."""
