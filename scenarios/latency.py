"""latency: one timed task (`sleep_ms` or `cpu_ms`, `--qb-task`/`--qb-args`) at a fixed offered rate.

    locust -f scenarios/latency.py --host http://127.0.0.1:PORT --headless -u 1 -t 30s \
        --qb-rate 20 --qb-task sleep_ms --qb-args '{"ms": 50}'
"""

from openloop import OpenLoopUser


class LatencyUser(OpenLoopUser):
    pass
