"""One Redis broker URL names a single server, a master watched by Redis Sentinel, or a Redis Cluster.

The forms (the password, when given, is the Redis server's; the Sentinels are asked without one unless
``sentinel_password`` is given as a query parameter):

- ``redis://[[user]:password@]host:port/db`` (and ``rediss://``): one server.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/master_name[/db]``: the Sentinels at
  each ``host:port`` (26379 when no port is given) watch the master group ``master_name``; every
  connection asks them for the current master first, so a failover is followed. ``db`` defaults to 0.
- ``redis+cluster://host:port[,host:port...]``: a Redis Cluster. No library here can queue on one (each
  library's backend names its issue), so the harness refuses it before anything starts; a ``redis://``
  URL whose server turns out to run in cluster mode is refused the same way.

`parse` reads a URL into a `RedisTarget`; `client` opens a redis-py client on it (through
`redis.sentinel.Sentinel.master_for` for a Sentinel URL), so every part of the harness and every backend
reaches the same master the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.sentinel

Topology = Literal["single", "sentinel", "cluster"]
TOPOLOGIES: tuple[str, ...] = ("single", "sentinel", "cluster")

SENTINEL_SCHEME = "redis+sentinel"
CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
DEFAULT_SENTINEL_PORT = 26379


class RedisURLError(ValueError):
    """A Redis URL that does not say which server, master or cluster it means; the message says why."""


@dataclass(frozen=True)
class RedisTarget:
    """What a Redis URL names: its topology and, for Sentinel, where the Sentinels are and which master."""

    topology: Topology
    url: str = field(repr=False)
    #: Sentinel and Cluster: the ``(host, port)`` of each node named in the URL.
    nodes: tuple[tuple[str, int], ...] = ()
    master_name: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)


def topology(url: str) -> Topology:
    """The topology a URL names, read from its scheme alone (no connection)."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == SENTINEL_SCHEME:
        return "sentinel"
    if scheme in CLUSTER_SCHEMES:
        return "cluster"
    return "single"


def _nodes(netloc: str, default_port: int, url: str) -> tuple[tuple[str, int], ...]:
    hosts = netloc.rpartition("@")[2]
    nodes = []
    for item in filter(None, hosts.split(",")):
        host, sep, port = item.rpartition(":")
        if not sep:
            host, port = item, str(default_port)
        host = host.strip("[]")
        if not host or not port.isdigit():
            raise RedisURLError(f"{redact(url)}: {item!r} is not host:port")
        nodes.append((host, int(port)))
    if not nodes:
        raise RedisURLError(f"{redact(url)}: names no host:port")
    return tuple(nodes)


def parse(url: str) -> RedisTarget:
    """Read `url` (see the module docstring for the forms); raise `RedisURLError` saying what is wrong."""
    kind = topology(url)
    if kind == "single":
        return RedisTarget("single", url)
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    query = parse_qs(parts.query)
    if kind == "cluster":
        return RedisTarget("cluster", url, nodes=_nodes(parts.netloc, 6379, url))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path:
        raise RedisURLError(f"{redact(url)}: a Sentinel URL names its master group after the hosts: "
                            "redis+sentinel://host:26379/mymaster/0")
    if len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
        raise RedisURLError(f"{redact(url)}: the path must be /master_name or /master_name/db (db a number)")
    return RedisTarget("sentinel", url, nodes=_nodes(parts.netloc, DEFAULT_SENTINEL_PORT, url),
                       master_name=path[0], db=int(path[1]) if len(path) == 2 else 0,
                       username=unquote(username) or None, password=unquote(password) or None,
                       sentinel_password=(query.get("sentinel_password") or [None])[0])


def sentinel(target: RedisTarget, **kwargs: Any) -> redis.sentinel.Sentinel:
    """redis-py's `Sentinel` over the target's Sentinels; `kwargs` go to the master's connections."""
    timeouts = {k: kwargs[k] for k in ("socket_timeout", "socket_connect_timeout") if k in kwargs}
    sentinel_kwargs = dict(timeouts)
    if target.sentinel_password:
        sentinel_kwargs["password"] = target.sentinel_password
    return redis.sentinel.Sentinel(list(target.nodes), sentinel_kwargs=sentinel_kwargs, **kwargs)


def master_kwargs(target: RedisTarget) -> dict[str, Any]:
    """The master connection's db and credentials (what ``master_for`` is given besides the group name)."""
    return {"db": target.db, "username": target.username, "password": target.password}


def client(url: str, **kwargs: Any) -> redis.Redis:
    """A redis-py client on what `url` names: ``Redis.from_url`` for one server, the current master
    through ``Sentinel.master_for`` for a Sentinel URL. `kwargs` are connection options (timeouts).
    A Cluster URL raises `RedisURLError`: nothing here may queue on one."""
    target = parse(url)
    if target.topology == "single":
        return redis.Redis.from_url(url, **kwargs)
    if target.topology == "cluster":
        raise RedisURLError(f"{redact(url)} names a Redis Cluster, which no backend here can queue on")
    return sentinel(target, **kwargs).master_for(target.master_name, **master_kwargs(target))


def master_address(url: str, timeout_s: float = 2.0) -> tuple[str, int] | None:
    """The (host, port) of the master a Sentinel URL names right now; None for a single-server URL."""
    target = parse(url)
    if target.topology != "sentinel":
        return None
    found = sentinel(target, socket_timeout=timeout_s, socket_connect_timeout=timeout_s).discover_master(
        target.master_name)
    return str(found[0]), int(found[1])


def kombu_url(url: str) -> tuple[str, Mapping[str, Any]]:
    """The URL and transport options kombu's Sentinel transport (and Celery's Sentinel result backend) take
    for a Sentinel URL: ``sentinel://[:password@]host:port/db;sentinel://...`` and ``{"master_name": ...}``
    (plus ``sentinel_kwargs`` when the Sentinels have a password); a single-server URL unchanged."""
    target = parse(url)
    if target.topology != "sentinel":
        return url, {}
    auth = ""
    if target.password:
        auth = f"{target.username or ''}:{target.password}@"
    urls = ";".join(f"sentinel://{auth}{host}:{port}/{target.db}" for host, port in target.nodes)
    options: dict[str, Any] = {"master_name": target.master_name}
    if target.sentinel_password:
        options["sentinel_kwargs"] = {"password": target.sentinel_password}
    return urls, options


def redact(url: str) -> str:
    """The URL with any password (the server's or the Sentinels') replaced by ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hosts = netloc.rpartition("@")
        user, sep, _password = userinfo.partition(":")
        netloc = f"{user}{':***' if sep else ''}@{hosts}"
    query = parts.query
    if "sentinel_password=" in query:
        query = "&".join("sentinel_password=***" if q.startswith("sentinel_password=") else q
                         for q in query.split("&"))
    return parts._replace(netloc=netloc, query=query).geturl()
