"""
Run cache work after the outermost commit, batched, before anything else.

Every write path hands :func:`after_commit` the Redis commands it needs (delete
a row's keys, bump a family's generation, write a tombstone) and follow-up
callables that must read the committed database first (write-through puts).
Outside a transaction they run at once. Inside one they wait for the outermost
commit through Django's ``transaction.on_commit``, so a rolled-back transaction
or savepoint discards them exactly as Django discards its own hooks.

Writes at the same savepoint level share one hook, so a transaction that saves a
thousand rows costs one round trip at commit, not a thousand. The hooks are put
*ahead* of every other on-commit hook of the transaction: a hook registered
before the write (middleware, a signal receiver, ``delay_on_commit``) must not
read — or let a Celery worker read — the row the write is about to invalidate.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from django.db import connections

from cachepatterns_app.invalidation import Command, send

__all__ = ["Batch", "BumpWatch", "after_commit", "has_pending_writes", "watch_bumps"]

logger = logging.getLogger(__name__)


class BumpWatch:
    """
    What one ``@write_through`` call learns about a family's generation: the value
    it read before computing, and what its own transaction's bumps of that family
    returned, in order (each bump reports once its batch has run).
    """

    def __init__(self, generation_key: str, before: str | None) -> None:
        self.key = generation_key
        self.before = before
        self.results: list[int] = []

    def expected(self) -> str | None:
        """
        Return the generation the put may land on: the one read before, advanced by
        this transaction's own bumps — or None if another writer bumped in between
        (the results are not consecutive), when the put must not land at all.
        """
        if not self.results:
            return self.before
        if self.before is None or not self.before.isdigit():
            return None
        start = int(self.before)
        if self.results != list(range(start + 1, start + 1 + len(self.results))):
            return None
        return str(self.results[-1])


_watching = threading.local()


@contextmanager
def watch_bumps(watch: BumpWatch) -> Iterator[BumpWatch]:
    """Attach ``watch`` to every bump of its family scheduled in this thread meanwhile."""
    stack: list[BumpWatch] = getattr(_watching, "stack", None) or []
    _watching.stack = [*stack, watch]
    try:
        yield watch
    finally:
        _watching.stack = stack


@dataclass
class Batch:
    """Redis commands (and follow-up callables) to run once a transaction commits."""

    sids: set[str] = field(default_factory=set)
    commands: dict[Command, str] = field(default_factory=dict)
    callbacks: list[Callable[[], None]] = field(default_factory=list)
    #: What the transaction wrote, by stats label (model label or key template).
    labels: set[str] = field(default_factory=set)
    watches: dict[Command, list[BumpWatch]] = field(default_factory=dict)

    def add(
        self,
        commands: Iterable[tuple[Command, str]],
        callback: Callable[[], None] | None,
        labels: Iterable[str] = (),
    ) -> None:
        active: list[BumpWatch] = getattr(_watching, "stack", None) or []
        for command, label in commands:
            self.commands.setdefault(command, label)
            self.labels.add(label)
            if active and command[:2] == ("SCRIPT", "family_bump"):
                for watch in active:
                    if watch.key == command[2][0]:
                        self.watches.setdefault(command, []).append(watch)
        self.labels.update(labels)
        if callback is not None:
            self.callbacks.append(callback)

    def run(self) -> None:
        """Send the commands in one pipeline, then run the callbacks. Never raises."""
        if self.commands:
            replies = send(self.commands)
            if replies is not None:
                for command, watches in self.watches.items():
                    reply = replies.get(command)
                    for watch in watches:
                        if isinstance(reply, int) and reply > 0:
                            watch.results.append(reply)
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
        batch.add(commands, callback, labels)
        batch.run()
        return
    sids = set(connection.savepoint_ids)
    hooks = connection.run_on_commit
    ours = 0
    while ours < len(hooks) and isinstance(_owner(hooks[ours]), Batch):
        ours += 1
    if ours:
        # Join our newest hook if it is at this savepoint level: it then has exactly
        # the fate a new hook would have (run on commit, dropped with the same savepoints).
        newest = _owner(hooks[ours - 1])
        if newest is not None and newest.sids == sids:
            newest.add(commands, callback, labels)
            return
    batch = Batch(sids=sids)
    batch.add(commands, callback, labels)
    # What transaction.on_commit(batch.run) would append, placed after our own hooks
    # and before everyone else's. Savepoint rollbacks find hooks by their savepoint
    # ids, not their position, so they discard it exactly as they would at the end.
    hooks.insert(ours, (set(sids), batch.run, False))  # type: ignore[arg-type]


def _owner(hook: tuple[Any, ...]) -> Batch | None:
    owner = getattr(hook[1], "__self__", None)
    return owner if isinstance(owner, Batch) else None


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
        owner = _owner(hook)
        if owner is None:
            break  # ours are always first
        if label is None or label in owner.labels:
            return True
    return False
