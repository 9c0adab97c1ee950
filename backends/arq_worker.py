"""arq's worker side: the job function and the ``WorkerSettings`` its CLI loads.

Run as ``python -m arq backends.arq_worker.WorkerSettings`` (arq's own CLI) with the settings in
``QUEUEBENCH_SETTINGS`` and, per command, the queue in ``QUEUEBENCH_ARQ_QUEUE`` and max_jobs in
``QUEUEBENCH_ARQ_MAX_JOBS`` (see `backends.arq_backend.ArqBackend.worker_commands`). This module imports
arq: it is only ever imported in arq's own environment, by the worker processes.
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from arq.worker import Retry

from backends import workload
from backends.arq_backend import (
    FUNCTION,
    MAX_JOBS_ENV,
    QUEUE_ENV,
    ArqBackend,
)
from backends.base import DEFAULT_QUEUE, BackendSettings

#: ``ctx`` key of the thread pool the synchronous task body runs in.
EXECUTOR = "executor"


async def run(ctx: dict[str, Any], task: str, args: dict[str, Any], meta: dict[str, Any]) -> Any:
    """The one arq job function: the shared body in the worker's thread pool, with arq's try number.

    The body is synchronous (it sleeps or burns CPU); run on the event loop it would stall arq's polling,
    its timeouts and every other job of the process. ``ctx["job_try"]`` counts every start of this job
    (retries and re-runs after a killed worker alike), so it is the attempt the ledger records. `flaky`
    and `poison` ask arq to run them again at once (``Retry(defer=0)``) while they have retries left
    (`poison`: every try up to ``max_tries``, `ArqBackend.retry_policy`); any other failure fails the job.
    """
    attempt = int(ctx["job_try"])
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(ctx[EXECUTOR], workload.execute, task, args, meta, attempt)
    except workload.RETRIED_ERRORS as exc:
        if attempt <= workload.max_retries_for(task, args, poison_retries=_backend.retry_policy().max_retries):
            raise Retry(defer=0) from exc
        raise


# `run` must be named as the producer names it.
assert run.__qualname__ == FUNCTION


def _settings() -> tuple[ArqBackend, str, int]:
    backend = ArqBackend(BackendSettings.from_env())
    queue = os.environ.get(QUEUE_ENV, DEFAULT_QUEUE)
    max_jobs = int(os.environ.get(MAX_JOBS_ENV, "10"))  # 10: arq's own default
    return backend, queue, max_jobs


_backend, _queue, _max_jobs = _settings()


async def on_startup(ctx: dict[str, Any]) -> None:
    ctx[EXECUTOR] = ThreadPoolExecutor(max_workers=_max_jobs, thread_name_prefix="arq-job")


async def on_shutdown(ctx: dict[str, Any]) -> None:
    # A body already running in a thread cannot be interrupted: the interpreter joins it at exit.
    ctx[EXECUTOR].shutdown(wait=False, cancel_futures=True)


class WorkerSettings:
    """What ``arq`` reads (class attributes named as `arq.worker.Worker`'s keyword arguments)."""

    functions = [run]
    on_startup = on_startup
    on_shutdown = on_shutdown
    redis_settings: Any = None  # set below


def _configure() -> None:
    from arq.connections import RedisSettings

    WorkerSettings.redis_settings = RedisSettings.from_dsn(_backend.settings.broker_url)
    for key, value in _backend.worker_settings(_queue, _max_jobs).items():
        setattr(WorkerSettings, key, value)


_configure()

#: ``--custom-log-dict`` target when the ``logging_level`` knob is set: arq's own format at that level.
LOG_CONFIG: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"arq.standard": {"level": _backend.logging_level or "INFO", "class": "logging.StreamHandler",
                                  "formatter": "arq.standard"}},
    "formatters": {"arq.standard": {"format": "%(asctime)s: %(message)s", "datefmt": "%H:%M:%S"}},
    "loggers": {"arq": {"handlers": ["arq.standard"], "level": _backend.logging_level or "INFO"}},
}
