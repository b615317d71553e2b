"""
The operations of write-behind that the admin page, the management commands and
the Celery tasks call: the queue's status, flushing it now, and the dead letters.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from django.apps import apps
from django.db import router

from cachepatterns_app.exceptions import CacheUnavailable, ConfigurationError, WriteBehindError

__all__ = ["caches", "dead_letters", "drain", "flush", "purge", "replay", "status"]

logger = logging.getLogger(__name__)


def caches(model: Any = None) -> list[Any]:
    """Return the write-behind row caches (of ``model`` — a class or ``"app.model"`` — or all)."""
    from cachepatterns_app.patterns.write_behind.rows import WriteBehindRowCache
    from cachepatterns_app.registry import row_caches

    if isinstance(model, str):
        try:
            model = apps.get_model(model)
        except (LookupError, ValueError) as e:
            raise ConfigurationError(f"No model {model!r}: give it as app_label.ModelName.") from e
    found = [
        cache
        for registered, cache in row_caches().items()
        if isinstance(cache, WriteBehindRowCache) and not registered._meta.proxy
    ]
    if model is not None:
        concrete = model._meta.concrete_model
        found = [c for c in found if c.model._meta.concrete_model is concrete]
        if not found:
            raise ConfigurationError(f"{model._meta.label} has no WriteBehindManager.")
    return found


def _db(cache: Any, using: str | None) -> str:
    return using or router.db_for_write(cache.model)


def status() -> dict[str, Any]:
    """
    Return ``{"enabled": bool, "models": [{"label", "pending", "oldest_pending_age",
    "stream_length", "dead_letters", "consumers", "delivered"}…]}`` — ages in seconds,
    None if nothing waits.
    """
    out: list[dict[str, Any]] = []
    for cache in caches():
        queue = cache.queue(_db(cache, None))
        try:
            delivered, consumers = queue.pending_summary()
            length = queue.length()
            out.append(
                {
                    "label": cache.label,
                    "pending": length,
                    "stream_length": length,
                    "oldest_pending_age": queue.oldest_age(),
                    "dead_letters": queue.dead_count(),
                    "consumers": consumers,
                    "delivered": delivered,
                }
            )
        except CacheUnavailable as e:
            # The same keys as a healthy entry, so a page or script need not test for them.
            unknown = dict.fromkeys(("pending", "stream_length", "oldest_pending_age", "dead_letters"))
            out.append({"label": cache.label, **unknown, "consumers": 0, "delivered": 0, "error": str(e)})
    return {"enabled": bool(out), "models": out}


def flush(
    model: Any = None, *, wait: bool = True, using: str | None = None, wait_for_repairs: bool = True
) -> int:
    """
    Flush the queued writes (of ``model``, or all) now; return how many rows were written.
    ``wait=False`` schedules the Celery task instead. ``wait_for_repairs=False`` (the
    task's) skips a model another flush is repairing after an outage, and a model whose
    flush fails with ``WriteBehindError`` is logged and the others are flushed.
    """
    if not wait:
        from cachepatterns_app.tasks import flush_write_behind

        labels = [c.model._meta.label_lower for c in caches(model)]
        for label in labels:
            flush_write_behind.delay(label, using)
        return 0
    from cachepatterns_app.patterns.write_behind.flush import flush_model

    written = 0
    for cache in caches(model):
        try:
            written += flush_model(cache, _db(cache, using), wait_for_repairs=wait_for_repairs).rows
        except WriteBehindError as e:
            if wait_for_repairs:
                raise  # a caller waiting for the flush must hear that it did not happen
            logger.warning("Write-behind flush of %s stopped: %s", cache.label, e)
    return written


def drain() -> int:
    """Finish the writes this process was handed (a Celery worker shutting down)."""
    from cachepatterns_app.patterns.write_behind.flush import flush_model

    written = 0
    for cache in caches():
        try:
            written += flush_model(
                cache, _db(cache, None), max_batches=1, drain=True, wait_for_repairs=False
            ).rows
        except (CacheUnavailable, WriteBehindError) as e:
            logger.warning("Could not drain the write-behind queue of %s: %s", cache.label, e)
    return written


def dead_letters(limit: int = 100) -> list[dict[str, Any]]:
    """Return up to ``limit`` dead letters: ``{"id", "label", "pk", "error", "attempts", "at"}``."""
    out: list[dict[str, Any]] = []
    for cache in caches():
        for entry_id, fields in cache.queue(_db(cache, None)).dead_letters(limit):
            try:
                pk = json.loads(fields.get(cache.pk_attname, "null"))
            except ValueError:
                pk = None
            out.append(
                {
                    "id": entry_id,
                    "label": cache.label,
                    "pk": pk,
                    "error": fields.get("~error", ""),
                    "attempts": int(fields.get("~attempts", "0") or 0),
                    "at": int(fields.get("~at", "0") or 0),
                }
            )
    return out[:limit]


def replay(ids: list[str] | None = None) -> int:
    """Queue the dead letters ``ids`` (None: all) again, as new writes; return how many."""
    replayed = 0
    for cache in caches():
        db = _db(cache, None)
        queue = cache.queue(db)
        for entry_id, fields in queue.dead_letters(10_000):
            if ids is not None and entry_id not in ids:
                continue
            state = {k: v for k, v in fields.items() if not k.startswith("~") or k in ("~v",)}
            mode = "delete" if fields.get("~f") == "x" else "full"
            pk = cache.canonical_pk(
                cache.codec.decode_field(cache.pk_attname, json.loads(state[cache.pk_attname]))
            )
            encoded = [item for k, v in state.items() if k != "~v" for item in (k, v)]
            reply = cache._write(db, pk, mode, encoded)
            if int(reply[0]) <= 0:
                logger.warning("Could not replay dead letter %s of %s: %s", entry_id, cache.label, reply)
                continue
            queue.store.execute("XDEL", queue.keys.dead, entry_id)
            replayed += 1
    return replayed


def purge(ids: list[str] | None = None) -> int:
    """Delete the dead letters ``ids`` (None: all); return how many."""
    purged = 0
    for cache in caches():
        queue = cache.queue(_db(cache, None))
        if ids is None:
            purged += queue.dead_count()
            queue.store.execute("DEL", queue.keys.dead)
        elif ids:
            purged += int(queue.store.execute("XDEL", queue.keys.dead, *ids) or 0)
    return purged
