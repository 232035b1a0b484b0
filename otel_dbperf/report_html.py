"""``otel-dbperf report --html``: one self-contained page (inline CSS and SVG, no scripts, no fetches)."""

from __future__ import annotations

import math
from html import escape
from typing import Any

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;
background:#fff}
h1{font-size:22px}h2{font-size:17px;margin-top:32px;border-bottom:1px solid #dde1e8;padding-bottom:4px}
table{border-collapse:collapse;width:100%;margin:8px 0}td,th{padding:4px 8px;border-bottom:1px solid #eef0f4;
text-align:left;vertical-align:top}th{background:#f5f7fa;font-weight:600}td.n{text-align:right;white-space:nowrap}
code{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace;word-break:break-all}.muted{color:#6b7385}
.chart{margin:6px 0 14px}.slow{color:#b42318;font-weight:600}.card{display:inline-block;margin:0 24px 8px 0}
.card b{display:block;font-size:20px}
"""


def _link(link: dict[str, str]) -> str:
    trace = escape(link.get("trace_id", ""))
    url = link.get("jaeger_url")
    return f'<a href="{escape(url)}"><code>{trace}</code></a>' if url else f"<code>{trace}</code>"


def _histogram_svg(samples: list[float], width: int = 360, height: int = 90) -> str:
    """Latency distribution: counts per log-scale bucket, from 0.1 ms to the slowest sample."""
    if not samples:
        return '<p class="muted">no samples</p>'
    lo, hi = math.log10(0.1), math.log10(max(max(samples), 0.2))
    buckets = 24
    counts = [0] * buckets
    for x in samples:
        i = int((math.log10(max(x, 0.1)) - lo) / (hi - lo + 1e-9) * buckets)
        counts[min(max(i, 0), buckets - 1)] += 1
    top = max(counts)
    bar = width / buckets
    rects = "".join(
        f'<rect x="{i * bar + 1:.1f}" y="{height - 16 - c / top * (height - 24):.1f}" width="{bar - 2:.1f}" '
        f'height="{c / top * (height - 24):.1f}" fill="#3d6fe0"><title>{c} queries</title></rect>'
        for i, c in enumerate(counts)
        if c
    )
    axis = (
        f'<text x="0" y="{height - 2}" font-size="10" fill="#6b7385">0.1 ms</text>'
        f'<text x="{width}" y="{height - 2}" font-size="10" fill="#6b7385" text-anchor="end">'
        f"{10**hi:.1f} ms</text>"
    )
    return (
        f'<svg class="chart latency" role="img" aria-label="latency distribution" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{rects}<line x1="0" x2="{width}" y1="{height - 15}" y2="{height - 15}" '
        f'stroke="#c5cad6"/>{axis}</svg>'
    )


def _routes_svg(routes: list[dict[str, Any]], width: int = 900) -> str:
    """DB time per route (bars), with the rest of the request time beside it."""
    if not routes:
        return '<p class="muted">no requests</p>'
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
            f'<text x="0" y="{y + 14}" font-size="12">{escape(r["route"][:40])}</text>'
            f'<rect x="{label}" y="{y}" width="{db_w:.1f}" height="16" fill="#d9480f">'
            f"<title>DB {r['db_ms']:.1f} ms</title></rect>"
            f'<rect x="{label + db_w:.1f}" y="{y}" width="{other_w:.1f}" height="16" fill="#c5cad6">'
            f"<title>other {r['total_ms'] - r['db_ms']:.1f} ms</title></rect>"
            f'<text x="{label + db_w + other_w + 6:.1f}" y="{y + 13}" font-size="11" fill="#6b7385">'
            f"{share:.0f}% DB</text>"
        )
    return (
        f'<svg class="chart routes" role="img" aria-label="DB time per route" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )


def render_html(data: dict[str, Any]) -> str:
    i = data["input"]
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>otel-dbperf report</title><style>{_CSS}</style></head><body>",
        "<h1>otel-dbperf report</h1>",
        f'<div><span class="card"><b>{data["requests"]}</b>requests</span>'
        f'<span class="card"><b>{data["db_spans"]}</b>DB spans</span>'
        f'<span class="card"><b>{len(data["n_plus_one"])}</b>N+1 findings</span>'
        f'<span class="card"><b>{i["corrupt_lines"]}</b>corrupt lines of {i["lines"]}</span></div>',
        "<h2>DB time per route</h2>",
        _routes_svg(data.get("routes", [])),
        "<h2>Top queries by total DB time</h2>",
    ]
    for n, q in enumerate(data["top_queries"], start=1):
        slow = f' <span class="slow">{q["slow"]} slow</span>' if q["slow"] else ""
        out.append(
            f"<h3>{n}. {escape(q['summary'] or '(no summary)')} "
            f"<code class=muted>{escape(q['fingerprint'])}</code></h3>"
            f"<p>{q['count']} queries, total {q['total_ms']:.1f} ms, p50 {q['p50_ms']:.1f} ms, "
            f"p95 {q['p95_ms']:.1f} ms, max {q['max_ms']:.1f} ms{slow}</p>"
            f"<p><code>{escape(q['statement'])}</code></p>"
            + _histogram_svg(q.get("latency_sample_ms", []))
            + "<p>"
            + "<br>".join(f"at <code>{escape(loc)}</code>" for loc in q["code_locations"][:5])
            + "</p>"
            + (f"<p>from {escape(', '.join(q['routes'][:8]))}</p>" if q["routes"] else "")
            + f"<p class=muted>slowest: {_link(q['slowest'])}</p>"
        )
    out.append("<h2>N+1 queries</h2>")
    if data["n_plus_one"]:
        out.append(
            "<table><tr><th>route</th><th>query</th><th>repeats</th><th>requests</th><th>issued at</th>"
            "<th>fix</th><th>example</th></tr>"
        )
        for f in data["n_plus_one"]:
            fix = (
                f"lazy load of <code>{escape(f['relationship'])}</code>: <code>{escape(f['suggestion'])}</code>"
                if f.get("suggestion")
                else ""
            )
            out.append(
                f"<tr><td>{escape(f['route'])}</td><td>{escape(str(f['query_summary']))}</td>"
                f"<td class=n>{f['max_repeat_count']}</td><td class=n>{f['requests']}</td>"
                f"<td><code>{escape(f['code_location'])}</code></td><td>{fix}</td><td>{_link(f['example'])}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append('<p class="muted">none found</p>')
    out.append("<h2>Exact duplicate queries (cache candidates)</h2>")
    if data.get("duplicates"):
        out.append(
            "<table><tr><th>query</th><th>repeated</th><th>of</th><th>DB time to save</th><th>issued at</th>"
            "<th>routes</th><th>example</th></tr>"
        )
        for d in data["duplicates"]:
            out.append(
                f"<tr><td>{escape(d['summary'] or '(no summary)')}<br><code>{escape(d['statement'][:300])}</code></td>"
                f"<td class=n>{d['duplicates']}</td><td class=n>{d['count']}</td>"
                f"<td class=n>{d['saved_ms']:.1f} ms</td>"
                f"<td>{'<br>'.join(f'<code>{escape(loc)}</code>' for loc in d['code_locations'][:3])}</td>"
                f"<td>{escape(', '.join(d['routes'][:5]))}</td><td>{_link(d['example'])}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append('<p class="muted">none found</p>')
    out.append(
        "<h2>Slowest requests</h2><table><tr><th>duration</th><th>request</th><th>DB queries</th>"
        "<th>DB time</th><th>slow</th><th>N+1</th><th>trace</th></tr>"
    )
    for r in data["slowest_requests"]:
        out.append(
            f"<tr><td class=n>{r['duration_ms']:.1f} ms</td><td>{escape(r['name'])}</td>"
            f"<td class=n>{r['db_queries']}</td><td class=n>{r['db_duration_ms']:.1f} ms</td>"
            f"<td class=n>{r['slow_queries']}</td><td>{'yes' if r['n_plus_one'] else ''}</td><td>{_link(r)}</td></tr>"
        )
    out.append("</table></body></html>")
    return "\n".join(out)
