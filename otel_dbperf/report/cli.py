"""The ``otel-dbperf`` command.

Exit codes: 0 report written; 2 bad usage or an unreadable file; 3 no span could
be read from the input (with a baseline: or no DB spans in one side's window); 4 with
``--fail-on-regression``: something regressed since the baseline (``compare``).
"""

from __future__ import annotations

import argparse
import sys
from typing import TextIO

from ..settings import Settings
from . import compare as report_compare
from .console import EXIT_NO_DATA, EXIT_OK, EXIT_USAGE, time_ns
from .markup import printable
from .summary import Filters, ReadStats, Report, json_text, read_files, render_text
from .workload import WorkloadStats, annotate


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = argparse.ArgumentParser(prog="otel-dbperf", description="otel-dbperf tools")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser(
        "report", help="slow-query report from OTLP JSON lines (ours or the Collector's file exporter)"
    )
    rep.add_argument("files", nargs="+", metavar="FILE", help="OTLP JSON lines; '-' reads standard input")
    rep.add_argument("--json", action="store_true", help="machine-readable output")
    rep.add_argument("--html", metavar="FILE", help="also write a self-contained HTML page with charts")
    rep.add_argument("--top", type=int, default=10, help="how many queries and requests to list (default 10)")
    rep.add_argument("--since", type=time_ns, default=0, help="only spans starting at or after (ISO 8601)")
    rep.add_argument("--until", type=time_ns, default=0, help="only spans starting at or before (ISO 8601)")
    rep.add_argument("--service", default="", help="only this service.name")
    rep.add_argument("--route", default="", help="only requests of this route, and their queries")
    report_compare.add_arguments(rep)
    sub.add_parser("demo", help="run the bundled demo shop and print its report (options: otel-dbperf demo -h)")
    sub.add_parser("dbmonitor", help="watch a database server's side (options: otel-dbperf dbmonitor -h)")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["dbmonitor"]:
        from ..dbmonitor.cli import main as dbmonitor

        return dbmonitor(argv[1:])
    if argv[:1] == ["demo"]:
        from .demo import main as demo

        spans = demo(argv[1:])
        if spans is None:
            return EXIT_USAGE
        print(f"\nspans written to {spans}; the report:\n", file=out)
        return main(["report", "--top", "5", str(spans)], out=out)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if report_compare.requested(args):
        return report_compare.run(args, out)

    report = Report(Filters(args.since, args.until, args.service, args.route), top=args.top)
    stats = ReadStats()
    workload = WorkloadStats(args.since, args.until)
    error = read_files(args.files, [report], stats, on_logs=workload.add_message)
    if error:
        print(f"otel-dbperf report: {error}", file=sys.stderr)
        return EXIT_USAGE
    _say_rejected(stats)
    if stats.spans == 0:
        print(
            f"otel-dbperf report: no OTLP trace data in {', '.join(args.files)} "
            f"({stats.lines} lines, {stats.corrupt} not OTLP JSON, {stats.bad_spans} unreadable spans)",
            file=sys.stderr,
        )
        return EXIT_NO_DATA
    data = report.as_dict(stats, Settings.from_env().jaeger_url)
    if workload.records:
        annotate(data, workload.join(report))
    if args.html:
        from .html import render_html

        try:
            with open(args.html, "w", encoding="utf-8") as page:
                page.write(render_html(data))
        except OSError as exc:
            print(f"otel-dbperf report: cannot write {args.html}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
    if not args.json:
        data = {k: v for k, v in data.items() if k != "routes"}
    out.write((json_text(data) if args.json else render_text(data)) + "\n")
    return EXIT_OK


def _say_rejected(stats: ReadStats) -> None:
    """Why lines or spans were skipped: the first few reasons, on stderr."""
    rejected = stats.corrupt + stats.bad_spans
    if not rejected:
        return
    print(
        f"otel-dbperf report: skipped {stats.corrupt} corrupt lines and {stats.bad_spans} unreadable spans; "
        + ("the first reasons:" if rejected > len(stats.reasons) else "why:"),
        file=sys.stderr,
    )
    for reason in stats.reasons:
        print(f"  {printable(reason)}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
