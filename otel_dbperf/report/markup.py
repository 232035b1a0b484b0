"""Text from spans shown to people: escaped by construction, for a terminal and for an HTML page.

Everything a report shows comes from spans, that is from whoever could write to the file: a span name
may hold ``<script>`` or a terminal escape sequence. Two rules make forgetting impossible:

* :func:`printable` escapes the characters a terminal acts on; the text renderers pass the whole
  report through :func:`printable_data` before formatting it.
* The HTML pages are built with :func:`html` from constant templates: each field is escaped unless it
  is :class:`Markup`, which only :func:`html`, :func:`join` and constant templates make. A string built
  any other way (an f-string, ``+``) is text: :func:`join` escapes it, so a mistake shows the tags on the
  page instead of running them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable, Mapping
from html import escape as _escape
from typing import Any

# C0 and C1 controls, DEL, the line and paragraph separators, the bidirectional controls (they reorder
# what the terminal shows), and lone surrogates (from a JSON escape: no encoding can write them)
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_UNPRINTABLE_IN_HTML = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_NAMED = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str) -> str:
    """``text`` with its control characters shown as Python escapes: ``\\x1b``, ``\\n``, ``\\u202e``."""
    return _UNPRINTABLE.sub(_escaped, text)


def printable_data(value: Any) -> Any:
    """A copy of a report's data (dicts, lists, strings, numbers) with every string :func:`printable`."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, Mapping):
        return {printable_data(k): printable_data(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_data(v) for v in value]
    return value


class Markup(str):
    """HTML the report's own code wrote (tags, SVG), inserted as is by :func:`html` and :func:`join`."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """``value`` as HTML text (markup stays markup); control characters shown escaped, as in a terminal."""
    if isinstance(value, Markup):
        return value
    return Markup(_escape(_UNPRINTABLE_IN_HTML.sub(_escaped, str(value)), quote=True))


class _Formatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        if isinstance(value, Markup):
            if format_spec:
                raise ValueError("markup takes no format spec")
            return value
        return escape(format(value, format_spec))


_FORMATTER = _Formatter()


def html(template: str, /, *args: object, **fields: object) -> Markup:
    """The constant ``template`` (trusted markup) with its ``{}`` fields filled in: :class:`Markup` as is,
    anything else formatted (``{ms:.1f}``) and escaped. Attribute values go in quotes: ``title="{}"``."""
    return Markup(_FORMATTER.vformat(template, args, fields))


def join(parts: Iterable[object], separator: str = "") -> Markup:
    """``parts`` one after the other (``separator`` between them is markup): a part that is not
    :class:`Markup` is text, and escaped."""
    return Markup(Markup(separator).join(escape(part) for part in parts))
