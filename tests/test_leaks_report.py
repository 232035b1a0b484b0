"""``otel-dbperf report`` on hostile input ("Nothing leaks, nothing opens, round two", items 6 and 7).

6. No script in the spans runs in the HTML pages: every value is escaped by construction (``_markup``),
   and a Content-Security-Policy forbids scripts. Checked in real headless Chromium.
7. The report is never fatal: a wrong-typed attribute is a rejected span, deep nesting a rejected line,
   ``--json`` is valid JSON, the terminal shows control characters escaped. Checked with hypothesis.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest
from conftest import REQUIRE_SERVICES

from otel_dbperf.cli import EXIT_OK, main

SAMPLE = Path(__file__).parent / "data" / "collector_file_exporter.jsonl"
T0 = 1_763_800_000_000_000_000  # ns
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# raw control characters a terminal acts on (C0 but \t and \n, DEL, C1), and lone surrogates (unprintable)
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


# --- building OTLP JSON lines -------------------------------------------------------------------


def _value(value: Any) -> dict[str, Any]:
    if isinstance(value, dict):
        return value  # an AnyValue as given
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    return {"stringValue": value}


def _span(
    trace: str, span_id: str, name: str, attrs: dict[str, Any], *, kind: int = 3, parent: str = "", ms: float = 1.0
) -> dict[str, Any]:
    span: dict[str, Any] = {
        "traceId": trace,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(T0),
        "endTimeUnixNano": str(T0 + int(ms * 1e6)),
        "attributes": [{"key": k, "value": _value(v)} for k, v in attrs.items()],
    }
    if parent:
        span["parentSpanId"] = parent
    return span


def _db(trace: str, span_id: str, parent: str, fp: str = "f00d", ms: float = 2.0, **attrs: Any) -> dict[str, Any]:
    base = {"dbperf.query.fingerprint": fp, "db.query.summary": "SELECT t", "db.query.text": "SELECT * FROM t"}
    return _span(trace, span_id, "SELECT", {**base, **attrs}, parent=parent, ms=ms)


def _request(trace: str, span_id: str, route: str = "/ok", ms: float = 10.0, **attrs: Any) -> dict[str, Any]:
    base = {"http.route": route, "dbperf.db.query_count": 1, "dbperf.db.duration_ms": 2.0}
    return _span(trace, span_id, f"GET {route}", {**base, **attrs}, kind=2, ms=ms)


def _line(*spans: dict[str, Any], service: Any = "shop") -> str:
    resource = {"attributes": [{"key": "service.name", "value": _value(service)}]}
    message = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": list(spans)}]}]}
    return json.dumps(message) + "\n"


def _good(trace: str = "aa" * 16) -> str:
    """One well-formed request and its query."""
    return _line(_db(trace, "d0", "r0"), _request(trace, "r0"))


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["report", *args], out=out)
    return code, out.getvalue(), err.getvalue()


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


# --- item 6: no script runs in the pages ---------------------------------------------------------


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        reason = "Chromium not installed (scripts/test installs Debian's chromium)"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return found


def _dom(chromium: str, page: Path) -> str:
    """The page's DOM once loaded (its scripts, had any run, done)."""
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        proc = subprocess.run(
            [chromium, *FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "</html>" in proc.stdout
    return proc.stdout


def _evil(field: str) -> str:
    """Markup that, were it inserted as markup, would run a script setting the page title to PWNED:<field>
    (the word 'PWNED' is only ever assembled by the script: a page holding it ran one)."""
    act = f"document.title='P'+'WNED:{field}'"
    return (
        f'{field}<script>{act}</script><img src=x onerror="{act}">"\'><svg onload="{act}">'
        f"</textarea></title></style><script>{act}</script> javascript:{act}"
    )


def _shown(field: str) -> str:
    """How Chromium's DOM dump shows the payload of ``field`` when it was inserted as text."""
    return f"{field}&lt;script&gt;document.title='P'+'WNED:{field}'&lt;/script&gt;"


def _hostile_plain(path: Path) -> list[str]:
    """Spans with markup in every string the plain report reads; the fields its page shows."""
    trace = _evil("trace")
    strings = {
        "dbperf.n_plus_one.detected": True,
        "dbperf.n_plus_one.fingerprint": _evil("n1fingerprint"),
        "dbperf.n_plus_one.query_summary": _evil("n1summary"),
        "dbperf.n_plus_one.repeat_count": 7,
        "dbperf.n_plus_one.code_location": _evil("n1location"),
        "dbperf.n_plus_one.python_location": _evil("n1python"),
        "dbperf.n_plus_one.relationship": _evil("relationship"),
        "dbperf.n_plus_one.suggestion": _evil("suggestion"),
        "dbperf.nosql.repeat.detected": True,
        "dbperf.nosql.repeat.system": _evil("system"),
        "dbperf.nosql.repeat.operation": _evil("operation"),
        "dbperf.nosql.repeat.count": 4,
        "dbperf.nosql.repeat.code_location": _evil("nosqllocation"),
        "dbperf.nosql.repeat.suggestion": _evil("nosqlsuggestion"),
    }
    query = {
        "db.query.summary": _evil("summary"),
        "db.query.text": _evil("statement"),
        "code.file.path": _evil("path"),
        "code.line.number": 12,
        "dbperf.query.slow": True,
        "dbperf.query.duplicate": True,
    }
    path.write_text(
        _line(
            _db(trace, "d1", "r1", fp=_evil("fingerprint"), ms=30.0, **query),
            {**_request(trace, "r1", route=_evil("route"), ms=50.0, **strings), "name": _evil("name")},
            service=_evil("service"),
        )
        # the count attributes as strings (issue item 6: they went into the slowest-requests table as is)
        + _line(
            _db("bb" * 16, "d2", "r2", fp="c0ffee"),
            _request(
                "bb" * 16,
                "r2",
                ms=40.0,
                **{"dbperf.db.query_count": _evil("count"), "dbperf.db.slow_query_count": _evil("slowcount")},
            ),
        )
    )
    return [
        "summary",
        "fingerprint",
        "statement",
        "path",
        "route",
        "trace",
        "n1summary",
        "n1location",
        "relationship",
        "suggestion",
        "name",
    ]


def _hostile_compare(tmp: Path) -> tuple[Path, Path, list[str]]:
    """Two sides with markup in every string: a new slow query, a slower, a gone, a new and a fixed N+1."""
    route = _evil("route")

    def side(now: bool) -> str:
        trace = _evil("trace") if now else "cc" * 16
        slower = _db(trace, "d1", "r1", fp=_evil("fingerprint"), ms=90.0 if now else 2.0,
                     **{"db.query.summary": _evil("summary"), "db.query.text": _evil("statement"),
                        "code.file.path": _evil("path"), "code.line.number": 3})  # fmt: skip
        other = (
            _db(trace, "d2", "r1", fp=_evil("newslow"), ms=200.0, **{"dbperf.query.slow": True})
            if now
            else _db(trace, "d2", "r1", fp=_evil("gone"), ms=5.0)
        )
        n1 = {
            "dbperf.n_plus_one.detected": True,
            "dbperf.n_plus_one.fingerprint": _evil("n1new" if now else "n1fixed"),
            "dbperf.n_plus_one.query_summary": _evil("n1summary"),
            "dbperf.n_plus_one.repeat_count": 9,
            "dbperf.n_plus_one.code_location": _evil("n1location"),
        }
        return _line(slower, other, _request(trace, "r1", route=route, ms=300.0, **n1), service=_evil("service"))

    new, old = tmp / "new.jsonl", tmp / "old.jsonl"
    new.write_text(side(True))
    old.write_text(side(False))
    return new, old, ["summary", "fingerprint", "statement", "path", "route", "n1summary", "n1location", "trace"]


def _assert_no_script_ran(html: str, dom: str, title: str, shown: list[str]) -> None:
    assert f"<title>{title}</title>" in dom, dom[:500]
    ran = sorted(set(re.findall(r"PWNED:\w+", dom)))
    assert not ran, f"scripts from span contents ran: {ran}"
    assert 'href="javascript:' not in html.lower()
    missing = [field for field in shown if _shown(field) not in dom]
    assert not missing, f"these hostile fields were not shown as text: {missing}"


def test_hostile_spans_run_no_script_in_the_report_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = _chromium()
    monkeypatch.setenv("DBPERF_JAEGER_URL", "javascript:document.title='P'+'WNED:jaeger'//")
    spans, page = tmp_path / "evil.jsonl", tmp_path / "report.html"
    shown = _hostile_plain(spans)
    code, _, _ = _run(str(spans), "--html", str(page))
    assert code == EXIT_OK
    html = page.read_text()
    _assert_no_script_ran(html, _dom(chromium, page), "otel-dbperf report", shown)


def test_hostile_spans_run_no_script_in_the_comparison_page(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chromium = _chromium()
    monkeypatch.setenv("DBPERF_JAEGER_URL", "http://jaeger.example:16686")
    new, old, shown = _hostile_compare(tmp_path)
    page = tmp_path / "compare.html"
    code, _, err = _run(str(new), "--baseline", str(old), "--min-count", "1", "--html", str(page), "--json")
    assert code == EXIT_OK, err
    data = _strict_json(_run(str(new), "--baseline", str(old), "--min-count", "1", "--json")[1])
    assert data["regression_count"] == 3  # slower, new slow and new N+1: every table has a row
    assert data["routes"]["fixed_n_plus_one"] and data["fingerprints"]["vanished"]
    html = page.read_text()
    _assert_no_script_ran(html, _dom(chromium, page), "otel-dbperf comparison", shown)


def _with_script(html: str) -> str:
    return html.replace("<body>", "<body><script>document.title='P'+'WNED:injected'</script>", 1)


def test_the_pages_forbid_scripts(tmp_path: Path) -> None:
    """A script that got into a page anyway does not run: the page's CSP allows none."""
    chromium = _chromium()
    plain, compared = tmp_path / "plain.html", tmp_path / "compare.html"
    assert _run(str(SAMPLE), "--html", str(plain))[0] == EXIT_OK
    assert _run(str(SAMPLE), "--baseline", str(SAMPLE), "--html", str(compared))[0] == EXIT_OK
    csp = re.compile(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">')
    for page in (plain, compared):
        html = page.read_text()
        policy = csp.search(html)
        assert policy, f"{page.name}: no Content-Security-Policy"
        # before anything from the spans, and it forbids scripts: default-src 'none', no script-src
        assert html.index(policy.group(0)) < html.index("<title>")
        directives = {d.split()[0]: d.split()[1:] for d in policy.group(1).split(";") if d.strip()}
        assert directives["default-src"] == ["'none'"] and "script-src" not in directives, directives
        page.write_text(_with_script(html))
        assert "PWNED" not in _dom(chromium, page), f"{page.name}: a script ran despite the CSP"
    # the probe works: without the policy, the same script runs
    control = tmp_path / "control.html"
    control.write_text(_with_script(csp.sub("", plain.read_text().replace("PWNED", ""))))
    assert "PWNED:injected" in _dom(chromium, control)


def test_html_is_escaped_by_construction() -> None:
    """The pages are built from constant templates whose fields are escaped unless the code made them
    markup: no f-string, no % or str.format builds HTML, and text that is not markup is escaped."""
    from otel_dbperf import _markup, report_compare_html, report_html

    for module in (report_html, report_compare_html):
        tree = ast.parse(Path(str(module.__file__)).read_text())
        for node in ast.walk(tree):
            where = f"{module.__name__} line {getattr(node, 'lineno', '?')}"
            assert not isinstance(node, ast.JoinedStr), f"{where}: an f-string"
            assert not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod)), f"{where}: % formatting"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr != "format", f"{where}: str.format"
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
                continue
            # the markup: html()'s template, Markup()'s text and join()'s separator are constants
            trusted = {"html": node.args[:1], "Markup": node.args[:1], "join": node.args[1:2]}.get(node.func.id, [])
            for arg in trusted:
                assert isinstance(arg, ast.Constant) and isinstance(arg.value, str), (
                    f"{where}: {node.func.id}() of something else than a constant"
                )
                # an interpolated attribute value is quoted (an unquoted one could take more attributes)
                assert not re.search(r"=\{", arg.value), f"{where}: unquoted attribute value"
            assert not node.keywords or node.func.id != "join", f"{where}: join(separator=...)"
    Markup, html, join = _markup.Markup, _markup.html, _markup.join
    evil = "<script>x()</script>\"'&"
    shown = "&lt;script&gt;x()&lt;/script&gt;&quot;&#x27;&amp;"
    assert html('<p title="{}">{}</p>', evil, evil) == f'<p title="{shown}">{shown}</p>'
    assert html("<p>{ms:.1f} ms {b}</p>", ms=2.25, b=html("<b>{}</b>", "<i>")) == "<p>2.2 ms <b>&lt;i&gt;</b></p>"
    # a string somebody built by hand is text, not markup: shown, never run
    assert join([html("<br>"), "<b>hand-made</b>"]) == "<br>&lt;b&gt;hand-made&lt;/b&gt;"
    assert isinstance(join([]), Markup) and html("<i>{}</i>", "\x1b\ud800") == "<i>\\x1b\\ud800</i>"
