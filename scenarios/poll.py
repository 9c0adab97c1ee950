"""poll: the tutorial's client. Enqueue, then poll `GET /tasks/<id>` until the task is done.

Arrivals stay open loop; each task's end-to-end time (from its scheduled time to the poll that saw it
finished) is reported to Locust as request type `TASK`, name `end to end`, failed when the task failed.
Polls are grouped under `GET /tasks/[id]`. Needs results on.

    locust -f scenarios/poll.py --host http://127.0.0.1:PORT --headless -u 1 -t 30s \
        --qb-rate 10 --qb-task sleep_ms --qb-args '{"ms": 100}'
"""

import time

import gevent
from locust import events

from openloop import OpenLoopUser

POLL_TIMEOUT_S = 60.0


class PollUser(OpenLoopUser):
    def send(self, scheduled_ns, task_name, args):
        task_id = super().send(scheduled_ns, task_name, args)
        if task_id is None:
            return None
        interval_s = self.environment.parsed_options.qb_poll_interval_ms / 1000
        deadline = time.monotonic() + POLL_TIMEOUT_S
        outcome = "timeout"
        while time.monotonic() < deadline:
            gevent.sleep(interval_s)
            with self.client.get(f"/tasks/{task_id}", name="GET /tasks/[id]", catch_response=True) as response:
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}")
                    continue
                status = response.json().get("status")
            if status in ("success", "failure"):
                outcome = status
                break
        elapsed_ms = (time.time_ns() - scheduled_ns) / 1e6
        events.request.fire(request_type="TASK", name="end to end", response_time=elapsed_ms, response_length=0,
                            exception=None if outcome == "success" else RuntimeError(f"task {outcome}"),
                            context={}, response=None, url=None, start_time=scheduled_ns / 1e9)
        return task_id
