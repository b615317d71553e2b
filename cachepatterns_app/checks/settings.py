"""
Checks of the configuration: the ``CACHEPATTERNS`` dict, the cache it names, whether
Redis answers, and the databases' isolation levels.
"""

from __future__ import annotations

import difflib
import math
import re
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from redis.exceptions import RedisError, ResponseError

from cachepatterns_app.conf import DEFAULTS, NESTED, get_settings, user_settings
from cachepatterns_app.validation import ttl_problem

__all__ = ["check_cache", "check_isolation", "check_redis_reachable", "check_settings"]

_PREFIX = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def check_settings(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Validate the shape and values of ``CACHEPATTERNS``."""
    raw = getattr(settings, "CACHEPATTERNS", {})
    if not isinstance(raw, dict):
        return [
            Error(
                "CACHEPATTERNS must be a dict.",
                hint="Set CACHEPATTERNS = {...} with the keys listed in the README's settings table.",
                id="cachepatterns.E001",
            )
        ]
    errors: list[CheckMessage] = []
    for key in raw:
        if key not in DEFAULTS:
            close = difflib.get_close_matches(str(key), DEFAULTS, n=1)
            errors.append(
                Error(
                    f"CACHEPATTERNS has an unknown key {key!r}.",
                    hint=(f"Did you mean {close[0]!r}? " if close else "")
                    + f"Known keys: {', '.join(DEFAULTS)}.",
                    id="cachepatterns.E002",
                )
            )
    for key in NESTED:
        value = raw.get(key, {})
        if not isinstance(value, dict):
            errors.append(
                Error(
                    f"CACHEPATTERNS[{key!r}] must be a dict.",
                    hint=f"Use a dict with keys {', '.join(DEFAULTS[key])}.",
                    id="cachepatterns.E008",
                )
            )
            continue
        for sub in value:
            if sub not in DEFAULTS[key]:
                errors.append(
                    Error(
                        f"CACHEPATTERNS[{key!r}] has an unknown key {sub!r}.",
                        hint=f"Known keys: {', '.join(DEFAULTS[key])}.",
                        id="cachepatterns.E008",
                    )
                )
    if errors:
        return errors
    values = get_settings().raw
    errors.extend(_check_values(values))
    return errors


def _check_values(values: dict[str, Any]) -> list[CheckMessage]:
    out: list[CheckMessage] = []

    def bad(key: str, message: str, hint: str, code: str = "E007") -> None:
        out.append(Error(f"CACHEPATTERNS[{key!r}] {message}", hint=hint, id=f"cachepatterns.{code}"))

    problem = ttl_problem(values["DEFAULT_TTL"])
    if problem is not None:
        bad("DEFAULT_TTL", f"{problem}.", "Use a positive number of seconds, or None for no expiry.", "E005")
    jitter = values["TTL_JITTER"]
    if not _number(jitter) or not 0 <= jitter < 1:
        bad("TTL_JITTER", f"is {jitter!r}.", "Use a fraction from 0 (no jitter) up to, not including, 1.")
    serializer = values["SERIALIZER"]
    from cachepatterns_app.serializers import SERIALIZERS

    if serializer not in SERIALIZERS:
        bad("SERIALIZER", f"is {serializer!r}.", f"Use one of {', '.join(sorted(SERIALIZERS))}.", "E006")
    elif serializer == "msgpack":
        try:
            import msgpack  # noqa: F401
        except ImportError:
            bad(
                "SERIALIZER",
                "is 'msgpack' but msgpack is not installed.",
                "pip install 'cachepatterns[msgpack]'.",
                "E006",
            )
    for key in ("MAX_VALUE_BYTES", "LOCK_TIMEOUT"):
        value = values[key]
        if not _positive(value):
            bad(key, f"is {value!r}.", "Use a positive number.")
    for key in ("DEGRADE_ON_FAILURE", "STATS"):
        if not isinstance(values[key], bool):
            bad(key, f"is {values[key]!r}.", "Use True or False.")
    prefix = values["KEY_PREFIX"]
    if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
        bad(
            "KEY_PREFIX",
            f"is {prefix!r}.",
            "Use 1-64 characters from letters, digits and _.:- (no braces: they would break "
            "Redis Cluster hash tags).",
        )
    deployment = values["DEPLOYMENT_ID"]
    if deployment is not None and (not isinstance(deployment, str) or not _PREFIX.fullmatch(deployment)):
        bad(
            "DEPLOYMENT_ID",
            f"is {deployment!r}.",
            "Use None (derived from each database's ENGINE/HOST/PORT/NAME) or 1-64 characters from "
            "letters, digits and _.:- naming this deployment (e.g. 'staging').",
        )
    breaker = values["CIRCUIT_BREAKER"]
    if (
        isinstance(breaker["THRESHOLD"], bool)
        or not isinstance(breaker["THRESHOLD"], int)
        or breaker["THRESHOLD"] < 1
    ):
        bad("CIRCUIT_BREAKER", "THRESHOLD must be an integer >= 1.", "For example {'THRESHOLD': 1}.", "E008")
    if not _positive(breaker["COOLDOWN"]):
        bad(
            "CIRCUIT_BREAKER",
            "COOLDOWN must be a positive number of seconds.",
            "For example {'COOLDOWN': 5}.",
            "E008",
        )
    wb = values["WRITE_BEHIND"]
    if wb["ON_CACHE_FAILURE"] not in ("sync", "raise"):
        bad(
            "WRITE_BEHIND",
            f"ON_CACHE_FAILURE is {wb['ON_CACHE_FAILURE']!r}.",
            "Use 'sync' or 'raise'.",
            "E008",
        )
    for key in ("FLUSH_INTERVAL", "BATCH_SIZE", "MAX_RETRIES", "MAX_PENDING", "RECLAIM_IDLE", "WARN_AFTER"):
        if not _positive(wb[key]):
            bad("WRITE_BEHIND", f"{key} is {wb[key]!r}.", "Use a positive number.", "E008")
    ra = values["REFRESH_AHEAD"]
    if not _number(ra["FACTOR"]) or not 0 < ra["FACTOR"] < 1:
        bad(
            "REFRESH_AHEAD",
            f"FACTOR is {ra['FACTOR']!r}.",
            "Use a fraction between 0 and 1, e.g. 0.2.",
            "E008",
        )
    if not _number(ra["XFETCH_BETA"]) or ra["XFETCH_BETA"] < 0:
        bad(
            "REFRESH_AHEAD",
            f"XFETCH_BETA is {ra['XFETCH_BETA']!r}.",
            "Use 0 (off) or a positive number.",
            "E008",
        )
    return out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _number(value) and value > 0


DJANGO_REDIS_CACHE = "django.core.cache.backends.redis.RedisCache"


def check_cache(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check that ``CACHE_ALIAS`` names a django-redis cache with socket timeouts."""
    if not isinstance(getattr(settings, "CACHEPATTERNS", {}), dict):
        return []
    alias = user_settings().get("CACHE_ALIAS", DEFAULTS["CACHE_ALIAS"])
    caches = getattr(settings, "CACHES", {})
    if alias not in caches:
        return [
            Error(
                f"CACHEPATTERNS['CACHE_ALIAS'] is {alias!r}, which is not in CACHES.",
                hint=f"Add a django-redis cache named {alias!r} to CACHES, or set CACHE_ALIAS to "
                f"one of: {', '.join(caches) or '(none defined)'}.",
                id="cachepatterns.E003",
            )
        ]
    config = caches[alias]
    backend = str(config.get("BACKEND", ""))
    django_own = backend == DJANGO_REDIS_CACHE
    if not backend.startswith("django_redis.") and not django_own:
        return [
            Error(
                f"Cache {alias!r} uses {backend!r}, not a Redis cache.",
                hint="Set its BACKEND to 'django_redis.cache.RedisCache' or Django's own "
                f"{DJANGO_REDIS_CACHE!r} (cachepatterns needs Lua scripts and the raw Redis client).",
                id="cachepatterns.E004",
            )
        ]
    messages: list[CheckMessage] = []
    options = config.get("OPTIONS", {})
    # django-redis spells them SOCKET_TIMEOUT; Django's RedisCache passes OPTIONS to
    # redis-py's pool as they are: socket_timeout.
    names = (
        ("socket_timeout", "socket_connect_timeout")
        if django_own
        else ("SOCKET_TIMEOUT", "SOCKET_CONNECT_TIMEOUT")
    )
    if not all(options.get(name) for name in names):
        messages.append(
            Warning(
                f"Cache {alias!r} has no {names[0]}/{names[1]}.",
                hint="Without them a hung Redis hangs every request that reads the cache; set "
                "both in OPTIONS (e.g. 0.5 seconds). The circuit breaker then limits the "
                "cost of an outage to one timeout per cooldown.",
                id="cachepatterns.W002",
            )
        )
    return messages


def check_redis_reachable(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn (without failing) when Redis does not answer at startup."""
    from cachepatterns_app.exceptions import CachePatternsError
    from cachepatterns_app.store import get_store

    if any(m.is_serious() for m in check_cache()):
        return []
    try:
        cluster_node = _ping(get_store().client)
    except (CachePatternsError, RedisError) as e:
        return [
            Warning(
                f"Redis is not reachable: {e}",
                hint="Reads fall back to the database until it is (DEGRADE_ON_FAILURE). Check "
                "the cache's LOCATION and that the server is running.",
                id="cachepatterns.W001",
            )
        ]
    if cluster_node:
        # A plain client gets MOVED for most keys: fills, invalidations and queued
        # writes would fail, and an invalidation that cannot reach its key is lost.
        return [
            Error(
                "The cache's Redis is a Redis Cluster node, but the cache's client is not a "
                "cluster client: most keys live on other nodes (MOVED).",
                hint="Use BACKEND 'django_redis.cache.RedisCache' with OPTIONS['CLIENT_CLASS'] = "
                "'cachepatterns_app.cluster.ClusterClient' (Django's own RedisCache has no "
                "cluster support); see docs/cluster.md.",
                id="cachepatterns.E016",
            )
        ]
    return []


def _ping(client: Any) -> bool:
    """
    PING over a connection of its own with a one-second timeout: checks run before
    every management command, which must not hang on a dead Redis, and must not open
    the circuit breaker of the process either. Return whether a plain (not cluster)
    client is talking to a cluster node.
    """
    if hasattr(client, "get_primaries"):
        # A cluster: every primary owns a share of the keys, so each must answer.
        for node in client.get_primaries():
            _ping(node.redis_connection)
        return False
    pool = client.connection_pool
    connection = pool.connection_class(
        **{**pool.connection_kwargs, "socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    )
    try:
        connection.send_command("PING")
        connection.read_response()
        connection.send_command("INFO", "cluster")
        try:
            info = connection.read_response()
        except ResponseError:
            return False  # INFO renamed or refused (managed Redis): cannot tell
        text = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
        return "cluster_enabled:1" in text
    finally:
        connection.disconnect()


def check_isolation(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn where fills inside transactions are skipped because reads use a snapshot."""
    from django.db import connections

    out: list[CheckMessage] = []
    for alias in connections:
        config = connections.settings[alias]
        engine = config.get("ENGINE", "")
        option = config.get("OPTIONS", {}).get("isolation_level")
        if "postgresql" in engine:
            level = _postgresql_level(option)
        elif "mysql" in engine:
            level = str(option or "read committed").lower()
        else:
            continue
        if level not in ("read committed", "read uncommitted"):
            out.append(
                Warning(
                    f"Database {alias!r} runs at isolation level {level!r}.",
                    hint="Rows read inside a transaction may come from an old snapshot, so "
                    "cachepatterns does not fill the cache from inside transactions on it. "
                    "Django's default, 'read committed', lets it.",
                    id="cachepatterns.W005",
                )
            )
    return out


def _postgresql_level(option: Any) -> str:
    """Return the level an ``isolation_level`` option of Django's PostgreSQL backend names."""
    if option is None:
        return "read committed"  # the server's default unless its configuration changed it
    try:
        from django.db.backends.postgresql.psycopg_any import IsolationLevel
    except ImportError:  # no driver here: the database cannot be used anyway
        return "read committed"
    try:
        # By name: psycopg2 and psycopg 3 number the levels differently.
        return IsolationLevel(option).name.replace("_", " ").lower()
    except ValueError:
        return str(option).lower()
