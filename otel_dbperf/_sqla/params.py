"""A query's parameters, for the exact-duplicate judgement (see :mod:`otel_dbperf._sqla.duplicates`):
their keyed digest, taken on the request thread while the query's span is open.

The digest is a BLAKE2b keyed with a random key made in this process, never exported nor
logged: a digest cannot be tested against guessed values without the key, and the values
themselves are not kept.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

MAX_PARAMETERS = 64  # more parameters than this: not judged (the digest would cost too much)
_KEYED = hashlib.blake2b(key=os.urandom(32), digest_size=16)  # copied per digest: the key is set up once
NONE = b""  # the digest of "no parameters" (the statement text alone decides)


def digest(parameters: Any) -> bytes | None:
    """A keyed digest of a query's parameters (equal parameters, equal digests), or None when not taken."""
    if not parameters:
        return NONE
    try:
        if len(parameters) > MAX_PARAMETERS:
            return None
        text = repr(parameters)  # DB-API values by now (bind processors have run): ints, strs, dates, ...
    except Exception:  # noqa: BLE001 - a value that cannot be shown: no duplicate judgement
        return None
    h = _KEYED.copy()
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()
