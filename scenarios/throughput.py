"""throughput: fire-and-forget `noop` tasks at the offered rate (`--qb-rate`): pure queue overhead.

    locust -f scenarios/throughput.py --host http://127.0.0.1:PORT --headless -u 1 -t 30s --qb-rate 200
"""

from openloop import OpenLoopUser


class ThroughputUser(OpenLoopUser):
    def on_start(self) -> None:
        super().on_start()
        if self.environment.parsed_options.qb_task == "noop":
            self.task_name, self.task_args = "noop", {}
