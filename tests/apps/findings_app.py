"""A Flask app (gunicorn, sync workers) with the request-span findings beyond N+1 queries.

``/users``: one REST call per user to a JSON API (``APP_API_URL``) — an HTTP N+1;
``/report``: builds a large JSON document in the request thread — a CPU-bound request;
``/wait``: sleeps — long but not CPU-bound. Lines marked ``# marker: NAME`` are looked up by the tests.
"""

from __future__ import annotations

import json
import os
import time

import requests
from flask import Flask, jsonify

API = os.environ.get("APP_API_URL", "http://127.0.0.1:9")
app = Flask(__name__)


@app.get("/ping")
def ping():  # type: ignore[no-untyped-def]
    return "ok"


@app.get("/users")
def users():  # type: ignore[no-untyped-def]
    team = requests.get(f"{API}/teams/7", timeout=10).json()  # one call to another route
    found = []
    for user_id in team["members"]:
        found.append(requests.get(f"{API}/users/{user_id}", timeout=10).json())  # marker: http_n_plus_one
    return jsonify(users=found)


def build_document(cpu_s: float) -> int:
    """JSON building in the request thread, until this thread has used ``cpu_s`` of CPU time."""
    size = 0
    start = time.thread_time()
    while time.thread_time() - start < cpu_s:
        size += len(json.dumps([{"id": i, "tags": list(range(i % 7))} for i in range(2000)]))  # marker: cpu_hot
    return size


@app.get("/report")
def report():  # type: ignore[no-untyped-def]
    return jsonify(size=build_document(float(os.environ.get("APP_CPU_S", "0.4"))))


@app.get("/wait")
def wait():  # type: ignore[no-untyped-def]
    time.sleep(0.4)
    return "waited"
