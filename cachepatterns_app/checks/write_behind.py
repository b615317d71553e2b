"""
Checks of write-behind: models that cannot be queued, and a Redis that could lose
queued writes (they are the only copy until the flush).
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning
from redis.exceptions import RedisError

__all__ = ["check_write_behind_model", "check_write_behind_models", "check_write_behind_redis"]


def check_write_behind_models(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check the models that use WriteBehindManager or derive from WriteBehindModel."""
    from django.apps import apps

    out: list[CheckMessage] = []
    for model in apps.get_models():
        out += check_write_behind_model(model)
    return out


def check_write_behind_model(model: Any) -> list[CheckMessage]:
    """Return what is wrong with ``model`` as a write-behind model (nothing if it is not one)."""
    from django.db import models

    from cachepatterns_app.models import WriteBehindModel
    from cachepatterns_app.patterns.write_behind.model import cache_of
    from cachepatterns_app.patterns.write_behind.state import computed_columns

    out: list[CheckMessage] = []
    cache = cache_of(model)
    is_base = issubclass(model, WriteBehindModel)
    if model._meta.proxy or (cache is None and not is_base):
        return out
    label = model._meta.label
    if cache is None:
        out.append(
            Error(
                f"{label} derives from WriteBehindModel but has no WriteBehindManager.",
                hint="Declare `objects = WriteBehindManager()` as its default manager.",
                obj=model,
                id="cachepatterns.E012",
            )
        )
        return out
    if not is_base:
        out.append(
            Error(
                f"{label} uses WriteBehindManager but does not derive from WriteBehindModel.",
                hint="Derive it from cachepatterns_app.models.WriteBehindModel (it adds the wb_seq "
                "column that orders writes, and the queued save()/delete()); make a migration.",
                obj=model,
                id="cachepatterns.E012",
            )
        )
    computed = computed_columns(model)
    if computed:
        out.append(
            Error(
                f"{label} has columns the database computes ({', '.join(computed)}): a queued "
                "write cannot know their values.",
                hint="Compute them in Python (a default= instead of db_default=), or use a "
                "WriteThroughManager for this model.",
                obj=model,
                id="cachepatterns.E013",
            )
        )
    pk = model._meta.pk
    if isinstance(pk, models.AutoField) and not cache.sync_creates:
        out.append(
            Error(
                f"{label}'s primary key is assigned by the database ({type(pk).__name__}), so a "
                "row cannot be created write-behind.",
                hint="Give it a primary key known before the insert (a UUIDField with "
                "default=uuid.uuid4, or a natural key), or declare "
                "WriteBehindManager(sync_creates=True) to create rows synchronously and "
                "queue their later saves.",
                obj=model,
                id="cachepatterns.E014",
            )
        )
    loose = _loosely_compared(model, pk)
    if loose:
        out.append(
            Error(
                f"{label}'s primary key {pk.name!r} is text that database {loose[0]!r} "
                "compare loosely (the collation ignores case, accents or trailing spaces): two "
                "spellings of one key would queue two rows in Redis for the one row in the "
                "database, and the flush would fail on the second.",
                hint="Give the key an exact collation (MariaDB: db_collation='utf8mb4_nopad_bin', "
                "MySQL 8: 'utf8mb4_0900_bin'; PostgreSQL's and SQLite's defaults are exact), or "
                "use a UUID or integer key; make a migration.",
                obj=model,
                id="cachepatterns.E017",
            )
        )
    return out


def _loosely_compared(model: Any, pk: Any) -> list[str]:
    """Return the database (the router's for writes) on which text key ``pk`` is compared loosely."""
    from django.db import connections, router

    from cachepatterns_app.identity import collation_is_exact, value_field

    # The database the queued writes go to (WriteBehindRowCache.db_for): a collation
    # valid there may not exist on the project's other databases.
    alias = router.db_for_write(model)
    field = value_field(pk)
    if not _text_column(field, connections[alias]):
        return []  # an integer, a UUID, a date…: compared exactly
    # By the column's collation, whatever the field's class: a project's own text field
    # under a loose collation splits rows too, and one with an exact collation does not.
    return (
        [] if collation_is_exact(getattr(field, "db_collation", None), connections[alias].vendor) else [alias]
    )


_TEXT_TYPES = (
    "char",
    "varchar",
    "text",
    "tinytext",
    "mediumtext",
    "longtext",
    "character",
    "nchar",
    "nvarchar",
    "citext",
    "clob",
)


def _text_column(field: Any, connection: Any) -> bool:
    """Whether ``field``'s column holds text (by its SQL type, so a project's own field counts)."""
    from django.db import models

    if isinstance(field, models.CharField | models.TextField):
        return True
    db_type = (field.db_type(connection) or "").lower()
    return db_type.split("(")[0].strip().split(" ")[0] in _TEXT_TYPES


def check_write_behind_redis(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check that Redis keeps what the queue holds: no eviction of any key, and persistence."""
    from cachepatterns_app.exceptions import CachePatternsError
    from cachepatterns_app.patterns.write_behind.operations import caches
    from cachepatterns_app.store import get_store

    if not caches():
        return []
    try:
        client = get_store().client
        # A cluster: every primary holds some queues, so the worst node decides.
        nodes = (
            [n.redis_connection for n in client.get_primaries()]
            if hasattr(client, "get_primaries")
            else [client]
        )
        policies = [_config(node, "maxmemory-policy") for node in nodes]
        policy = next((p for p in policies if p and p.startswith("allkeys-")), policies[0])
        infos = [node.info("persistence") for node in nodes]
        persistence = next((i for i in infos if not int(i.get("aof_enabled", 0))), infos[0])
    except (CachePatternsError, RedisError, OSError):
        return []  # W001 says Redis does not answer
    out: list[CheckMessage] = []
    if policy is not None and policy.startswith("allkeys-"):
        out.append(
            Error(
                f"Redis evicts any key under memory pressure (maxmemory-policy {policy}): it could "
                "evict a queued write-behind row, the only copy of an acknowledged write.",
                hint="Use a volatile-* policy (dirty rows have no TTL, so they are never evicted) "
                "or noeviction: CONFIG SET maxmemory-policy volatile-lru, and in redis.conf.",
                id="cachepatterns.E015",
            )
        )
    if not int(persistence.get("aof_enabled", 0)):
        out.append(
            Warning(
                "Redis has no append-only file: a Redis crash loses every write-behind write "
                "queued since its last snapshot (or all of them, with no snapshot).",
                hint="Enable AOF (appendonly yes, appendfsync everysec: at most about one second "
                "of acknowledged writes can be lost). The README's write-behind section lists "
                "what each persistence mode can lose.",
                id="cachepatterns.W010",
            )
        )
    return out


def _config(client: Any, name: str) -> str | None:
    try:
        reply = client.config_get(name)
    except RedisError:
        return None  # managed Redis often refuses CONFIG
    value = reply.get(name) if isinstance(reply, dict) else None
    return value.decode() if isinstance(value, bytes) else value
