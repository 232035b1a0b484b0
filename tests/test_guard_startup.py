"""What the pytest guard (and every otel-dbperf process) pays at start-up: importing the statement
analyser compiles no dialect's lexer; the first statement of a dialect compiles that one only."""

from __future__ import annotations

import subprocess
import sys


def test_dialect_lexers_are_compiled_on_first_use_only() -> None:
    code = (
        "from otel_dbperf import _sql\n"
        "lexers = [v for v in vars(_sql).values() if type(v).__name__ == '_Lexer']\n"
        "print(len(lexers), sum(v._pattern is not None for v in lexers))\n"
        "_sql.analyze('SELECT * FROM t WHERE a = 1', 4096, 'sqlite')\n"
        "print(sorted(v.name for v in lexers if v._pattern is not None))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "10 0"
    assert out[1] == "['sqlite']"
