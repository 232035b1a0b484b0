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
from functools import lru_cache
from typing import Any, Literal

_log = logging.getLogger("otel_dbperf")

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError("expected true or false; 1/0, yes/no and on/off are accepted too")


_DAY_MS = 86_400_000

#: DBPERF_RESOURCE_SAMPLES: ``off``; ``request`` (CPU time and RSS per request span, the default);
#: ``query`` (also per DB span: CPU time of the issuing thread and the RSS delta)
ResourceSamples = Literal["off", "request", "query"]
_SAMPLE_LEVELS: tuple[ResourceSamples, ...] = ("off", "request", "query")


def _parse_samples(raw: str) -> ResourceSamples:
    """``request``, ``query`` or ``off``; the former booleans keep their meaning (true = query)."""
    value = raw.strip().lower()
    for level in _SAMPLE_LEVELS:
        if value == level:
            return level
    if value in _TRUE:
        return "query"
    if value in _FALSE:
        return "off"
    raise ValueError("expected request, query or off")


#: DBPERF_OTLP_ENCODER: ``fast`` (otel-dbperf writes the OTLP/HTTP protobuf bytes of spans itself) or ``stock``
OtlpEncoder = Literal["fast", "stock"]
_ENCODERS: tuple[OtlpEncoder, ...] = ("fast", "stock")


def _parse_encoder(raw: str) -> OtlpEncoder:
    value = raw.strip().lower()
    for encoder in _ENCODERS:
        if value == encoder:
            return encoder
    raise ValueError("expected fast or stock")


#: numbers as people write them, in ASCII: no ``1_000`` and no other script's digits (both of which
#: ``int()`` and ``float()`` take); spaces around a value are ignored, for every variable
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def _ms_between(low: float, high: float) -> Callable[[str], float]:
    """A number of milliseconds in [low, high] (NaN, infinities and 1e308 are out of range)."""

    def parse(raw: str) -> float:
        text = raw.strip()
        if not text:
            raise ValueError("empty value")
        expected = f"expected a number of milliseconds from {low:.0f} to {high:.0f}"
        if not _DECIMAL.fullmatch(text):
            raise ValueError(expected + ", written with the digits 0-9")
        value = float(text)
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


def _seconds_between(low: float, high: float) -> Callable[[str], float]:
    """A number of seconds in [low, high] (NaN, infinities and 1e308 are out of range)."""

    def parse(raw: str) -> float:
        text = raw.strip()
        if not text:
            raise ValueError("empty value")
        value = float(text)
        if not low <= value <= high:  # also rejects NaN
            raise ValueError(f"expected a number of seconds from {low:g} to {high:g}")
        return value

    return parse


def _int_between(low: int, high: int) -> Callable[[str], int]:
    """An integer in [low, high]."""

    def parse(raw: str) -> int:
        text = raw.strip()
        if not text:
            raise ValueError("empty value")
        if len(text) > 20:  # int() of a huge digit string is itself slow
            raise ValueError(f"expected an integer from {low} to {high}")
        if not _INTEGER.fullmatch(text):
            raise ValueError(f"expected an integer from {low} to {high}, written with the digits 0-9")
        value = int(text)
        if not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value

    return parse


def _parse_ratio(raw: str) -> float:
    """A fraction in [0.01, 1]."""
    text = raw.strip()
    if not text:
        raise ValueError("empty value")
    value = float(text)
    if not 0.01 <= value <= 1:  # also rejects NaN
        raise ValueError("expected a fraction from 0.01 to 1")
    return value


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


_MOUNT = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def _parse_mount(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if not value:
        if raw.strip():  # "/" or "//": the app's whole URL space, never the profiler's
            raise ValueError("expected a URL path such as /profiler, not the root of the app")
        return ""
    if not _MOUNT.fullmatch(value):
        raise ValueError("expected a URL path such as /profiler (letters, digits, . _ ~ - between slashes)")
    return value


#: DBPERF_REDACT_URL_PARAMS's built-in list (the word ``default`` in the variable): query parameters
#: whose values are replaced by ``REDACTED`` (matching rules in ``_urls.py``); the semantic
#: conventions name AWSAccessKeyId, Signature, sig and X-Goog-Signature
DEFAULT_REDACTED_PARAMS = (
    "token", "key", "apikey", "secret", "password", "passwd", "pwd", "pass", "passphrase", "auth",
    "authorization", "signature", "sig", "credential", "credentials", "session", "sessionid", "sid",
    "jwt", "bearer", "otp", "awsaccesskeyid", "x-goog-signature",
)  # fmt: skip
_PARAM_WORD = re.compile(r"[A-Za-z0-9_.~\[\]-]+")


def _parse_params(raw: str) -> tuple[str, ...]:
    """Comma-separated parameter names or words; ``default``: the built-in list; ``none``: nothing."""
    words: list[str] = []
    for item in raw.split(","):
        word = item.strip()
        if not word:
            continue
        if not _PARAM_WORD.fullmatch(word):
            raise ValueError("expected a comma-separated list of parameter names, default or none")
        lower = word.lower()
        if lower == "default":
            words += DEFAULT_REDACTED_PARAMS
        elif lower != "none":
            words.append(lower)
    if not words and "none" not in raw.lower():
        raise ValueError("expected a comma-separated list of parameter names, default or none")
    return tuple(dict.fromkeys(words))


def _missing_paths(paths: tuple[str, ...]) -> str | None:
    missing = [p for p in paths if not os.path.isdir(p)]
    if not missing:
        return None
    return "no such directory: " + ", ".join(missing) + " (used anyway: no code there counts as application code)"


@dataclass(frozen=True)
class _Var:
    env: str
    field: str
    parse: Callable[[str], Any]
    default: Any
    doc_default: str
    numeric: bool = False  # an empty value is a mistake, not "unset"
    #: a valid value that is still worth one warning (kept): returns what is wrong, or None
    check: Callable[[Any], str | None] | None = None


def _shown(raw: str) -> str:
    """A bad value as a warning shows it: bounded."""
    return raw if len(raw) <= 200 else raw[:200] + "…"


def _cwd_default() -> tuple[str, ...]:
    return (os.getcwd(),)


# One row per variable: the order is the order of docs/configuration.md.
VARIABLES: tuple[_Var, ...] = (
    _Var("DBPERF_ENABLED", "enabled", _parse_bool, True, "true"),
    _Var("DBPERF_SLOW_QUERY_THRESHOLD_MS", "slow_query_threshold_ms", _ms_between(0, _DAY_MS), 100.0, "100", True),
    _Var("DBPERF_STACKTRACE_THRESHOLD_MS", "stacktrace_threshold_ms", _ms_between(0, _DAY_MS), 500.0, "500", True),
    _Var("DBPERF_STACKTRACE_MAX_FRAMES", "stacktrace_max_frames", _int_between(1, 256), 20, "20", True),
    _Var("DBPERF_STACKTRACE_SOURCE", "stacktrace_source", _parse_bool, False, "false"),
    _Var("DBPERF_CODE_LOCATION", "code_location", _parse_bool, True, "true"),
    _Var("DBPERF_APP_PATHS", "app_paths", _parse_paths, None, "(current directory)", check=_missing_paths),
    _Var("DBPERF_SANITIZE_STATEMENTS", "sanitize_statements", _parse_bool, True, "true"),
    _Var("DBPERF_APP_ERROR_TEXT", "app_error_text", _parse_bool, False, "false"),
    _Var("DBPERF_REDACT_URL_PARAMS", "redact_url_params", _parse_params, DEFAULT_REDACTED_PARAMS, "default"),
    _Var("DBPERF_STATEMENT_MAX_LENGTH", "statement_max_length", _int_between(64, 65_536), 4096, "4096", True),
    _Var("DBPERF_N_PLUS_ONE_THRESHOLD", "n_plus_one_threshold", _int_between(2, 10_000), 5, "5", True),
    _Var("DBPERF_LONG_TRANSACTION_MS", "long_transaction_ms", _ms_between(0, _DAY_MS), 1000.0, "1000", True),
    _Var("DBPERF_CPU_BOUND_THRESHOLD_MS", "cpu_bound_threshold_ms", _ms_between(1, _DAY_MS), 200.0, "200", True),
    _Var("DBPERF_CPU_BOUND_RATIO", "cpu_bound_ratio", _parse_ratio, 0.5, "0.5", True),
    _Var("DBPERF_HTTP_N_PLUS_ONE_THRESHOLD", "http_n_plus_one_threshold", _int_between(2, 10_000), 5, "5", True),
    _Var("DBPERF_EVENT_LOOP_BLOCKED_MS", "event_loop_blocked_ms", _ms_between(0, _DAY_MS), 100.0, "100", True),
    _Var("DBPERF_SEQUENTIAL_QUERIES_THRESHOLD", "sequential_queries_threshold", _int_between(0, 10_000), 3, "3", True),
    _Var("DBPERF_RESOURCE_SAMPLES", "resource_samples", _parse_samples, "request", "request"),
    _Var("DBPERF_SLOW_QUERY_LOGS_PER_MINUTE", "slow_query_logs_per_minute", _int_between(0, 10_000), 1, "1", True),
    _Var("DBPERF_EXPLAIN", "explain", _parse_bool, False, "false"),
    _Var("DBPERF_EXPLAIN_ANALYZE", "explain_analyze", _parse_bool, False, "false"),
    _Var("DBPERF_EXPLAIN_TIMEOUT_MS", "explain_timeout_ms", _int_between(10, 10_000), 200, "200", True),
    _Var("DBPERF_PROFILER_ADDR", "profiler_addr", str.strip, "", "(unset)"),
    _Var("DBPERF_PROFILER_TOKEN", "profiler_token", str.strip, "", "(unset)"),
    _Var("DBPERF_PROFILER_MOUNT", "profiler_mount", _parse_mount, "", "(unset)"),
    _Var("DBPERF_PROFILER_MAX_HISTORY", "profiler_max_history", _int_between(1, 100_000), 1000, "1000", True),
    _Var("DBPERF_SQLCOMMENTER", "sqlcommenter", _parse_bool, False, "false"),
    _Var("DBPERF_LOG_LEVEL", "log_level", _parse_level, "", "(unset)"),
    _Var("DBPERF_APP_LOGS", "app_logs", _parse_bool, True, "true"),
    _Var("DBPERF_FILE_PATH", "file_path", str.strip, "dbperf-spans.jsonl", "dbperf-spans.jsonl"),
    _Var("DBPERF_JAEGER_URL", "jaeger_url", str.strip, "", "(unset)"),
    _Var("DBPERF_SHUTDOWN_TIMEOUT_MS", "shutdown_timeout_ms", _ms_between(0, 60_000), 2000.0, "2000", True),
    _Var("DBPERF_OTLP_ENCODER", "otlp_encoder", _parse_encoder, "fast", "fast"),
    # otel-dbperf dbmonitor (docs/database.md): the database server's side
    _Var("DBPERF_DBMONITOR_DSN", "dbmonitor_dsn", str.strip, "", "(unset)"),
    _Var("DBPERF_DBMONITOR_DSN_FILE", "dbmonitor_dsn_file", str.strip, "", "(unset)"),
    _Var("DBPERF_DBMONITOR_INTERVAL", "dbmonitor_interval", _seconds_between(1, 3600), 15.0, "15", True),
    _Var("DBPERF_DBMONITOR_SAMPLE_INTERVAL", "dbmonitor_sample_interval", _seconds_between(0, 3600), 1.0, "1", True),
    _Var(
        "DBPERF_DBMONITOR_STATEMENTS_INTERVAL",
        "dbmonitor_statements_interval",
        _seconds_between(0, 86_400),
        60.0,
        "60",
        True,
    ),
)


@dataclass(frozen=True)
class Settings:
    """The effective otel-dbperf configuration (see docs/configuration.md)."""

    enabled: bool = True
    slow_query_threshold_ms: float = 100.0
    stacktrace_threshold_ms: float = 500.0
    stacktrace_max_frames: int = 20
    stacktrace_source: bool = False
    code_location: bool = True
    app_paths: tuple[str, ...] = ()
    sanitize_statements: bool = True
    app_error_text: bool = False
    redact_url_params: tuple[str, ...] = DEFAULT_REDACTED_PARAMS
    statement_max_length: int = 4096
    n_plus_one_threshold: int = 5
    long_transaction_ms: float = 1000.0
    cpu_bound_threshold_ms: float = 200.0
    cpu_bound_ratio: float = 0.5
    http_n_plus_one_threshold: int = 5
    event_loop_blocked_ms: float = 100.0
    sequential_queries_threshold: int = 3
    resource_samples: ResourceSamples = "request"
    slow_query_logs_per_minute: int = 1
    explain: bool = False
    explain_analyze: bool = False
    explain_timeout_ms: int = 200
    profiler_addr: str = ""
    profiler_token: str = ""
    profiler_mount: str = ""
    profiler_max_history: int = 1000
    sqlcommenter: bool = False
    log_level: str = ""
    app_logs: bool = True
    file_path: str = "dbperf-spans.jsonl"
    jaeger_url: str = ""
    shutdown_timeout_ms: float = 2000.0
    otlp_encoder: OtlpEncoder = "fast"
    dbmonitor_dsn: str = ""
    dbmonitor_dsn_file: str = ""
    dbmonitor_interval: float = 15.0
    dbmonitor_sample_interval: float = 1.0
    dbmonitor_statements_interval: float = 60.0

    def __post_init__(self) -> None:
        if not self.app_paths:
            object.__setattr__(self, "app_paths", _cwd_default())
        samples: Any = self.resource_samples
        if samples is True or samples is False:  # the former boolean setting: true meant per query
            object.__setattr__(self, "resource_samples", "query" if samples else "off")
        elif samples not in _SAMPLE_LEVELS:
            raise ValueError(f"resource_samples must be one of {', '.join(_SAMPLE_LEVELS)}, not {samples!r}")
        if self.otlp_encoder not in _ENCODERS:
            raise ValueError(f"otlp_encoder must be one of {', '.join(_ENCODERS)}, not {self.otlp_encoder!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Parse the ``DBPERF_*`` variables of ``environ`` (default ``os.environ``).

        A malformed value logs one warning and the default is used instead.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var in VARIABLES:
            raw = env.get(var.env)
            if raw is None or (raw.strip() == "" and not var.numeric):
                continue
            try:
                value = var.parse(raw)
            except (ValueError, OverflowError) as exc:
                _log.warning(
                    "otel-dbperf: invalid value %r for %s (%s); using the default %s",
                    _shown(raw),
                    var.env,
                    exc,
                    var.doc_default,
                )
                continue
            values[var.field] = value
            problem = var.check(value) if var.check is not None else None
            if problem:
                _log.warning("otel-dbperf: %s=%r: %s", var.env, _shown(raw), problem)
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# scheme://USERINFO@host: the userinfo is everything up to the last "@" of the URL (passwords
# may contain "/", ":" or "@"); over-masking a URL whose path holds an "@" is the safe side.
_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)[^\s@]*(?:@[^\s@]*)*@")
_SECRET_WORDS = r"key|token|secret|passw|pwd|pass|auth|signature|sig|credential|session|cookie|bearer|jwt|private"
# name=value in a query string (or a key=value list): values of secret-looking names
_SECRET_PARAM = re.compile(rf"(?P<name>[?&;,\s]?[\w.\-]*(?:{_SECRET_WORDS})[\w.\-]*=)[^&;,#\s]*", re.I)
_SECRET_NAME = re.compile(rf"HEADER|DSN(?!_FILE)|{_SECRET_WORDS}", re.I)


def mask_url(text: str) -> str:
    """Mask the userinfo of every URL in ``text`` (``postgresql://***@host/db``) and the values of
    secret-looking query parameters (``?api_key=***``)."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}***@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}***", text)


def _is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def describe_effective(settings: Settings, environ: Mapping[str, str] | None = None) -> str:
    """One line with the effective configuration, safe to log (secrets masked).

    Masked: the value of every variable or setting whose name looks secret (token, key,
    password, auth, headers, ...), the userinfo of every URL and secret-looking query
    parameters in every other value.
    """
    env = os.environ if environ is None else environ
    parts = []
    for key, value in settings.as_dict().items():
        if value and _is_secret_name(key):
            parts.append(f"{key}='***'")
        elif isinstance(value, str):
            parts.append(f"{key}={mask_url(value)!r}")
        else:
            parts.append(f"{key}={value!r}")
    ours = {v.env for v in VARIABLES}
    for name in sorted(env):
        if not name.startswith(("OTEL_", "DBPERF_")) or name in ours:
            continue
        value = "***" if _is_secret_name(name) else mask_url(env[name])
        parts.append(f"{name}={value!r}")
    return "otel-dbperf effective configuration: " + ", ".join(parts)


@lru_cache(maxsize=1)
def current_settings() -> Settings:
    """The process's settings, parsed once (so each bad value warns once)."""
    settings = Settings.from_env()
    if settings.log_level and not _log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        _log.addHandler(handler)
        _log.setLevel(settings.log_level)
        _log.propagate = False
    return settings
