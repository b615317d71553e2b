"""
Run cache invalidations after the outermost commit, batched, and never lose one.

Every write path calls :func:`after_commit` with the Redis operations it needs
(delete a row's keys, bump a family's generation, write a tombstone, put a fresh
row). Outside a transaction they run at once. Inside one they wait for the
outermost commit through Django's ``transaction.on_commit``, so a rolled-back
transaction or savepoint discards them exactly as Django discards its own hooks.

Writes at the same savepoint level share one hook, so a transaction that saves a
thousand rows costs one round trip at commit, not a thousand.

An invalidation that cannot reach Redis is kept in this process and retried when
the circuit breaker closes again, or by the ``cachepatterns.retry_invalidations``
task; until then the stale key can only be read if Redis comes back before the
retry, which the retry-on-close hook makes a window of one call.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from django.db import connections, transaction
from redis import exceptions as redis_errors

from cachepatterns_app import pending, stats
from cachepatterns_app.exceptions import CacheUnavailable

__all__ = [
    "Batch",
    "after_commit",
    "has_pending_writes",
    "pending_retries",
    "queue_for_retry",
    "retry_failed",
]

logger = logging.getLogger(__name__)

Command = tuple[Any, ...]


@dataclass
class Batch:
    """Redis commands (and follow-up callables) to run once a transaction commits."""

    sids: set[str] = field(default_factory=set)
    commands: dict[Command, str] = field(default_factory=dict)
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    #: What the transaction wrote, by stats label (model label or key template).
    labels: set[str] = field(default_factory=set)

    def add(
        self,
        commands: Iterable[tuple[Command, str]],
        callback: Callable[[], None] | None,
        labels: Iterable[str] = (),
    ) -> None:
        for command, label in commands:
            self.commands.setdefault(command, label)
            self.labels.add(label)
        self.labels.update(labels)
        if callback is not None:
            self.callbacks.append(callback)

    def run(self) -> None:
        """Send the commands in one pipeline, then run the callbacks. Never raises."""
        if self.commands:
            send(self.commands)
        for callback in self.callbacks:
            try:
                callback()
            except Exception:  # a callback must not stop the others or the commit hooks
                logger.exception("cachepatterns after-commit callback failed")


def after_commit(
    commands: Iterable[tuple[Command, str]],
    using: str,
    callback: Callable[[], None] | None = None,
    labels: Iterable[str] = (),
) -> None:
    """
    Run ``commands`` (each with the label it is counted under) after ``using`` commits.

    ``callback`` runs after the commands, for work that must read the committed
    database first (write-through puts). ``labels`` name what was written, besides
    the commands' labels, for :func:`has_pending_writes`.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        if not connection.get_autocommit():
            _warn_manual_transactions(using)
        batch = Batch()
        batch.add(commands, callback)
        batch.run()
        return
    sids = set(connection.savepoint_ids)
    hooks = connection.run_on_commit
    if hooks:
        # Join the newest hook if it is ours and at this savepoint level: it then
        # has exactly the fate a new hook would have (run on commit, dropped with
        # the same savepoints).
        last = hooks[-1][1]
        owner = getattr(last, "__self__", None)
        if isinstance(owner, Batch) and owner.sids == sids:
            owner.add(commands, callback, labels)
            return
    batch = Batch(sids=sids)
    batch.add(commands, callback, labels)
    transaction.on_commit(batch.run, using=using)


_warned: set[str] = set()


def _warn_manual_transactions(using: str) -> None:
    # Django's on_commit() refuses to run under set_autocommit(False); cachepatterns
    # cannot see the commit either, so it invalidates now (and fills nothing until
    # autocommit is back). Say so once: a reader may refill the old row in between.
    if using not in _warned:
        _warned.add(using)
        logger.warning(
            "Database %r is in manual transaction management (autocommit off): cache "
            "invalidations run at write time, not at commit. Use transaction.atomic().",
            using,
        )


def has_pending_writes(using: str, label: str | None = None) -> bool:
    """
    Return whether the open transaction on ``using`` wrote something cached —
    anything, or with ``label`` that model (or key template) in particular.
    """
    connection = connections[using]
    if not connection.in_atomic_block:
        return False
    for hook in connection.run_on_commit:
        owner = getattr(hook[1], "__self__", None)
        if isinstance(owner, Batch) and (label is None or label in owner.labels):
            return True
    return False


# -- sending, and retrying what could not be sent ------------------------------------

_failed: dict[Command, str] = {}
_failed_lock = threading.Lock()


def send(commands: dict[Command, str]) -> bool:
    """Send invalidation commands now; queue them for retry if Redis is unavailable."""
    from cachepatterns_app.store import get_store

    store = get_store()
    try:
        store.pipeline(commands)
    except CacheUnavailable as e:
        queue_for_retry(commands)
        logger.error(
            "Could not invalidate %d cache key(s) after commit (%s); queued for retry. "
            "They are sent before any other call once Redis answers again.",
            len(commands),
            e,
        )
        return False
    for label in commands.values():
        stats.record("invalidation", label)
    return True


def queue_for_retry(commands: dict[Command, str]) -> None:
    """Keep ``commands`` until Redis answers; they are sent before any other call then."""
    from cachepatterns_app.store import get_store

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
            from cachepatterns_app.store import SCRIPTS

            _, name, keys, args = command
            pipe.eval(SCRIPTS[name], len(keys), *keys, *args)
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
    from cachepatterns_app.store import get_store

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
