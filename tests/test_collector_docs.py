"""docs/collector.md says what the pipeline really keeps, for how long, and what it loses when:
its numbers are the configs' defaults, and no sentence promises that nothing is lost."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs" / "collector.md"
PLACEHOLDER = re.compile(r"\$\{env:([A-Z][A-Z0-9_]*):-([^}]*)\}")


def section(title: str) -> str:
    text = DOCS.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def defaults(config: str) -> dict[str, str]:
    return dict(PLACEHOLDER.findall((ROOT / "collector" / config).read_text()))


def test_no_promise_that_nothing_is_lost() -> None:
    text = re.sub(r"\s+", " ", DOCS.read_text().lower())
    for promise in ("loses nothing", "nothing is lost", "no data is lost", "never loses"):
        assert promise not in text, promise


def test_what_is_kept_for_how_long_with_the_configs_defaults() -> None:
    kept = re.sub(r"\s+", " ", section("What is kept, for how long, and what is lost"))
    otelcol, jaeger, agent = defaults("otelcol.yaml"), defaults("jaeger.yaml"), defaults("agent.yaml")
    assert otelcol["OTELCOL_RETRY_MAX_ELAPSED"] == agent["OTELCOL_RETRY_MAX_ELAPSED"] == "10m"
    for name, value in [
        ("OTELCOL_RETRY_MAX_ELAPSED", otelcol["OTELCOL_RETRY_MAX_ELAPSED"]),
        ("OTELCOL_QUEUE_SIZE", otelcol["OTELCOL_QUEUE_SIZE"]),
        ("OTELCOL_TAIL_DECISION_WAIT", otelcol["OTELCOL_TAIL_DECISION_WAIT"]),
        ("OTELCOL_TAIL_NUM_TRACES", otelcol["OTELCOL_TAIL_NUM_TRACES"]),
        ("JAEGER_MAX_TRACES", jaeger["JAEGER_MAX_TRACES"]),
    ]:
        assert f"`{name}`, default {value}" in kept, name
    # each way to lose data is named: queue full, retries exhausted, permanent errors, restarts,
    # tail-sampling overflow, Jaeger's memory
    for loss in ("queue is full", "retries", "permanent", "restart", "before its decision", "in memory"):
        assert loss in kept.lower(), loss
