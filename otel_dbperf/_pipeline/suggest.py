"""Fix suggestions: the SQLAlchemy loader option that removes an N+1 of lazy loads.

The request thread only keeps the relationship object that a lazy load was loading
(found by the frame walk, see ``_location``); naming it and its fix happens here, off
the request thread. Names are the mapped class and attribute names of the code,
never values.
"""

from __future__ import annotations

from typing import Any


def relationship_fix(prop: Any) -> tuple[str, str]:
    """(``"Author.books"``, ``"selectinload(Author.books)"``) for a SQLAlchemy relationship, or ("", "").

    A collection (one-to-many, many-to-many) is loaded for all parent rows in one more
    query by ``selectinload``; a single object (many-to-one, one-to-one) is joined into
    the parent query by ``joinedload``.
    """
    try:
        owner = prop.parent.class_.__name__
        key = prop.key
        collection = bool(prop.uselist)
    except Exception:  # noqa: BLE001 - not a relationship after all: no suggestion
        return "", ""
    if not (isinstance(owner, str) and isinstance(key, str) and owner.isidentifier() and key.isidentifier()):
        return "", ""
    name = f"{owner}.{key}"
    return name, f"{'selectinload' if collection else 'joinedload'}({name})"
