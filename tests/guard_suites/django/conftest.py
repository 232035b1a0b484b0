from __future__ import annotations

import pytest

from otel_dbperf import _guard

_guard.RERAISE = True  # the guard's own bugs fail these tests loudly


@pytest.fixture
def authors():  # type: ignore[no-untyped-def]
    """Eight authors of two books each (made in the fixture: a fixture's queries are not the test's)."""
    from library.models import Author, Book

    made = Author.objects.bulk_create([Author(name=f"author {i}") for i in range(8)])
    Book.objects.bulk_create([Book(title=f"book {a.id}.{j}", author=a) for a in made for j in range(2)])
    return made
