"""A query's parameters, for the exact-duplicate judgement (see :mod:`otel_dbperf._duplicates`).

The request thread only keeps them (:func:`kept`: the tuple itself, a shallow copy of any other
container); the analysis, off that thread, replaces them by their keyed digest (:func:`digest`)
before it compares them with the request's earlier queries. The values live in the process until
then (seconds: until the request's analysis) and are never exported nor logged.

The digest is a BLAKE2b keyed with a random key made in this process: a digest cannot be tested
against guessed values without the key.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

MAX_PARAMETERS = 64  # more parameters than this: not judged (the digest would cost too much)
_KEYED = hashlib.blake2b(key=os.urandom(32), digest_size=16)  # copied per digest: the key is set up once
NONE = b""  # "no parameters" (the statement text alone decides), kept and digested as is


def kept(parameters: Any) -> Any:
    """On the request thread: ``parameters`` as they are now, for :func:`digest` later: a tuple
    itself, a copy of a dict or list, the text of any other container; :data:`NONE` for none;
    None: not judged (more than :data:`MAX_PARAMETERS`, or unreadable). A mutable value inside
    (a list bound to an array column) changed by the application after the query could make two
    queries look equal or different; nothing else depends on it."""
    if not parameters:
        return NONE
    try:
        if len(parameters) > MAX_PARAMETERS:
            return None
        cls = parameters.__class__
        if cls is tuple:
            return parameters
        if cls is dict:
            return dict(parameters)
        if cls is list:
            return tuple(parameters)
        return repr(parameters)  # DB-API values by now (bind processors have run): ints, strs, dates, ...
    except Exception:  # noqa: BLE001 - a value that cannot be shown: no duplicate judgement
        return None


def digest(kept_parameters: Any) -> bytes | None:
    """Off the request thread: the keyed digest of what :func:`kept` returned (equal parameters,
    equal digests); :data:`NONE` and None as they are."""
    if kept_parameters is None or kept_parameters.__class__ is bytes:
        return kept_parameters  # type: ignore[no-any-return]
    try:
        text = kept_parameters if kept_parameters.__class__ is str else repr(kept_parameters)
    except Exception:  # noqa: BLE001 - a value that cannot be shown: no duplicate judgement
        return None
    h = _KEYED.copy()
    h.update(text.encode("utf-8", "surrogatepass"))
    return h.digest()
