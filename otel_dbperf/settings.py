"""Every ``DBPERF_*`` variable, read once into a frozen :class:`Settings`.

Processors receive a ``Settings`` through their constructor and never read
``os.environ`` themselves. A malformed value never stops the application: it
logs one warning naming the variable, the bad value and the default used.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

_log = logging.getLogger("otel_dbperf")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false")


def _parse_ms(raw: str) -> float:
    value = float(raw.strip())
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise ValueError("expected a number of milliseconds >= 0")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = int(raw.strip())
        if value < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return value

    return parse


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _parse_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in _LEVELS:
        raise ValueError("expected one of " + ", ".join(_LEVELS))
    return value


def _parse_paths(raw: str) -> tuple[str, ...]:
    paths = tuple(os.path.abspath(p.strip()) for p in raw.split(",") if p.strip())
    if not paths:
        raise ValueError("expected a comma-separated list of paths")
    return paths


@dataclass(frozen=True)
class _Var:
    env: str
    field: str
    parse: Callable[[str], Any]
    default: Any
    doc_default: str


def _cwd_default() -> tuple[str, ...]:
    return (os.getcwd(),)


# One row per variable: the order is the order of docs/configuration.md.
VARIABLES: tuple[_Var, ...] = (
    _Var("DBPERF_ENABLED", "enabled", _parse_bool, True, "true"),
    _Var("DBPERF_SLOW_QUERY_THRESHOLD_MS", "slow_query_threshold_ms", _parse_ms, 100.0, "100"),
    _Var("DBPERF_STACKTRACE_THRESHOLD_MS", "stacktrace_threshold_ms", _parse_ms, 500.0, "500"),
    _Var("DBPERF_STACKTRACE_MAX_FRAMES", "stacktrace_max_frames", _int_at_least(1), 20, "20"),
    _Var("DBPERF_CODE_LOCATION", "code_location", _parse_bool, True, "true"),
    _Var("DBPERF_APP_PATHS", "app_paths", _parse_paths, None, "(current directory)"),
    _Var("DBPERF_SANITIZE_STATEMENTS", "sanitize_statements", _parse_bool, True, "true"),
    _Var("DBPERF_STATEMENT_MAX_LENGTH", "statement_max_length", _int_at_least(64), 4096, "4096"),
    _Var("DBPERF_N_PLUS_ONE_THRESHOLD", "n_plus_one_threshold", _int_at_least(2), 5, "5"),
    _Var("DBPERF_RESOURCE_SAMPLES", "resource_samples", _parse_bool, True, "true"),
    _Var("DBPERF_SLOW_QUERY_LOGS_PER_MINUTE", "slow_query_logs_per_minute", _int_at_least(0), 1, "1"),
    _Var("DBPERF_EXPLAIN", "explain", _parse_bool, False, "false"),
    _Var("DBPERF_EXPLAIN_ANALYZE", "explain_analyze", _parse_bool, False, "false"),
    _Var("DBPERF_EXPLAIN_TIMEOUT_MS", "explain_timeout_ms", _int_at_least(1), 200, "200"),
    _Var("DBPERF_PROFILER_ADDR", "profiler_addr", str.strip, "", "(unset)"),
    _Var("DBPERF_PROFILER_TOKEN", "profiler_token", str.strip, "", "(unset)"),
    _Var("DBPERF_PROFILER_MAX_HISTORY", "profiler_max_history", _int_at_least(1), 1000, "1000"),
    _Var("DBPERF_SQLCOMMENTER", "sqlcommenter", _parse_bool, False, "false"),
    _Var("DBPERF_LOG_LEVEL", "log_level", _parse_level, "", "(unset)"),
    _Var("DBPERF_APP_LOGS", "app_logs", _parse_bool, True, "true"),
    _Var("DBPERF_FILE_PATH", "file_path", str.strip, "dbperf-spans.jsonl", "dbperf-spans.jsonl"),
    _Var("DBPERF_JAEGER_URL", "jaeger_url", str.strip, "", "(unset)"),
    _Var("DBPERF_SHUTDOWN_TIMEOUT_MS", "shutdown_timeout_ms", _parse_ms, 2000.0, "2000"),
)


@dataclass(frozen=True)
class Settings:
    """The effective otel-dbperf configuration (see docs/configuration.md)."""

    enabled: bool = True
    slow_query_threshold_ms: float = 100.0
    stacktrace_threshold_ms: float = 500.0
    stacktrace_max_frames: int = 20
    code_location: bool = True
    app_paths: tuple[str, ...] = ()
    sanitize_statements: bool = True
    statement_max_length: int = 4096
    n_plus_one_threshold: int = 5
    resource_samples: bool = True
    slow_query_logs_per_minute: int = 1
    explain: bool = False
    explain_analyze: bool = False
    explain_timeout_ms: int = 200
    profiler_addr: str = ""
    profiler_token: str = ""
    profiler_max_history: int = 1000
    sqlcommenter: bool = False
    log_level: str = ""
    app_logs: bool = True
    file_path: str = "dbperf-spans.jsonl"
    jaeger_url: str = ""
    shutdown_timeout_ms: float = 2000.0

    def __post_init__(self) -> None:
        if not self.app_paths:
            object.__setattr__(self, "app_paths", _cwd_default())

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the ``DBPERF_*`` variables of ``environ`` (default ``os.environ``).

        A malformed value logs one warning and the default is used instead.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = env.get(var.env)
            if raw is None or raw.strip() == "":
                continue
            try:
                values[var.field] = var.parse(raw)
            except ValueError as exc:
                _log.warning(
                    "otel-dbperf: invalid value %r for %s (%s); using the default %s",
                    raw,
                    var.env,
                    exc,
                    var.doc_default,
                )
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]*)@")


def mask_url(text: str) -> str:
    """Mask the password of every URL in ``text``: ``postgresql://u:***@host/db``."""
    return _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


_SECRET_VARS = ("HEADERS", "PASSWORD", "TOKEN", "SECRET", "KEY")


def describe_effective(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """One line with the effective configuration, safe to log (secrets masked)."""
    env = os.environ if environ is None else environ
    parts = [
        f"{k}={'***' if v and any(w in k.upper() for w in _SECRET_VARS) else v!r}"
        for k, v in settings.as_dict().items()
    ]
    for name in sorted(env):
        if not name.startswith(("OTEL_", "DBPERF_")) or name in {v.env for v in VARIABLES}:
            continue
        value = env[name]
        if any(word in name for word in _SECRET_VARS):
            value = "***"
        parts.append(f"{name}={mask_url(value)!r}")
    return "otel-dbperf effective configuration: " + ", ".join(parts)
