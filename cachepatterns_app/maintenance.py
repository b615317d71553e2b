"""
Work on every row of a cached model, batch by batch: warming the cache and
invalidating all of it (``cachepatterns_warm``, ``cachepatterns_invalidate`` with
no primary keys, the admin page).

Rows are walked in primary-key order by keyset pagination (``pk > last``, never
``OFFSET``), so memory is bounded by one batch and a walk can resume after the
last primary key it finished. Neither walk asks Redis which keys exist (no
``KEYS``, no ``SCAN``): the database says which rows there are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import models, router
from django.db.models import Model

from cachepatterns_app.conf import get_settings
from cachepatterns_app.identity import database_identity
from cachepatterns_app.keys import row_keys
from cachepatterns_app.operations import invalidate
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import get_store

__all__ = ["Progress", "checkpoint", "invalidate_all", "pk_batches", "warm"]

logger = logging.getLogger(__name__)

#: How long a warm's checkpoint is kept (seconds): long enough to come back tomorrow.
CHECKPOINT_TTL = 7 * 24 * 3600


@dataclass
class Progress:
    """Where a walk over a model's rows stands."""

    total: int
    done: int = 0
    loaded: int = 0
    cached: int = 0
    last_pk: Any = None


def pk_batches(model: type[Model], batch: int, start_after: Any = None) -> Iterator[list[Any]]:
    """Yield the model's primary keys in order, ``batch`` at a time, after ``start_after``."""
    # A plain queryset: the database's rows, whatever the app's manager serves.
    rows: models.QuerySet[Model] = models.QuerySet(model).using(router.db_for_write(model)).order_by("pk")
    last = start_after
    while True:
        page = rows.filter(pk__gt=last) if last is not None else rows
        pks = list(page.values_list("pk", flat=True)[:batch])
        if not pks:
            return
        yield pks
        last = pks[-1]
        if len(pks) < batch:
            return


def remaining(model: type[Model], start_after: Any = None) -> int:
    """Return how many rows come after ``start_after`` (all: None)."""
    rows: models.QuerySet[Model] = models.QuerySet(model).using(router.db_for_write(model))
    return (rows.filter(pk__gt=start_after) if start_after is not None else rows).count()


def _checkpoint_key(model: type[Model]) -> str:
    return f"{get_settings().key_prefix}:{{warm}}:{model._meta.label_lower}"


def checkpoint(model: type[Model]) -> Any:
    """Return the last primary key an interrupted warm of ``model`` finished (None: none)."""
    raw = get_store().execute("GET", _checkpoint_key(model))
    if raw is None:
        return None
    return model._meta.pk.to_python(json.loads(raw))


def warm(model: type[Model], batch: int = 1000, start_after: Any = None) -> Iterator[Progress]:
    """
    Load every row of ``model`` after ``start_after`` into the cache; yield the
    progress after each batch. Rows already cached are left alone (one ``EXISTS``
    each, pipelined); the others are read with ``get_many`` (one ``SELECT … IN``
    per batch, filled under leases like any miss). Each finished batch is saved as
    the checkpoint :func:`checkpoint` returns, and cleared once the walk ends.
    """
    cache = row_cache_for(model)
    if cache is None:
        raise ValueError(f"{model._meta.label} is not cached (no CacheAsideManager/WriteThroughManager).")
    store = get_store()
    cache_db = router.db_for_write(model)
    ident = database_identity(cache_db)
    progress = Progress(total=remaining(model, start_after), last_pk=start_after)
    for pks in pk_batches(model, batch, start_after):
        keys = [row_keys(cache.label, ident, cache.canonical_pk(pk)).value for pk in pks]
        exists = store.pipeline([("EXISTS", key) for key in keys])
        missing = [pk for pk, there in zip(pks, exists, strict=True) if not there]
        if missing:
            model._default_manager.get_many(missing)  # type: ignore[attr-defined]
        progress.done += len(pks)
        progress.cached += len(pks) - len(missing)
        progress.loaded += len(missing)
        progress.last_pk = pks[-1]
        store.execute("SET", _checkpoint_key(model), json.dumps(pks[-1], default=str), "EX", CHECKPOINT_TTL)
        yield progress
    store.execute("DEL", _checkpoint_key(model))


def invalidate_all(model: type[Model], batch: int = 1000) -> Iterator[int]:
    """
    Invalidate the cached row of every row ``model`` has in the database, a batch
    at a time; yield how many so far. A row cached but since deleted behind the
    app's back (raw SQL) is not reached: it expires by its TTL.
    """
    done = 0
    for pks in pk_batches(model, batch):
        invalidate(model, *pks)
        done += len(pks)
        yield done
