"""``otel-dbperf report --html``: one self-contained page (inline CSS and SVG, no scripts, no fetches).

Every value comes from the spans: the page is built with :func:`~otel_dbperf.report.markup.html` from
constant templates, so each one is escaped; its Content-Security-Policy forbids scripts besides.
"""

from __future__ import annotations

import math
from typing import Any
from urllib.parse import urlsplit

from .markup import Markup, html, join
from .summary import finding_text
from .workload import render_columns as server_columns
from .workload import render_full_scans as full_scan_lines
from .workload import render_lines as server_lines

_CSS = Markup("""
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;
background:#fff}
h1{font-size:22px}h2{font-size:17px;margin-top:32px;border-bottom:1px solid #dde1e8;padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:8px 0}td,th{padding:4px 8px;border-bottom:1px solid #eef0f4;
text-align:left;vertical-align:top}th{background:#f5f7fa;font-weight:600}td.n{text-align:right;white-space:nowrap}
code{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;word-break:break-all}.muted{color:#6b7385}
.chart{margin:6px 0 14px}.slow{color:#b42318;font-weight:600}.card{display:inline-block;margin:0 24px 8px 0}
.card b{display:block;font-size:20px}
""")


def head(title: str, css: Markup) -> Markup:
    """The page's head, its Content-Security-Policy first, before anything from the spans: nothing runs
    and nothing is fetched. No script-src: default-src 'none' forbids scripts (inline ones and javascript:
    URLs too); the inline style only; no <base>, no form posts."""
    return html(
        '<!doctype html><html lang=en><head><meta charset=utf-8>\n<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        'form-action \'none\'">\n<meta name="viewport" content="width=device-width,initial-scale=1">\n'
        "<title>{title}</title><style>{css}</style></head><body>",
        title=title,
        css=css,
    )


def findings_table(title: str, findings: list[dict[str, Any]]) -> Markup:
    """A heading and a table of request findings (CPU-bound, HTTP N+1, blocked loop, sequential queries)."""
    parts = [html("<h2>{title}</h2>", title=title)]
    if not findings:
        parts.append(html('<p class="muted">none found</p>'))
        return join(parts, "")
    parts.append(
        html("<table><tr><th>route</th><th>finding</th><th>requests</th><th>at</th><th>fix</th><th>example</th></tr>")
    )
    for f in findings:
        parts.append(
            html(
                "<tr><td>{f[route]}</td><td>{text}</td><td class=n>{f[requests]}</td>"
                "<td><code>{f[code_location]}</code></td><td>{f[suggestion]}</td><td>{example}</td></tr>",
                f=f,
                text=finding_text(f),
                example=_link(f["example"]),
            )
        )
    parts.append(html("</table>"))
    return join(parts, "")


def _link(link: dict[str, str]) -> Markup:
    """A trace id, linked to its Jaeger page when there is one (an http(s) URL: no other scheme)."""
    trace, url = link.get("trace_id", ""), link.get("jaeger_url", "")
    if url and urlsplit(url).scheme.lower() in ("http", "https"):
        return html('<a href="{}"><code>{}</code></a>', url, trace)
    return html("<code>{}</code>", trace)


def _histogram_svg(samples: list[float], width: int = 360, height: int = 90) -> Markup:
    """Latency distribution: counts per log-scale bucket, from 0.1 ms to the slowest sample."""
    if not samples:
        return html('<p class="muted">no samples</p>')
    lo, hi = math.log10(0.1), math.log10(max(max(samples), 0.2))
    buckets = 24
    counts = [0] * buckets
    for x in samples:
        i = int((math.log10(max(x, 0.1)) - lo) / (hi - lo + 1e-9) * buckets)
        counts[min(max(i, 0), buckets - 1)] += 1
    top = max(counts)
    bar = width / buckets
    rects = join(
        html(
            '<rect x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}" fill="#3d6fe0"><title>{c} queries'
            "</title></rect>",
            x=i * bar + 1,
            y=height - 16 - c / top * (height - 24),
            w=bar - 2,
            h=c / top * (height - 24),
            c=c,
        )
        for i, c in enumerate(counts)
        if c
    )
    axis = html(
        '<text x="0" y="{y}" font-size="10" fill="#6b7385">0.1 ms</text>'
        '<text x="{w}" y="{y}" font-size="10" fill="#6b7385" text-anchor="end">{top:.1f} ms</text>',
        y=height - 2,
        w=width,
        top=10**hi,
    )
    return html(
        '<svg class="chart latency" role="img" aria-label="latency distribution" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}">{rects}<line x1="0" x2="{w}" y1="{y}" y2="{y}" stroke="#c5cad6"/>{axis}</svg>',
        w=width,
        h=height,
        rects=rects,
        y=height - 15,
        axis=axis,
    )


def _routes_svg(routes: list[dict[str, Any]], width: int = 900) -> Markup:
    """DB time per route (bars), with the rest of the request time beside it."""
    if not routes:
        return html('<p class="muted">no requests</p>')
    rows = routes[:15]
    most = max(r["total_ms"] for r in rows) or 1.0
    label, row_h = 260, 22
    height = row_h * len(rows) + 8
    parts = []
    for i, r in enumerate(rows):
        y = i * row_h + 4
        db_w = (width - label - 120) * r["db_ms"] / most
        other_w = (width - label - 120) * max(r["total_ms"] - r["db_ms"], 0.0) / most
        share = 100 * r["db_ms"] / r["total_ms"] if r["total_ms"] else 0.0
        parts.append(
            html(
                '<text x="0" y="{ty}" font-size="12">{route}</text>'
                '<rect x="{label}" y="{y}" width="{db_w:.1f}" height="16" fill="#d9480f">'
                "<title>DB {db_ms:.1f} ms</title></rect>"
                '<rect x="{ox:.1f}" y="{y}" width="{other_w:.1f}" height="16" fill="#c5cad6">'
                "<title>other {other_ms:.1f} ms</title></rect>"
                '<text x="{sx:.1f}" y="{sy}" font-size="11" fill="#6b7385">{share:.0f}% DB</text>',
                ty=y + 14,
                route=r["route"][:40],
                label=label,
                y=y,
                db_w=db_w,
                db_ms=r["db_ms"],
                ox=label + db_w,
                other_w=other_w,
                other_ms=r["total_ms"] - r["db_ms"],
                sx=label + db_w + other_w + 6,
                sy=y + 13,
                share=share,
            )
        )
    return html(
        '<svg class="chart routes" role="img" aria-label="DB time per route" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}">{parts}</svg>',
        w=width,
        h=height,
        parts=join(parts),
    )


def render_html(data: dict[str, Any]) -> str:
    i = data["input"]
    out = [
        head("otel-dbperf report", _CSS),
        html("<h1>otel-dbperf report</h1>"),
        html(
            '<div><span class="card"><b>{requests}</b>requests</span>'
            '<span class="card"><b>{db_spans}</b>DB spans</span>'
            '<span class="card"><b>{n1}</b>N+1 findings</span>'
            '<span class="card"><b>{corrupt}</b>corrupt lines of {lines}</span></div>',
            requests=data["requests"],
            db_spans=data["db_spans"],
            n1=len(data["n_plus_one"]),
            corrupt=i["corrupt_lines"],
            lines=i["lines"],
        ),
        html("<h2>DB time per route</h2>"),
        _routes_svg(data.get("routes", [])),
        html("<h2>Top queries by total DB time</h2>"),
    ]
    server = data.get("server")
    if server:  # the database monitor's statistics (report/workload.py)
        out.insert(-1, html("<p>{}</p>", join((html("{}", line) for line in server_lines(server)), "<br>")))
    for n, q in enumerate(data["top_queries"], start=1):
        out.append(
            html(
                "<h3>{n}. {summary} <code class=muted>{q[fingerprint]}</code></h3>"
                "<p>{q[count]} queries, total {q[total_ms]:.1f} ms, p50 {q[p50_ms]:.1f} ms, "
                "p95 {q[p95_ms]:.1f} ms, max {q[max_ms]:.1f} ms{slow}</p>"
                "<p><code>{q[statement]}</code></p>{histogram}<p>{locations}</p>{routes}"
                "<p class=muted>slowest: {slowest}</p>{server}",
                n=n,
                q=q,
                summary=q["summary"] or "(no summary)",
                slow=html(' <span class="slow">{} slow</span>', q["slow"]) if q["slow"] else Markup(),
                histogram=_histogram_svg(q.get("latency_sample_ms", [])),
                locations=join((html("at <code>{}</code>", loc) for loc in q["code_locations"][:5]), "<br>"),
                routes=html("<p>from {}</p>", ", ".join(q["routes"][:8])) if q["routes"] else Markup(),
                slowest=_link(q["slowest"]),
                server=html("<p class=muted>{}</p>", server_columns(q["server"])) if q.get("server") else Markup(),
            )
        )
    if server:
        scans = full_scan_lines(server["full_scans"])
        out.append(html("<h2>{}</h2><p>{}</p>", scans[0], join((html("{}", line) for line in scans[1:]), "<br>")))
    out.append(html("<h2>N+1 queries</h2>"))
    if data["n_plus_one"]:
        out.append(
            html(
                "<table><tr><th>route</th><th>query</th><th>repeats</th><th>requests</th><th>issued at</th>"
                "<th>fix</th><th>example</th></tr>"
            )
        )
        for f in data["n_plus_one"]:
            fix = (
                html("lazy load of <code>{f[relationship]}</code>: <code>{f[suggestion]}</code>", f=f)
                if f.get("suggestion")
                else Markup()
            )
            out.append(
                html(
                    "<tr><td>{f[route]}</td><td>{f[query_summary]}</td>"
                    "<td class=n>{f[max_repeat_count]}</td><td class=n>{f[requests]}</td>"
                    "<td><code>{f[code_location]}</code></td><td>{fix}</td><td>{example}</td></tr>",
                    f=f,
                    fix=fix,
                    example=_link(f["example"]),
                )
            )
        out.append(html("</table>"))
    else:
        out.append(html('<p class="muted">none found</p>'))
    out.append(findings_table("Request findings beyond N+1 queries", data.get("request_findings", [])))
    out.append(html("<h2>Exact duplicate queries (cache candidates)</h2>"))
    if data.get("duplicates"):
        out.append(
            html(
                "<table><tr><th>query</th><th>repeated</th><th>of</th><th>DB time to save</th><th>issued at</th>"
                "<th>routes</th><th>example</th></tr>"
            )
        )
        for d in data["duplicates"]:
            out.append(
                html(
                    "<tr><td>{summary}<br><code>{statement}</code></td>"
                    "<td class=n>{d[duplicates]}</td><td class=n>{d[count]}</td>"
                    "<td class=n>{d[saved_ms]:.1f} ms</td><td>{locations}</td><td>{routes}</td><td>{example}</td></tr>",
                    d=d,
                    summary=d["summary"] or "(no summary)",
                    statement=d["statement"][:300],
                    locations=join((html("<code>{}</code>", loc) for loc in d["code_locations"][:3]), "<br>"),
                    routes=", ".join(d["routes"][:5]),
                    example=_link(d["example"]),
                )
            )
        out.append(html("</table>"))
    else:
        out.append(html('<p class="muted">none found</p>'))
    out.append(
        html(
            "<h2>Slowest requests</h2><table><tr><th>duration</th><th>request</th><th>DB queries</th>"
            "<th>DB time</th><th>slow</th><th>N+1</th><th>trace</th></tr>"
        )
    )
    for r in data["slowest_requests"]:
        out.append(
            html(
                "<tr><td class=n>{r[duration_ms]:.1f} ms</td><td>{r[name]}</td>"
                "<td class=n>{r[db_queries]}</td><td class=n>{r[db_duration_ms]:.1f} ms</td>"
                "<td class=n>{r[slow_queries]}</td><td>{n1}</td><td>{trace}</td></tr>",
                r=r,
                n1="yes" if r["n_plus_one"] else "",
                trace=_link(r),
            )
        )
    out.append(html("</table></body></html>"))
    return str(join(out, "\n"))
