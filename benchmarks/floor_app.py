"""The bare floor: the smallest Flask app that does what the harness's API does per request, one Redis call.

``POST /tasks`` answers 202 after one ``INCR`` on the Redis named by ``FLOOR_REDIS_URL``; nothing is
validated, no ledger row is written, no id is issued. `queuebench overhead` serves it with the API's own
gunicorn settings (`api.wsgi.gunicorn_argv`: gthread, 2 workers x 4 threads, loopback) on a private
redis-server it starts, and drives it with plain Locust (``scenarios/floor.py``: `FastHttpUser`, closed
loop), so the ratio harness path / floor says what the harness's own code costs beyond Flask, gunicorn
and Locust on the same machine at the same moment.

    FLOOR_REDIS_URL=redis://127.0.0.1:PORT/0 gunicorn -k gthread -w 2 --threads 4 -b 127.0.0.1:8000 \
        benchmarks.floor_app:app
"""

from __future__ import annotations

import os

import redis
from flask import Flask

REDIS_URL_ENV = "FLOOR_REDIS_URL"
#: The key the floor increments (on the private redis-server `queuebench overhead` starts for it).
COUNTER_KEY = "queuebench:floor:requests"

app = Flask(__name__)
_client = redis.Redis.from_url(os.environ.get(REDIS_URL_ENV, "redis://127.0.0.1:1/0"))


@app.post("/tasks")
def post_task() -> tuple[dict[str, int], int]:
    return {"n": _client.incr(COUNTER_KEY)}, 202


@app.get("/healthz")
def healthz() -> dict[str, str]:
    _client.ping()
    return {"status": "ok"}
