"""RQ's config module (``rq worker-pool -c backends.rq_sentinel``) when the broker URL names Redis Sentinel.

RQ's CLI has no Sentinel flag: without ``-u`` it reads the upper-case names of its config module, and a
``SENTINEL`` dict there makes it connect through ``redis.sentinel.Sentinel(...).master_for(MASTER_NAME)``
(rq/cli/helpers.py, ``get_redis_from_config``). This module builds that dict from the configuration's
``redis+sentinel://`` URL (``QUEUEBENCH_SETTINGS``, `backends.redis_url`) and imports the task code first,
as ``-c backends.rq_backend`` does on a single server (the pool preloads it before forking).
"""

from __future__ import annotations

from backends import redis_url
from backends import rq_backend as _preload  # noqa: F401  (the task code, imported once before the fork)
from backends.base import BackendSettings

_target = redis_url.parse(BackendSettings.from_env().broker_url)
if _target.topology != "sentinel":
    raise SystemExit(f"backends.rq_sentinel needs a redis+sentinel:// broker URL, got "
                     f"{redis_url.redact(_target.url)}")

#: RQ's Sentinel setting (rq/cli/helpers.py reads INSTANCES, MASTER_NAME, DB, USERNAME, PASSWORD,
#: SENTINEL_KWARGS).
SENTINEL = {
    "INSTANCES": list(_target.nodes),
    "MASTER_NAME": _target.master_name,
    "DB": _target.db,
    "USERNAME": _target.username,
    "PASSWORD": _target.password,
    "SENTINEL_KWARGS": {"password": _target.sentinel_password} if _target.sentinel_password else {},
}
