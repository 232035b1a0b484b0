"""Pre-fork servers (gunicorn): correct metrics from every worker.

``opentelemetry-instrument gunicorn -w 4`` sets the SDK up once, in the master,
and forks the workers from it. The SDK already gives each forked child its own
``service.instance.id`` and restarts the periodic exporter there. What is left:

- measurements the master recorded before forking (a ``--preload``-ed app's
  startup queries) are copied into every worker, which would each report them:
  the child starts its metric storages afresh;
- the system-metrics instrumentation samples the ``psutil.Process`` it made in
  the master, so every worker would report the master's CPU and memory;
- a periodic reader's export lock, held by the master's export thread at the fork, would stay
  held in the child (see ``_sdk_compat.reset_export_locks``);
- the Prometheus pull exporter serves from the master, which never sees the
  workers' measurements, and the workers cannot share its port: refused at
  startup with one message saying what to do (see :func:`pull_refusal`).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from . import _forksafe
from ._guard import guarded
from ._sdk_compat import renew_sampled_process, reset_export_locks, reset_metric_storages

PULL_EXPORTER = "prometheus"
_PREFORK_SERVERS = ("gunicorn",)


def _port_in_use(host: str, port: int) -> bool:
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.bind((host, port))
        return False
    except OSError:
        return True
    finally:
        probe.close()


def prefork_server(environ: Mapping[str, str], argv: Sequence[str]) -> str:
    """The name of the pre-fork server this process is the master of (gunicorn, uvicorn --workers N), or ""."""
    program = os.path.basename(argv[0]) if argv else ""
    workers = _option(argv, "--workers") or _option(argv, "-w") or environ.get("WEB_CONCURRENCY", "")
    if program.startswith(_PREFORK_SERVERS) or (program.startswith("uvicorn") and workers not in ("", "1")):
        return program
    return ""


def exporter_names(value: str) -> list[str]:
    """The exporters an ``OTEL_*_EXPORTER`` value names ("none" names none)."""
    return [name.strip() for name in value.split(",") if name.strip() not in ("", "none")]


def pull_refusal(environ: Mapping[str, str], argv: Sequence[str]) -> str | None:
    """Why the Prometheus pull exporter cannot serve correct numbers here, or None if it can."""
    if PULL_EXPORTER not in exporter_names(environ.get("OTEL_METRICS_EXPORTER", "")):
        return None
    program = prefork_server(environ, argv)
    if program:
        return (
            f"otel-dbperf: OTEL_METRICS_EXPORTER=prometheus is refused under {program}: it forks its workers "
            "after this point, so a scrape endpoint here would serve the master's numbers, never the workers'. "
            "Metrics are NOT served. Use OTEL_METRICS_EXPORTER=otlp (the default) with the otel-dbperf Collector "
            "config, which keeps workers apart by service.instance.id and exposes them to Prometheus; or run "
            "a single process without a pre-fork master (e.g. uvicorn without --workers)."
        )
    host = environ.get("OTEL_EXPORTER_PROMETHEUS_HOST", "localhost") or "localhost"
    port_text = environ.get("OTEL_EXPORTER_PROMETHEUS_PORT", "9464") or "9464"
    try:
        port = int(port_text)
    except ValueError:
        return None  # the SDK reports its own bad value
    if _port_in_use(host, port):
        return (
            f"otel-dbperf: OTEL_METRICS_EXPORTER=prometheus is refused in process {os.getpid()}: "
            f"{host}:{port} (OTEL_EXPORTER_PROMETHEUS_HOST/PORT) is already in use, most likely by another "
            "worker of the same server, so this process's metrics could never be scraped. Metrics are NOT "
            "served from this process. Use OTEL_METRICS_EXPORTER=otlp (the default) for multi-process servers, "
            "or give each process its own OTEL_EXPORTER_PROMETHEUS_PORT."
        )
    return None


def _option(argv: Sequence[str], name: str) -> str:
    """The value of ``name`` in ``argv`` (``--name V`` or ``--name=V``), or ""."""
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return ""


def without_pull_exporter(value: str) -> str:
    return ",".join(name for name in exporter_names(value) if name != PULL_EXPORTER) or "none"


class ForkHooks:
    """What a forked child must redo; run by :mod:`._forksafe` after every fork, before the SDK's
    own after-fork hooks restart its export threads."""

    def __init__(self, meter_provider: Any, deriver: Any) -> None:
        self.meter_provider = meter_provider
        self.deriver = deriver
        _forksafe.register(self.after_in_child)

    @guarded("after_fork")
    def after_in_child(self) -> None:
        if self.deriver is not None:
            self.deriver.after_fork_in_child()
        if self.meter_provider is not None:
            reset_metric_storages(self.meter_provider)
            reset_export_locks(self.meter_provider)
        _resample_own_process()


def _resample_own_process() -> None:
    """Point the system-metrics instrumentation at this process instead of the parent."""
    try:
        from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
    except ImportError:
        return
    renew_sampled_process(SystemMetricsInstrumentor)
