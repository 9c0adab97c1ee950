"""The module dramatiq's CLI imports in each worker process: ``dramatiq backends.dramatiq_worker ...``.

At import it reads this configuration from ``QUEUEBENCH_SETTINGS`` (`BackendSettings.from_env`), builds
the same broker, encoder and middleware as the producer (`backends.dramatiq_backend.build_broker`), makes
it dramatiq's global broker (the CLI takes the global broker of a module named without ``:broker``),
declares this routing's queues, and declares the one actor, ``queuebench_run``, which runs the shared
task body with dramatiq's own attempt number.
"""

from __future__ import annotations

from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from backends import workload
from backends.base import BackendSettings
from backends.dramatiq_backend import ACTOR_NAME, actor_options, build_broker

settings = BackendSettings.from_env()
broker, result_backend = build_broker(settings, producer=False)
dramatiq.set_broker(broker)


def run(task: str, args: dict[str, Any], meta: dict[str, Any]) -> Any:
    """Run `task` through the shared body. Attempt = dramatiq's ``retries`` count (set by its Retries
    middleware on each failed attempt) + 1."""
    message = CurrentMessage.get_current_message()
    attempt = int(message.options.get("retries", 0)) + 1 if message is not None else 1
    return workload.execute(task, args, meta, attempt)


queuebench_run = dramatiq.actor(run, actor_name=ACTOR_NAME, queue_name=settings.queues[0], broker=broker,
                                **actor_options(settings))
