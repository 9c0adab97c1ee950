"""payload: `echo` tasks whose payload (made by the API, carried in the message) has several sizes.

Sizes come from `--qb-sizes` (bytes, comma-separated), sent in equal shares in turn, so each serializer
is measured on small and large messages in the same run.

    locust -f scenarios/payload.py --host http://127.0.0.1:PORT --headless -u 1 -t 30s \
        --qb-rate 20 --qb-sizes 100,10000,100000
"""

import itertools

from openloop import OpenLoopUser


class PayloadUser(OpenLoopUser):
    def on_start(self) -> None:
        super().on_start()
        sizes = [int(s) for s in self.environment.parsed_options.qb_sizes.split(",") if s.strip()]
        self.sizes = itertools.cycle(sizes)

    def choose(self):
        return "echo", {"size": next(self.sizes)}
