from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import pytest

from otel_dbperf.settings import VARIABLES, Settings, describe_effective, mask_url

DOC = Path(__file__).parent.parent / "docs" / "configuration.md"


def test_defaults_match_the_variable_table() -> None:
    s = Settings.from_env({})
    for var in VARIABLES:
        expected = (os.getcwd(),) if var.default is None else var.default
        assert getattr(s, var.field) == expected, var.env


def test_docs_agree_with_the_code() -> None:
    rows = re.findall(r"^\| `(DBPERF_[A-Z_]+)` \| (.+?) \|", DOC.read_text(), re.M)
    documented = {name: default.strip("`") for name, default in rows}
    assert documented == {v.env: v.doc_default for v in VARIABLES}


def test_package_docstring_lists_every_variable() -> None:
    import otel_dbperf

    for var in VARIABLES:
        assert f"{var.env} ({var.doc_default.strip('()')})" in (otel_dbperf.__doc__ or "")


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "DBPERF_ENABLED": "OFF",
            "DBPERF_SLOW_QUERY_THRESHOLD_MS": "250.5",
            "DBPERF_N_PLUS_ONE_THRESHOLD": " 3 ",
            "DBPERF_APP_PATHS": "/srv/app, /opt/lib ,",
            "DBPERF_SQLCOMMENTER": "yes",
            "DBPERF_OTLP_ENCODER": " Stock ",
        }
    )
    assert s.otlp_encoder == "stock"
    assert s.enabled is False and s.slow_query_threshold_ms == 250.5 and s.n_plus_one_threshold == 3
    assert s.app_paths == ("/srv/app", "/opt/lib") and s.sqlcommenter is True


@pytest.mark.parametrize(
    ("name", "value", "default"),
    [
        ("DBPERF_SLOW_QUERY_THRESHOLD_MS", "fast", "100"),
        ("DBPERF_SLOW_QUERY_THRESHOLD_MS", "-5", "100"),
        ("DBPERF_SLOW_QUERY_THRESHOLD_MS", "nan", "100"),
        ("DBPERF_N_PLUS_ONE_THRESHOLD", "1", "5"),
        ("DBPERF_N_PLUS_ONE_THRESHOLD", "2.5", "5"),
        ("DBPERF_ENABLED", "maybe", "true"),
        ("DBPERF_APP_PATHS", " , ", "(current directory)"),
        ("DBPERF_OTLP_ENCODER", "quick", "fast"),
    ],
)
def test_malformed_value_warns_once_and_uses_default(
    name: str, value: str, default: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_dbperf"):
        s = Settings.from_env({name: value})
    assert s == Settings.from_env({})
    (record,) = caplog.records
    message = record.getMessage()
    assert name in message and repr(value) in message and f"default {default}" in message


def test_settings_are_frozen() -> None:
    with pytest.raises(AttributeError):
        Settings().enabled = False  # type: ignore[misc]


def test_passwords_are_masked() -> None:
    assert mask_url("postgresql+psycopg://app:s3cr3t@db:5432/prod") == "postgresql+psycopg://***@db:5432/prod"
    assert mask_url("see mysql://root:pw@h/x and redis://:pw2@r:6379") == "see mysql://***@h/x and redis://***@r:6379"
    line = describe_effective(
        Settings(),
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": "https://user:hunter2@collector:4318",
            "OTEL_EXPORTER_OTLP_HEADERS": "Authorization=Bearer abc",
            "DBPERF_DATABASE_URL": "postgresql://u:topsecret@h/d",
        },
    )
    assert "hunter2" not in line and "abc" not in line and "topsecret" not in line
    assert "https://***@collector:4318" in line and "slow_query_threshold_ms=100.0" in line


def test_debug_dump_masks_every_canary() -> None:
    canaries = {
        "DBPERF_JAEGER_URL": "https://jaeger-user-C1:jaeger-pw-C2@jaeger:16686/ui",
        "DBPERF_PROFILER_TOKEN": "profiler-token-C3-0123456789",
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://u:pass/with/slashes-C4@collector:4318/v1?api_key=C5&x=1",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://collector/v1/traces?X-Amz-Signature=C6&token=C7#f",
        "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT": "https://tok-C8@collector",  # a user name alone is a token
        "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "https://a:p@ss-C9@collector/x?sig=C10;access_token=C11",
        "OTEL_EXPORTER_OTLP_HEADERS": "x-api-key=C12",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "Authorization=Basic C13",
        "DBPERF_SOME_HEADER": "C14",
        "OTEL_EXPORTER_OTLP_CLIENT_KEY": "/etc/C15.key",
        "DBPERF_DB_PASSWORD": "C16",
        "OTEL_SERVICE_NAME": "shop-visible",
    }
    settings = Settings.from_env(canaries)
    line = describe_effective(settings, canaries)
    leaked = [c for c in (f"C{i}" for i in range(1, 17)) if re.search(rf"{c}(?!\d)", line)]
    assert leaked == []
    assert "shop-visible" in line and "jaeger:16686/ui" in line and "collector:4318/v1?api_key=***&x=1" in line
