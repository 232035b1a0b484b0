"""Every private SDK/contrib access lives in ``_sdk_compat``, checked against the installed releases."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest

import otel_dbperf
from otel_dbperf import _sdk_compat


def _key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


@pytest.mark.parametrize("package", sorted(_sdk_compat.CHECKED))
def test_installed_releases_are_the_ones_the_private_accesses_were_checked_against(package: str) -> None:
    """Fails loudly on an upgrade: check every access in _sdk_compat, then widen CHECKED."""
    low, high = _sdk_compat.CHECKED[package]
    assert _key(low) <= _key(version(package)) <= _key(high), (package, version(package), (low, high))


def test_the_installed_sdk_spans_have_the_layout_the_hooks_read() -> None:
    assert _sdk_compat.span_layout_ok()


def test_an_sdk_with_another_span_layout_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk import trace

    monkeypatch.setattr(trace.Span, "_kind", property(lambda self: None), raising=False)
    assert not _sdk_compat.span_layout_ok()


def test_private_sdk_names_are_used_in_the_pipeline_or_sdk_compat_only() -> None:
    """The SDK's private modules and helpers are reached through _sdk_compat (the request-thread and
    export-thread span field reads are listed in its docstring instead)."""
    package = Path(otel_dbperf.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        if path.name == "_sdk_compat.py":
            continue
        text = path.read_text()
        for pattern in ("_get_exporter_entry_point", "_reader_storages", "_instrument_id_instrument", '_otel_span"'):
            if pattern in text:
                offenders.append(f"{path.relative_to(package)}: {pattern}")
    assert offenders == []
