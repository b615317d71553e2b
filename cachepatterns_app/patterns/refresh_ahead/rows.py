"""
Refresh-ahead for model rows: ``CacheAsideManager(ttl=…, refresh_ahead=0.2)``.

A hit of a row with less than ``0.2 * ttl`` left schedules
``cachepatterns.refresh_row``, which reloads the row by primary key and stores it
under the row's lease rules: the lease the read took is the one every write
deletes, so a row loaded before a concurrent write committed is never stored.
"""

from __future__ import annotations

import decimal
import logging
from typing import Any

from django.apps import apps
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db.models import Model

from cachepatterns_app import stats
from cachepatterns_app.exceptions import SerializationError
from cachepatterns_app.identity import NotCanonical, database_identity
from cachepatterns_app.keys import RowKeys, row_keys
from cachepatterns_app.leases import UNSET, ttl_ms
from cachepatterns_app.patterns.cache_aside import RowCache
from cachepatterns_app.patterns.refresh_ahead import worker
from cachepatterns_app.patterns.refresh_ahead.policy import Policy
from cachepatterns_app.patterns.refresh_ahead.slots import DUE, PENDING, PlainRefresh, sampled_touch
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import Store

__all__ = ["RefreshAheadRowCache", "refresh_row"]

logger = logging.getLogger(__name__)

_BAD_PK = (NotCanonical, SerializationError, ValidationError, TypeError, ValueError, decimal.InvalidOperation)


class RefreshAheadRowCache(RowCache):
    """A row cache whose hits near expiry schedule a background reload of the row."""

    def __init__(self, model: type[Model], *, ttl: int | None = UNSET, factor: float) -> None:
        super().__init__(model, ttl=ttl)
        self.policy = Policy(factor, 0.0, f"{model.__name__}: CacheAsideManager(refresh_ahead=...)")

    def read_reply(
        self, store: Store, pk: Any, keys: RowKeys, token: str, lease_ms: int, cache_db: str
    ) -> list[Any]:
        refresh = "r:" + token
        touch = sampled_touch(database_identity(cache_db), ["r", self.label, self._plain_pk(pk)])
        reply = PlainRefresh(keys.value, keys.lease).read(
            store, token, lease_ms, self.policy.reading(self.ttl), refresh, touch
        )
        return [*reply, refresh] if reply[0] == DUE else reply

    def served(self, pk: Any, keys: RowKeys, reply: list[Any], cache_db: str) -> None:
        state = reply[0]
        if state == DUE:
            stats.record("stale_served", self.label)
            kwargs = {"label": self.label, "pk": self._plain_pk(pk), "using": cache_db, "token": reply[-1]}
            worker.schedule("refresh_row", kwargs, self.label, cache_db)
        elif state == PENDING:
            stats.record("stale_served", self.label)

    def invalidation(self, pks: Any, using: str) -> list[tuple[tuple[Any, ...], str]]:
        # The meta key too: it holds the failures of past refreshes of the old row.
        return [
            (PlainRefresh(keys.value, keys.lease).forget(), self.label)
            for keys in self.write_keys(pks, using)
        ]

    def _plain_pk(self, pk: Any) -> Any:
        return self.codec.encode_field(self.pk_attname, pk)

    def refresh(self, pk: Any, using: str, token: str) -> str:
        """Reload row ``pk`` of database ``using`` and store it if no write came in between."""
        keys = row_keys(self.label, database_identity(using), pk)

        def load() -> bytes | None:
            try:
                instance = self._query(using).get(pk=pk)
            except ObjectDoesNotExist:
                raise worker.Skip from None  # deleted: its invalidation voided the lease
            if self.keys(instance.pk, using).value != keys.value:
                raise worker.Skip  # the database matched another spelling of the key
            return self.encode(instance)

        job = worker.Job(
            label=self.label,
            keys=PlainRefresh(keys.value, keys.lease).keys,
            generation="",
            token=token,
            ttl_ms=ttl_ms(self.ttl),
            generation_ttl_ms=0,
            window_ms=self.policy.window_ms(self.ttl),
            load=load,
        )
        return worker.run(job)


def refresh_row(label: Any, pk: Any, using: Any, token: Any) -> str:
    """The body of ``cachepatterns.refresh_row``: find the model's row cache and refresh the row."""
    try:
        model = apps.get_model(str(label))
    except (LookupError, ValueError):
        model = None
    cache = row_cache_for(model) if model is not None else None
    usable = isinstance(token, str) and token.startswith("r:")
    if not isinstance(cache, RefreshAheadRowCache) or not usable:
        logger.error(
            "cachepatterns.refresh_row: %r is not a model with CacheAsideManager(refresh_ahead=...) in "
            "this worker, or the message is malformed; nothing refreshed.",
            label,
        )
        stats.record("refresh_failed", str(label))
        return worker.FAILED
    try:
        typed = cache.canonical_pk(cache.codec.decode_field(cache.pk_attname, pk))
    except _BAD_PK as e:
        logger.error("cachepatterns.refresh_row: unusable primary key %r of %s (%s)", pk, label, e)
        stats.record("refresh_failed", cache.label)
        return worker.FAILED
    return cache.refresh(typed, str(using), token)
