"""
Send invalidations to Redis, and never lose one that could not be sent.

:func:`send` runs a batch of commands (``batch`` calls it after commit). An
invalidation that cannot reach Redis is kept in this process and sent before any
other call once Redis answers again, and it is recorded in the database
(``pending``) for the ``cachepatterns.retry_invalidations`` task to send from any
process, in case this one dies first.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

from redis import exceptions as redis_errors

from cachepatterns_app import pending, stats
from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.store import SCRIPTS, get_store

__all__ = ["Command", "pending_retries", "queue_for_retry", "retry_failed", "send"]

logger = logging.getLogger(__name__)

Command = tuple[Any, ...]


# -- sending, and retrying what could not be sent ------------------------------------

_failed: dict[Command, str] = {}
_failed_lock = threading.Lock()


def send(commands: dict[Command, str]) -> dict[Command, Any] | None:
    """
    Send invalidation commands now and return their replies; queue them for retry
    (and return None) if Redis is unavailable.
    """
    store = get_store()
    try:
        replies = store.pipeline(commands)
    except CacheUnavailable as e:
        queue_for_retry(commands)
        logger.error(
            "Could not invalidate %d cache key(s) after commit (%s); queued for retry. "
            "They are sent before any other call once Redis answers again.",
            len(commands),
            e,
        )
        return None
    for label in commands.values():
        stats.record("invalidation", label)
    return dict(zip(commands, replies, strict=True))


def queue_for_retry(commands: dict[Command, str]) -> None:
    """Keep ``commands`` until Redis answers; they are sent before any other call then."""
    store = get_store()
    with _failed_lock:
        _failed.update(commands)
        if _send_queued not in store.recovery_hooks:
            store.recovery_hooks.append(_send_queued)
        store.armed = True
    pending.persist(commands)
    for label in commands.values():
        stats.record("invalidation_failed", label)


def _send_queued(client: Any) -> bool:
    """Recovery hook: send what was queued over ``client``; raise if Redis is still down."""
    with _failed_lock:
        batch = dict(_failed)
    if not batch:
        return True
    pipe = client.pipeline(transaction=False)
    for command in batch:
        if command[0] == "SCRIPT":
            _, name, keys, args = command
            # The raw command: a cluster pipeline routes it by its first key.
            pipe.execute_command("EVAL", SCRIPTS[name], len(keys), *keys, *args)
        else:
            pipe.execute_command(*command)
    sent = _settled(batch, pipe.execute(raise_on_error=False))
    with _failed_lock:
        for command in sent:
            _failed.pop(command, None)
        done = not _failed
    pending.forget(sent)
    if sent:
        logger.warning("Sent %d invalidation(s) queued while Redis was unavailable", len(sent))
    for command in sent:
        stats.record("invalidation", batch[command])
    if len(sent) < len(batch):
        # Redis answered but refused for now (out of memory, read-only replica...):
        # raise so the caller treats Redis as unavailable and everything stays queued.
        raise redis_errors.ConnectionError("Redis refused queued invalidations; keeping them queued")
    return done


#: Error replies that mean "not now" rather than "never": the command is kept. Inside
#: a Lua script the code is wrapped ("Error running script ...: -OOM command not ...").
_RETRYABLE = re.compile(r"(?:^|-)(OOM|READONLY|LOADING|BUSY|TRYAGAIN|CLUSTERDOWN|MASTERDOWN|NOREPLICAS)\b")


def _settled(commands: Iterable[Command], replies: Iterable[Any]) -> list[Command]:
    """Return the commands that need no retry: done, or refused for good (logged)."""
    out = []
    for command, reply in zip(commands, replies, strict=True):
        if isinstance(reply, Exception):
            if _RETRYABLE.search(str(reply)):
                continue
            logger.error("Queued invalidation %r was refused by Redis for good: %s", command[:2], reply)
        out.append(command)
    return out


def pending_retries() -> int:
    """Return how many invalidations wait for Redis to come back."""
    with _failed_lock:
        return len(_failed)


def retry_failed(batch_size: int = 1000) -> int:
    """
    Send the invalidations this process queued, then those any process recorded in
    the database; return how many are still recorded.
    """
    store = get_store()
    try:
        store.execute("PING")  # runs this process's recovery hook first, if armed
        while True:
            recorded = pending.load(batch_size)
            if not recorded:
                return 0
            sent = _settled(recorded, store.pipeline(recorded, raise_on_error=False))
            pending.forget(sent)
            for command in sent:
                stats.record("invalidation", recorded[command][1])
            logger.warning("Sent %d recorded invalidation(s)", len(sent))
            if len(sent) < len(recorded):
                break  # Redis refuses for now; the task's next run tries again
            if len(recorded) < batch_size:
                return 0
    except CacheUnavailable as e:
        logger.info("Recorded invalidations not sent yet: %s", e)
    return len(pending.load(batch_size))
