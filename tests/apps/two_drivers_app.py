"""A Flask app that talks to two databases through two DB-API drivers (sqlite3 and psycopg)."""

from __future__ import annotations

import os
import sqlite3

import psycopg
from flask import Flask

app = Flask(__name__)


@app.get("/ping")
def ping() -> str:
    return "ok"


@app.get("/both")
def both() -> str:
    with sqlite3.connect(os.environ["TWO_DRIVERS_SQLITE"]) as lite:
        lite.cursor().execute("SELECT 1").fetchall()
    with psycopg.connect(os.environ["TWO_DRIVERS_PG"]) as pg:
        pg.execute("SELECT 1").fetchall()
    return "ok"
