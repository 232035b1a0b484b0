"""The statement lexers compile without walking Unicode code point by code point (their first use in a
process, e.g. the pytest guard's first query, paid ~5 ms for it), and read the same words as before."""

from __future__ import annotations

import re
import sys
from typing import Any

from otel_dbperf import _sql

#: the identifier classes as first written: ASCII letters, digits, "_" (and "$" after the first
#: character), and every code point from U+0080 up
REFERENCE_WORD = "[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_$\u0080-\U0010ffff]*"
REFERENCE_DOLLAR_TAG = r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$"


def _python_steps(source: str) -> int:
    """How many Python line events compiling ``source`` takes (the re module's compiler is Python)."""
    steps = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal steps
        steps += 1
        return trace

    re.purge()
    sys.settrace(trace)
    try:
        re.compile(source)
    finally:
        sys.settrace(None)
    return steps


def test_compiling_a_lexer_walks_no_code_point_range() -> None:
    for lexer in (_sql._SQLITE, _sql._PG, _sql._MYSQL):
        steps = _python_steps(lexer._source)
        # a class that spans U+0080..U+10FFFF costs the compiler 65536 steps per class (a bitmap it gives up on)
        assert steps < 100_000, (lexer.name, steps)


def test_the_identifier_classes_read_what_they_read_before() -> None:
    every = "".join(chr(cp) for cp in range(0x110000))
    word, reference = re.compile(_sql._WORD), re.compile(REFERENCE_WORD)
    # a word starts at the same code points, and goes on over the same ones
    assert [m.start() for m in word.finditer(every)] == [m.start() for m in reference.finditer(every)]
    for first in ("a", "\u00e9"):
        for cp in list(range(0x100)) + [0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF]:
            text = first + chr(cp)
            assert word.match(text).group() == reference.match(text).group(), hex(cp)  # type: ignore[union-attr]
    tag = "dol"
    dollar = re.compile(next(p for p in _sql._PG._source.split("|(?P<") if p.startswith(f"{tag}>"))[len(tag) + 1 : -1])
    ref = re.compile(REFERENCE_DOLLAR_TAG)
    for cp in list(range(0x100)) + [0x7FF, 0x800, 0xFFFF, 0x10000, 0x10FFFF]:
        for text in (f"${chr(cp)}$", f"$a{chr(cp)}$", f"$a{chr(cp)}"):
            found, expected = dollar.match(text), ref.match(text)
            assert (found and found.group()) == (expected and expected.group()), (hex(cp), text)
