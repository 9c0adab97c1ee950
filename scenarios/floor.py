"""floor: plain Locust against `benchmarks/floor_app.py`, the bare floor `queuebench overhead` compares with.

A closed loop, as Locust's quickstart writes it: each user posts as soon as its last answer came. Nothing
of queuebench's own generator (no schedule, no raw log, no request ids), so what it carries is what
Flask + gunicorn + one Redis call + Locust carry on this machine.

    locust -f scenarios/floor.py --host http://127.0.0.1:PORT --headless -u 20 -r 20 -t 10s
"""

from locust import FastHttpUser, task


class FloorUser(FastHttpUser):
    @task
    def post(self) -> None:
        self.client.post("/tasks", json={"task": "noop"}, name="POST /tasks")
