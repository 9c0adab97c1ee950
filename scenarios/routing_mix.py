"""routing_mix: mostly short tasks with a few long ones, so routing to dedicated queues matters.

The mix is `--qb-mix`, a JSON list of [weight, task, args]; by default 90 % `sleep_ms` 10 ms and 10 %
`sleep_ms` 1000 ms. Run it against `--routing shared` and `--routing dedicated` and compare the short
tasks' latency.

    locust -f scenarios/routing_mix.py --host http://127.0.0.1:PORT --headless -u 1 -t 30s --qb-rate 20
"""

import json

from openloop import OpenLoopUser

DEFAULT_MIX = [[90, "sleep_ms", {"ms": 10}], [10, "sleep_ms", {"ms": 1000}]]


class RoutingMixUser(OpenLoopUser):
    def on_start(self) -> None:
        super().on_start()
        mix = json.loads(self.environment.parsed_options.qb_mix or "null") or DEFAULT_MIX
        self.weights = [float(weight) for weight, _, _ in mix]
        self.choices = [(task, dict(args)) for _, task, args in mix]

    def choose(self):
        return self.random.choices(self.choices, weights=self.weights)[0]
