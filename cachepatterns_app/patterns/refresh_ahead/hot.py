"""
The hot set: which refresh-ahead keys are read most, and the periodic task that
refreshes the hottest ones before they expire even if no read lands in their
window.

A share ``HOT_SAMPLE`` of the hits adds one to their key's score in a sorted set
per database, ``cp:{ra:<db>}:hot``, in the read's own round trip (a second command
in its pipeline, never a round trip of its own). ``ra_touch.lua`` trims the set to
``HOT_CAPACITY`` members, coldest first, so its memory is bounded whatever the
number of keys; each run of ``cachepatterns.refresh_hot_keys`` halves every score
(old heat fades) and drops members whose score fell below 1/20.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from django.apps import apps
from django.db import connections

from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.families import Command
from cachepatterns_app.identity import NotCanonical, database_identity
from cachepatterns_app.keys import hot_keys_key, row_keys
from cachepatterns_app.leases import lease_lifetime_ms
from cachepatterns_app.patterns.refresh_ahead import policy, worker
from cachepatterns_app.patterns.refresh_ahead.functions import registered
from cachepatterns_app.patterns.refresh_ahead.rows import RefreshAheadRowCache
from cachepatterns_app.patterns.refresh_ahead.slots import (
    DUE,
    PlainRefresh,
    RefreshFamilySlot,
    RefreshPlainSlot,
)
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import get_store, new_token

__all__ = ["horizon_ms", "refresh_hot_keys"]

logger = logging.getLogger(__name__)

#: A claim: the command taking the refresh lease, and what to schedule if it did.
Claim = tuple[Command, Callable[[Any], None]]


def horizon_ms(window_ms: int, ttl: float | None, interval: float) -> int:
    """
    Return how close to expiry the task refreshes a hot key: its window, or — if the
    next run comes later than that — the time until the next run (at most half the
    TTL, so a key with a TTL shorter than the interval is not reloaded twice a TTL).
    """
    ttl_ms = int(ttl * 1000) if ttl else 0
    return max(window_ms, min(int(interval * 1000), ttl_ms // 2))


def refresh_hot_keys(interval: float = 10.0) -> int:
    """
    Look at the ``HOT_BATCH`` hottest keys of every database, schedule a refresh of
    those that would expire before the next run, fade the scores; return how many
    refreshes were scheduled.
    """
    store = get_store()
    scheduled = 0
    for alias in connections:
        hot = hot_keys_key(database_identity(alias))
        try:
            members = store.execute("ZREVRANGE", hot, 0, policy.HOT_BATCH - 1)
        except CacheUnavailable as e:
            logger.warning("cachepatterns.refresh_hot_keys: %s", e)
            return scheduled
        claims = [claim for claim in (_claim(raw, alias, interval) for raw in members or ()) if claim]
        try:
            replies = store.pipeline([command for command, _ in claims], raise_on_error=False)
            store.pipeline(
                [("ZUNIONSTORE", hot, 1, hot, "WEIGHTS", 0.5), ("ZREMRANGEBYSCORE", hot, "-inf", "(0.05")]
            )
        except CacheUnavailable as e:
            logger.warning("cachepatterns.refresh_hot_keys: %s", e)
            return scheduled
        for (_, then), reply in zip(claims, replies, strict=True):
            if isinstance(reply, list) and reply and reply[0] == DUE:
                then(reply)
                scheduled += 1
    return scheduled


def _claim(raw: Any, alias: str, interval: float) -> Claim | None:
    try:
        kind, name, arguments = json.loads(raw)
    except (TypeError, ValueError) as e:
        logger.debug("Ignoring a hot-set member that is not ours: %r (%s)", raw, e)
        return None
    try:
        if kind == "f":
            return _function_claim(str(name), arguments, alias, interval)
        if kind == "r":
            return _row_claim(str(name), arguments, alias, interval)
    except (NotCanonical, TypeError, ValueError, LookupError) as e:
        logger.debug("Ignoring hot-set member %r: %s", raw, e)
    return None


def _function_claim(name: str, params: Any, alias: str, interval: float) -> Claim | None:
    function = registered(name)
    if function is None or not isinstance(params, dict):
        return None  # declared in a module this worker does not import: its readers refresh it
    slot = function.refresh_target.slot(params, alias)
    assert isinstance(slot, RefreshPlainSlot | RefreshFamilySlot)
    ttl = function.target.ttl
    horizon = horizon_ms(function.policy.window_ms(ttl), ttl, interval)
    token = "r:" + new_token()

    def then(reply: Any) -> None:
        _, generation = slot.claimed(reply)
        kwargs: dict[str, Any] = {"name": name, "params": params, "using": alias, "token": token}
        kwargs["generation"] = generation or None
        worker.publish("refresh_key", kwargs, function.label)

    return slot.claim(lease_lifetime_ms(), horizon, token), then


def _row_claim(label: str, pk: Any, alias: str, interval: float) -> Claim | None:
    cache = row_cache_for(apps.get_model(label))
    if not isinstance(cache, RefreshAheadRowCache):
        return None
    typed = cache.canonical_pk(cache.codec.decode_field(cache.pk_attname, pk))
    keys = row_keys(cache.label, database_identity(alias), typed)
    horizon = horizon_ms(cache.policy.window_ms(cache.ttl), cache.ttl, interval)
    token = "r:" + new_token()

    def then(reply: Any) -> None:
        kwargs = {"label": cache.label, "pk": pk, "using": alias, "token": token}
        worker.publish("refresh_row", kwargs, cache.label)

    return PlainRefresh(keys.value, keys.lease).claim(lease_lifetime_ms(), horizon, token), then
