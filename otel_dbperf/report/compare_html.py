"""``otel-dbperf report --baseline ... --html``: the comparison as one self-contained page.

Inline CSS and SVG like the plain report: no scripts, nothing fetched; built the same way (every
value escaped by :func:`~otel_dbperf.report.markup.html`, the same Content-Security-Policy).
"""

from __future__ import annotations

import math
from typing import Any

from .html import _CSS, _link, head
from .markup import Markup, html, join
from .summary import finding_text

_WORSE, _BETTER, _BEFORE, _NOW = "#b42318", "#067647", "#98a2b3", "#3d6fe0"
_EXTRA_CSS = Markup("""
.verdict{font-size:18px;font-weight:700;padding:8px 14px;border-radius:6px;display:inline-block;margin:4px 0 12px}
.bad{background:#fee4e2;color:#b42318}.good{background:#dcfae6;color:#067647}.tag{font-size:11px;font-weight:700;
padding:1px 6px;border-radius:4px;white-space:nowrap}.legend span{margin-right:18px}
""")


def _label(e: dict[str, Any]) -> str:
    return str(e["summary"] or "(no summary)") + " " + str(e["fingerprint"][:8])


def _dumbbell_svg(rows: list[tuple[str, str, dict[str, Any]]], width: int = 1000) -> Markup:
    """p95 before (grey dot) and now (coloured dot) per fingerprint, on a log scale."""
    if not rows:
        return html('<p class="muted">nothing changed beyond the thresholds</p>')
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
        parts.append(
            html(
                '<line x1="{x:.1f}" x2="{x:.1f}" y1="{y1}" y2="{y2}" stroke="#eef0f4"/>'
                '<text x="{x:.1f}" y="12" font-size="10" fill="#6b7385" text-anchor="middle">{ms:g} {unit}</text>',
                x=x(ms),
                y1=top - 4,
                y2=height,
                ms=ms if ms < 1000 else ms / 1000,
                unit="ms" if ms < 1000 else "s",
            )
        )
    for i, (kind, colour, e) in enumerate(rows):
        y = top + i * row_h + row_h / 2
        b, c = e["baseline"], e["current"]
        parts.append(html('<text x="0" y="{y:.1f}" font-size="12">{}</text>', _label(e)[:46], y=y + 4))
        if b and c:
            parts.append(
                html(
                    '<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y:.1f}" y2="{y:.1f}" '
                    'stroke="{colour}" stroke-width="3" stroke-opacity="0.45"/>',
                    x1=x(b["p95_ms"]),
                    x2=x(c["p95_ms"]),
                    y=y,
                    colour=colour,
                )
            )
        if b:
            parts.append(
                html(
                    '<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}">'
                    "<title>baseline p95 {s[p95_ms]:.1f} ms ({s[count]} queries)</title></circle>",
                    x=x(b["p95_ms"]),
                    y=y,
                    colour=_BEFORE,
                    s=b,
                )
            )
        if c:
            parts.append(
                html(
                    '<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{colour}">'
                    "<title>now p95 {s[p95_ms]:.1f} ms ({s[count]} queries)</title></circle>",
                    x=x(c["p95_ms"]),
                    y=y,
                    colour=colour,
                    s=c,
                )
            )
        last = max(x(side["p95_ms"]) for side in (b, c) if side)
        parts.append(
            html(
                '<text x="{x:.1f}" y="{y:.1f}" font-size="11" fill="{colour}" font-weight="600">{kind}</text>',
                x=last + 10,
                y=y + 4,
                colour=colour,
                kind=kind,
            )
        )
    return html(
        '<svg class="chart compare" role="img" aria-label="p95 before and now" width="{w}" height="{h}" '
        'viewBox="0 0 {w} {h}">{parts}</svg>',
        w=width,
        h=height,
        parts=join(parts),
    )


def _routes_svg(routes: list[dict[str, Any]], width: int = 1000) -> Markup:
    """DB time per request by route: the baseline's bar above today's."""
    rows = [r for r in routes if r["baseline"] or r["current"]][:15]
    if not rows:
        return html('<p class="muted">no requests</p>')
    most = max(side["db_ms_per_request"] for r in rows for side in (r["baseline"], r["current"]) if side) or 1.0
    label_w, bar_h, row_h = 300, 9, 28
    plot = width - label_w - 130
    height = row_h * len(rows) + 4
    parts = []
    for i, r in enumerate(rows):
        y = i * row_h + 4
        parts.append(html('<text x="0" y="{y}" font-size="12">{}</text>', r["route"][:44], y=y + 14))
        for j, (key, colour, name) in enumerate((("baseline", _BEFORE, "baseline"), ("current", _NOW, "now"))):
            side = r[key]
            by = y + j * (bar_h + 1)
            if side is None:
                parts.append(
                    html(
                        '<text x="{x}" y="{y}" font-size="9" fill="#6b7385">not requested ({name})</text>',
                        x=label_w,
                        y=by + 8,
                        name=name,
                    )
                )
                continue
            w = max(plot * side["db_ms_per_request"] / most, 1)
            parts.append(
                html(
                    '<rect x="{x}" y="{y}" width="{w:.1f}" height="{h}" fill="{colour}">'
                    "<title>{name}: {s[db_ms_per_request]:.2f} ms DB per request, {s[requests]} requests"
                    "</title></rect>"
                    '<text x="{tx:.1f}" y="{ty}" font-size="10" fill="#6b7385">{s[db_ms_per_request]:.1f} ms</text>',
                    x=label_w,
                    y=by,
                    w=w,
                    h=bar_h,
                    colour=colour,
                    name=name,
                    s=side,
                    tx=label_w + w + 5,
                    ty=by + 8,
                )
            )
    return html(
        '<svg class="chart routes-compare" role="img" aria-label="DB time per request by route, baseline and now" '
        'width="{w}" height="{h}" viewBox="0 0 {w} {h}">{parts}</svg>',
        w=width,
        h=height,
        parts=join(parts),
    )


def _side_cells(side: dict[str, Any] | None) -> Markup:
    if side is None:
        return html("<td class=n>-</td><td class=n>-</td><td class=n>-</td>")
    return html(
        "<td class=n>{s[count]}</td><td class=n>{s[p95_ms]:.1f} ms</td><td class=n>{s[db_ms_per_request]:.2f} ms</td>",
        s=side,
    )


def _tag(kind: str, colour: str) -> Markup:
    return html('<span class="tag" style="color:{c};border:1px solid {c}">{kind}</span>', c=colour, kind=kind)


def _table(title: str, kind: str, colour: str, entries: list[dict[str, Any]], limit: int = 30) -> Markup:
    if not entries:
        return Markup()
    head_row = html(
        "<h3>{title} ({n})</h3><table><tr><th></th><th>query</th>"
        "<th>count before</th><th>p95 before</th><th>DB/request before</th>"
        "<th>count now</th><th>p95 now</th><th>DB/request now</th><th>issued at</th></tr>",
        title=title,
        n=len(entries),
    )
    rows = []
    for e in entries[:limit]:
        routes = html("<br><span class=muted>from {}</span>", ", ".join(e["routes"][:5])) if e["routes"] else Markup()
        rows.append(
            html(
                "<tr><td>{tag}</td><td>{summary} <code class=muted>{e[fingerprint]}</code>"
                "<br><code>{statement}</code></td>{before}{now}<td>{locations}{routes}</td></tr>",
                tag=_tag(kind, colour),
                summary=e["summary"] or "(no summary)",
                e=e,
                statement=e["statement"][:300],
                before=_side_cells(e["baseline"]),
                now=_side_cells(e["current"]),
                locations=join((html("<code>{}</code>", loc) for loc in e["code_locations"][:3]), "<br>"),
                routes=routes,
            )
        )
    more = (
        html('<p class="muted">and {} more (--json lists all)</p>', len(entries) - limit)
        if len(entries) > limit
        else Markup()
    )
    return join([head_row, *rows, html("</table>"), more])


def _n1_table(title: str, kind: str, colour: str, entries: list[dict[str, Any]]) -> Markup:
    if not entries:
        return Markup()
    out = [
        html(
            "<h3>{title} ({n})</h3><table><tr><th></th><th>route</th><th>query</th>"
            "<th>repeats</th><th>requests</th><th>issued at</th><th>example</th></tr>",
            title=title,
            n=len(entries),
        )
    ]
    for f in entries:
        out.append(
            html(
                "<tr><td>{tag}</td><td>{f[route]}</td><td>{f[query_summary]}</td>"
                "<td class=n>{f[max_repeat_count]}</td><td class=n>{f[requests]}</td>"
                "<td><code>{f[code_location]}</code></td><td>{example}</td></tr>",
                tag=_tag(kind, colour),
                f=f,
                example=_link(f["example"]),
            )
        )
    out.append(html("</table>"))
    return join(out)


def _findings_table(title: str, kind: str, colour: str, entries: list[dict[str, Any]]) -> Markup:
    if not entries:
        return Markup()
    out = [
        html(
            "<h3>{title} ({n})</h3><table><tr><th></th><th>route</th><th>finding</th>"
            "<th>requests</th><th>at</th><th>fix</th><th>example</th></tr>",
            title=title,
            n=len(entries),
        )
    ]
    for f in entries:
        out.append(
            html(
                "<tr><td>{tag}</td><td>{f[route]}</td><td>{text}</td><td class=n>{f[requests]}</td>"
                "<td><code>{f[code_location]}</code></td><td>{f[suggestion]}</td><td>{example}</td></tr>",
                tag=_tag(kind, colour),
                f=f,
                text=finding_text(f),
                example=_link(f["example"]),
            )
        )
    out.append(html("</table>"))
    return join(out)


def render_html(data: dict[str, Any], rules: str) -> str:
    fps, routes, b, c = data["fingerprints"], data["routes"], data["baseline"], data["current"]
    verdict = (
        html('<div class="verdict bad">Regressed: {} regression(s)</div>', data["regression_count"])
        if data["regressed"]
        else html('<div class="verdict good">No regressions</div>')
    )
    dumbbell = (
        [("new slow", _WORSE, e) for e in fps["new_slow"]]
        + [("slower", _WORSE, e) for e in fps["regressed"]]
        + [("faster", _BETTER, e) for e in fps["faster"]]
        + [("gone", _BEFORE, e) for e in fps["vanished"] if e["baseline"]["count"] >= data["thresholds"]["min_count"]]
        + [("ok", _NOW, e) for e in fps["unchanged"]]
        + [("new", _NOW, e) for e in fps["new"] if e["current"]["count"] >= data["thresholds"]["min_count"]]
    )[:25]
    better = (
        len(routes["fixed_n_plus_one"])
        + len(routes.get("fixed_findings", []))
        + len(fps["faster"])
        + len(fps["vanished"])
    )
    regressions = join(
        [
            _table("New slow queries", "new slow", _WORSE, fps["new_slow"]),
            _table("Slower queries", "slower", _WORSE, fps["regressed"]),
            _n1_table("New N+1", "new N+1", _WORSE, routes["new_n_plus_one"]),
            _findings_table("New request findings", "new", _WORSE, routes.get("new_findings", [])),
        ]
    )
    improvements = join(
        [
            _n1_table("Fixed N+1", "fixed N+1", _BETTER, routes["fixed_n_plus_one"]),
            _findings_table("Fixed request findings", "fixed", _BETTER, routes.get("fixed_findings", [])),
            _table("Faster queries", "faster", _BETTER, fps["faster"]),
            _table("Gone", "gone", _BEFORE, fps["vanished"]),
        ]
    )
    out = [
        head("otel-dbperf comparison", join([_CSS, _EXTRA_CSS])),
        html("<h1>otel-dbperf report: now against the baseline</h1>"),
        verdict,
        html(
            '<div><span class="card"><b>{new_slow}</b>new slow queries</span>'
            '<span class="card"><b>{slower}</b>slower queries</span>'
            '<span class="card"><b>{new_n1}</b>new N+1</span>'
            '<span class="card"><b>{better}</b>better</span>'
            '<span class="card"><b>{new}</b>other new queries</span></div>',
            new_slow=len(fps["new_slow"]),
            slower=len(fps["regressed"]),
            new_n1=len(routes["new_n_plus_one"]),
            better=better,
            new=len(fps["new"]),
        ),
        html(
            '<p class="muted">baseline: {b[requests]} requests, {b[db_spans]} DB spans; now: {c[requests]} '
            "requests, {c[db_spans]} DB spans. Rules: {rules}.</p>",
            b=b,
            c=c,
            rules=rules,
        ),
        html("<h2>p95 per query: baseline and now</h2>"),
        html(
            '<p class="legend"><span style="color:{before}">&#9679; baseline</span>'
            '<span style="color:{worse}">&#9679; now, worse</span><span style="color:{better}">&#9679; now, better'
            '</span><span style="color:{now}">&#9679; now, within the thresholds</span></p>',
            before=_BEFORE,
            worse=_WORSE,
            better=_BETTER,
            now=_NOW,
        ),
        _dumbbell_svg(dumbbell),
        html("<h2>Regressions</h2>"),
        regressions or html('<p class="muted">none</p>'),
        html("<h2>Better</h2>"),
        improvements or html('<p class="muted">nothing</p>'),
        html("<h2>Other new queries</h2>"),
        _table("Not slow, or too few to judge", "new", _NOW, fps["new"]) or html('<p class="muted">none</p>'),
        html(
            '<p class="muted">{unchanged} unchanged; {not_judged} with too few spans on a side to judge.</p>',
            unchanged=len(fps["unchanged"]),
            not_judged=len(fps["not_judged"]),
        ),
        html("<h2>DB time per request, by route</h2>"),
        html(
            '<p class="legend"><span style="color:{before}">&#9632; baseline</span>'
            '<span style="color:{now}">&#9632; now</span></p>',
            before=_BEFORE,
            now=_NOW,
        ),
        _routes_svg(routes["db_time"]),
        html("</body></html>"),
    ]
    return str(join(out, "\n"))
