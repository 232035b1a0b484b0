"""``otel-dbperf report NEW... --baseline OLD...``: what changed since the baseline.

Both sides are aggregated by the ordinary :class:`~otel_dbperf.report.summary.Report` (so the
same filters, the same bounded memory), then compared per fingerprint and per route.

The rules (``Thresholds``; each is a command-line flag):

* **regressed** fingerprint: at least ``min_count`` spans on *each* side, its p95 more
  than ``p95_ratio`` times the baseline's and at least ``min_delta_ms`` higher, *and* its
  DB time per request more than ``total_ratio`` times the baseline's. DB time per request
  is the fingerprint's total DB time divided by the requests of its window, so a busier
  day is not a regression; when either window has no request spans, the raw totals.
* **new slow** fingerprint: absent from the baseline, at least ``min_count`` spans now,
  and at least ``slow_share`` of them flagged ``dbperf.query.slow`` by the app (with the
  default 5%: its p95 is at or above the app's slow threshold).
* **new N+1**: a route and repeated fingerprint pair detected as N+1 now and never in
  the baseline (one request is enough: an N+1 is a property of the code path).

Those three are the regressions (``--fail-on-regression`` exits 4). Listed as better:
**faster** fingerprints (the regressed rule mirrored), **vanished** fingerprints (in the
baseline, absent now) and **fixed N+1** (in the baseline, while the route was requested
now without it). Other new fingerprints are listed, not judged; fingerprints with fewer
than ``min_count`` spans on a side are counted as not judged.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict, dataclass
from typing import Any, TextIO

from ..settings import Settings
from .console import EXIT_NO_DATA, EXIT_OK, EXIT_REGRESSION, EXIT_USAGE, time_ns
from .markup import printable_data
from .summary import (
    Filters,
    FingerprintStats,
    ReadStats,
    Report,
    finding_text,
    json_text,
    link_text,
    read_files,
    trace_link,
)

SCHEMA = "otel-dbperf.report.compare/1"


@dataclass(frozen=True)
class Thresholds:
    p95_ratio: float = 1.5
    total_ratio: float = 1.5
    min_count: int = 50
    min_delta_ms: float = 5.0
    slow_share: float = 0.05


def _ratio(new: float, old: float) -> float | None:
    return round(new / old, 2) if old > 0 else None


class _Side:
    """One window's fingerprints, with DB time per request."""

    def __init__(self, report: Report, per_request: bool) -> None:
        self.report = report
        self.divisor = float(report.requests) if per_request else 1.0

    def db_time(self, s: FingerprintStats) -> float:
        return s.total_ms / self.divisor

    def summary(self, s: FingerprintStats, jaeger_url: str) -> dict[str, Any]:
        return {
            "count": s.count,
            "total_ms": round(s.total_ms, 3),
            "db_ms_per_request": round(self.db_time(s), 3),
            "p50_ms": round(s.percentile(0.5), 3),
            "p95_ms": round(s.percentile(0.95), 3),
            "max_ms": round(s.max_ms, 3),
            "slow": s.slow,
            "slowest": trace_link(s.slowest_trace, jaeger_url),
        }


def _changed(new: FingerprintStats, old: FingerprintStats, cur: _Side, base: _Side, t: Thresholds) -> bool:
    """True when ``new`` is worse than ``old`` by the regressed rule."""
    p95_new, p95_old = new.percentile(0.95), old.percentile(0.95)
    return (
        p95_new > t.p95_ratio * p95_old
        and p95_new - p95_old >= t.min_delta_ms
        and cur.db_time(new) > t.total_ratio * base.db_time(old)
    )


def _n_plus_one(report: Report) -> dict[tuple[str, str], dict[str, Any]]:
    """N+1 findings by (route, fingerprint), merged over code locations."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for f in report.n_plus_one.values():
        key = (f["route"], f["fingerprint"])
        m = merged.get(key)
        if m is None:
            merged[key] = dict(f)
        else:
            m["requests"] += f["requests"]
            if f["max_repeat_count"] > m["max_repeat_count"]:
                m.update(
                    max_repeat_count=f["max_repeat_count"], trace_id=f["trace_id"], code_location=f["code_location"]
                )
    return merged


def _findings(report: Report) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Request findings by (finding, route, and for an HTTP N+1 its route template), merged over code
    locations (a line moves between versions; a CPU-bound request's hottest function may too)."""
    merged: dict[tuple[str, str, str], dict[str, Any]] = {}
    for f in report.findings.values():
        key = (f["finding"], f["route"], f["detail"] if f["finding"] == "http_n_plus_one" else "")
        m = merged.get(key)
        if m is None:
            merged[key] = dict(f)
        else:
            m["requests"] += f["requests"]
            if f["worst"] > m["worst"]:
                m.update(worst=f["worst"], trace_id=f["trace_id"], code_location=f["code_location"])
    return merged


def compare(
    baseline: Report,
    current: Report,
    baseline_stats: ReadStats,
    current_stats: ReadStats,
    thresholds: Thresholds | None = None,
    jaeger_url: str = "",
) -> dict[str, Any]:
    """The comparison as plain data (the ``--json`` output; text and HTML render it)."""
    t = thresholds or Thresholds()
    per_request = baseline.requests > 0 and current.requests > 0
    base, cur = _Side(baseline, per_request), _Side(current, per_request)

    def finding(fp: str) -> dict[str, Any]:
        old, new = baseline.fingerprints.get(fp), current.fingerprints.get(fp)
        some = new or old
        assert some is not None
        entry: dict[str, Any] = {
            "fingerprint": fp,
            "summary": some.summary,
            "statement": some.statement,
            "code_locations": [loc for loc, _ in some.locations.most_common()],
            "routes": [r for r, _ in some.routes.most_common()],
            "baseline": base.summary(old, jaeger_url) if old else None,
            "current": cur.summary(new, jaeger_url) if new else None,
        }
        if old and new:
            entry["p95_ratio"] = _ratio(new.percentile(0.95), old.percentile(0.95))
            entry["db_time_ratio"] = _ratio(cur.db_time(new), base.db_time(old))
        return entry

    names = ("regressed", "new_slow", "new", "faster", "vanished", "unchanged", "not_judged")
    lists: dict[str, list[dict[str, Any]]] = {k: [] for k in names}
    for fp, new in current.fingerprints.items():
        old = baseline.fingerprints.get(fp)
        if old is None:
            slow = new.count >= t.min_count and new.slow >= t.slow_share * new.count and new.slow > 0
            lists["new_slow" if slow else "new"].append(finding(fp))
        elif old.count < t.min_count or new.count < t.min_count:
            lists["not_judged"].append(finding(fp))
        elif _changed(new, old, cur, base, t):
            lists["regressed"].append(finding(fp))
        elif _changed(old, new, base, cur, t):
            lists["faster"].append(finding(fp))
        else:
            lists["unchanged"].append(finding(fp))
    for fp in baseline.fingerprints:
        if fp not in current.fingerprints:
            lists["vanished"].append(finding(fp))

    def added_time(e: dict[str, Any]) -> float:
        now = e["current"]["db_ms_per_request"] if e["current"] else 0.0
        before = e["baseline"]["db_ms_per_request"] if e["baseline"] else 0.0
        return float(now - before)

    for name, entries in lists.items():
        if name in ("unchanged", "not_judged"):
            entries.sort(key=lambda e: -e["current"]["db_ms_per_request"])
        else:
            entries.sort(key=added_time, reverse=name in ("regressed", "new_slow", "new"))

    old_n1, new_n1 = _n_plus_one(baseline), _n_plus_one(current)

    def n1(f: dict[str, Any], requests_now: int | None = None) -> dict[str, Any]:
        out = {k: v for k, v in f.items() if k != "trace_id"}
        out["example"] = trace_link(f["trace_id"], jaeger_url)
        if requests_now is not None:
            out["route_requests_now"] = requests_now
        return out

    new_n_plus_one = [n1(f) for key, f in new_n1.items() if key not in old_n1]
    fixed_n_plus_one = [
        n1(f, int(current.routes[key[0]][0]))
        for key, f in old_n1.items()
        if key not in new_n1 and key[0] in current.routes
    ]
    for entries in (new_n_plus_one, fixed_n_plus_one):
        entries.sort(key=lambda f: (-f["max_repeat_count"], f["route"]))

    old_findings, new_findings_by_key = _findings(baseline), _findings(current)
    new_findings = [n1(f) for key, f in new_findings_by_key.items() if key not in old_findings]
    fixed_findings = [
        n1(f, int(current.routes[key[1]][0]))
        for key, f in old_findings.items()
        if key not in new_findings_by_key and key[1] in current.routes
    ]
    for entries in (new_findings, fixed_findings):
        entries.sort(key=lambda f: (f["finding"], f["route"], f["detail"]))

    def route_side(totals: list[float] | None) -> dict[str, Any] | None:
        if not totals or not totals[0]:
            return None
        return {
            "requests": int(totals[0]),
            "ms_per_request": round(totals[1] / totals[0], 3),
            "db_ms_per_request": round(totals[2] / totals[0], 3),
        }

    def route_entry(r: str) -> tuple[float, dict[str, Any]]:
        before, now = route_side(baseline.routes.get(r)), route_side(current.routes.get(r))
        most = max((side["db_ms_per_request"] for side in (before, now) if side), default=0.0)
        return -float(most), {"route": r, "baseline": before, "current": now}

    routes = [
        e
        for _, e in sorted(
            (route_entry(r) for r in set(baseline.routes) | set(current.routes)), key=lambda p: (p[0], p[1]["route"])
        )
    ]
    regressions = len(lists["regressed"]) + len(lists["new_slow"]) + len(new_n_plus_one) + len(new_findings)

    def side_info(report: Report, stats: ReadStats) -> dict[str, Any]:
        return {
            "input": stats.as_dict(),
            "requests": report.requests,
            "db_spans": report.db_spans,
            "fingerprints": len(report.fingerprints),
        }

    return {
        "schema": SCHEMA,
        "baseline": side_info(baseline, baseline_stats),
        "current": side_info(current, current_stats),
        "thresholds": {**asdict(t), "db_time_per_request": per_request},
        "regressed": regressions > 0,
        "regression_count": regressions,
        "fingerprints": lists,
        "routes": {
            "new_n_plus_one": new_n_plus_one,
            "fixed_n_plus_one": fixed_n_plus_one,
            "new_findings": new_findings,
            "fixed_findings": fixed_findings,
            "db_time": routes,
        },
    }


def rules_text(t: dict[str, Any]) -> str:
    per = "DB time per request" if t["db_time_per_request"] else "total DB time"
    return (
        f"regressed = p95 up more than {t['p95_ratio']:g}x (and by {t['min_delta_ms']:g} ms or more) and {per} "
        f"up more than {t['total_ratio']:g}x, with {t['min_count']} spans or more on each side; "
        f"new slow = not in the baseline, {t['min_count']} spans or more, {100 * t['slow_share']:g}% or more "
        "of them slow; new N+1 = a route repeating a query it did not repeat in the baseline; new request "
        "finding = a route CPU-bound, blocking the event loop, awaiting independent queries in turn, or "
        "repeating an HTTP route template, where it did not in the baseline"
    )


def _head(e: dict[str, Any]) -> str:
    return f"{e['summary'] or '(no summary)'}  [{e['fingerprint']}]"


def _where(e: dict[str, Any]) -> list[str]:
    lines = [f"      {e['statement'][:200]}"]
    lines += [f"      at {loc}" for loc in e["code_locations"][:3]]
    if e["routes"]:
        lines.append(f"      from {', '.join(e['routes'][:5])}")
    return lines


def _n1_text(f: dict[str, Any]) -> str:
    return (
        f"{f['route']}: {f['query_summary'] or f['fingerprint']} repeated up to {f['max_repeat_count']}x "
        f"in {f['requests']} request(s) at {f['code_location']}"
        + (f"; fix: {f['suggestion']}" if f.get("suggestion") else "")
    )


def render_text(data: dict[str, Any], top: int = 10) -> str:
    """The terminal comparison; the characters of the spans a terminal would act on are shown escaped."""
    data = printable_data(data)
    fps, routes = data["fingerprints"], data["routes"]
    lines = []
    for label, key in (("baseline", "baseline"), ("now     ", "current")):
        s = data[key]
        lines.append(
            f"{label}: {s['requests']} requests, {s['db_spans']} DB spans, {s['fingerprints']} fingerprints"
            f"  ({s['input']['spans']} spans from {s['input']['lines']} lines, {s['input']['corrupt_lines']} corrupt)"
        )
    lines.append("rules: " + rules_text(data["thresholds"]))
    lines.append("")
    if data["regressed"]:
        lines.append(f"REGRESSED: {data['regression_count']} regression(s)")
    else:
        lines.append("No regressions.")

    def more(items: list[Any]) -> list[str]:
        return [f"  ... and {len(items) - top} more (--json lists all)"] if len(items) > top else []

    lines.append("")
    lines.append("Regressions")
    if not data["regression_count"]:
        lines.append("  none")
    for e in fps["new_slow"]:
        c = e["current"]
        lines.append(
            f"  NEW SLOW QUERY  {_head(e)}  {c['count']}x  p95 {c['p95_ms']:.1f} ms  slow {c['slow']}"
            f"  DB {c['db_ms_per_request']:.1f} ms/request"
        )
        lines += _where(e) + [f"      slowest: {link_text(c['slowest'])}"]
    for e in fps["regressed"]:
        b, c = e["baseline"], e["current"]
        lines.append(
            f"  SLOWER          {_head(e)}  p95 {b['p95_ms']:.1f} -> {c['p95_ms']:.1f} ms ({e['p95_ratio']}x)"
            f"  DB {b['db_ms_per_request']:.1f} -> {c['db_ms_per_request']:.1f} ms/request ({e['db_time_ratio']}x)"
            f"  {b['count']}x -> {c['count']}x"
        )
        lines += _where(e) + [f"      slowest now: {link_text(c['slowest'])}"]
    for f in routes["new_n_plus_one"]:
        lines.append(f"  NEW N+1         {_n1_text(f)}  ({link_text(f['example'])})")
    if routes.get("new_findings"):
        lines.append("  New request findings")
    for f in routes.get("new_findings", []):
        lines.append(
            f"  NEW FINDING     {f['route']}: {finding_text(f)} in {f['requests']} request(s)"
            f" at {f['code_location'] or '?'}  ({link_text(f['example'])})"
        )
    lines.append("")
    lines.append("Better")
    if not (routes["fixed_n_plus_one"] or routes.get("fixed_findings") or fps["faster"] or fps["vanished"]):
        lines.append("  nothing")
    for f in routes["fixed_n_plus_one"]:
        lines.append(f"  FIXED N+1       {_n1_text(f)} before; in none of {f['route_requests_now']} request(s) now")
    for f in routes.get("fixed_findings", []):
        lines.append(
            f"  FIXED FINDING   {f['route']}: {finding_text(f)} before; "
            f"in none of {f['route_requests_now']} request(s) now"
        )
    for e in fps["faster"][:top]:
        b, c = e["baseline"], e["current"]
        lines.append(
            f"  FASTER          {_head(e)}  p95 {b['p95_ms']:.1f} -> {c['p95_ms']:.1f} ms"
            f"  DB {b['db_ms_per_request']:.1f} -> {c['db_ms_per_request']:.1f} ms/request"
        )
    lines += more(fps["faster"])
    for e in fps["vanished"][:top]:
        b = e["baseline"]
        lines.append(
            f"  GONE            {_head(e)}  {b['count']}x before, p95 {b['p95_ms']:.1f} ms,"
            f" DB {b['db_ms_per_request']:.1f} ms/request"
        )
    lines += more(fps["vanished"])
    lines.append("")
    lines.append("New queries, not slow (or too few to judge)")
    if not fps["new"]:
        lines.append("  none")
    for e in fps["new"][:top]:
        c = e["current"]
        lines.append(f"  NEW             {_head(e)}  {c['count']}x  p95 {c['p95_ms']:.1f} ms  slow {c['slow']}")
        lines += _where(e)[1:2]
    lines += more(fps["new"])
    lines.append("")
    lines.append(
        f"{len(fps['unchanged'])} fingerprint(s) unchanged; {len(fps['not_judged'])} seen on both sides but with "
        f"fewer than {data['thresholds']['min_count']} spans on a side, not judged"
    )
    lines.append("")
    lines.append("DB time per request, by route (baseline -> now)")
    for r in routes["db_time"][:top]:
        b, c = r["baseline"], r["current"]
        before = f"{b['db_ms_per_request']:.1f} ms ({b['requests']} req)" if b else "-"
        now = f"{c['db_ms_per_request']:.1f} ms ({c['requests']} req)" if c else "-"
        lines.append(f"  {r['route'][:50]:<50} {before:>22} -> {now}")
    lines += more(routes["db_time"])
    return "\n".join(lines)


# --- command line -----------------------------------------------------------------------------


def _ratio_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 1.0:
        raise argparse.ArgumentTypeError(f"a ratio of 1 or more, not {text!r}")
    return value


def _count_arg(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of 1 or more, not {text!r}")
    return int(text)


def _ms_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0.0:
        raise argparse.ArgumentTypeError(f"milliseconds, 0 or more, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Thresholds()
    g = parser.add_argument_group(
        "comparison with a baseline", "exit code 4 with --fail-on-regression when anything regressed"
    )
    g.add_argument("--baseline", nargs="+", metavar="OLD", help="compare FILE... with these OTLP JSON lines")
    g.add_argument(
        "--baseline-since", type=time_ns, default=0, help="baseline: only spans starting at or after (ISO 8601)"
    )
    g.add_argument(
        "--baseline-until",
        type=time_ns,
        default=0,
        help="baseline: only spans starting at or before; without --baseline, the baseline is this window of "
        "FILE... and the compared window starts after it",
    )
    g.add_argument(
        "--fail-on-regression",
        action="store_true",
        help="exit 4 when a query regressed, a new slow query or a new N+1 appeared",
    )
    g.add_argument(
        "--p95-ratio",
        type=_ratio_arg,
        default=d.p95_ratio,
        help=f"regressed: p95 more than this times the baseline's (default {d.p95_ratio:g})",
    )
    g.add_argument(
        "--total-ratio",
        type=_ratio_arg,
        default=d.total_ratio,
        help=f"and DB time per request more than this times the baseline's (default {d.total_ratio:g})",
    )
    g.add_argument(
        "--min-delta-ms",
        type=_ms_arg,
        default=d.min_delta_ms,
        help=f"and the p95 up by at least this (default {d.min_delta_ms:g})",
    )
    g.add_argument(
        "--min-count",
        type=_count_arg,
        default=d.min_count,
        help=f"spans a fingerprint needs on a side to be judged (default {d.min_count})",
    )


def requested(args: argparse.Namespace) -> bool:
    return bool(args.baseline or args.baseline_since or args.baseline_until or args.fail_on_regression)


def run(args: argparse.Namespace, out: TextIO) -> int:
    """``otel-dbperf report`` with a baseline: exit 0, 2 (usage, unreadable file), 3 (no data) or 4."""

    def fail(message: str, code: int = EXIT_USAGE) -> int:
        print(f"otel-dbperf report: {message}", file=sys.stderr)
        return code

    if not args.baseline and not args.baseline_until:
        return fail("a comparison needs --baseline FILE... or --baseline-until (a window of the same files)")
    since = args.since
    if not args.baseline and not since:
        since = args.baseline_until + 1  # the compared window starts after the baseline's
    current = Report(Filters(since, args.until, args.service, args.route), top=args.top)
    baseline = Report(Filters(args.baseline_since, args.baseline_until, args.service, args.route), top=args.top)
    current_stats = ReadStats()
    if args.baseline:
        baseline_stats = ReadStats()
        error = read_files(args.files, [current], current_stats) or read_files(
            args.baseline, [baseline], baseline_stats
        )
    else:
        baseline_stats = current_stats
        error = read_files(args.files, [current, baseline], current_stats)
    if error:
        return fail(error)
    for side, stats, report, names in (
        ("baseline", baseline_stats, baseline, args.baseline or args.files),
        ("compared", current_stats, current, args.files),
    ):
        if stats.spans == 0:
            return fail(
                f"no OTLP trace data in {', '.join(names)} ({stats.lines} lines, {stats.corrupt} not OTLP JSON)",
                EXIT_NO_DATA,
            )
        if report.db_spans == 0:
            return fail(f"no DB spans in the {side} window of {', '.join(names)}", EXIT_NO_DATA)
    thresholds = Thresholds(args.p95_ratio, args.total_ratio, args.min_count, args.min_delta_ms)
    data = compare(baseline, current, baseline_stats, current_stats, thresholds, Settings.from_env().jaeger_url)
    if args.html:
        from .compare_html import render_html

        try:
            with open(args.html, "w", encoding="utf-8") as page:
                page.write(render_html(data, rules_text(data["thresholds"])))
        except OSError as exc:
            return fail(f"cannot write {args.html}: {exc.strerror}")
    out.write((json_text(data) if args.json else render_text(data, args.top)) + "\n")
    return EXIT_REGRESSION if args.fail_on_regression and data["regressed"] else EXIT_OK
