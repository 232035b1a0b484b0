"""Every private SDK/contrib access lives in ``_sdk_compat``, checked against the installed releases."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import otel_dbperf
from otel_dbperf import _sdk_compat


def _key(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v))


@pytest.mark.parametrize("package", sorted(_sdk_compat.CHECKED))
def test_installed_releases_are_the_ones_the_private_accesses_were_checked_against(package: str) -> None:
    """Fails loudly on an upgrade: check every access in _sdk_compat, then widen CHECKED."""
    low, high = _sdk_compat.CHECKED[package]
    assert _key(low) <= _key(version(package)) <= _key(high), (package, version(package), (low, high))


#: the distributions released with the SDK (1.x); every other OpenTelemetry one is contrib's (0.xbN)
SDK_FAMILY = {"opentelemetry-api", "opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http"}
ROOT = Path(__file__).resolve().parent.parent


def _opentelemetry_requirements() -> list[Requirement]:
    """Every OpenTelemetry requirement in pyproject.toml (dependencies and extras; read without
    tomllib, which Python 3.10 lacks)."""
    text = (ROOT / "pyproject.toml").read_text()
    return [Requirement(line) for line in re.findall(r'"(opentelemetry-[a-z0-9-]+[<>=!~][^"]*)"', text)]


def test_checked_covers_both_families_and_each_family_agrees() -> None:
    """One range for the SDK's distributions and one for contrib's: they are released in lockstep."""
    checked = _sdk_compat.CHECKED
    assert "opentelemetry-sdk" in checked and "opentelemetry-instrumentation" in checked
    for name, bounds in checked.items():
        family = "opentelemetry-sdk" if name in SDK_FAMILY else "opentelemetry-instrumentation"
        assert bounds == checked[family], (name, bounds, family, checked[family])
    (sdk_low, sdk_high), (contrib_low, contrib_high) = (
        checked["opentelemetry-sdk"],
        checked["opentelemetry-instrumentation"],
    )
    for sdk, contrib in ((sdk_low, contrib_low), (sdk_high, contrib_high)):  # 1.<N>.<P> goes with 0.<N+21>b<P>
        _, minor, patch = map(int, sdk.split("."))
        assert contrib == f"0.{minor + 21}b{patch}", (sdk, contrib)


def test_pyproject_allows_exactly_the_checked_releases() -> None:
    """pip cannot install an OpenTelemetry release the private accesses were not checked against."""
    requirements = _opentelemetry_requirements()
    assert {r.name for r in requirements} >= set(_sdk_compat.CHECKED) - {"opentelemetry-instrumentation-dbapi"}
    for requirement in requirements:
        family = "opentelemetry-sdk" if requirement.name in SDK_FAMILY else "opentelemetry-instrumentation"
        low, high = _sdk_compat.CHECKED[family]
        assert requirement.specifier == SpecifierSet(f">={low},<={high}"), (str(requirement), low, high)


def test_the_matrix_runs_both_ends_of_the_checked_range() -> None:
    script = (ROOT / "scripts" / "test-matrix").read_text()
    ends = tuple(re.search(rf"^{name}=(\S+)$", script, re.M)[1] for name in ("OLDEST_SDK", "NEWEST_SDK"))  # type: ignore[index]
    assert ends == _sdk_compat.CHECKED["opentelemetry-sdk"]


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
