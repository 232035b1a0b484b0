"""The safety gate: which statements may be explained (one plain SELECT, read by the database's own
lexical rules; with ANALYZE only safe functions) and how often.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable

from ... import _forksafe
from ..._sql import _MAX_SCAN, code_tokens
from .plan import _MAX_FINGERPRINTS, ExplainConfig

# Inside a SELECT these words mean a write (PostgreSQL's data-modifying WITH, SELECT ... INTO, MySQL's
# INTO OUTFILE); a column so named (unquoted) costs a skipped plan, never a wrong one.
_WRITE_WORDS = frozenset({"insert", "update", "delete", "merge", "into", "copy", "call", "do", "execute"})
# "FOR UPDATE", "FOR NO KEY UPDATE", "FOR SHARE", "FOR KEY SHARE", MySQL's "LOCK IN SHARE MODE"
_LOCK_AFTER_FOR = frozenset({"update", "share", "no", "key"})
# Words followed by "(" that are syntax, not a function call.
_NOT_CALLS = frozenset(
    re.findall(
        r"\w+",
        "in exists as values over filter within any all some array row using on and or not where select from "
        "when then else case lateral by join between is distinct group union intersect except having limit "
        "offset with recursive escape like ilike similar to end interval only table ordinality of returns",
    )
)
#: Functions EXPLAIN ANALYZE may run (it executes the query): built-ins without effects that outlive
#: the rolled-back transaction. A call of anything else (a user function, pg_advisory_lock, nextval,
#: GET_LOCK, dblink, ...) refuses ANALYZE for that statement.
SAFE_FUNCTIONS = frozenset(
    re.findall(
        r"\w+",
        """
        count sum avg min max every bool_and bool_or bit_and bit_or array_agg string_agg group_concat
        json_agg jsonb_agg json_object_agg jsonb_object_agg stddev variance total
        row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
        lower upper length char_length character_length octet_length bit_length substring substr trim
        ltrim rtrim btrim concat concat_ws replace position strpos instr left right lpad rpad split_part
        reverse repeat initcap translate regexp_replace regexp_like format md5 hex unhex ascii chr
        coalesce nullif ifnull isnull nvl greatest least cast convert
        abs round floor ceil ceiling trunc truncate mod power pow sqrt exp ln log log10 sign div pi
        now current_date current_time current_timestamp localtime localtimestamp date_trunc date_part
        extract to_char to_date to_timestamp to_number age date time datetime julianday strftime year
        month day hour minute second date_add date_sub datediff timestampdiff date_format str_to_date
        unnest generate_series array_length cardinality array_position array_to_string string_to_array
        json_extract json_unquote json_build_object jsonb_build_object json_build_array jsonb_build_array
        to_json to_jsonb jsonb_extract_path jsonb_extract_path_text json_extract_path_text jsonb_array_length
        typeof quote printf iif if
        """,
    )
)


def refusal(statement: str, analyze_on: bool = False, dialect: str = "other") -> str | None:
    """Why ``statement`` must not be explained, or None for a single plain SELECT.

    The statement is read by ``dialect``'s lexical rules (every dialect's when unknown), under
    each string rule a session may have chosen (PostgreSQL's ``standard_conforming_strings``
    on and off, MySQL's with and without backslash escapes and ``ANSI_QUOTES``; see
    :func:`~otel_dbperf._sql.code_tokens`): every reading must find exactly one SELECT
    (no ``;`` but a last one, no write, no ``INTO``, no locking clause), and, with ANALYZE, no
    call of a function outside :data:`SAFE_FUNCTIONS`.
    """
    if len(statement) > _MAX_SCAN:
        return "too_long"  # the checks below would only see its beginning
    if "/*!" in statement or "/*M!" in statement:
        return "not_select"  # MySQL executes the text of these comments
    readings = code_tokens(statement, dialect)
    if not readings:
        return "not_select"
    side_effects = False
    for tokens in readings:
        reason = _reading_refusal(tokens, analyze_on)
        if reason == "not_select":
            return reason
        side_effects = side_effects or reason == "side_effects"
    return "side_effects" if side_effects else None


def _reading_refusal(tokens: list[tuple[str, str]], analyze_on: bool) -> str | None:
    code = [(kind, text.lower()) for kind, text in tokens if kind != "C"]
    while code and code[-1] == ("O", ";"):
        code.pop()
    if not code or code[0][1] not in ("select", "with", "("):
        return "not_select"
    if any(kind == "O" and text == ";" for kind, text in code):
        return "not_select"  # a second statement
    if any((kind == "S" or kind == "C") and _has_placeholder(text) for kind, text in tokens):
        return "not_select"
    words = [text for kind, text in code if kind == "W"]
    if "select" not in words or any(w in _WRITE_WORDS for w in words):
        return "not_select"
    for i, word in enumerate(words[:-1]):
        if word == "for" and words[i + 1] in _LOCK_AFTER_FOR or word == "lock" and words[i + 1] == "in":
            return "not_select"
    if analyze_on:
        for i, (kind, text) in enumerate(code[:-1]):
            if code[i + 1] != ("O", "(") or kind not in ("W", "I"):
                continue
            qualified = i > 0 and code[i - 1] == ("O", ".")
            if kind == "I" or qualified or text not in SAFE_FUNCTIONS and text not in _NOT_CALLS:
                return "side_effects"
    return None


def _has_placeholder(text: str) -> bool:
    """Whether ``text`` holds a ``%s`` or ``%(name)s`` (not a ``%%s``), in linear time.

    A client-side binding driver (psycopg2, pymysql) substitutes them even inside a literal or a
    comment, where a value could end the literal early: such a statement is not explained.
    """
    end = len(text)
    i = text.find("%")
    while i >= 0:
        j = i
        while j < end and text[j] == "%":
            j += 1
        if (j - i) % 2 == 1 and j < end and text[j] in "s(":
            return True
        i = text.find("%", j)
    return False


class _RateLimiter:
    def __init__(self, config: ExplainConfig, clock: Callable[[], float]) -> None:
        self._interval = config.per_fingerprint_interval_s
        self._per_minute = config.max_per_minute
        self._clock = clock
        self._last: dict[str, float] = {}
        self._recent: deque[float] = deque()
        self._lock = _forksafe.lock("explain.rate_limit")

    def allow(self, fingerprint: str) -> bool:
        with self._lock:
            now = self._clock()
            while self._recent and now - self._recent[0] >= 60.0:
                self._recent.popleft()
            last = self._last.get(fingerprint)
            if last is not None and now - last < self._interval or len(self._recent) >= self._per_minute:
                return False
            self._remember(fingerprint, now)
            return True

    def _remember(self, fingerprint: str, now: float) -> None:
        self._last.pop(fingerprint, None)  # re-inserted last: the dict stays in time order
        self._last[fingerprint] = now
        self._recent.append(now)
        if len(self._last) > _MAX_FINGERPRINTS:
            for key in list(self._last)[: _MAX_FINGERPRINTS // 10]:
                del self._last[key]
