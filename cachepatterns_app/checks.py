"""
System checks for the ``CACHEPATTERNS`` settings and the models using the app.

Errors (``cachepatterns.E0xx``) stop ``manage.py`` commands: the configuration
cannot work. Warnings (``cachepatterns.W0xx``) point at something that works but
will surprise you in production. Every message has a hint saying what to change.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning
from django.core.exceptions import FieldDoesNotExist
from redis.exceptions import RedisError

from cachepatterns_app.conf import DEFAULTS, NESTED, get_settings, user_settings

__all__ = ["ALL"]

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

    ttl = values["DEFAULT_TTL"]
    if ttl is not None and not _positive(ttl):
        bad("DEFAULT_TTL", f"is {ttl!r}.", "Use a positive number of seconds, or None for no expiry.", "E005")
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
    for key in ("FLUSH_INTERVAL", "BATCH_SIZE", "MAX_RETRIES", "MAX_PENDING"):
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
    if not backend.startswith("django_redis."):
        return [
            Error(
                f"Cache {alias!r} uses {backend!r}, not django-redis.",
                hint="Set its BACKEND to 'django_redis.cache.RedisCache' (cachepatterns needs "
                "Lua scripts and the raw Redis client).",
                id="cachepatterns.E004",
            )
        ]
    messages: list[CheckMessage] = []
    options = config.get("OPTIONS", {})
    if not options.get("SOCKET_TIMEOUT") or not options.get("SOCKET_CONNECT_TIMEOUT"):
        messages.append(
            Warning(
                f"Cache {alias!r} has no SOCKET_TIMEOUT/SOCKET_CONNECT_TIMEOUT.",
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
        _ping(get_store().client)
    except (CachePatternsError, RedisError) as e:
        return [
            Warning(
                f"Redis is not reachable: {e}",
                hint="Reads fall back to the database until it is (DEGRADE_ON_FAILURE). Check "
                "the cache's LOCATION and that the server is running.",
                id="cachepatterns.W001",
            )
        ]
    return []


def _ping(client: Any) -> None:
    """
    PING over a connection of its own with a one-second timeout: checks run before
    every management command, which must not hang on a dead Redis, and must not open
    the circuit breaker of the process either.
    """
    pool = client.connection_pool
    connection = pool.connection_class(
        **{**pool.connection_kwargs, "socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    )
    try:
        connection.send_command("PING")
        connection.read_response()
    finally:
        connection.disconnect()


def check_models(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check models that use the app's managers or are named in ``depends_on``."""
    from django.db import models
    from django.db.models.manager import BaseManager

    from cachepatterns_app.managers import CacheAsideManager, InvalidatingQuerySet
    from cachepatterns_app.patterns.write_through import WriteThroughRowCache
    from cachepatterns_app.registry import row_caches

    out: list[CheckMessage] = []
    for model, cache in row_caches().items():
        if isinstance(cache, WriteThroughRowCache):
            name = cache.version_name
            try:
                field = model._meta.get_field(name)
            except FieldDoesNotExist:
                field = None
            if not isinstance(field, models.IntegerField):
                out.append(
                    Error(
                        f"{model._meta.label} uses WriteThroughManager(version_field={name!r}) but "
                        f"has no integer field {name!r}.",
                        hint=f"Add `{name} = models.PositiveBigIntegerField(default=0, editable=False)` "
                        "and make a migration; every write path increments it to order "
                        "concurrent writers.",
                        obj=model,
                        id="cachepatterns.E010",
                    )
                )
    for model in row_caches():
        manager = model._default_manager
        if (
            isinstance(manager, CacheAsideManager)
            and type(manager).get_queryset is not BaseManager.get_queryset
        ):
            out.append(
                Warning(
                    f"{model._meta.label}'s manager {type(manager).__name__} overrides get_queryset(), "
                    "so its get() is not served from the cache.",
                    hint="A filtered base queryset could hide rows the cache would return, so the "
                    "cache stays out of the way. Keep the cached manager unfiltered and put the "
                    "filter on a second manager (or a queryset method).",
                    obj=model,
                    id="cachepatterns.W006",
                )
            )
    for model in sorted(_writers_that_must_report(), key=lambda m: m._meta.label):
        manager = model._default_manager
        if not isinstance(manager.get_queryset(), InvalidatingQuerySet):
            out.append(
                Warning(
                    f"{model._meta.label}'s rows are cached or depended on (by itself, a proxy, a "
                    f"multi-table child or a many-to-many relation), but its default manager "
                    f"{type(manager).__name__} does not report bulk writes.",
                    hint="QuerySet.update(), bulk_create() and bulk_update() through it will not "
                    "invalidate the cache. Make the default manager a CacheAsideManager, "
                    "WriteThroughManager or InvalidatingManager.",
                    obj=model,
                    id="cachepatterns.W004",
                )
            )
        base = model._base_manager
        if base is not manager and not isinstance(base.get_queryset(), InvalidatingQuerySet):
            out.append(
                Warning(
                    f"{model._meta.label}'s base manager {type(base).__name__} "
                    f"({model._meta.base_manager_name or 'Django default'}) does not report bulk writes.",
                    hint="Related managers write through the base manager (author.posts.add(post) "
                    "updates the posts through it), so those writes will not invalidate the cache. "
                    "Point Meta.base_manager_name at the app's manager, or leave it unset.",
                    obj=model,
                    id="cachepatterns.W007",
                )
            )
    return out


def _writers_that_must_report() -> set[Any]:
    """Every model class whose bulk writes change rows a cache holds or depends on."""
    from cachepatterns_app.registry import watched_models
    from cachepatterns_app.signals import link_models

    tables: set[Any] = set()
    registries: set[Any] = set()
    for model in watched_models():
        if model._meta.abstract:
            continue
        concrete = model._meta.concrete_model or model
        # A multi-table parent's writes change its cached children's rows.
        tables.update({concrete, *concrete._meta.get_parent_list()})
        registries.add(model._meta.apps)
    out = {m for apps in registries for m in apps.get_models() if (m._meta.concrete_model or m) in tables}
    out.update(m for m in link_models() if not m._meta.auto_created)
    return out


def check_isolation(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn where fills inside transactions are skipped because reads use a snapshot."""
    from django.db import connections

    out: list[CheckMessage] = []
    for alias in connections:
        config = connections.settings[alias]
        engine = config.get("ENGINE", "")
        level = str(config.get("OPTIONS", {}).get("isolation_level", "read committed")).lower()
        if "mysql" in engine and level not in ("read committed", "read uncommitted"):
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


ALL: list[Callable[..., list[CheckMessage]]] = [
    check_settings,
    check_cache,
    check_redis_reachable,
    check_models,
    check_isolation,
]
