"""
Issue 2 (cache-aside rows) and issue 4 (write-through) measurements, plus the
hit of a cached page (issue 3), all against the shared Redis and MariaDB.

Every variant that writes uses its own row, so one variant's invalidation never
turns another variant's hit into a miss.
"""

from __future__ import annotations

import decimal
import time
from collections.abc import Callable
from typing import Any

from django.core.cache import cache
from django.db import DEFAULT_DB_ALIAS, connection, models, transaction
from django.db.models import F
from django.test.utils import CaptureQueriesContext
from django_redis import get_redis_connection

from bench.data import ATOMIC_SAVE_PK, HIT_PK, MISS_PK, ROW_PKS, SAVE_PK
from bench.harness import Variant
from bench.models import Author, Ledger, PlainAuthor, PlainLedger, PlainProfile, Profile
from cachepatterns_app import stats
from cachepatterns_app.conf import get_settings
from cachepatterns_app.identity import database_identity
from cachepatterns_app.keys import model_label, row_keys
from cachepatterns_app.registry import row_cache_for
from cachepatterns_app.store import SCRIPTS

__all__ = ["RowBench", "wait_for_key"]

WT_SAVE_PK = 1
NAIVE_PK = 2
WT_READ_PK = 3


def wait_for_key(client: Any, key: str, timeout: float = 2.0) -> None:
    """
    Wait until ``key`` exists. Fills are sent with CLIENT REPLY SKIP, so the
    reading call returns before Redis has stored the value; the next hit round
    must not start before it has.
    """
    deadline = time.monotonic() + timeout
    while not client.exists(key):
        if time.monotonic() > deadline:
            raise RuntimeError(f"The fill of {key!r} never reached Redis.")
        time.sleep(0.0002)


def _rounding_saver(obj: Any) -> Callable[[], None]:
    """Return a save() of a Decimal with more places than the column keeps (read back)."""
    step = iter(range(1, 10**9))

    def save() -> None:
        obj.amount = decimal.Decimal(f"{next(step)}.125")
        obj.save()

    return save


def _expression_saver(obj: Any) -> Callable[[], None]:
    """Return a save() that increments a column with an F() expression (read back)."""

    def save() -> None:
        obj.post_count = F("post_count") + 1
        obj.save()

    return save


def _bumper(obj: Any) -> Callable[[], None]:
    """Return a save() that always changes the row (so MariaDB really writes it)."""

    def save() -> None:
        obj.post_count += 1
        obj.save()

    return save


class RowBench:
    """The row-level variants and the checks that they measure what they claim."""

    def __init__(self) -> None:
        self.redis = get_redis_connection("default")
        rows = row_cache_for(Author)
        if rows is None:
            raise RuntimeError("bench.Author has no row cache: is CacheAsideManager its manager?")
        self.rows = rows
        self.hit_keys = self.rows.keys(HIT_PK, DEFAULT_DB_ALIAS)
        self.miss_keys = self.rows.keys(MISS_PK, DEFAULT_DB_ALIAS)
        self.checks: dict[str, str] = {}

    # -- preparation -----------------------------------------------------------------

    def warm(self) -> None:
        """Fill every key the hit variants read and copy the hit row's bytes for django-redis."""
        Author.objects.get(pk=HIT_PK)
        wait_for_key(self.redis, self.hit_keys.value)
        Author.objects.get_many(ROW_PKS)
        for pk in ROW_PKS:
            wait_for_key(self.redis, self.rows.keys(pk, DEFAULT_DB_ALIAS).value)
        self.payload: bytes = self.redis.get(self.hit_keys.value)
        cache.set("payload", self.payload, 3600)
        self.read_sha = self.redis.script_load(SCRIPTS["read"])
        self.wt_read = Profile.objects.get(pk=WT_READ_PK)
        self.wt_read_keys = row_cache_for(Profile).keys(WT_READ_PK, DEFAULT_DB_ALIAS)  # type: ignore[union-attr]

    def run_checks(self) -> dict[str, str]:
        """Record what each measured path costs in SQL queries (a hit must cost none)."""

        def queries(fn: Callable[[], Any]) -> int:
            with CaptureQueriesContext(connection) as ctx:
                fn()
            return len(ctx.captured_queries)

        self.checks["Author.objects.get(pk) hit: SQL queries"] = str(
            queries(lambda: Author.objects.get(pk=HIT_PK))
        )
        self._drop_miss_key()
        self.checks["Author.objects.get(pk) miss: SQL queries"] = str(
            queries(lambda: Author.objects.get(pk=MISS_PK))
        )
        wait_for_key(self.redis, self.miss_keys.value)
        self.checks["get_many(100) all hits: SQL queries"] = str(
            queries(lambda: Author.objects.get_many(ROW_PKS))
        )
        self._write_through_save()
        self.checks["Profile.objects.get(pk) right after a write-through save(): SQL queries"] = str(
            queries(lambda: Profile.objects.get(pk=WT_READ_PK))
        )
        self.checks["Cached Author row payload"] = f"{len(self.payload)} bytes"
        return self.checks

    def _drop_miss_key(self) -> None:
        self.redis.delete(self.miss_keys.value, self.miss_keys.lease)

    def _wait_miss_fill(self) -> None:
        wait_for_key(self.redis, self.miss_keys.value)

    def _write_through_save(self) -> None:
        self.wt_read.post_count += 1
        self.wt_read.save()

    # -- variants --------------------------------------------------------------------

    def read_variants(self) -> list[Variant]:
        """Single-row reads: the baselines and our hit, miss and read-after-write."""
        redis = self.redis
        hit_key = self.hit_keys.value
        lease_key = self.hit_keys.lease
        sha = self.read_sha
        label = model_label(Author)
        canonical = self.rows.canonical_pk
        decode = self.rows.decode
        payload = self.payload
        pk_attname = self.rows.pk_attname
        return [
            Variant("raw_get", "raw redis-py GET of the cached row's bytes", lambda: redis.get(hit_key)),
            Variant(
                "raw_lua_read",
                "raw redis-py EVALSHA of read.lua on that key (what our hit sends)",
                lambda: redis.evalsha(sha, 2, hit_key, lease_key, "bench", 10000),
            ),
            Variant("dr_get", "django-redis cache.get() of the same bytes", lambda: cache.get("payload")),
            Variant("hit", "Author.objects.get(pk=…) hit", lambda: Author.objects.get(pk=HIT_PK)),
            Variant(
                "orm_get",
                "models.QuerySet(Author).get(pk=…) (ORM, no cache)",
                lambda: models.QuerySet(Author).get(pk=MISS_PK),
            ),
            Variant(
                "miss",
                "Author.objects.get(pk=…) miss (read, SELECT, fill)",
                lambda: Author.objects.get(pk=MISS_PK),
                before=self._drop_miss_key,
                after=self._wait_miss_fill,
            ),
            Variant(
                "hit_identity",
                "the hit's identity work alone: canonical pk + database token + key",
                lambda: row_keys(label, database_identity(DEFAULT_DB_ALIAS), canonical(HIT_PK)),
            ),
            Variant(
                "hit_decode",
                "the hit's decode alone: payload to instance, with the type and pk checks",
                lambda: decode(payload, DEFAULT_DB_ALIAS).__dict__[pk_attname] == HIT_PK,
            ),
            Variant(
                "wt_read_after_write",
                "Profile.objects.get(pk=…) right after a write-through save()",
                lambda: Profile.objects.get(pk=WT_READ_PK),
                before=self._write_through_save,
            ),
        ]

    def stats_variants(self) -> list[Variant]:
        """
        The same hit with STATS True and False, as a group of their own: with two
        variants the rotation runs each after the other as often as after itself (in
        a longer group a variant always follows the same neighbour, and a hit right
        after another Redis round trip is faster than one after CPU-only work).
        """
        # STATS flipped in place in the cached settings (no setting_changed signal, so
        # the store, its connections and scripts stay the same): the two hits differ
        # only in whether stats.record() counts.
        raw_settings = get_settings().raw
        get = Author.objects.get

        def hit_stats(on: bool) -> Callable[[], Any]:
            def run() -> Any:
                raw_settings["STATS"] = on
                try:
                    return get(pk=HIT_PK)
                finally:
                    raw_settings["STATS"] = True

            return run

        return [
            Variant("hit_stats_on", "Author.objects.get(pk=…) hit, STATS True", hit_stats(True)),
            Variant("hit_stats_off", "Author.objects.get(pk=…) hit, STATS False", hit_stats(False)),
        ]

    def record_variants(self) -> list[Variant]:
        """stats.record() alone (its share of the once-a-second shipment included)."""
        label = model_label(Author)
        return [
            Variant(
                "stats_record",
                "stats.record('hit', label) alone, its share of the once-a-second shipment included",
                lambda: stats.record("hit", label),
            )
        ]

    def bulk_variants(self) -> list[Variant]:
        """One hundred rows at once against one hundred single reads."""
        pks = ROW_PKS

        def singles() -> None:
            get = Author.objects.get
            for pk in pks:
                get(pk=pk)

        return [
            Variant(
                "get_many_100",
                "Author.objects.get_many(100 pks), all hits",
                lambda: Author.objects.get_many(pks),
            ),
            Variant("single_100", "100 x Author.objects.get(pk=…) hits", singles),
            Variant(
                "in_bulk_100",
                "models.QuerySet(Author).in_bulk(100 pks) (ORM, no cache)",
                lambda: models.QuerySet(Author).in_bulk(pks),
            ),
        ]

    def write_variants(self) -> list[Variant]:
        """save() of plain, cache-aside and write-through rows (autocommit, and in atomic())."""
        plain = PlainAuthor.objects.get(pk=SAVE_PK)
        cached = models.QuerySet(Author).get(pk=SAVE_PK)
        plain_atomic = PlainAuthor.objects.get(pk=ATOMIC_SAVE_PK)
        cached_atomic = models.QuerySet(Author).get(pk=ATOMIC_SAVE_PK)
        plain_versioned = PlainProfile.objects.get(pk=WT_SAVE_PK)
        wt = models.QuerySet(Profile).get(pk=WT_SAVE_PK)
        naive = PlainProfile.objects.get(pk=NAIVE_PK)
        save_plain_atomic = _bumper(plain_atomic)
        save_cached_atomic = _bumper(cached_atomic)
        save_naive = _bumper(naive)

        def in_atomic(save: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                with transaction.atomic():
                    save()

            return run

        def naive_write_through() -> None:
            save_naive()
            cache.set(f"profile:{NAIVE_PK}", naive, 3600)

        return [
            Variant("plain_save", "PlainAuthor save() (no cache)", _bumper(plain)),
            Variant("cached_save", "Author save() + invalidation after commit", _bumper(cached)),
            Variant("plain_save_atomic", "PlainAuthor save() in atomic()", in_atomic(save_plain_atomic)),
            Variant(
                "cached_save_atomic",
                "Author save() in atomic(), invalidation on commit",
                in_atomic(save_cached_atomic),
            ),
            Variant(
                "plain_versioned_save",
                "PlainProfile save() (no cache, same columns)",
                _bumper(plain_versioned),
            ),
            Variant("wt_save", "Profile save() with write-through put after commit", _bumper(wt)),
            Variant(
                "naive_wt_save", "PlainProfile save() + django-redis cache.set(instance)", naive_write_through
            ),
            Variant(
                "plain_ledger_save",
                "PlainLedger save() of a Decimal the column rounds (no cache)",
                _rounding_saver(PlainLedger.objects.get(pk=WT_SAVE_PK)),
            ),
            Variant(
                "wt_decimal_save",
                "Ledger save() of a Decimal the column rounds: write-through reads the row back",
                _rounding_saver(models.QuerySet(Ledger).get(pk=WT_SAVE_PK)),
            ),
            Variant(
                "plain_ledger_expression_save",
                "PlainLedger save() with post_count = F() + 1 (no cache)",
                _expression_saver(PlainLedger.objects.get(pk=NAIVE_PK)),
            ),
            Variant(
                "wt_expression_save",
                "Ledger save() with post_count = F() + 1: write-through reads the row back",
                _expression_saver(models.QuerySet(Ledger).get(pk=NAIVE_PK)),
            ),
        ]
