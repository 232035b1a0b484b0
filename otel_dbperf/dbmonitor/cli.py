"""``otel-dbperf dbmonitor``: watch one database server (docs/database.md).

Exit codes: 0 stopped by SIGTERM/SIGINT (or ``--once`` read the server); 1 ``--once`` could not
read the server; 2 bad usage or configuration (no DSN, an unreadable DSN file, an unknown scheme).
The DSN is never an argument (it would show in ``ps``): ``DBPERF_DBMONITOR_DSN_FILE`` or
``DBPERF_DBMONITOR_DSN``.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from ..settings import Settings

EXIT_OK, EXIT_DOWN, EXIT_USAGE = 0, 1, 2


def _handler(masker: logging.Filter) -> None:
    """The package's records to stderr, through the masker; once per process."""
    root = logging.getLogger("otel_dbperf")
    if any(getattr(h, "_dbmonitor", False) for h in root.handlers):
        for h in root.handlers:
            if getattr(h, "_dbmonitor", False):
                h.filters = [masker]
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(masker)
    handler._dbmonitor = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False


def _exporters(file: str | None) -> tuple[Any, Any]:
    if file:
        from .filesink import JsonLinesLogExporter, JsonLinesMetricExporter

        return JsonLinesMetricExporter(file), JsonLinesLogExporter(file)
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(), OTLPLogExporter()


def main(argv: Sequence[str] | None = None) -> int:
    from .loop import Masker, Monitor, parse_target, read_dsn

    parser = argparse.ArgumentParser(
        prog="otel-dbperf dbmonitor",
        description="Watch one database server and export its metrics and query samples over OTLP "
        "(OTEL_EXPORTER_OTLP_ENDPOINT). The DSN comes from DBPERF_DBMONITOR_DSN_FILE or DBPERF_DBMONITOR_DSN.",
    )
    parser.add_argument("--once", action="store_true", help="one round (metrics, samples, statements), then exit")
    parser.add_argument("--file", metavar="PATH", help="append OTLP JSON lines to PATH instead of sending OTLP/HTTP")
    try:
        args = parser.parse_args(list(sys.argv[2:] if argv is None else argv))
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    masker = Masker()
    _handler(masker)
    log = logging.getLogger("otel_dbperf.dbmonitor")
    settings = Settings.from_env()
    try:
        target = parse_target(read_dsn(settings))
    except ValueError as exc:
        log.error("otel-dbperf dbmonitor: %s", exc)
        return EXIT_USAGE
    masker.secrets = target.secrets
    metric_exporter, log_exporter = _exporters(args.file)
    monitor = Monitor(target, settings, metric_exporter, log_exporter)
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    try:
        up = monitor.run(stop, once=args.once)
    finally:
        monitor.close()
    if args.once:
        print(json.dumps({"up": up, "queries": monitor.queries_total}), file=sys.stdout)
        return EXIT_OK if up else EXIT_DOWN
    return EXIT_OK
