"""
Checks of what is declared in code: models using the app's managers or named in
``depends_on``, and the decorated functions.
"""

from __future__ import annotations

from typing import Any

from django.core.checks import CheckMessage, Error, Warning
from django.core.exceptions import FieldDoesNotExist

from cachepatterns_app.validation import ttl_problem

__all__ = ["check_functions", "check_models"]

_VERSION_FIELD = "models.PositiveBigIntegerField(default=0, editable=False)"


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
            if field is None:
                out.append(
                    Error(
                        f"{model._meta.label} uses WriteThroughManager(version_field={name!r}) but "
                        f"has no field {name!r}.",
                        hint=f"Add `{name} = {_VERSION_FIELD}` and make a migration (or name an "
                        "existing integer field in version_field=); every write path increments it "
                        "to order concurrent writers.",
                        obj=model,
                        id="cachepatterns.E010",
                    )
                )
            elif not isinstance(field, models.IntegerField):
                out.append(
                    Error(
                        f"{model._meta.label}.{name} is a {type(field).__name__}, but "
                        f"WriteThroughManager(version_field={name!r}) needs an integer field.",
                        hint=f"Change its type to an integer field, e.g. `{name} = {_VERSION_FIELD}`, "
                        "and make a migration; every write path increments it to order concurrent "
                        "writers.",
                        obj=model,
                        id="cachepatterns.E010",
                    )
                )
    for model in row_caches():
        for manager in model._meta.managers:
            # Validated at construction; this catches a ttl assigned later.
            problem = ttl_problem(manager.ttl) if isinstance(manager, CacheAsideManager) else None
            if problem is not None:
                out.append(
                    Error(
                        f"{model._meta.label}.{manager.name}: {type(manager).__name__}'s ttl {problem}.",
                        hint="Give ttl= a positive number of seconds, None for no expiry, or leave it "
                        "out to use CACHEPATTERNS['DEFAULT_TTL'].",
                        obj=model,
                        id="cachepatterns.E011",
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
                    id="cachepatterns.W009",
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


def check_functions(*, app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check the ``@cache_aside`` functions declared so far in this process."""
    from cachepatterns_app.catalog import declared

    out: list[CheckMessage] = []
    for entry in declared():
        problem = ttl_problem(entry.ttl)
        if problem is not None:
            out.append(
                Error(
                    f"@cache_aside function {entry.name}: ttl {problem}.",
                    hint="Give ttl= a positive number of seconds, or leave it out to use "
                    "CACHEPATTERNS['DEFAULT_TTL'].",
                    id="cachepatterns.E011",
                )
            )
        if entry.depends_on and entry.late:
            models = ", ".join(sorted(model._meta.label for model in entry.depends_on))
            out.append(
                Warning(
                    f"{entry.name} has depends_on={{{models}: ...}} but was declared after Django "
                    f"loaded the apps: its module {entry.module} is imported lazily, so a process "
                    f"that writes {models} without importing it (a Celery worker, a management "
                    "command) does not invalidate its cached results.",
                    hint=f"Import {entry.module} from your AppConfig.ready() (or from a models "
                    "module), so that every process connects its signal handlers at startup.",
                    id="cachepatterns.W008",
                )
            )
    return out
