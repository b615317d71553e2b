"""
Which models are cached, and which cached results depend on which models.

Managers register a row cache for their model when Django builds the model class;
decorators register their ``depends_on`` families when they are applied. The app's
``ready()`` connects signal handlers for everything registered here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from django.db.models import Model

if TYPE_CHECKING:
    from cachepatterns_app.patterns.cache_aside import RowCache

__all__ = [
    "Dependency",
    "dependencies_of",
    "descendants_of",
    "own_dependencies_of",
    "register_dependency",
    "register_row_cache",
    "row_cache_for",
    "row_caches",
    "table_cache",
    "watched_models",
]

_lock = threading.Lock()
_row_caches: dict[type[Model], RowCache] = {}


def register_row_cache(model: type[Model], cache: RowCache) -> None:
    """Cache rows of ``model`` with ``cache`` (one row cache per concrete table)."""
    with _lock:
        _row_caches[model] = cache


def has_own_row_cache(model: type[Model]) -> bool:
    """Return whether ``model`` itself registered a row cache."""
    return model in _row_caches


def row_cache_for(model: type[Model]) -> RowCache | None:
    """Return the row cache of ``model`` or of the concrete model it proxies."""
    cache = _row_caches.get(model)
    if cache is None and model._meta.proxy:
        # Proxies inherit the manager without Django calling contribute_to_class, so
        # bind the concrete model's row cache to the proxy on first use: same keys,
        # but instances of the class that was asked for.
        concrete = model._meta.concrete_model
        base = _row_caches.get(concrete) if concrete is not None else None
        if base is None:
            base = next((c for m, c in list(_row_caches.items()) if m._meta.concrete_model is concrete), None)
        if base is not None:
            cache = base.bind(model)
            with _lock:
                _row_caches.setdefault(model, cache)
    return cache


def table_cache(model: type[Model]) -> RowCache | None:
    """
    Return the row cache of ``model``'s table, whichever class sharing the table
    declared it: writes through a plain concrete model must reach a cache declared
    on one of its proxies.
    """
    concrete = model._meta.concrete_model or model
    cache = _row_caches.get(concrete)
    if cache is None:
        cache = next((c for m, c in list(_row_caches.items()) if m._meta.concrete_model is concrete), None)
    return cache


_descendants: dict[type[Model], tuple[type[Model], ...]] = {}


def descendants_of(model: type[Model]) -> tuple[type[Model], ...]:
    """Return the concrete multi-table descendants of ``model`` (their rows hold its columns)."""
    concrete = model._meta.concrete_model or model
    known = _descendants.get(concrete)
    if known is None:
        from django.apps import apps

        known = tuple(
            other
            for other in apps.get_models()
            if not other._meta.proxy and concrete in other._meta.get_parent_list()
        )
        _descendants[concrete] = known
    return known


def forget_descendants() -> None:
    """Drop the memo of :func:`descendants_of` (a model class was created)."""
    _descendants.clear()


def row_caches() -> dict[type[Model], RowCache]:
    """Return every registered row cache by model."""
    with _lock:
        return dict(_row_caches)


ParamsFn = Callable[[Model], Iterable[dict[str, Any]]]


@dataclass(frozen=True)
class Dependency:
    """A family to invalidate when a row of ``model`` changes.

    ``params`` turns a row into the family parameters it belongs to; ``fields``
    are the attribute names it reads (to fetch old values before a bulk update),
    empty when ``params`` is an arbitrary callable.
    """

    model: type[Model]
    family: Any  # cachepatterns_app.families.Family; Any avoids an import cycle
    params: ParamsFn
    fields: tuple[str, ...]


_dependencies: dict[type[Model], list[Dependency]] = {}


def register_dependency(dependency: Dependency) -> None:
    """Invalidate ``dependency.family`` whenever a ``dependency.model`` row changes."""
    with _lock:
        _dependencies.setdefault(dependency.model, []).append(dependency)


def dependencies_of(model: type[Model]) -> list[Dependency]:
    """
    Return the dependencies a write to ``model`` triggers: those registered for it,
    for every class sharing its table (proxies and the concrete model), and for its
    multi-table-inheritance parents, whose rows a child's write also writes.
    """
    if not _dependencies:
        return []
    tables = {_table(model), *(_table(parent) for parent in model._meta.get_parent_list())}
    return [
        d for registered, deps in list(_dependencies.items()) if _table(registered) in tables for d in deps
    ]


def own_dependencies_of(model: type[Model]) -> list[Dependency]:
    """Return the dependencies registered for ``model``'s table alone (not its parents)."""
    if not _dependencies:
        return []
    table = _table(model)
    return [
        d for registered, deps in list(_dependencies.items()) if _table(registered) is table for d in deps
    ]


def _table(model: type[Model]) -> type[Model]:
    return model._meta.concrete_model or model


def watched_models() -> set[type[Model]]:
    """Return every model whose writes cachepatterns must observe."""
    with _lock:
        return set(_row_caches) | set(_dependencies)
