"""The module ``celery -A backends.celery_worker worker`` imports: the worker's Celery app, as ``app``.

Built at import from the settings the harness put in the environment: ``QUEUEBENCH_SETTINGS``
(`BackendSettings.from_env`, shared with the API) and ``QUEUEBENCH_CELERY_WORKER`` (this worker's own
settings, e.g. ``{"acks_late": true}``), so the worker has the same broker, serializer, result backend,
knobs and task as the API that feeds it. See ``backends.celery_backend`` for the design.
"""

from __future__ import annotations

import json
import os

from backends.base import BackendSettings
from backends.celery_backend import WORKER_ENV, build_app

_worker = json.loads(os.environ.get(WORKER_ENV) or "{}")

app = build_app(BackendSettings.from_env(), acks_late=_worker.get("acks_late"))
