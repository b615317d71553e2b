"""
``manage.py cachepatterns_demo``: play the caching scenario on the demo blog and
report what really happened — cache hits and misses, SQL queries, timings — as
measured in this process.

1. the first read of an author is a miss (one SQL query), 2. the second a hit
(no query); 3. renaming the author invalidates its key after commit, not before;
4. the next read is a miss that returns the new name; 5. an author's cached pages
of posts are all invalidated by one new post while another author's pages stay
hits; 6. a profile update puts the fresh row in the cache (write-through), so the
next read is a hit with the new value; 6b. a post's view and like counters are
counted in Redis (write-behind: visible at once, in the database once a real Celery
worker flushed them); 7. the statistics; 8. the trending posts (refresh-ahead), read
through four TTL periods with a Celery worker refreshing them: no miss after the
first; 9. everything the story changed is put back (through the ORM, so the cache
follows).

Every step states what it expects; the command exits non-zero if any expectation
fails, so it doubles as an end-to-end check. It migrates and seeds the database
if needed, and both undoes what an interrupted earlier run left and restores the
seed data at its end, so every run tells the same story.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connection, models, transaction
from django.utils import timezone
from django_redis import get_redis_connection

from cachepatterns_app import flush_write_behind, stats
from cachepatterns_app.conf import get_settings
from cachepatterns_app.identity import database_identity
from cachepatterns_app.keys import model_label, row_keys
from cachepatterns_app.tasks import flush_write_behind as flush_task
from demo_project.blog import seed
from demo_project.blog.measure import event_totals, measure, plural
from demo_project.blog.models import Author, Post, PostStats, Profile
from demo_project.blog.preflight import embedded_redis_note, masked, require_database, require_redis
from demo_project.blog.queries import TRENDING_COST, TRENDING_TTL, author_posts, trending_posts
from demo_project.blog.worker import celery_worker

__all__ = ["Command"]

PER_PAGE = 10
PAGES = (1, 2, 3)
RENAMED = "Ada King, Countess of Lovelace"
#: TTL periods the trending posts are read through, and how often.
TRENDING_PERIODS = 4
TRENDING_EVERY = 0.1
# Fixed, and put back at the end: a run must not leave its mark for the next one.
EDITED_HEADLINE = f"{seed.SEED[0]['headline']} (edited by the demo)"


class Command(BaseCommand):
    help = "Run the caching scenario on the demo blog and print what happened (exit 1 if not as expected)."
    # Run by handle() once the database is known to exist: Django 6 checks model fields
    # against the database (JSONField support), which would turn a missing database
    # into a traceback before the demo could say what to create.
    requires_system_checks: list[str] = []

    def handle(self, *args: Any, **options: Any) -> None:
        self.failures: list[str] = []
        self.checks = 0
        require_database()
        self.check()
        # So that the command works on a fresh SQLite file too (a no-op when up to date);
        # its checks ran just above (and would only report the tables it is creating).
        call_command("migrate", verbosity=0, interactive=False, skip_checks=True)
        self.intro()
        require_redis()
        authors = self.setup()
        baseline = stats.local_counts()
        ada, grace = authors[0], authors[1]

        # From step 3 on she is called by the name she was just given.
        ada = self.cache_aside(ada)
        self.families(ada, grace)
        self.write_through(ada)
        self.write_behind(ada)
        self.statistics(baseline)
        self.refresh_ahead()
        self.restore(ada)
        note = embedded_redis_note()
        if note:
            self.stdout.write("\n" + note)

        if self.failures:
            raise CommandError(
                f"{plural(len(self.failures), 'expectation')} of {self.checks} failed: "
                + "; ".join(self.failures)
            )
        self.stdout.write(self.style.SUCCESS(f"\nAll {self.checks} expectations met."))

    # -- printing ------------------------------------------------------------------------

    def heading(self, text: str) -> None:
        self.stdout.write("\n" + self.style.MIGRATE_HEADING(text))

    def say(self, text: str) -> None:
        self.stdout.write("   " + text)

    def expect(self, step: str, expected: str, got: str, ok: bool) -> None:
        """Print an expectation and its outcome; remember it if it failed."""
        self.checks += 1
        mark = self.style.SUCCESS("[ok]") if ok else self.style.ERROR("[FAILED]")
        self.say(f"expected: {expected}")
        self.say(f"got:      {got}  {mark}")
        if not ok:
            self.failures.append(f"{step}: expected {expected}, got {got}")

    # -- setup ---------------------------------------------------------------------------

    def intro(self) -> None:
        alias = get_settings().cache_alias
        db = connection.settings_dict
        self.stdout.write(self.style.MIGRATE_HEADING("cachepatterns demo: the blog's caching scenario"))
        self.say(f"database: {connection.vendor} ({db['NAME']})")
        self.say(f"redis:    {masked(str(settings.CACHES[alias]['LOCATION']))}")
        self.say(f"keys:     prefix '{get_settings().key_prefix}'")

    def setup(self) -> list[Author]:
        result = seed.seed_blog()
        self.heading("Setup")
        if result.created_authors or result.created_posts:
            authors, posts = plural(result.created_authors, "author"), plural(result.created_posts, "post")
            self.say(f"seeded {authors} and {posts}")
        else:
            self.say(
                f"seed data present: {plural(len(result.authors), 'author')}, "
                f"{seed.POSTS_PER_AUTHOR} posts each"
            )
        removed = seed.reset_demo(result.authors)
        self.say(
            f"reset: {seed.SEED[0]['name']}'s name restored, {plural(removed, 'post')} from earlier runs "
            f"removed, cached rows and post pages of the {len(result.authors)} authors invalidated"
        )
        return result.authors

    # -- 1-4: cache-aside on Author ---------------------------------------------------------

    def cache_aside(self, ada: Author) -> Author:
        """Tell steps 1-4; return the author as renamed (read back through the cache)."""

        def read() -> Author:
            author: Author = Author.objects.get(pk=ada.pk)
            return author

        self.heading(f"1. First read of an author (cache-aside): Author.objects.get(pk={ada.pk})")
        first = measure(read)
        self.expect(
            "1. first read", "miss, 1 SQL query", f"{first} -> {first.value.name!r}", first.is_("miss", 1)
        )

        self.heading("2. Second read of the same author")
        second = measure(read)
        self.expect(
            "2. second read",
            "hit, 0 SQL queries",
            f"{second} -> {second.value.name!r}",
            second.is_("hit", 0) and second.value.name == first.value.name,
        )

        self.heading(f"3. Rename the author to {RENAMED!r} inside transaction.atomic()")
        key = row_keys(model_label(Author), database_identity(DEFAULT_DB_ALIAS), ada.pk).value
        redis = get_redis_connection(get_settings().cache_alias)
        author = second.value
        before = event_totals()
        with transaction.atomic():
            author.name = RENAMED
            author.save()
            cached_inside = bool(redis.exists(key))
            invalidated_inside = event_totals()["invalidation"] - before["invalidation"]
        cached_after = bool(redis.exists(key))
        invalidated_after = event_totals()["invalidation"] - before["invalidation"]
        self.say(f"key {key}")
        self.expect(
            "3. before commit",
            "still cached until COMMIT (until then the database still shows others the old row)",
            f"cached={cached_inside}, invalidations={invalidated_inside}",
            cached_inside and invalidated_inside == 0,
        )
        self.expect(
            "3. after commit",
            "invalidated after COMMIT",
            f"cached={cached_after}, invalidations={invalidated_after}",
            not cached_after and invalidated_after >= 1,
        )

        self.heading("4. Read the author again")
        again = measure(read)
        self.expect(
            "4. read after update",
            f"miss, 1 SQL query, name {RENAMED!r}",
            f"{again} -> {again.value.name!r}",
            again.is_("miss", 1) and again.value.name == RENAMED,
        )
        hit = measure(read)
        self.expect(
            "4. and once more",
            f"hit, 0 SQL queries, name {RENAMED!r}",
            f"{hit} -> {hit.value.name!r}",
            hit.is_("hit", 0) and hit.value.name == RENAMED,
        )
        renamed: Author = hit.value
        return renamed

    # -- 5: a family of pages (issue 3) ----------------------------------------------------

    def families(self, ada: Author, other: Author) -> None:
        def page_of(author: Author, page: int) -> Callable[[], list[Post]]:
            return lambda: list(author_posts(author_id=author.pk, page=page, per_page=PER_PAGE))

        def titles(posts: list[Post]) -> str:
            return f"{posts[0].title!r} .. {posts[-1].title!r}" if posts else "(empty)"

        self.heading(
            f"5. Pages of posts: author_posts(author_id, page, per_page={PER_PAGE}), family {seed.FAMILY!r}"
        )
        self.say(f"{ada.name}: pages {', '.join(map(str, PAGES))}; {other.name}: page 1")
        total = Post.objects.filter(author=ada).count()
        cold = {p: measure(page_of(ada, p)) for p in PAGES}
        for p, reading in cold.items():
            size = max(0, min(PER_PAGE, total - (p - 1) * PER_PAGE))
            self.expect(
                f"5. first read of page {p}",
                f"page {p}: miss, 1 SQL query, {plural(size, 'post')}",
                f"{reading}, {titles(reading.value)}",
                reading.is_("miss", 1) and len(reading.value) == size,
            )
        other_cold = measure(page_of(other, 1))
        self.expect(
            "5. other author's page 1",
            f"{other.name} page 1: miss, 1 SQL query",
            str(other_cold),
            other_cold.is_("miss", 1),
        )

        self.say("read again:")
        for p in PAGES:
            warm = measure(page_of(ada, p))
            self.expect(
                f"5. second read of page {p}",
                f"page {p}: hit, 0 SQL queries, same posts",
                str(warm),
                warm.is_("hit", 0) and [x.pk for x in warm.value] == [x.pk for x in cold[p].value],
            )

        before = event_totals()
        with transaction.atomic():
            post = Post.objects.create(
                author=ada,
                title=f"{seed.DEMO_TITLE}written at {timezone.now():%H:%M:%S}",
                body="Creating this post invalidates every cached page of its author.",
            )
        bumps = event_totals()["invalidation"] - before["invalidation"]
        self.say(f"created post #{post.pk} {post.title!r} for {ada.name} and committed")
        self.expect(
            "5. invalidation",
            f"{ada.name}'s family invalidated after commit (one generation bump, no KEYS/SCAN)",
            plural(bumps, "invalidation"),
            bumps >= 1,
        )

        self.say("read again:")
        for p in PAGES:
            fresh = measure(page_of(ada, p))
            # Every page shifts by one post: its first post is the new one (page 1) or
            # the last post of the page before it.
            expected_first = post.pk if p == 1 else cold[p - 1].value[-1].pk
            self.expect(
                f"5. page {p} after the new post",
                f"page {p}: miss, 1 SQL query, starting with "
                + ("the new post" if p == 1 else f"the old last post of page {p - 1}"),
                f"{fresh}, {titles(fresh.value)}",
                fresh.is_("miss", 1) and bool(fresh.value) and fresh.value[0].pk == expected_first,
            )
        other_warm = measure(page_of(other, 1))
        self.expect(
            "5. other author's page 1 after the new post",
            f"{other.name} page 1: still a hit, 0 SQL queries",
            str(other_warm),
            other_warm.is_("hit", 0),
        )

    # -- 6: write-through on Profile (issue 4) ------------------------------------------------

    def write_through(self, ada: Author) -> None:
        pk = Profile.objects.filter(author=ada).values_list("pk", flat=True).get()

        def read() -> Profile:
            profile: Profile = Profile.objects.get(pk=pk)
            return profile

        self.heading(f"6. Write-through: update the profile (Profile.objects.get(pk={pk}))")
        first = measure(read)
        profile = first.value
        self.expect(
            "6. first read",
            "miss, 1 SQL query",
            f"{first} -> version {profile.version}",
            first.is_("miss", 1),
        )
        old_version = profile.version
        headline = EDITED_HEADLINE
        before = event_totals()
        with transaction.atomic():
            profile.headline = headline
            profile.save()
            put_inside = event_totals()["put"] - before["put"]
        put_after = event_totals()["put"] - before["put"]
        self.say(f"saved headline {headline!r} and committed")
        self.expect(
            "6. put",
            "fresh row put in the cache after COMMIT, not before",
            f"puts before commit={put_inside}, after={put_after}",
            put_inside == 0 and put_after == 1,
        )
        after = measure(read)
        value = after.value
        self.expect(
            "6. read after update",
            f"hit, 0 SQL queries, the new headline, version {old_version + 1}",
            f"{after} -> {value.headline!r}, version {value.version}",
            after.is_("hit", 0) and value.headline == headline and value.version == old_version + 1,
        )

    # -- 6b: write-behind counters (issue 10) -------------------------------------------------

    def write_behind(self, ada: Author) -> None:
        post = models.QuerySet(Post).filter(author=ada).order_by("id").first()
        assert post is not None
        self.heading(
            f"6b. Write-behind: count 25 views and 3 likes of post #{post.pk} (PostStats.objects.incr)"
        )
        if not models.QuerySet(PostStats).filter(pk=post.pk).exists():
            PostStats(post=post).save(sync=True)
        flush_write_behind(PostStats)  # start from a flushed row, whatever an earlier run left
        before = models.QuerySet(PostStats).get(pk=post.pk)
        views = likes = 0
        for _ in range(25):
            views = PostStats.objects.incr(post.pk, "views", 1)
        for _ in range(3):
            likes = PostStats.objects.incr(post.pk, "likes", 1)
        read = measure(lambda: PostStats.objects.get(pk=post.pk))
        self.expect(
            "6b. read",
            f"hit, 0 SQL queries, {before.views + 25} views and {before.likes + 3} likes at once",
            f"{read} -> {read.value.views} views, {read.value.likes} likes",
            read.is_("hit", 0)
            and (read.value.views, read.value.likes) == (before.views + 25, before.likes + 3),
        )
        in_db = models.QuerySet(PostStats).get(pk=post.pk)
        self.expect(
            "6b. database before the flush",
            f"still {before.views} views (the writes are queued in Redis)",
            f"{in_db.views} views",
            in_db.views == before.views,
        )
        queue = f"cachepatterns-demo-{os.getpid()}"
        with celery_worker(queue) as worker:
            if worker is None:
                self.say("(no Celery worker came up: flushing in this process instead)")
                flush_write_behind(PostStats)
            else:
                self.say(
                    f"started a Celery worker (pid {worker.pid}); sending it cachepatterns.flush_write_behind"
                )
                flush_task.apply_async(("blog.poststats",), queue=queue)
                deadline = time.monotonic() + 60
                while (
                    time.monotonic() < deadline and models.QuerySet(PostStats).get(pk=post.pk).views != views
                ):
                    time.sleep(0.1)
        flushed = models.QuerySet(PostStats).get(pk=post.pk)
        self.expect(
            "6b. database after the flush",
            f"{views} views and {likes} likes, written in one batch",
            f"{flushed.views} views, {flushed.likes} likes",
            (flushed.views, flushed.likes) == (views, likes),
        )
        # Back to no counters, so that the next run tells the same story.
        PostStats.objects.filter(pk=post.pk).delete()

    # -- 7: statistics -----------------------------------------------------------------------

    def statistics(self, baseline: dict[str, int]) -> None:
        self.heading("7. Statistics of steps 1-6 (stats.local_counts() of this process, setup excluded)")
        by_label: dict[str, Counter[str]] = {}
        totals: Counter[str] = Counter()
        for field, n in stats.local_counts().items():
            label, _, event = field.rpartition("|")
            delta = n - baseline.get(field, 0)
            if delta:
                by_label.setdefault(label, Counter())[event] += delta
                totals[event] += delta
        width = max((len(label) for label in by_label), default=10)
        for label in sorted(by_label):
            counts = by_label[label]
            text = ", ".join(f"{event} {counts[event]}" for event in stats.EVENTS if counts[event])
            self.say(f"{label:<{width}}  {text}")
        hits, misses = totals["hit"], totals["miss"]
        if hits + misses:
            self.say(
                f"scenario: {hits} hits, {misses} misses, hit ratio {100 * hits / (hits + misses):.0f} %"
            )
        self.say(
            "This process ships its counts to Redis when it exits; every process's, summed: "
            "the demo's /stats/ page or `manage.py cachepatterns_stats`."
        )

    # -- 8: refresh-ahead on the trending posts (issue 11) ------------------------------------

    def refresh_ahead(self) -> None:
        self.heading(
            f"8. Refresh-ahead: trending_posts(), cached {TRENDING_TTL} s, recomputed by a Celery "
            "worker in the last half of them"
        )
        from demo_project.celery import app

        trending_posts.invalidate(limit=5)  # type: ignore[attr-defined]
        queue = f"cachepatterns-demo-refresh-{os.getpid()}"
        with celery_worker(queue) as worker:
            if worker is None:
                self.expect("8. worker", "a Celery worker running", "none came up", False)
                return
            self.say(f"started a Celery worker (pid {worker.pid}); the refreshes go to its queue")
            # Every task this process enqueues meanwhile (the refreshes) goes to that worker.
            previous, app.conf.task_default_queue = app.conf.task_default_queue, queue
            try:
                self._trending_reads()
            finally:
                app.conf.task_default_queue = previous

    def _trending_reads(self) -> None:
        label = "trending:posts:top:{limit}"
        before = stats.snapshot().get(label, {})
        first = measure(lambda: trending_posts(limit=5))
        self.expect(
            "8. first read",
            f"miss: the ranking query runs here ({TRENDING_COST * 1000:.0f} ms of work)",
            str(first),
            first.outcome == "miss",
        )
        seconds = TRENDING_PERIODS * TRENDING_TTL
        every = f"{TRENDING_EVERY * 1000:.0f} ms"
        self.say(f"reading it every {every} for {TRENDING_PERIODS} TTL periods ({seconds} s)")
        readings = []
        versions = {first.value["computed_at"]}
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            reading = measure(lambda: trending_posts(limit=5))
            readings.append(reading)
            versions.add(reading.value["computed_at"])
            time.sleep(TRENDING_EVERY)
        misses = sum(r.events["miss"] for r in readings)
        hits = sum(r.events["hit"] for r in readings)
        queries = sum(r.queries for r in readings)
        slowest = max((r.ms for r in readings), default=0.0)
        self.expect(
            "8. reads",
            "no miss after the first: every read a hit, 0 SQL queries",
            f"{plural(len(readings), 'read')}: {hits} hits, {plural(misses, 'miss', 'misses')}, "
            f"{queries} SQL queries, slowest {slowest:.1f} ms",
            misses == 0 and queries == 0 and hits == len(readings),
        )
        after = stats.snapshot().get(label, {})
        done = after.get("refresh_done", 0) - before.get("refresh_done", 0)
        # No miss, and no ranking outlives its TTL (plus 10 % jitter): one per period at least.
        self.expect(
            "8. refreshes",
            f"recomputed in the background about once per period (>= {TRENDING_PERIODS} rankings seen)",
            f"{plural(len(versions), 'ranking')} seen, {plural(done, 'refresh', 'refreshes')} by the worker",
            len(versions) >= TRENDING_PERIODS and done >= TRENDING_PERIODS - 1,
        )

    # -- 9: put everything back --------------------------------------------------------------

    def restore(self, ada: Author) -> None:
        self.heading("9. Put the seed data back, so that the next run tells the same story")
        restored = seed.restore_demo(ada)
        self.say(restored)
        again = measure(lambda: Author.objects.get(pk=ada.pk))
        self.expect(
            "9. restored",
            f"miss, 1 SQL query, name {seed.SEED[0]['name']!r} (the rename back invalidated her row)",
            f"{again} -> {again.value.name!r}",
            again.is_("miss", 1) and again.value.name == seed.SEED[0]["name"],
        )
