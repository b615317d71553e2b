"""
Issue 3 on a private Redis: what invalidating a family costs with 10, 1,000 and
100,000 cached pages, against the seed's ``KEYS pattern`` + ``DEL``, in a
keyspace of 1,000,000 keys.

Each timed invalidation must find its pages live, so before every round the
family's generation is put back to the value the pages were stored under (an
untimed ``SET … KEEPTTL``); the pages are then hits again, which the checks
verify by calling the decorated function. The seed's keys are deleted by its
invalidation and written again between rounds, untimed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from django.conf import settings
from django.test import override_settings
from django_redis import get_redis_connection

from bench.data import PAGE_AUTHOR
from bench.harness import Summary, Variant, measure
from bench.models import Post
from bench.pages import FAMILY, decorated, member_value_key

__all__ = ["SIZES", "FamilyBench", "on_scratch"]

SIZES = (10, 1_000, 100_000)
SEED_TTL_MS = 900_000
PAGE_TTL_MS = 3_600_000
CHUNK = 10_000

# Writes one payload under many keys in the server: a 100,000-key refill then
# sends key names only, not 100,000 copies of a 3.5 kB page (this runs between
# timed rounds, on the private server, so blocking it briefly harms no one).
_SET_MANY = """
for _, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[1], 'PX', ARGV[2])
end
return #KEYS
"""


@contextmanager
def on_scratch() -> Iterator[None]:
    """Point cachepatterns at the scratch server for the duration."""
    with override_settings(CACHEPATTERNS={**settings.CACHEPATTERNS, "CACHE_ALIAS": "scratch"}):
        yield


def _seed_pattern(user_id: int) -> str:
    return f"app:user:{user_id}:posts:page:*"


def _seed_key(user_id: int, page: int) -> str:
    return f"app:user:{user_id}:posts:page:{page}:size:10"


class FamilyBench:
    """Build the keyspace, then time both invalidations at each family size."""

    def __init__(self, keyspace: int, sizes: tuple[int, ...] = SIZES) -> None:
        self.redis = get_redis_connection("scratch")
        self.keyspace = keyspace
        self.sizes = sizes
        self.functions = decorated()
        self.stub = self.functions["stub_posts"]
        self.generations: dict[int, tuple[str, bytes]] = {}
        self.checks: dict[str, str] = {}

    # -- the keyspace ---------------------------------------------------------------

    def prepare(self, progress: Callable[[str], None]) -> None:
        from bench.rows import wait_for_key
        from cachepatterns_app.families import Family

        redis = self.redis
        if redis.dbsize():
            raise RuntimeError("The scratch Redis is not empty; refusing to measure on it.")
        page = list(Post.objects.filter(author_id=PAGE_AUTHOR).order_by("-created_at", "-id")[:10])
        self.functions["template"][:] = page
        for size in self.sizes:
            self.stub(user_id=size, page=1, per_page=10)  # a real miss and fill: sets the generation
            first = member_value_key(redis, self.stub, user_id=size, page=1, per_page=10)
            wait_for_key(redis, first)
            payload = redis.get(first)
            keys = Family(FAMILY).keys({"user_id": size})
            generation = redis.get(keys.generation)
            self.generations[size] = (keys.generation, generation)
            progress(f"filling {size:,} pages")
            members = (
                keys.member(generation.decode(), self.stub.key(user_id=size, page=number, per_page=10))[0]
                for number in range(2, size + 1)
            )
            self._set_many(members, payload, PAGE_TTL_MS)
            self._seed_payload = payload
            self._fill_seed(size)
        missing = self.keyspace - redis.dbsize()
        if missing > 0:
            progress(f"padding the keyspace with {missing:,} keys")
            self._populate(missing)
        self.checks["Scratch keyspace"] = f"{redis.dbsize():,} keys"
        self._check_hits()

    def _set_many(self, keys: Iterable[str], payload: bytes, px: int) -> None:
        script = self.redis.register_script(_SET_MANY)
        batch: list[str] = []
        for key in keys:
            batch.append(key)
            if len(batch) == CHUNK:
                script(keys=batch, args=[payload, px])
                batch = []
        if batch:
            script(keys=batch, args=[payload, px])

    def _fill_seed(self, size: int) -> None:
        # The seed stored its pages with SETEX 900 (15 minutes).
        self._set_many((_seed_key(size, n) for n in range(1, size + 1)), self._seed_payload, SEED_TTL_MS)

    def _populate(self, count: int) -> None:
        from redis.exceptions import ResponseError

        try:
            self.redis.execute_command("DEBUG", "POPULATE", count, "filler", 40)
            return
        except ResponseError:
            pass  # DEBUG disabled: write them with pipelines instead
        for start in range(0, count, CHUNK):
            pipe = self.redis.pipeline(transaction=False)
            for number in range(start, min(start + CHUNK, count)):
                pipe.set(f"filler:{number}", b"x" * 40)
            pipe.execute()

    def _check_hits(self) -> None:
        """Sampled pages of every family are served as hits (the stub's body does not run)."""
        calls = self.functions["calls"]
        rng = random.Random(3)
        for size in self.sizes:
            before = calls["n"]
            for page in rng.sample(range(1, size + 1), min(size, 5)):
                self.stub(user_id=size, page=page, per_page=10)
            self.checks[f"{size:,}-page family: sampled pages served from cache"] = (
                "yes" if calls["n"] == before else f"NO ({calls['n'] - before} misses)"
            )

    # -- measurement -----------------------------------------------------------------

    def _restore(self, size: int) -> Callable[[], None]:
        key, generation = self.generations[size]
        redis = self.redis

        def restore() -> None:
            redis.set(key, generation, keepttl=True)

        return restore

    def ours(self, rounds: int) -> dict[str, Summary]:
        from cachepatterns_app import invalidate_family

        def bump(size: int) -> Callable[[], None]:
            return lambda: invalidate_family(FAMILY, user_id=size)

        variants = [
            Variant(
                f"family_{size}",
                f"invalidate_family() with {size:,} cached pages",
                bump(size),
                self._restore(size),
            )
            for size in self.sizes
        ]
        self._check_invalidates(bump)
        return measure(variants, rounds, warmup=max(10, rounds // 20))

    def _check_invalidates(self, bump: Callable[[int], Callable[[], None]]) -> None:
        calls = self.functions["calls"]
        for size in self.sizes:
            self._restore(size)()
            bump(size)()
            before = calls["n"]
            self.stub(user_id=size, page=1, per_page=10)
            invalidated = calls["n"] == before + 1
            self._restore(size)()
            self.checks[f"{size:,}-page family: a page is a miss after invalidate_family()"] = (
                "yes" if invalidated else "NO"
            )

    def seed(self, rounds: int) -> dict[str, Summary]:
        redis = self.redis

        def invalidate(size: int) -> Callable[[], None]:
            pattern = _seed_pattern(size)

            def run() -> None:
                # The seed's _invalidate_user_posts_cache(), minus its print().
                keys = redis.keys(pattern)
                if keys:
                    redis.delete(*keys)

            return run

        def refill(size: int) -> Callable[[], None]:
            return lambda: self._fill_seed(size)

        for size in self.sizes:
            found = len(redis.keys(_seed_pattern(size)))
            self.checks[f"seed KEYS {_seed_pattern(size)!r} matches"] = f"{found:,} keys"
        variants = [
            Variant(
                f"seed_{size}",
                f"seed KEYS pattern + DEL with {size:,} cached pages",
                invalidate(size),
                after=refill(size),
            )
            for size in self.sizes
        ]
        return measure(variants, rounds, warmup=1)

    def info(self) -> dict[str, Any]:
        server = self.redis.info("server")
        return {"redis_version": server.get("redis_version"), "keys": self.redis.dbsize()}
