"""The ``otel-dbperf`` command.

Exit codes: 0 report written; 2 bad usage or an unreadable file; 3 no span could
be read from the input (with a baseline: or no DB spans in one side's window); 4 with
``--fail-on-regression``: something regressed since the baseline (``report_compare``).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import TextIO

from ..settings import Settings
from . import compare as report_compare
from .markup import printable
from .progress import progress
from .summary import Filters, ReadStats, Report, json_text, read_spans, render_text

EXIT_OK, EXIT_USAGE, EXIT_NO_DATA = 0, 2, 3


class _Progress:
    """A progress bar on stderr while reading a file, when stderr is a terminal."""

    def __init__(self, name: str, size: int, stream: TextIO) -> None:
        self.name, self.size, self.stream = name, size, stream
        self.read = 0
        self.shown = -1
        self.on = size > 0 and stream.isatty()

    def advance(self, chars: int) -> None:
        self.read += chars
        if self.on:
            percent = min(99, 100 * self.read // self.size)
            if percent != self.shown:
                self.shown = percent
                progress(percent, 100, self.stream, f"reading {self.name} (%)")

    def done(self) -> None:
        if self.on:
            progress(100, 100, self.stream, f"reading {self.name} (%)")


def _time_ns(text: str) -> int:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text!r}") from exc
    return int(moment.timestamp() * 1e9)


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
    rep.add_argument("--since", type=_time_ns, default=0, help="only spans starting at or after (ISO 8601)")
    rep.add_argument("--until", type=_time_ns, default=0, help="only spans starting at or before (ISO 8601)")
    rep.add_argument("--service", default="", help="only this service.name")
    rep.add_argument("--route", default="", help="only requests of this route, and their queries")
    report_compare.add_arguments(rep)
    sub.add_parser("demo", help="run the bundled demo shop and print its report (options: otel-dbperf demo -h)")
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["demo"]:
        from .demo import main as demo_main

        return demo_main(argv[1:], out)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    if report_compare.requested(args):
        return report_compare.run(args, out)

    report = Report(Filters(args.since, args.until, args.service, args.route), top=args.top)
    stats = ReadStats()
    for name in args.files:
        try:
            stream = sys.stdin if name == "-" else open(name, encoding="utf-8", errors="replace")  # noqa: SIM115
            size = 0 if name == "-" else os.path.getsize(name)
        except OSError as exc:
            print(f"otel-dbperf report: cannot read {name}: {exc.strerror}", file=sys.stderr)
            return EXIT_USAGE
        bar = _Progress(name, size, sys.stderr)
        with stream:
            for span in read_spans(stream, stats, on_line=bar.advance, name=name):
                report.add(span)
        bar.done()
    _say_rejected(stats)
    if stats.spans == 0:
        print(
            f"otel-dbperf report: no OTLP trace data in {', '.join(args.files)} "
            f"({stats.lines} lines, {stats.corrupt} not OTLP JSON, {stats.bad_spans} unreadable spans)",
            file=sys.stderr,
        )
        return EXIT_NO_DATA
    data = report.as_dict(stats, Settings.from_env().jaeger_url)
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
