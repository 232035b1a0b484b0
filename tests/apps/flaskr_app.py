"""A blog in the shape of Flask's tutorial ("flaskr"): sqlite3 through ``db.execute`` only, no cursor.

Launched unchanged under opentelemetry-instrument (database file in ``FLASKR_DB``). Lines marked
``# marker: NAME`` are looked up by the tests to check code.line.number.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from typing import Any

from flask import Flask, g, jsonify, request

SCHEMA = """
DROP TABLE IF EXISTS user;
DROP TABLE IF EXISTS post;

CREATE TABLE user (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  username TEXT UNIQUE NOT NULL,
  password TEXT NOT NULL
);

CREATE TABLE post (
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  author_id INTEGER NOT NULL,
  created TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP,
  title TEXT NOT NULL,
  body TEXT NOT NULL,
  FOREIGN KEY (author_id) REFERENCES user (id)
);
"""

INDEX = (
    "SELECT p.id, title, body, created, author_id, username FROM post p JOIN user u ON p.author_id = u.id"
    " ORDER BY created DESC"
)

app = Flask(__name__)


def get_db() -> Any:
    if "db" not in g:
        g.db = sqlite3.connect(os.environ["FLASKR_DB"], detect_types=sqlite3.PARSE_DECLTYPES)
        g.db.row_factory = sqlite3.Row
    return g.db


@app.teardown_appcontext
def close_db(_exc: BaseException | None = None) -> None:
    db = g.pop("db", None)
    if db is not None:
        db.close()


@app.get("/ping")
def ping() -> str:
    return "ok"


@app.post("/init-db")
def init_db() -> str:
    get_db().executescript(SCHEMA)  # marker: schema
    return "initialized"


@app.post("/auth/register")
def register() -> Any:
    db = get_db()
    username = request.form["username"]
    password = hashlib.sha256(request.form["password"].encode()).hexdigest()
    try:
        db.execute("INSERT INTO user (username, password) VALUES (?, ?)", (username, password))  # marker: register
        db.commit()
    except db.IntegrityError:
        return jsonify(error=f"User {username} is already registered."), 400
    user = db.execute("SELECT * FROM user WHERE username = ?", (username,)).fetchone()
    return jsonify(id=user["id"])


@app.post("/create")
def create() -> Any:
    db = get_db()
    db.execute(
        "INSERT INTO post (title, body, author_id) VALUES (?, ?, ?)",
        (request.form["title"], request.form["body"], int(request.form["author_id"])),
    )
    db.commit()
    return jsonify(ok=True)


@app.get("/")
def index() -> Any:
    posts = get_db().execute(INDEX).fetchall()  # marker: index
    return jsonify([{**dict(p), "created": p["created"].isoformat()} for p in posts])


@app.get("/authors")
def authors() -> Any:
    db = get_db()
    out = []
    for user in db.execute("SELECT id, username FROM user ORDER BY id").fetchall():
        count = db.execute("SELECT count(*) FROM post WHERE author_id = ?", (user["id"],)).fetchone()[0]  # marker: n1
        out.append({"username": user["username"], "posts": count})
    return jsonify(out)
