"""``otel-dbperf report NEW --baseline OLD``: the comparison rules, its outputs and exit codes."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN
from support.otlp_lines import DAY, T0, request, two_windows, write

from otel_dbperf.report.cli import EXIT_NO_DATA, EXIT_OK, EXIT_USAGE, main
from otel_dbperf.report.compare import EXIT_REGRESSION, SCHEMA


def compare(*args: str) -> tuple[int, dict[str, Any]]:
    out = io.StringIO()
    code = main(["report", *args, "--json"], out=out)
    return code, json.loads(out.getvalue()) if out.getvalue() else {}


def fingerprints(data: dict[str, Any], kind: str) -> list[str]:
    return [e["fingerprint"] for e in data["fingerprints"][kind]]


def test_thresholds_and_minimum_samples(tmp_path: Path) -> None:
    new, old = two_windows(tmp_path)
    code, data = compare(new, "--baseline", old)
    assert code == EXIT_OK  # without --fail-on-regression
    assert fingerprints(data, "regressed") == ["aaaa"]
    assert fingerprints(data, "new_slow") == ["iiii"]
    assert sorted(fingerprints(data, "new")) == ["hhhh", "jjjj", "kkkk"]
    assert fingerprints(data, "faster") == ["ffff"]
    assert fingerprints(data, "vanished") == ["gggg"]
    assert fingerprints(data, "not_judged") == ["bbbb"]
    assert sorted(fingerprints(data, "unchanged")) == ["cccc", "dddd", "eeee"]
    assert data["regressed"] is True and data["regression_count"] == 2
    (a,) = data["fingerprints"]["regressed"]
    assert (a["baseline"]["p95_ms"], a["current"]["p95_ms"], a["p95_ratio"], a["db_time_ratio"]) == (
        10.0,
        20.0,
        2.0,
        2.0,
    )
    assert a["baseline"]["db_ms_per_request"] == 10.0 and a["current"]["count"] == 50

    # every threshold is a flag
    _, data = compare(new, "--baseline", old, "--p95-ratio", "2.5")
    assert fingerprints(data, "regressed") == [] and fingerprints(data, "faster") == []
    _, data = compare(new, "--baseline", old, "--min-count", "49")  # most DB time added first
    assert fingerprints(data, "regressed") == ["bbbb", "aaaa"] and "kkkk" in fingerprints(data, "new_slow")
    _, data = compare(new, "--baseline", old, "--min-delta-ms", "0")
    assert sorted(fingerprints(data, "regressed")) == ["aaaa", "dddd"]
    _, data = compare(new, "--baseline", old, "--total-ratio", "1.1")
    assert sorted(fingerprints(data, "regressed")) == ["aaaa", "eeee"]


def test_db_time_is_per_request_so_a_quiet_window_still_shows_a_regression(tmp_path: Path) -> None:
    old = write(tmp_path / "old.jsonl", [request("/r", [("aaaa", 10.0)], start=T0 + i) for i in range(100)])
    # twice as slow on half the traffic: the same total DB time, twice the DB time per request
    new = write(tmp_path / "new.jsonl", [request("/r", [("aaaa", 20.0)], start=T0 + DAY + i) for i in range(50)])
    _, data = compare(new, "--baseline", old)
    assert data["thresholds"]["db_time_per_request"] is True
    (e,) = data["fingerprints"]["regressed"]
    assert e["baseline"]["total_ms"] == e["current"]["total_ms"] == 1000.0 and e["db_time_ratio"] == 2.0
    # DB spans without any request span (a batch job): raw totals
    jobs = [json.loads(request("/r", [("aaaa", 20.0)], start=T0 + DAY + i)) for i in range(50)]
    for line in jobs:
        spans = line["resourceSpans"][0]["scopeSpans"][0]["spans"]
        spans[:] = [s for s in spans if s["kind"] == 3]
    new = write(tmp_path / "jobs.jsonl", (json.dumps(line) for line in jobs))
    _, data = compare(new, "--baseline", old)
    assert data["thresholds"]["db_time_per_request"] is False
    (e,) = data["fingerprints"]["unchanged"]
    assert e["db_time_ratio"] == 1.0


def test_n_plus_one_new_fixed_and_not_exercised(tmp_path: Path) -> None:
    repeat = [("nnnn", 1.0)] * 8
    old = write(
        tmp_path / "old.jsonl",
        [
            request("/fixed", repeat, n_plus_one=("nnnn", 8)),
            request("/idle", repeat, n_plus_one=("nnnn", 8)),
            request("/kept", repeat, n_plus_one=("nnnn", 8)),
            request("/new", [("nnnn", 1.0)]),
        ],
    )
    new = write(
        tmp_path / "new.jsonl",
        [
            request("/fixed", [("nnnn", 1.0)]),
            request("/fixed", [("nnnn", 1.0)]),
            request("/kept", repeat, n_plus_one=("nnnn", 8)),
            request("/new", repeat, n_plus_one=("nnnn", 8)),
            request("/brand-new", [("mmmm", 1.0)] * 6, n_plus_one=("mmmm", 6)),
        ],
    )
    code, data = compare(new, "--baseline", old, "--fail-on-regression")
    assert code == EXIT_REGRESSION
    assert [(f["route"], f["fingerprint"]) for f in data["routes"]["new_n_plus_one"]] == [
        ("/new", "nnnn"),
        ("/brand-new", "mmmm"),
    ]
    (fixed,) = data["routes"]["fixed_n_plus_one"]  # /idle was not requested: nothing can be said of it
    assert fixed["route"] == "/fixed" and fixed["route_requests_now"] == 2 and fixed["max_repeat_count"] == 8
    assert data["regression_count"] == 2 and data["fingerprints"]["new_slow"] == []
    _, data = compare(old, "--baseline", new)  # the other way round
    assert sorted(f["route"] for f in data["routes"]["new_n_plus_one"]) == ["/fixed", "/idle"]
    assert [f["route"] for f in data["routes"]["fixed_n_plus_one"]] == ["/new"]  # /brand-new: not requested


def test_json_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBPERF_JAEGER_URL", "http://jaeger:16686")
    new, old = two_windows(tmp_path)
    _, data = compare(new, "--baseline", old)
    assert set(data) == {
        "schema",
        "baseline",
        "current",
        "thresholds",
        "regressed",
        "regression_count",
        "fingerprints",
        "routes",
    }
    assert data["schema"] == SCHEMA
    assert data["thresholds"] == {
        "p95_ratio": 1.5,
        "total_ratio": 1.5,
        "min_count": 50,
        "min_delta_ms": 5.0,
        "slow_share": 0.05,
        "db_time_per_request": True,
    }
    assert data["baseline"] == {
        "input": {
            "lines": 50,
            "corrupt_lines": 0,
            "other_signal_lines": 0,
            "spans": 50 * 8 - 1,
            "bad_spans": 0,
            "rejected": [],
        },
        "requests": 50,
        "db_spans": 50 * 7 - 1,
        "fingerprints": 7,
    }
    kinds = {"regressed", "new_slow", "new", "faster", "vanished", "unchanged", "not_judged"}
    assert set(data["fingerprints"]) == kinds
    assert set(data["routes"]) == {"new_n_plus_one", "fixed_n_plus_one", "new_findings", "fixed_findings", "db_time"}
    side_keys = {"count", "total_ms", "db_ms_per_request", "p50_ms", "p95_ms", "max_ms", "slow", "slowest"}
    for kind, entries in data["fingerprints"].items():
        for e in entries:
            assert {"fingerprint", "summary", "statement", "code_locations", "routes", "baseline", "current"} <= set(e)
            assert e["code_locations"] == ["/srv/app.py:10"] and e["routes"] == ["/r"]
            for side in ("baseline", "current"):
                if e[side] is not None:
                    assert set(e[side]) == side_keys
                    assert e[side]["slowest"]["jaeger_url"].startswith("http://jaeger:16686/trace/")
            both = e["baseline"] is not None and e["current"] is not None
            assert both == (kind not in ("new", "new_slow", "vanished"))
            assert ("p95_ratio" in e) == both
    (route,) = data["routes"]["db_time"]
    assert route["route"] == "/r" and set(route["baseline"]) == {"requests", "ms_per_request", "db_ms_per_request"}
    assert route["baseline"]["requests"] == 50


def test_text_output_names_every_finding(tmp_path: Path) -> None:
    new, old = two_windows(tmp_path)
    out = io.StringIO()
    assert main(["report", new, "--baseline", old, "--fail-on-regression"], out=out) == EXIT_REGRESSION
    text = out.getvalue()
    assert "REGRESSED: 2 regression(s)" in text
    regressions, better = text.split("\nRegressions\n")[1].split("\nBetter\n")
    assert "NEW SLOW QUERY  SELECT t_iiii  [iiii]  50x" in regressions and "slow 5" in regressions
    assert "SLOWER          SELECT t_aaaa  [aaaa]  p95 10.0 -> 20.0 ms (2.0x)" in regressions
    assert "at /srv/app.py:10" in regressions and "from /r" in regressions
    assert "FASTER          SELECT t_ffff" in better and "GONE            SELECT t_gggg" in better
    assert "3 fingerprint(s) unchanged; 1 seen on both sides" in text
    out = io.StringIO()
    assert main(["report", new, "--baseline", new, "--fail-on-regression"], out=out) == EXIT_OK
    assert "No regressions." in out.getvalue()


def test_baseline_window_of_the_same_files(tmp_path: Path) -> None:
    new, old = two_windows(tmp_path)
    both = write(tmp_path / "both.jsonl", [*Path(old).read_text().splitlines(), *Path(new).read_text().splitlines()])
    until = "2025-11-23T00:00:00+00:00"  # between the two windows (T0 is 2025-11-22 08:26 UTC)
    code, data = compare(both, "--baseline-until", until, "--fail-on-regression")
    assert code == EXIT_REGRESSION
    assert data["baseline"]["requests"] == 50 and data["current"]["requests"] == 50
    assert fingerprints(data, "regressed") == ["aaaa"] and fingerprints(data, "vanished") == ["gggg"]
    # --since and --baseline-since narrow both windows: the first ten requests of each day
    code, data = compare(
        both,
        "--baseline-since",
        "2025-11-22T00:00:00+00:00",
        "--baseline-until",
        "2025-11-22T08:26:49.5+00:00",
        "--since",
        "2025-11-23T08:26:40+00:00",
        "--until",
        "2025-11-23T08:26:49.5+00:00",
    )
    assert data["baseline"]["requests"] == 10 and data["current"]["requests"] == 10


def test_exit_codes_and_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    new, old = two_windows(tmp_path)
    assert compare(new, "--baseline", old, "--fail-on-regression")[0] == EXIT_REGRESSION
    assert compare(new, "--baseline", new, "--fail-on-regression")[0] == EXIT_OK
    assert compare(new, "--fail-on-regression")[0] == EXIT_USAGE
    assert "a comparison needs --baseline" in capsys.readouterr().err
    assert compare(new, "--baseline-since", "2025-11-22")[0] == EXIT_USAGE
    for flag, value in (("--p95-ratio", "0.9"), ("--min-count", "0"), ("--min-delta-ms", "-1"), ("--total-ratio", "x")):
        assert compare(new, "--baseline", old, flag, value)[0] == EXIT_USAGE
    assert compare(new, "--baseline", str(tmp_path / "missing.jsonl"))[0] == EXIT_USAGE
    assert "cannot read" in capsys.readouterr().err
    not_otlp = write(tmp_path / "app.log", ["GET / 200"])
    assert compare(new, "--baseline", not_otlp)[0] == EXIT_NO_DATA
    assert "no OTLP trace data in " + not_otlp in capsys.readouterr().err
    # an empty window is no baseline: every query would look new
    assert compare(new, "--baseline", old, "--baseline-until", "2000-01-01T00:00:00+00:00")[0] == EXIT_NO_DATA
    assert "no DB spans in the baseline window" in capsys.readouterr().err
    assert compare(new, "--baseline", old, "--html", str(tmp_path / "no-such-dir" / "x.html"))[0] == EXIT_USAGE


def _demos(out: Path, *variants: tuple[str, int]) -> list[Path]:
    """Real runs of the demo shop, one per (variant, slow threshold in ms), side by side (each its
    own SQLite file, server and port): 27 s one after another, about 20 s together."""
    runs = []
    for variant, threshold_ms in variants:
        env = {**os.environ, "SHOP_VARIANT": variant, "DBPERF_SLOW_QUERY_THRESHOLD_MS": str(threshold_ms)}
        env.pop("PYTEST_CURRENT_TEST", None)
        folder = out / (variant or "base")
        cmd = [str(BIN / "otel-dbperf"), "demo", "--out", str(folder), "--rounds", "17", "--products", "100000"]
        runs.append((folder, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for _, proc in runs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return [folder / "spans.jsonl" for folder, _ in runs]


def _report(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DBPERF_JAEGER_URL"}
    return subprocess.run([str(BIN / "otel-dbperf"), "report", *args], env=env, capture_output=True, text=True)


def test_demo_runs_n_plus_one_fixed_then_a_new_slow_query(tmp_path: Path) -> None:
    """Three real runs of the demo shop: as shipped, with the N+1 fixed, with a new slow query."""
    # The run with the N+1 fixed flags nothing slow under 1 s: its new IN query (about 1 ms) would be a
    # "new slow query" at 20 ms whenever a loaded machine stalls it once, and that is not what is tested.
    base, fixed, slow = _demos(tmp_path, ("", 20), ("n+1-fixed", 1000), ("slow-query", 20))
    shop = Path(__file__).parent.parent / "otel_dbperf" / "report" / "demo" / "shop.py"
    lines = shop.read_text().splitlines()
    loop_line = next(i for i, line in enumerate(lines, 1) if "len(c.orders)" in line)
    mentions_line = next(i for i, line in enumerate(lines, 1) if ".contains(found.name)" in line)

    # --min-delta-ms 100: a few ms of load in one run is no "slower" query (the rule's own guard is 5 ms)
    run = _report(str(fixed), "--baseline", str(base), "--fail-on-regression", "--min-delta-ms", "100")
    assert run.returncode == EXIT_OK, run.stdout + run.stderr
    assert "No regressions." in run.stdout
    assert f"FIXED N+1       /orders: SELECT orders repeated up to 20x in 17 request(s) at {shop}:{loop_line}" in (
        run.stdout
    )
    data = json.loads(_report(str(fixed), "--baseline", str(base), "--json").stdout)
    (n1,) = data["routes"]["fixed_n_plus_one"]
    assert n1["route"] == "/orders" and n1["route_requests_now"] == 17
    assert n1["fingerprint"] in fingerprints(data, "vanished")  # the repeated query is gone
    assert data["routes"]["new_n_plus_one"] == [] and data["fingerprints"]["new_slow"] == []

    run = _report(str(slow), "--baseline", str(base), "--fail-on-regression", "--html", str(tmp_path / "c.html"))
    assert run.returncode == EXIT_REGRESSION, run.stdout + run.stderr
    assert "REGRESSED" in run.stdout and "NEW SLOW QUERY  SELECT products" in run.stdout
    assert f"at {shop}:{mentions_line}" in run.stdout.split("\nBetter\n")[0]
    data = json.loads(_report(str(slow), "--baseline", str(base), "--json").stdout)
    (new_slow,) = data["fingerprints"]["new_slow"]
    assert new_slow["code_locations"] == [f"{shop}:{mentions_line}"]
    assert new_slow["routes"] == ["/products/<int:product_id>"] and "lower(" in new_slow["statement"]
    assert new_slow["current"]["count"] == 51 and new_slow["current"]["slow"] >= 3
    assert data["routes"]["fixed_n_plus_one"] == [] and data["routes"]["new_n_plus_one"] == []
    assert "new slow" in (tmp_path / "c.html").read_text()
