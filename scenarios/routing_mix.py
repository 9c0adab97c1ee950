"""routing_mix: mostly short tasks with a few long ones, so routing to dedicated queues matters.

The mix is `--qb-mix`, a JSON list of [weight, task, args]; by default 90 % `sleep_ms` 10 ms and 10 %
`sleep_ms` 1000 ms. Run it against `--routing shared` and `--routing dedicated` and compare the short
tasks' latency.

The mix is deterministic in its shares, not random: arrivals take the kinds in a smooth weighted
round robin (each kind's credit grows by its weight per arrival; the kind with the most credit goes and
pays the total), so with 90/10 exactly every tenth arrival is long, spread evenly. A cell therefore has
a known number of long tasks (rate x window / 10), instead of the handful a random draw may give.

    locust -f scenarios/routing_mix.py --host http://127.0.0.1:PORT --headless -u 1 -t 30s --qb-rate 20
"""

import json

from mix import smooth_weighted_order
from openloop import OpenLoopUser

DEFAULT_MIX = [[90, "sleep_ms", {"ms": 10}], [10, "sleep_ms", {"ms": 1000}]]


class RoutingMixUser(OpenLoopUser):
    def on_start(self) -> None:
        super().on_start()
        mix = json.loads(self.environment.parsed_options.qb_mix or "null") or DEFAULT_MIX
        self.choices = [(task, dict(args)) for _, task, args in mix]
        self.order = smooth_weighted_order([float(weight) for weight, _, _ in mix])

    def choose(self):
        return self.choices[next(self.order)]
