"""
What runs around a refresh: publishing its Celery task after the read (after the
commit, inside a transaction), and — in the worker — the begin / compute / store
sequence with its checks, stale-if-error and backoff.

Publishing goes through one background thread per process, so that no read ever
waits for the broker: not for its first connection, not for a broker that is slow
or down. A publish that is lost (the process exits first, the broker refuses it)
costs nothing but time: the lease it would have used expires and a later read
schedules again.

Every step that decides whether a result may be stored is one Lua call against
the key's lease: ``ra_begin`` (the lease is still the refresh's, the family still
at the generation the read saw), ``ra_fill`` (the same, atomic with the ``SET``)
and ``ra_fail`` (back off). Writes delete the lease or bump the generation, so a
result computed from rows older than a concurrent write is never stored.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db import connections, transaction

from cachepatterns_app import stats
from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.leases import lease_lifetime_ms
from cachepatterns_app.patterns.refresh_ahead.policy import backoff_ms
from cachepatterns_app.store import get_store

__all__ = [
    "DONE",
    "FAILED",
    "SKIPPED",
    "Job",
    "Skip",
    "drain",
    "outside_transactions",
    "publish",
    "run",
    "schedule",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What a refresh task returns.
DONE, SKIPPED, FAILED = "done", "skipped", "failed"


class Skip(Exception):
    """Raised by a job's loader when there is nothing to store (the row was deleted)."""


#: Most publishes waiting for the publisher thread (one per due key and lease lifetime).
BACKLOG = 10_000


class _Publisher:
    """One thread that sends this process's refresh tasks to the broker, in order."""

    def __init__(self) -> None:
        self.queue: queue.Queue[tuple[str, dict[str, Any], str]] = queue.Queue(BACKLOG)
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def submit(self, task: str, kwargs: dict[str, Any], label: str) -> None:
        if self.thread is None:
            with self.lock:
                if self.thread is None:
                    self.thread = threading.Thread(
                        target=self.run, name="cachepatterns-publisher", daemon=True
                    )
                    self.thread.start()
        try:
            self.queue.put_nowait((task, kwargs, label))
        except queue.Full:
            logger.warning(
                "Not scheduling the refresh of %s: %d refreshes wait for the broker", label, BACKLOG
            )
            stats.record("refresh_failed", label)

    def run(self) -> None:
        while True:
            task, kwargs, label = self.queue.get()
            try:
                publish(task, kwargs, label)
            finally:
                self.queue.task_done()

    def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for what was submitted to be sent (at exit, in tests)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline and self.thread is not None:
            time.sleep(0.005)


_publisher = _Publisher()


def _new_publisher() -> None:
    # A forked child has the queue but not the thread: start afresh.
    global _publisher
    _publisher = _Publisher()


os.register_at_fork(after_in_child=_new_publisher)
atexit.register(lambda: _publisher.drain(2.0))


def drain(timeout: float = 5.0) -> None:
    """Wait until the refreshes submitted so far were handed to the broker (or ``timeout``)."""
    _publisher.drain(timeout)


def publish(task: str, kwargs: dict[str, Any], label: str) -> None:
    """Send the Celery task ``task`` now; never raises (a lost refresh heals when its lease expires)."""
    try:
        from cachepatterns_app import tasks

        # retry=False: with the broker down, one connection attempt, never Celery's
        # publish retries; the lease keeps every other read from scheduling meanwhile.
        getattr(tasks, task).apply_async(kwargs=kwargs, retry=False)
    except Exception as e:  # noqa: BLE001 - a broker outage must never fail a read
        logger.warning(
            "Could not schedule the refresh of %s (%s); it is scheduled again once its lease expires",
            label,
            e,
        )
        stats.record("refresh_failed", label)
        return
    stats.record("refresh_scheduled", label)


def schedule(task: str, kwargs: dict[str, Any], label: str, using: str) -> None:
    """
    Have the Celery task ``task`` enqueued once the read is over, by the publisher
    thread: now, or after the commit of ``using`` when the read ran inside a
    transaction (a rollback drops it; the lease then expires and a later read
    schedules again).
    """

    def send() -> None:
        _publisher.submit(task, kwargs, label)

    if connections[using].in_atomic_block:
        transaction.on_commit(send, using=using)
    else:
        send()


def outside_transactions(work: Callable[[], T]) -> T:
    """
    Return ``work()`` run outside any transaction: directly if this thread is in
    none (a worker), else in a thread of its own, on connections of its own.
    """
    if not any(c.in_atomic_block for c in connections.all(initialized_only=True)):
        return work()
    box: dict[str, Any] = {}

    def run_apart() -> None:
        try:
            box["value"] = work()
        except BaseException as e:  # noqa: BLE001 - handed back to the caller below
            box["error"] = e
        finally:
            connections.close_all()

    thread = threading.Thread(target=run_apart, name="cachepatterns-refresh", daemon=True)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


@dataclass
class Job:
    """One scheduled refresh, as the worker runs it."""

    label: str
    #: KEYS of ra_begin / ra_fill / ra_fail: value, lease, meta (and the generation key).
    keys: tuple[str, ...]
    generation: str
    token: str
    ttl_ms: int
    generation_ttl_ms: int
    window_ms: int
    #: Compute and encode the value; None when it cannot be stored; raises if the loader fails.
    load: Callable[[], bytes | None]


def run(job: Job) -> str:
    """Run ``job`` and return ``DONE``, ``SKIPPED`` or ``FAILED``. Never raises for a loader error."""
    store = get_store()
    try:
        if store.script("ra_begin", job.keys, (job.token, lease_lifetime_ms(), job.generation)) != 1:
            # Invalidated, rewritten or taken over since the read that scheduled it.
            stats.record("refresh_skipped", job.label)
            return SKIPPED
        started = time.perf_counter()
        try:
            payload = outside_transactions(job.load)
        except Skip:
            store.script("release", (job.keys[1],), (job.token,))
            stats.record("refresh_skipped", job.label)
            return SKIPPED
        except Exception as e:  # noqa: BLE001 - stale-if-error: whatever the loader raised
            return _failed(job, e)
        seconds = time.perf_counter() - started
        if payload is None:
            return _failed(job, None)
        args = (job.token, payload, job.ttl_ms, int(seconds * 1000), job.generation, job.generation_ttl_ms)
        if store.script("ra_fill", job.keys, args) != 1:
            stats.record("refresh_skipped", job.label)
            return SKIPPED
    except CacheUnavailable as e:
        logger.warning("Refresh of %s abandoned: %s", job.label, e)
        return FAILED
    stats.record("refresh_done", job.label)
    stats.observe("refresh", job.label, seconds)
    return DONE


def _failed(job: Job, error: Exception | None) -> str:
    base, cap = backoff_ms(job.window_ms)
    backoff = get_store().script("ra_fail", job.keys, (job.token, base, cap, job.generation))
    reason = "its value could not be cached" if error is None else f"the loader raised {error!r}"
    logger.warning(
        "Refresh of %s failed: %s. The cached value is served until it expires%s.",
        job.label,
        reason,
        f"; next try in {backoff} ms at the earliest" if backoff >= 0 else "",
        exc_info=error is not None,
    )
    stats.record("refresh_failed", job.label)
    return FAILED
