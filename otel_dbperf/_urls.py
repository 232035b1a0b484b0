"""Secrets in URLs on spans: the values of secret-looking query parameters become ``REDACTED``.

A server span's ``url.query`` (stable HTTP conventions) and ``http.target`` (the older ones), a
client span's ``url.full`` / ``http.url``, and a span name that carries a query string are
exported as the instrumentation set them: ``?token=...&api_key=...`` included. The semantic
conventions ask for ``AWSAccessKeyId``, ``Signature``, ``sig`` and ``X-Goog-Signature`` to be
redacted; a distribution that promises nothing leaks redacts every secret-looking name, from
``DBPERF_REDACT_URL_PARAMS`` (its built-in list: ``settings.DEFAULT_REDACTED_PARAMS``).

A parameter name matches a word of that list when the word is the whole name, one of its parts
(split at ``_ - . ~`` and where lower case turns to upper case: ``apiKey`` is ``api`` and ``Key``,
``AWSAccessKeyId`` is ``AWS Access Key Id``), or, for a word of five letters or more, any part of
the name once its separators are removed (``token`` matches ``refreshtoken``); case is ignored and
a percent-encoded name is decoded first. So ``key`` redacts ``api_key`` and ``X-Api-Key`` but not
``keyword`` or ``monkey``; ``sig`` redacts ``sig`` but not ``signup``. A fragment (``#...``) is
read as a query string too (OAuth puts tokens there), and a URL's user and password become
``REDACTED:REDACTED`` as the conventions say.

It runs on the export thread for every span that has one of those attributes: a few dict lookups
for the others, one split of the query string and a cached verdict per parameter name otherwise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "REDACTED"
#: attributes that hold a query string: (name, holds a whole URL or target rather than the query alone)
URL_ATTRIBUTES = (("url.query", False), ("url.full", True), ("http.url", True), ("http.target", True))
_SEPARATORS = re.compile(r"([&;])")
_PARTS = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_NOT_ALNUM = re.compile(r"[^0-9a-z]")
_MAX_CACHED = 4096  # parameter names whose verdict is kept


class UrlRedactor:
    """Redacts the values of the query parameters whose names match ``words``."""

    def __init__(self, words: tuple[str, ...]) -> None:
        self._words = frozenset(w.lower() for w in words)
        self._long = tuple({c for c in (_NOT_ALNUM.sub("", w) for w in self._words) if len(c) >= 5})
        self._verdicts: dict[str, bool] = {}

    def secret(self, name: str) -> bool:
        """Whether the values of parameter ``name`` are redacted."""
        verdict = self._verdicts.get(name)
        if verdict is None:
            verdict = self._judge(name)
            if len(self._verdicts) >= _MAX_CACHED:
                self._verdicts.clear()
            self._verdicts[name] = verdict
        return verdict

    def _judge(self, name: str) -> bool:
        if not self._words:
            return False
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        lower = name.lower()
        if lower in self._words:
            return True
        if any(p.lower() in self._words for p in _PARTS.findall(name)):
            return True
        compact = _NOT_ALNUM.sub("", lower)
        return any(w in compact for w in self._long)

    def query(self, query: str) -> str:
        """``a=1&token=x`` -> ``a=1&token=REDACTED`` (``&`` and ``;`` separate parameters)."""
        if "=" not in query:
            return query
        pieces = _SEPARATORS.split(query)
        changed = False
        for i in range(0, len(pieces), 2):
            piece = pieces[i]
            eq = piece.find("=")
            if 0 < eq < len(piece) - 1 and self.secret(piece[:eq]):
                pieces[i] = piece[: eq + 1] + REDACTED
                changed = True
        return "".join(pieces) if changed else query

    def url(self, url: str) -> str:
        """A URL, a request target or a span name: its userinfo, query and fragment redacted."""
        start = 0
        scheme = url.find("://")
        if scheme > 0 and "/" not in url[:scheme] and " " not in url[:scheme]:
            start = scheme + 3
            end = len(url)
            for c in "/?#":
                at = url.find(c, start)
                if 0 <= at < end:
                    end = at
            at = url.rfind("@", start, end)
            if at >= 0:
                url = url[:start] + f"{REDACTED}:{REDACTED}" + url[at:]
        question = url.find("?", start)
        hash_ = url.find("#", start)
        if question >= 0 and (hash_ < 0 or question < hash_):
            end = hash_ if hash_ >= 0 else len(url)
            url = url[: question + 1] + self.query(url[question + 1 : end]) + url[end:]
            hash_ = url.find("#", question)
        if hash_ >= 0:
            url = url[: hash_ + 1] + self.query(url[hash_ + 1 :])
        return url

    def span(self, attrs: Mapping[str, Any], name: Any) -> tuple[dict[str, Any] | None, str | None]:
        """(``attrs`` with its URLs redacted, or None: unchanged; the span's new name, or None)."""
        changed: dict[str, Any] | None = None
        for key, whole in URL_ATTRIBUTES:
            value = attrs.get(key)
            if value.__class__ is str and ("=" in value or (whole and "@" in value)):
                clean = self.url(value) if whole else self.query(value)
                if clean != value:
                    if changed is None:
                        changed = dict(attrs)
                    changed[key] = clean
        new_name = None
        if name.__class__ is str and ("?" in name or "#" in name):
            clean_name = self.url(name)
            if clean_name != name:
                new_name = clean_name
        return changed, new_name
