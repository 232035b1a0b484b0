"""Alert rules, Alertmanager routing and the Grafana dashboard, with the real promtool and amtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import REQUIRE_SERVICES
from dashboard import (
    COLLECTOR,
    DASHBOARD,
    RULES,
    alerts,
    comparison_sides,
    concrete,
    load_dashboard,
    metric_names,
    recorded,
    rules,
    targets,
)

from otel_dbperf import attributes as A
from otel_dbperf import metric_names as M

ALERTMANAGER = COLLECTOR / "alertmanager" / "alertmanager.yaml"
RULE_TESTS = ["alerts.test.yaml", "alerts.spike.test.yaml"]
DOCS = Path(__file__).parent.parent / "docs" / "collector.md"

# Issue 15's table (the seed setup's rules): name -> (severity, for, threshold)
SEED_ALERTS = {
    "SlowQueryRateCritical": ("critical", "5m", "0.10"),
    "SlowQueryRateWarning": ("warning", "10m", "0.05"),
    "QueryLatencyP99Critical": ("critical", "5m", "1"),
    "QueryLatencyP99Warning": ("warning", "15m", "0.5"),
    "QueryRateSpike": ("warning", "10m", "2 *"),
    "SlowQueryThreshold": ("warning", "1m", "0"),
    "HighSlowQueryRate": ("critical", "2m", "0.1"),
    "ProcessCPUHigh": ("warning", "5m", "0.70"),
    "ProcessCPUCritical": ("critical", "5m", "0.85"),
    "ProcessMemoryHigh": ("warning", "5m", "0.80"),
    "ProcessMemoryCritical": ("critical", "5m", "0.90"),
    "ResponseTimeWarning": ("warning", "5m", "2"),
    "ResponseTimeCritical": ("critical", "5m", "5"),
    "ErrorRateWarning": ("warning", "5m", "0.05"),
    "ErrorRateCritical": ("critical", "5m", "0.10"),
}
# Issue 13: pool saturation (pending for 5 minutes, wait p95 over 100 ms), pool timeouts, deadlocks,
# statement timeouts: name -> (severity, for, threshold)
POOL_ALERTS = {
    "DBPoolPendingRequests": ("warning", "5m", "0"),
    "DBPoolWaitP95High": ("warning", "5m", "0.1"),
    "DBPoolTimeouts": ("warning", None, "0"),
    "DBDeadlocks": ("warning", None, "0"),
    "DBStatementTimeouts": ("warning", None, "0"),
}
# severity -> the receivers it must reach, and no other (amtool config routes test)
ROUTING = {"critical": {"pager", "chat", "email"}, "warning": {"chat", "email"}, "info": {"chat-info"}, "": {"chat"}}


def tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        reason = f"{name} not installed (scripts/test installs Debian's prometheus and prometheus-alertmanager)"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    return found


def run(*cmd: str, stdout_only: bool = False, cwd: Path = RULES.parent) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=cwd)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout if stdout_only else proc.stdout + proc.stderr


def test_rules_parse() -> None:
    out = run(tool("promtool"), "check", "rules", str(RULES))
    assert f"SUCCESS: {len(rules())} rules found" in out


def test_the_seed_alerts_by_name_severity_duration_and_threshold() -> None:
    found = alerts()
    assert set(SEED_ALERTS) <= set(found)
    # our own: N+1, and the pools' and database errors' (issue 13); the seed's duplicates are gone
    assert set(found) - set(SEED_ALERTS) == {"NPlusOneSpike", *POOL_ALERTS}
    for name, (severity, duration, threshold) in {**SEED_ALERTS, **POOL_ALERTS}.items():
        rule = found[name]
        assert rule["labels"]["severity"] == severity, name
        assert rule.get("for") == duration, name
        assert comparison_sides(rule["expr"])[1].startswith(threshold), name
    # the baseline: the same hour a week ago, else the last day's average
    spike = comparison_sides(found["QueryRateSpike"]["expr"])[1]
    assert re.search(r"\[1h\] offset 6d23h30m\)\s*or avg_over_time\(.*\[1d\]\)", spike), spike
    # any query over 1 s comes from the histogram's le="1" bucket (le="1.0" from the pull exporter)
    over_1s = next(r for r in rules() if r.get("record") == "dbperf:db_client_operations_over_1s:total")
    assert 'db_client_operation_duration_seconds_bucket{le=~"1(\\\\.0)?"}' in over_1s["expr"]


def test_every_alert_has_a_promtool_case_that_fires_it_and_one_that_does_not() -> None:
    out = run(tool("promtool"), "test", "rules", *RULE_TESTS)
    assert out.count("SUCCESS") == len(RULE_TESTS), out
    fired: set[str] = set()
    quiet: set[str] = set()
    for name in RULE_TESTS:
        for case in yaml.safe_load((RULES.parent / name).read_text())["tests"]:
            for check in case["alert_rule_test"]:
                (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    assert fired == set(alerts()) == quiet


def test_a_failing_expectation_fails_promtool(tmp_path: Path) -> None:
    """The rule tests can fail: the same file with one alert expected elsewhere is refused."""
    text = (RULES.parent / "alerts.test.yaml").read_text().replace("job: billing", "job: elsewhere", 1)
    (tmp_path / "alerts.yaml").write_text(RULES.read_text())
    (tmp_path / "broken.test.yaml").write_text(text)
    proc = subprocess.run([tool("promtool"), "test", "rules", "broken.test.yaml"], capture_output=True, cwd=tmp_path)
    assert proc.returncode != 0


def test_rules_use_the_contract_metric_names() -> None:
    names = {m.prometheus for m in M.ALL}
    suffixes = ("_bucket", "_count", "_sum", "")
    known = {n + s for n in names for s in suffixes} | recorded()
    used: set[str] = set()
    for rule in rules():
        found = metric_names(rule["expr"])
        assert found, rule
        assert found <= known, f"{rule.get('alert') or rule.get('record')}: unknown {found - known}"
        used |= found
    assert {"dbperf_db_slow_queries_total", "dbperf_db_n_plus_one_total"} <= used
    assert {M.PROCESS_CPU_TIME.prometheus, M.PROCESS_MEMORY_USAGE.prometheus} <= used
    assert {r["labels"]["severity"] for r in alerts().values()} == {"critical", "warning", "info"}


def _jaeger_tags(search: str) -> list[str]:
    """The tag keys of a jaeger_search annotation ("service=x tags: a=b c=d min duration: 1s")."""
    if "tags:" not in search:
        return []
    tags = search.split("tags:", 1)[1].split("min duration:")[0]
    return re.findall(r"([a-z_][\w.]*)=", tags)


def test_every_alert_says_what_to_search_in_jaeger_and_links_the_dashboard() -> None:
    uid = load_dashboard()["uid"]
    attributes = {v for k, v in vars(A).items() if k.isupper() and isinstance(v, str)}
    for name, rule in alerts().items():
        annotations = rule["annotations"]
        assert {"summary", "description", "jaeger_search", "dashboard"} <= set(annotations), name
        search = annotations["jaeger_search"]
        assert search.startswith("service={{ $labels.job }}"), name
        for key in _jaeger_tags(search):
            assert key in attributes | {"http.route", "error"}, f"{name}: {key} is no span attribute"
        if not _jaeger_tags(search):  # process alerts: the request span attribute to read
            assert re.search(r"dbperf\.(cpu|memory)\.\w+", search), name
            assert re.search(r"dbperf\.(cpu|memory)\.\w+", search)[0] in attributes  # type: ignore[index]
        assert annotations["dashboard"].startswith(f"http://localhost:3000/d/{uid}?var-job={{{{ $labels.job }}}}")
    assert "dbperf.query.slow=true" in alerts()["SlowQueryRateCritical"]["annotations"]["jaeger_search"]


def test_the_memory_limit_as_documented(tmp_path: Path) -> None:
    """docs/collector.md's per-service limit, put in the rule as it says, applies per service."""
    docs = DOCS.read_text()
    example = re.search(r"```yaml\n(\s*- record: dbperf:process_memory_limit_bytes\n.*?)```", docs, re.S)
    assert example, "docs/collector.md shows how to set the memory limit"
    doc_rule = yaml.safe_load(example.group(1))[0]
    config = yaml.safe_load(RULES.read_text())
    for group in config["groups"]:
        for rule in group["rules"]:
            if rule.get("record") == doc_rule["record"]:
                rule["expr"] = doc_rule["expr"]
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump(config))
    gib = 1024**3
    case = {
        "rule_files": ["alerts.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [  # 3 GiB: 75% of billing's 4 GiB limit; shop: 95% of the 1 GiB default
                    {"series": 'process_memory_usage_bytes{job="billing",instance="b:1"}', "values": f"{3 * gib}x20"},
                    {"series": 'process_memory_usage_bytes{job="shop",instance="s:1"}', "values": f"{0.95 * gib}x20"},
                ],
                "promql_expr_test": [
                    {
                        "expr": "dbperf:process_memory_limit_bytes",
                        "eval_time": "10m",
                        "exp_samples": [
                            {
                                "labels": 'dbperf:process_memory_limit_bytes{job="billing",instance="b:1"}',
                                "value": 4 * gib,
                            },
                            {"labels": 'dbperf:process_memory_limit_bytes{job="shop",instance="s:1"}', "value": gib},
                        ],
                    }
                ],  # fmt: skip
                "alert_rule_test": [
                    {
                        "eval_time": "10m",
                        "alertname": "ProcessMemoryHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "job": "shop", "instance": "s:1"},
                                "exp_annotations": {
                                    k: v.replace("{{ $labels.job }}", "shop")
                                    .replace("{{ $labels.instance }}", "s:1")
                                    .replace("{{ $value | humanizePercentage }}", "95%")
                                    for k, v in alerts()["ProcessMemoryHigh"]["annotations"].items()
                                },
                            }
                        ],
                    },
                ],  # fmt: skip
            }
        ],
    }
    (tmp_path / "limit.test.yaml").write_text(yaml.safe_dump(case))
    assert "SUCCESS" in run(tool("promtool"), "test", "rules", "limit.test.yaml", cwd=tmp_path)


def test_alertmanager_routes_each_severity_to_every_receiver_it_should_and_no_other() -> None:
    amtool = tool("amtool")
    out = run(amtool, "check-config", str(ALERTMANAGER))
    assert "SUCCESS" in out
    for severity, receivers in ROUTING.items():
        labels = [f"severity={severity}"] if severity else ["alertname=Unknown"]
        routed = run(amtool, "config", "routes", "test", f"--config.file={ALERTMANAGER}", *labels, stdout_only=True)
        assert set(routed.strip().split(",")) == receivers, (severity, routed)
    config = yaml.safe_load(ALERTMANAGER.read_text())
    by_name = {r["name"]: r for r in config["receivers"]}
    assert set(by_name) == set().union(*ROUTING.values())
    assert "pagerduty_configs" in by_name["pager"] and "email_configs" in by_name["email"]
    assert by_name["chat"]["slack_configs"][0]["channel"] == "#database-alerts"
    assert by_name["chat-info"]["slack_configs"][0]["channel"] == "#database-info"


def test_every_critical_alert_inhibits_its_warning() -> None:
    inhibits = {
        (r["source_matchers"][0], r["target_matchers"][0])
        for r in yaml.safe_load(ALERTMANAGER.read_text())["inhibit_rules"]
    }
    for name in SEED_ALERTS:
        partner = name.replace("Critical", "Warning") if name != "ProcessCPUCritical" else "ProcessCPUHigh"
        partner = "ProcessMemoryHigh" if name == "ProcessMemoryCritical" else partner
        if name.endswith("Critical") and partner in SEED_ALERTS:
            assert (f'alertname="{name}"', f'alertname="{partner}"') in inhibits, name


def test_no_secret_is_committed() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    secret = re.compile(r"(key|url|token|password|secret)$")
    assert not [k for k in config["global"] if secret.search(k)], "global secrets must be *_file"
    assert config["global"]["smtp_auth_password_file"].startswith("/etc/alertmanager/secrets/")
    for receiver in config["receivers"]:
        for kind, entries in receiver.items():
            if kind == "name":
                continue
            for entry in entries:
                secret_keys = [k for k in entry if secret.search(k)]
                assert not secret_keys, f"{receiver['name']}: {secret_keys} must be *_file"
                if kind != "email_configs":  # email's password is the global smtp_auth_password_file
                    assert any(k.endswith("_file") for k in entry)


# -- the dashboard

SEED_PANELS = {  # seed 001's seven panels and their types
    "Query rate by type": "timeseries",
    "Query duration p99": "gauge",
    "Query duration percentiles (p50 / p95 / p99)": "timeseries",
    "Slow query rate by type": "timeseries",
    "Slow query percentage": "gauge",
    "Query distribution": "piechart",
    "Query statistics": "table",
}


def _panel(title: str) -> dict[str, Any]:
    return next(p for p in load_dashboard()["panels"] if p["title"] == title)


def test_dashboard_has_the_seed_panels_variables_and_refresh() -> None:
    dashboard = load_dashboard()
    by_title = {p["title"]: p for p in dashboard["panels"]}
    for title, kind in SEED_PANELS.items():
        assert by_title[title]["type"] == kind, title
    steps = _panel("Query duration p99")["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [(s["value"], s["color"]) for s in steps] == [(None, "green"), (0.1, "#FFBF00"), (0.5, "red")]
    assert _panel("Query duration p99")["fieldConfig"]["defaults"]["unit"] == "s"
    share = _panel("Slow query percentage")["fieldConfig"]["defaults"]
    assert share["unit"] == "percentunit" and [s["value"] for s in share["thresholds"]["steps"]] == [None, 0.05, 0.1]
    stats = _panel("Query statistics")
    assert [t["expr"].split("(")[0] for t in stats["targets"]] == ["sum by ", "histogram_quantile"]
    assert all(t.get("instant") and t["format"] == "table" for t in stats["targets"])
    renamed = stats["transformations"][1]["options"]["renameByName"]
    assert renamed == {"db_operation_name": "query type", "Value #A": "QPS", "Value #B": "p99"}
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "query_type"} <= set(variables)
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert "db_operation_name" in variables["query_type"]["query"]
    assert "5s" in dashboard["timepicker"]["refresh_intervals"]
    # every DB panel follows the query type; every Prometheus panel the datasource variable
    for panel, target in targets("prometheus"):
        assert target["datasource"]["uid"] == "${datasource}", panel["title"]
        if "db_client_operation" in target["expr"] or "dbperf_db_slow" in target["expr"]:
            assert 'db_operation_name=~"$query_type"' in target["expr"], panel["title"]
        assert 'job=~"$job"' in target["expr"], panel["title"]
        if panel["type"] == "timeseries":
            assert target.get("exemplar"), panel["title"]  # the dots that open a trace
    titles = " | ".join(by_title).lower()
    for needed in ("top slow queries", "top tables by db time", "n+1", "requests per second", "error ratio",
                   "request p95", "db time share per route", "process cpu", "process memory"):  # fmt: skip
        assert needed in titles, needed


def test_dashboard_prometheus_expressions_parse_and_use_contract_metrics(tmp_path: Path) -> None:
    exprs = [concrete(t["expr"]) for _, t in targets("prometheus")]
    assert len(exprs) >= 20
    # every expression goes through Prometheus's own parser as a recording rule
    group = {"name": "dashboard", "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)]}
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    out = run(tool("promtool"), "check", "rules", str(path))
    assert f"SUCCESS: {len(exprs)} rules found" in out
    names = {m.prometheus for m in M.ALL}
    known = {n + s for n in names for s in ("_bucket", "_count", "_sum", "")} | recorded()
    for expr in exprs:
        assert metric_names(expr) and metric_names(expr) <= known, expr


# -- the top slow queries table (Loki)

LOGQL_PARSER = Path(__file__).parent / "logql"


def _loki_label(attribute: str) -> str:
    """How Loki names an OTLP log attribute (dots and other characters become underscores)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", attribute)


def _top_slow_queries() -> tuple[dict[str, Any], str]:
    ((panel, target),) = targets("loki")
    assert panel["title"] == "Top slow queries" and panel["type"] == "table"
    return panel, target["expr"]


def test_top_slow_queries_query_names_the_slow_query_record_attributes() -> None:
    """Structural: the LogQL query groups by the labels Loki makes of the slow-query record."""
    panel, expr = _top_slow_queries()
    grouping = {
        tuple(label.strip() for label in by.split(","))
        for by in re.findall(r"sum by \(([^)]*)\)", expr)  # both halves group the same way
    }
    assert grouping == {("service_name", "dbperf_query_fingerprint", "db_query_text", "location")}
    assert f'{_loki_label(A.QUERY_FINGERPRINT)} != ""' in expr
    assert (
        f"label_format location=`{{{{.{_loki_label(A.CODE_FILE_PATH)}}}}}:{{{{.{_loki_label(A.CODE_LINE_NUMBER)}}}}}`"
        in expr
    )
    assert f"unwrap {_loki_label(A.SLOW_QUERY_SUPPRESSED)} [$__range]" in expr
    assert _loki_label(A.DB_QUERY_TEXT) == "db_query_text"
    assert expr.startswith("topk(20, ") and expr.count("[$__range]") == 2
    assert expr.count("(") == expr.count(")")
    assert '{service_name=~"$job"}' in expr  # the service variable; All is ".+", which Loki accepts
    variables = {v["name"]: v for v in load_dashboard()["templating"]["list"]}
    assert variables["job"]["allValue"] == ".+" and variables["loki"]["query"] == "loki"
    organize = next(t for t in panel["transformations"] if t["id"] == "organize")
    assert set(organize["options"]["renameByName"].values()) == {
        "fingerprint",
        "statement",
        "location",
        "count",
        "service",
    }
    (link,) = panel["fieldConfig"]["overrides"][0]["properties"][0]["value"]
    assert panel["fieldConfig"]["overrides"][0]["matcher"]["options"] == "fingerprint"
    assert link["internal"]["datasourceUid"] == "jaeger"
    assert link["internal"]["query"]["tags"] == f"{A.QUERY_FINGERPRINT}=${{__value.raw}}"


def test_top_slow_queries_query_parses_with_grafanas_logql_grammar() -> None:
    node = shutil.which("node")
    if not node or not (LOGQL_PARSER / "node_modules" / "@grafana" / "lezer-logql").is_dir():
        reason = "node or @grafana/lezer-logql missing (scripts/test installs it into tests/logql)"
        if REQUIRE_SERVICES:
            pytest.fail(reason + " (DBPERF_REQUIRE_SERVICES=1)")
        pytest.skip(reason)
    _, expr = _top_slow_queries()
    broken = concrete(expr).replace("unwrap", "unwrap (", 1)  # a syntax error the parser must see
    out = run(node, "parse.cjs", concrete(expr), broken, cwd=LOGQL_PARSER, stdout_only=True)
    good, bad = (json.loads(line) for line in out.splitlines())
    assert good["errors"] == [], good
    assert {"VectorAggregationExpr", "BinOpExpr", "CountOverTime", "SumOverTime", "Unwrap", "LabelFormatExpr"} <= set(
        good["nodes"]
    ), good["nodes"]
    assert bad["errors"], "the parser reports errors"


def test_grafana_links_exemplars_and_log_trace_ids_to_jaeger() -> None:
    datasources = yaml.safe_load(
        (COLLECTOR / "grafana" / "provisioning" / "datasources" / "datasources.yaml").read_text()
    )["datasources"]
    by_type = {d["type"]: d for d in datasources}
    assert set(by_type) == {"prometheus", "jaeger", "loki"}
    jaeger_uid = by_type["jaeger"]["uid"]
    assert by_type["prometheus"]["jsonData"]["exemplarTraceIdDestinations"][0]["datasourceUid"] == jaeger_uid
    (derived,) = by_type["loki"]["jsonData"]["derivedFields"]
    assert derived["datasourceUid"] == jaeger_uid and derived["matcherRegex"] == "trace_id"
    assert json.loads(DASHBOARD.read_text())["uid"] == "otel-dbperf"


def test_prometheus_config_and_compose_stack() -> None:
    out = run(tool("promtool"), "check", "config", str(COLLECTOR / "prometheus" / "prometheus.yml"))
    assert f"SUCCESS: {len(rules())} rules found" in out
    compose = yaml.safe_load((COLLECTOR / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"otelcol", "jaeger", "prometheus", "alertmanager", "loki", "grafana", "shop"} <= set(services)
    for name, service in services.items():
        if "image" in service:
            image, _, tag = service["image"].rpartition(":")
            assert image and re.match(r"v?\d+\.\d+\.\d+$", tag), f"{name}: pin {service['image']}"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and "secrets" not in source:
                assert (COLLECTOR / source).exists(), f"{name}: {source} missing"
    assert services["otelcol"]["image"].endswith(":0.161.0")  # the release of collector/builder-config.yaml
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
