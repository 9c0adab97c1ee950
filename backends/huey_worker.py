"""The module ``huey_consumer backends.huey_worker.huey`` imports: the worker's Huey instance, as ``huey``.

Built at import from the settings the harness put in the environment: ``QUEUEBENCH_SETTINGS``
(`BackendSettings.from_env`, shared with the API) and ``QUEUEBENCH_HUEY_QUEUE`` (the one queue this
consumer reads: Huey has one queue per instance; default the routing's first queue), with the same
storage, serializer, result settings and registered task as the API that feeds it
(`backends.huey_backend.build_huey`). Huey opens its own Redis connection pool from the URL here, with
redis-py's defaults. See ``backends.huey_backend`` for the design.
"""

from __future__ import annotations

import os

from backends.base import BackendSettings
from backends.huey_backend import QUEUE_ENV, build_huey

settings = BackendSettings.from_env()
queue = os.environ.get(QUEUE_ENV) or settings.queues[0]
huey, queuebench_run = build_huey(settings, queue)
