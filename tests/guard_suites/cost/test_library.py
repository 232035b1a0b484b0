from __future__ import annotations

import sqlite3

import pytest


def test_n_plus_one_request_fails(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors").status_code == 200


def test_fixed_request_passes(client) -> None:  # type: ignore[no-untyped-def]
    assert client.get("/authors/fixed").status_code == 200


@pytest.mark.dbperf(max_duplicates=0)
def test_duplicates_fails(client) -> None:  # type: ignore[no-untyped-def]
    import library
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    with Session(library.engine) as session:
        for _ in range(2):
            session.execute(select(library.Author).where(library.Author.id == 1)).all()  # line: duplicate


def test_raw_sqlite3_loop_fails(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conn = sqlite3.connect(tmp_path / "raw.db")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    for i in range(6):
        conn.execute("SELECT id FROM t WHERE id = ?", (i,)).fetchall()  # line: raw
    conn.close()


def test_no_query_passes(set_up_query) -> None:  # type: ignore[no-untyped-def]
    assert True
