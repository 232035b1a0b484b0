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
from conftest import BIN
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from support.chromium import FLAGS
from support.chromium import chromium as _chromium

from otel_dbperf.report.cli import EXIT_NO_DATA, EXIT_OK, main

SAMPLE = Path(__file__).parent / "data" / "collector_file_exporter.jsonl"
T0 = 1_763_800_000_000_000_000  # ns
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
    from otel_dbperf.report import compare_html as report_compare_html
    from otel_dbperf.report import html as report_html
    from otel_dbperf.report import markup as _markup

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


# --- item 7: never fatal -------------------------------------------------------------------------


def test_a_wrong_typed_attribute_is_a_rejected_span(tmp_path: Path) -> None:
    path, page = tmp_path / "spans.jsonl", tmp_path / "report.html"
    path.write_text(
        _good()
        + _line(_request("01" * 16, "r1", **{"dbperf.db.duration_ms": "12.5"}))  # a string
        + _line(_request("02" * 16, "r2", **{"dbperf.db.query_count": {"doubleValue": 3.0}}))  # a double
        + _line(_request("03" * 16, "r3", **{"dbperf.n_plus_one.detected": {"boolValue": "false"}}))
        + _line(_db("04" * 16, "d4", "r4", **{"code.line.number": {"intValue": True}}))
    )
    code, text, err = _run(str(path), "--html", str(page))
    assert code == EXIT_OK, err
    assert "GET /ok" in text and page.stat().st_size > 0 and page.read_text().rstrip().endswith("</html>")
    code, out, _ = _run(str(path), "--json")
    data = _strict_json(out)
    assert data["input"]["spans"] == 2 and data["input"]["bad_spans"] == 4 and data["requests"] == 1
    reasons = data["input"]["rejected"]
    assert len(reasons) == 4, reasons
    assert reasons[0].startswith(f"{path} line 2, span r1: dbperf.db.duration_ms '12.5' is not"), reasons
    assert "dbperf.db.query_count 3.0 is not" in reasons[1]
    assert "boolValue 'false' is not" in reasons[2] and "intValue True is not" in reasons[3]
    assert "skipped 0 corrupt lines and 4 unreadable spans" in err


def test_deep_nesting_is_a_rejected_line(tmp_path: Path) -> None:
    path = tmp_path / "spans.jsonl"
    deep = 100_000
    nested_value: dict[str, Any] = {"stringValue": "x"}
    for _ in range(250):  # fine for the JSON decoder, deeper than any attribute value
        nested_value = {"arrayValue": {"values": [nested_value]}}
    path.write_text(
        '{"resourceSpans": ' + "[" * deep + "]" * deep + "}\n"  # the JSON decoder's RecursionError
        + _line(_request("05" * 16, "r5", **{"some.attribute": nested_value}))
        + _good()
    )  # fmt: skip
    code, out, err = _run(str(path), "--json")
    assert code == EXIT_OK, err
    data = _strict_json(out)
    assert data["input"]["corrupt_lines"] == 1 and data["input"]["bad_spans"] == 1 and data["requests"] == 1
    assert data["input"]["rejected"][0] == f"{path} line 1: not JSON (nested too deeply)"
    assert "nested more than" in data["input"]["rejected"][1]


def test_json_output_is_json(tmp_path: Path) -> None:
    """No NaN or Infinity in --json, from any number of the input (Python's json reads them)."""
    path = tmp_path / "spans.jsonl"
    path.write_text(
        _good()
        + _line(_request("06" * 16, "r6", **{"dbperf.db.duration_ms": {"doubleValue": "NaN"}}))  # protobuf JSON
        + _line(_request("07" * 16, "r7", **{"dbperf.db.pool_wait_ms": float("inf")}))  # bare Infinity
        + _line(_request("08" * 16, "r8", **{"dbperf.db.duration_ms": 1e308}))  # two of them make Infinity
        + _line(_request("09" * 16, "r9", **{"dbperf.db.duration_ms": 1e308}))
        + _line({**_request("0a" * 16, "ra"), "endTimeUnixNano": "1e400"})
        + _line({**_request("0b" * 16, "rb"), "startTimeUnixNano": float("nan")})
    )
    for args in ((), ("--baseline", str(path))):
        code, out, err = _run(str(path), "--json", *args)
        assert code == EXIT_OK, err
        data = _strict_json(out)
    plain = _strict_json(_run(str(path), "--json")[1])
    assert plain["input"]["bad_spans"] == 6 and plain["requests"] == 1
    assert "dbperf.db.duration_ms nan is not" in plain["input"]["rejected"][0]
    assert data["current"]["input"]["bad_spans"] == 6


def test_terminal_output_shows_control_characters_escaped(tmp_path: Path) -> None:
    path, baseline = tmp_path / "spans.jsonl", tmp_path / "baseline.jsonl"
    name = "GET /x\x1b[2J\x1b]0;owned\x07\rREGRESSED\x9b\u202e\nforged line"
    path.write_text(
        _line(
            _db("0c" * 16, "dc", "rc", fp="e5c", **{"db.query.summary": "SELECT\x1b[31m t"}),
            {**_request("0c" * 16, "rc"), "name": name},
            {**_request("0c" * 16, "\x1b[2J"), "kind": "\x1b]0;x\x07"},  # rejected: its reason is printed
            service="s\x00",
        )
        + "\x1b[2Jnot json\x1b]8;;http://evil\x07\n"
    )
    baseline.write_text(_good())
    code, text, err = _run(str(path))
    assert code == EXIT_OK
    for stream in (text, err):
        assert not RAW_CONTROL.search(stream), repr(stream)
    assert "GET /x\\x1b[2J\\x1b]0;owned\\x07\\rREGRESSED\\x9b\\u202e\\nforged line" in text
    assert "SELECT\\x1b[31m t" in text and "\nforged line" not in text
    assert "span \\x1b[2J: kind '\\x1b]0;x\\x07' is not one of" in err
    code, text, err = _run(str(path), "--baseline", str(baseline))
    assert code == EXIT_OK and "NEW             SELECT\\x1b[31m t  [e5c]" in text
    assert not RAW_CONTROL.search(text + err), repr(text + err)


def test_the_installed_command_survives_hostile_spans(tmp_path: Path) -> None:
    """A real process writing to a real (UTF-8) pipe: a lone surrogate from a JSON escape is no crash."""
    path, page = tmp_path / "spans.jsonl", tmp_path / "report.html"
    path.write_text(
        _good()
        + _line(_db("0d" * 16, "dd", "rd", fp="beef"), {**_request("0d" * 16, "rd"), "name": "GET /\ud800\x1b[5m"})
    )
    proc = subprocess.run(
        [str(BIN / "otel-dbperf"), "report", str(path), "--html", str(page)], capture_output=True, timeout=60
    )
    assert proc.returncode == EXIT_OK, proc.stderr[-2000:]
    assert "GET /\\ud800\\x1b[5m" in proc.stdout.decode("utf-8")
    assert b"\x1b" not in proc.stdout and page.stat().st_size > 0


# --- item 7: hypothesis ----------------------------------------------------------------------------

# the attributes the report reads, by type
STRING_KEYS = [
    "dbperf.query.fingerprint", "db.query.summary", "db.query.text", "db.statement", "code.file.path", "http.route",
    "celery.task_name", "dbperf.n_plus_one.fingerprint", "dbperf.n_plus_one.query_summary",
    "dbperf.n_plus_one.code_location", "dbperf.n_plus_one.python_location", "dbperf.n_plus_one.relationship",
    "dbperf.n_plus_one.suggestion", "dbperf.nosql.repeat.system", "dbperf.nosql.repeat.operation",
    "dbperf.nosql.repeat.code_location", "dbperf.nosql.repeat.suggestion",
]  # fmt: skip
FLAG_KEYS = [
    "dbperf.query.slow", "dbperf.query.duplicate", "dbperf.query.nested", "dbperf.query.setup", "dbperf.query.nosql",
    "dbperf.n_plus_one.detected", "dbperf.nosql.repeat.detected",
]  # fmt: skip
COUNT_KEYS = [
    "code.line.number", "dbperf.db.query_count", "dbperf.db.slow_query_count", "dbperf.db.duplicate_count",
    "dbperf.db.pool_timeouts", "dbperf.n_plus_one.repeat_count", "dbperf.nosql.repeat.count",
]  # fmt: skip
MS_KEYS = ["dbperf.db.duration_ms", "dbperf.db.pool_wait_ms"]
READ_KEYS = STRING_KEYS + FLAG_KEYS + COUNT_KEYS + MS_KEYS
SNIPPETS = ["\x1b[2J", "\x1b]0;t\x07", "\r", "\x00", "\x85", "\x9b", "\u202e", "\u2028", "\ud800", "\udfff",
            "<script>x()</script>", "\" onload=\"x()", "javascript:x()", "\n", "\t", "é", "🙂"]  # fmt: skip
TRACES = ["aa" * 16, "bb" * 16, "", _evil("t")]
MAX_NS = 2**64 - 1

texts = (
    st.text(st.characters(max_codepoint=0x30FF), max_size=12)
    | st.sampled_from(SNIPPETS)
    | st.lists(st.sampled_from(SNIPPETS), max_size=4).map("".join)
)
numbers = (
    st.integers(min_value=-(10**30), max_value=10**30)
    | st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400, -1, 0])
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([1e308, -1e308, 5e-324])
)
scalars = st.none() | st.booleans() | numbers | texts
anything = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3), max_leaves=6
)
# any AnyValue, mostly malformed
any_value = st.one_of(
    texts.map(lambda s: {"stringValue": s}),
    numbers.map(lambda n: {"intValue": n}),
    numbers.map(lambda n: {"intValue": str(n)}),
    numbers.map(lambda n: {"doubleValue": n}),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "x"]).map(lambda n: {"doubleValue": n}),
    st.booleans().map(lambda b: {"boolValue": b}),
    anything.map(lambda v: {"arrayValue": {"values": v}}),
    st.dictionaries(st.sampled_from(["stringValue", "intValue", "doubleValue", "boolValue", "arrayValue"]), anything),
    anything,
)


def _typed_value(key: str) -> st.SearchStrategy[dict[str, Any]]:
    """A value of the attribute's type: hostile strings, extreme numbers."""
    if key in FLAG_KEYS:
        return st.booleans().map(lambda b: {"boolValue": b})
    if key in COUNT_KEYS:
        count = st.integers(0, 2**63 - 1) | st.sampled_from([0, 1, 2**63 - 1])
        return count.flatmap(lambda n: st.sampled_from([{"intValue": n}, {"intValue": str(n)}]))
    if key in MS_KEYS:
        ms = st.floats(0, MAX_NS / 1e6) | st.integers(0, 10**13) | st.sampled_from([0.0, 5e-324, MAX_NS / 1e6])
        return ms.map(lambda x: {"doubleValue": x} if isinstance(x, float) else {"intValue": x})
    return texts.map(lambda s: {"stringValue": s})


typed_attribute = st.sampled_from(READ_KEYS).flatmap(lambda k: _typed_value(k).map(lambda v: {"key": k, "value": v}))
# a span of the right types, with hostile contents
typed_span = st.fixed_dictionaries(
    {
        "traceId": st.sampled_from(TRACES),
        "spanId": st.sampled_from(["r1", "d1", "x"]),
        "name": texts,
        "kind": st.sampled_from([2, 3, "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "2"]),
        "startTimeUnixNano": st.sampled_from([str(T0), T0, 0]) | st.integers(0, MAX_NS),
        "endTimeUnixNano": st.sampled_from([str(T0 + 10**7), T0 + 10**9, MAX_NS]) | st.integers(0, MAX_NS),
        "attributes": st.lists(typed_attribute, max_size=6),
    },
    optional={
        "parentSpanId": st.sampled_from(["", "r1", "r0"]),
        "status": st.sampled_from([{}, {"code": 2}, {"code": "STATUS_CODE_ERROR"}]),
    },
)


def _spoil(span: dict[str, Any], field: str, key: str, value: Any, attribute_value: Any) -> Any:
    """``span`` with one field of the wrong type or value (or an attribute the report reads, malformed)."""
    if field == "span":
        return value
    if field == "attribute":
        return {**span, "attributes": [*span["attributes"], {"key": key, "value": attribute_value}]}
    return {**span, field: value}


spoiled_span = st.builds(
    _spoil,
    typed_span,
    st.sampled_from(
        [
            "span",
            "attribute",
            "attribute",
            "attribute",
            "traceId",
            "spanId",
            "parentSpanId",
            "name",
            "kind",
            "startTimeUnixNano",
            "endTimeUnixNano",
            "attributes",
            "status",
        ]
    ),  # fmt: skip
    st.sampled_from(READ_KEYS) | texts,
    numbers | anything,
    any_value,
)
otlp_line = st.builds(
    lambda service, spans: json.dumps(
        {
            "resourceSpans": [
                {
                    "resource": {"attributes": [{"key": "service.name", "value": service}]},
                    "scopeSpans": [{"spans": spans}],
                }
            ]
        }
    ),  # fmt: skip
    texts.map(lambda s: {"stringValue": s}) | any_value.map(lambda v: v),  # a service.name, half of them a string
    st.lists(typed_span | spoiled_span, min_size=1, max_size=3),
)
other_line = st.one_of(
    otlp_line.map(lambda line: line[: len(line) // 2]),  # truncated
    st.sampled_from([10, 5_000, 200_000]).map(lambda n: '{"resourceSpans": ' + "[" * n + "]" * n + "}"),
    st.sampled_from([10, 2_000]).map(lambda n: '{"a": ' * n + "1" + "}" * n),
    anything.map(lambda v: json.dumps(v)),
    texts,
)
# (with a well-formed request and query first?, OTLP lines and other lines in any order)
hostile_file = st.tuples(
    st.sampled_from([True, True, True, False]),
    st.tuples(st.lists(otlp_line, min_size=1, max_size=3), st.lists(other_line, max_size=2)).flatmap(
        lambda lines: st.permutations(lines[0] + lines[1])
    ),
)


def _content(good: bool, lines: list[str]) -> str:
    return (_good() if good else "") + "".join(line.replace("\n", " ") + "\n" for line in lines)


def _check(args: list[str], page: Path) -> None:
    """The --json and --html run and the terminal run of ``args``: never fatal, valid output."""
    code, out, err = _run(*args, "--json", "--html", str(page))
    assert code in (EXIT_OK, EXIT_NO_DATA), err
    assert not RAW_CONTROL.search(err), repr(err)
    event(f"exit {code}")
    if code == EXIT_OK:
        data = _strict_json(out)
        for side in (data["current"], data["baseline"]) if "current" in data else (data,):
            event(f"spans read: {min(side['input']['spans'], 5)}")  # 2: the well-formed request only
            if side["input"]["bad_spans"]:
                event("spans rejected")
        html = page.read_text(encoding="utf-8")
        assert html.rstrip().endswith("</html>") and "Content-Security-Policy" in html
    page.unlink(missing_ok=True)
    text_code, text, err = _run(*args)
    assert text_code == code
    assert not RAW_CONTROL.search(text + err), repr(text + err)
    text.encode("utf-8")  # writable to a UTF-8 terminal


_FUZZ = settings(
    max_examples=100,  # each example is a whole report and HTML page: 100 found every crash the fix removed
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@_FUZZ
@given(hostile_file)
def test_no_input_is_fatal_to_the_report(case: tuple[bool, list[str]]) -> None:
    with tempfile.TemporaryDirectory(prefix="dbperf-fuzz-") as tmp:
        path, page = Path(tmp) / "spans.jsonl", Path(tmp) / "report.html"
        path.write_text(_content(*case), encoding="utf-8", errors="surrogatepass")
        _check([str(path)], page)


@_FUZZ
@given(hostile_file, hostile_file)
def test_no_input_is_fatal_to_the_comparison(new: tuple[bool, list[str]], old: tuple[bool, list[str]]) -> None:
    with tempfile.TemporaryDirectory(prefix="dbperf-fuzz-") as tmp:
        paths = [Path(tmp) / "new.jsonl", Path(tmp) / "old.jsonl"]
        for path, case in zip(paths, (new, old), strict=True):
            path.write_text(_content(*case), encoding="utf-8", errors="surrogatepass")
        args = [str(paths[0]), "--baseline", str(paths[1]), "--min-count", "1"]
        _check(args, Path(tmp) / "compare.html")
