"""``otel-dbperf report --baseline ... --html``: the comparison as one self-contained page.

Inline CSS and SVG like the plain report: no scripts, nothing fetched.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from .report_compare import rules_text
from .report_html import _CSS, _link

_WORSE, _BETTER, _BEFORE, _NOW = "#b42318", "#067647", "#98a2b3", "#3d6fe0"
_EXTRA_CSS = """
.verdict{font-size:18px;font-weight:700;padding:8px 14px;border-radius:6px;display:inline-block;margin:4px 0 12px}
.bad{background:#fee4e2;color:#b42318}.good{background:#dcfae6;color:#067647}.tag{font-size:11px;font-weight:700;
padding:1px 6px;border-radius:4px;white-space:nowrap}.legend span{margin-right:18px}
"""


def _label(e: dict[str, Any]) -> str:
    return f"{e['summary'] or '(no summary)'} {e['fingerprint'][:8]}"


def _dumbbell_svg(rows: list[tuple[str, str, dict[str, Any]]], width: int = 1000) -> str:
    """p95 before (grey dot) and now (coloured dot) per fingerprint, on a log scale."""
    if not rows:
        return '<p class="muted">nothing changed beyond the thresholds</p>'
    values = [
        side["p95_ms"] for _, _, e in rows for side in (e["baseline"], e["current"]) if side and side["p95_ms"] > 0
    ]
    lo = math.floor(math.log10(max(min(values, default=0.1), 0.01)))
    hi = math.ceil(math.log10(max(max(values, default=1.0), 10 ** (lo + 1))))
    if hi <= lo:
        hi = lo + 1
    label_w, row_h, top = 330, 24, 22
    plot = width - label_w - 90

    def x(ms: float) -> float:
        return label_w + plot * (math.log10(max(ms, 10**lo)) - lo) / (hi - lo)

    height = top + row_h * len(rows) + 6
    parts = []
    for p in range(lo, hi + 1):
        ms = 10**p
        text = f"{ms:g} ms" if ms < 1000 else f"{ms / 1000:g} s"
        parts.append(
            f'<line x1="{x(ms):.1f}" x2="{x(ms):.1f}" y1="{top - 4}" y2="{height}" stroke="#eef0f4"/>'
            f'<text x="{x(ms):.1f}" y="12" font-size="10" fill="#6b7385" text-anchor="middle">{text}</text>'
        )
    for i, (kind, colour, e) in enumerate(rows):
        y = top + i * row_h + row_h / 2
        b, c = e["baseline"], e["current"]
        parts.append(f'<text x="0" y="{y + 4:.1f}" font-size="12">{escape(_label(e)[:46])}</text>')
        if b and c:
            parts.append(
                f'<line x1="{x(b["p95_ms"]):.1f}" x2="{x(c["p95_ms"]):.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                f'stroke="{colour}" stroke-width="3" stroke-opacity="0.45"/>'
            )
        if b:
            parts.append(
                f'<circle cx="{x(b["p95_ms"]):.1f}" cy="{y:.1f}" r="6" fill="{_BEFORE}">'
                f"<title>baseline p95 {b['p95_ms']:.1f} ms ({b['count']} queries)</title></circle>"
            )
        if c:
            parts.append(
                f'<circle cx="{x(c["p95_ms"]):.1f}" cy="{y:.1f}" r="6" fill="{colour}">'
                f"<title>now p95 {c['p95_ms']:.1f} ms ({c['count']} queries)</title></circle>"
            )
        last = max(x(side["p95_ms"]) for side in (b, c) if side)
        parts.append(
            f'<text x="{last + 10:.1f}" y="{y + 4:.1f}" font-size="11" fill="{colour}" font-weight="600">'
            f"{escape(kind)}</text>"
        )
    return (
        f'<svg class="chart compare" role="img" aria-label="p95 before and now" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )


def _routes_svg(routes: list[dict[str, Any]], width: int = 1000) -> str:
    """DB time per request by route: the baseline's bar above today's."""
    rows = [r for r in routes if r["baseline"] or r["current"]][:15]
    if not rows:
        return '<p class="muted">no requests</p>'
    most = max(side["db_ms_per_request"] for r in rows for side in (r["baseline"], r["current"]) if side) or 1.0
    label_w, bar_h, row_h = 300, 9, 28
    plot = width - label_w - 130
    height = row_h * len(rows) + 4
    parts = []
    for i, r in enumerate(rows):
        y = i * row_h + 4
        parts.append(f'<text x="0" y="{y + 14}" font-size="12">{escape(r["route"][:44])}</text>')
        for j, (key, colour, name) in enumerate((("baseline", _BEFORE, "baseline"), ("current", _NOW, "now"))):
            side = r[key]
            by = y + j * (bar_h + 1)
            if side is None:
                parts.append(
                    f'<text x="{label_w}" y="{by + 8}" font-size="9" fill="#6b7385">not requested ({name})</text>'
                )
                continue
            w = plot * side["db_ms_per_request"] / most
            parts.append(
                f'<rect x="{label_w}" y="{by}" width="{max(w, 1):.1f}" height="{bar_h}" fill="{colour}">'
                f"<title>{name}: {side['db_ms_per_request']:.2f} ms DB per request, {side['requests']} requests"
                f"</title></rect>"
                f'<text x="{label_w + max(w, 1) + 5:.1f}" y="{by + 8}" font-size="10" fill="#6b7385">'
                f"{side['db_ms_per_request']:.1f} ms</text>"
            )
    return (
        f'<svg class="chart routes-compare" role="img" aria-label="DB time per request by route, baseline and now" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">{"".join(parts)}</svg>'
    )


def _side_cells(side: dict[str, Any] | None) -> str:
    if side is None:
        return "<td class=n>-</td><td class=n>-</td><td class=n>-</td>"
    return (
        f"<td class=n>{side['count']}</td><td class=n>{side['p95_ms']:.1f} ms</td>"
        f"<td class=n>{side['db_ms_per_request']:.2f} ms</td>"
    )


def _table(title: str, kind: str, colour: str, entries: list[dict[str, Any]], limit: int = 30) -> str:
    if not entries:
        return ""
    head = (
        f"<h3>{escape(title)} ({len(entries)})</h3><table><tr><th></th><th>query</th>"
        "<th>count before</th><th>p95 before</th><th>DB/request before</th>"
        "<th>count now</th><th>p95 now</th><th>DB/request now</th><th>issued at</th></tr>"
    )
    rows = []
    for e in entries[:limit]:
        loc = "<br>".join(f"<code>{escape(x)}</code>" for x in e["code_locations"][:3])
        routes = f"<br><span class=muted>from {escape(', '.join(e['routes'][:5]))}</span>" if e["routes"] else ""
        rows.append(
            f'<tr><td><span class="tag" style="color:{colour};border:1px solid {colour}">{escape(kind)}</span></td>'
            f"<td>{escape(e['summary'] or '(no summary)')} <code class=muted>{escape(e['fingerprint'])}</code>"
            f"<br><code>{escape(e['statement'][:300])}</code></td>"
            f"{_side_cells(e['baseline'])}{_side_cells(e['current'])}<td>{loc}{routes}</td></tr>"
        )
    more = f'<p class="muted">and {len(entries) - limit} more (--json lists all)</p>' if len(entries) > limit else ""
    return head + "".join(rows) + "</table>" + more


def _n1_table(title: str, kind: str, colour: str, entries: list[dict[str, Any]]) -> str:
    if not entries:
        return ""
    out = [
        f"<h3>{escape(title)} ({len(entries)})</h3><table><tr><th></th><th>route</th><th>query</th>"
        "<th>repeats</th><th>requests</th><th>issued at</th><th>example</th></tr>"
    ]
    for f in entries:
        out.append(
            f'<tr><td><span class="tag" style="color:{colour};border:1px solid {colour}">{escape(kind)}</span></td>'
            f"<td>{escape(f['route'])}</td><td>{escape(str(f['query_summary']))}</td>"
            f"<td class=n>{f['max_repeat_count']}</td><td class=n>{f['requests']}</td>"
            f"<td><code>{escape(f['code_location'])}</code></td><td>{_link(f['example'])}</td></tr>"
        )
    out.append("</table>")
    return "".join(out)


def render_html(data: dict[str, Any]) -> str:
    fps, routes, b, c = data["fingerprints"], data["routes"], data["baseline"], data["current"]
    verdict = (
        f'<div class="verdict bad">Regressed: {data["regression_count"]} regression(s)</div>'
        if data["regressed"]
        else '<div class="verdict good">No regressions</div>'
    )
    dumbbell = (
        [("new slow", _WORSE, e) for e in fps["new_slow"]]
        + [("slower", _WORSE, e) for e in fps["regressed"]]
        + [("faster", _BETTER, e) for e in fps["faster"]]
        + [("gone", _BEFORE, e) for e in fps["vanished"] if e["baseline"]["count"] >= data["thresholds"]["min_count"]]
        + [("ok", _NOW, e) for e in fps["unchanged"]]
        + [("new", _NOW, e) for e in fps["new"] if e["current"]["count"] >= data["thresholds"]["min_count"]]
    )[:25]
    better = len(routes["fixed_n_plus_one"]) + len(fps["faster"]) + len(fps["vanished"])
    out = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>otel-dbperf comparison</title><style>{_CSS}{_EXTRA_CSS}</style></head><body>",
        "<h1>otel-dbperf report: now against the baseline</h1>",
        verdict,
        f'<div><span class="card"><b>{len(fps["new_slow"])}</b>new slow queries</span>'
        f'<span class="card"><b>{len(fps["regressed"])}</b>slower queries</span>'
        f'<span class="card"><b>{len(routes["new_n_plus_one"])}</b>new N+1</span>'
        f'<span class="card"><b>{better}</b>better</span>'
        f'<span class="card"><b>{len(fps["new"])}</b>other new queries</span></div>',
        f'<p class="muted">baseline: {b["requests"]} requests, {b["db_spans"]} DB spans; now: {c["requests"]} '
        f"requests, {c['db_spans']} DB spans. Rules: {escape(rules_text(data['thresholds']))}.</p>",
        "<h2>p95 per query: baseline and now</h2>",
        f'<p class="legend"><span style="color:{_BEFORE}">&#9679; baseline</span>'
        f'<span style="color:{_WORSE}">&#9679; now, worse</span><span style="color:{_BETTER}">&#9679; now, better'
        f'</span><span style="color:{_NOW}">&#9679; now, within the thresholds</span></p>',
        _dumbbell_svg(dumbbell),
        "<h2>Regressions</h2>",
        _table("New slow queries", "new slow", _WORSE, fps["new_slow"])
        + _table("Slower queries", "slower", _WORSE, fps["regressed"])
        + _n1_table("New N+1", "new N+1", _WORSE, routes["new_n_plus_one"])
        or '<p class="muted">none</p>',
        "<h2>Better</h2>",
        _n1_table("Fixed N+1", "fixed N+1", _BETTER, routes["fixed_n_plus_one"])
        + _table("Faster queries", "faster", _BETTER, fps["faster"])
        + _table("Gone", "gone", _BEFORE, fps["vanished"])
        or '<p class="muted">nothing</p>',
        "<h2>Other new queries</h2>",
        _table("Not slow, or too few to judge", "new", _NOW, fps["new"]) or '<p class="muted">none</p>',
        f'<p class="muted">{len(fps["unchanged"])} unchanged; {len(fps["not_judged"])} with too few spans on a side '
        "to judge.</p>",
        "<h2>DB time per request, by route</h2>",
        f'<p class="legend"><span style="color:{_BEFORE}">&#9632; baseline</span>'
        f'<span style="color:{_NOW}">&#9632; now</span></p>',
        _routes_svg(routes["db_time"]),
        "</body></html>",
    ]
    return "\n".join(out)
