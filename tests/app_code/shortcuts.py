"""sqlite3's connection shortcuts as apps use them (Flask's tutorial). ``# line: NAME`` lines are asserted."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any

SCHEMA = """
DROP TABLE IF EXISTS user;
CREATE TABLE user (id INTEGER PRIMARY KEY AUTOINCREMENT, username TEXT UNIQUE NOT NULL, joined TIMESTAMP);
"""
INSERT = "INSERT INTO user (username, joined) VALUES (?, ?)"
SELECT = "SELECT id, username, joined FROM user WHERE username = ?"


def schema(conn: sqlite3.Connection) -> sqlite3.Cursor:
    return conn.executescript(SCHEMA)  # line: script


def register_many(conn: sqlite3.Connection, rows: Iterable[tuple[str, Any]]) -> sqlite3.Cursor:
    return conn.executemany(INSERT, rows)  # line: many


def register_many_cursor(conn: sqlite3.Connection, rows: Iterable[tuple[str, Any]]) -> sqlite3.Cursor:
    return conn.cursor().executemany(INSERT, rows)  # line: many_cursor


def by_name(conn: sqlite3.Connection, name: str) -> Any:
    return conn.execute(SELECT, (name,)).fetchone()  # line: execute


def by_name_cursor(conn: sqlite3.Connection, name: str) -> Any:
    return conn.cursor().execute(SELECT, (name,)).fetchone()  # line: cursor


def by_inline_name(conn: sqlite3.Connection) -> Any:
    return conn.execute("SELECT id FROM user WHERE username = 'alice.secret@example.com'").fetchall()  # line: inline


def clear_script(conn: sqlite3.Connection) -> sqlite3.Cursor:
    return conn.executescript("DELETE FROM user WHERE id > 100")  # line: clear_script


def clear_cursor(conn: sqlite3.Connection) -> sqlite3.Cursor:
    return conn.cursor().execute("DELETE FROM user WHERE id > 100")  # line: clear_cursor
