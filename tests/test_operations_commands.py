"""
The operations commands: ``cachepatterns_warm`` (and ``maintenance``, which it
runs), ``cachepatterns_flush`` and ``cachepatterns_dlq`` — against the real Redis
and database; write-behind's operations are its real (empty) ones, or a stand-in
where a test needs a queue with something in it.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext

from cachepatterns_app import maintenance
from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.patterns.write_behind import operations as write_behind
from tests.support import keys_of, settle
from tests.test_admin import FakeQueue
from tests.testapp.models import Author

pytestmark = pytest.mark.django_db(transaction=True)

DOWN = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2},
    }
}


def run(*args: str) -> str:
    out = StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def authors(n: int) -> list[Author]:
    return [Author.objects.create(name=f"A{i}", email=f"a{i}@example.com") for i in range(n)]


# -- cachepatterns_warm --------------------------------------------------------------------


def test_warm_loads_every_row_once_with_a_progress_bar(redis: Any) -> None:
    rows = authors(25)
    for row in rows[:5]:
        Author.objects.get(pk=row.pk)  # already cached
    settle()
    out = run("cachepatterns_warm", "testapp.Author", "--batch", "10")
    lines = out.splitlines()
    assert lines[:3] == [
        "[############..................]  40% 10/25 rows",
        "[########################......]  80% 20/25 rows",
        "[##############################] 100% 25/25 rows",
    ]
    assert lines[-1].startswith("Warmed 25 testapp.Author row(s) in ")
    assert lines[-1].endswith(": 20 loaded into the cache, 5 already cached.")
    settle()
    assert all(redis.exists(keys_of(Author, row.pk).value) for row in rows)
    again = run("cachepatterns_warm", "testapp.Author", "--batch", "10").splitlines()[-1]
    assert again.endswith(": 0 loaded into the cache, 25 already cached.")


def test_warm_holds_one_batch_at_a_time() -> None:
    authors(25)
    with CaptureQueriesContext(connection) as queries:
        run("cachepatterns_warm", "testapp.Author", "--batch", "10")
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    table = Author._meta.db_table
    pks = [sql for sql in reads if f'"{table}"."id"' in sql or f"`{table}`.`id`" in sql]
    # Every read of the table is a page of at most one batch, or the COUNT for the bar.
    assert all("LIMIT 10" in sql or "COUNT(" in sql or " IN (" in sql for sql in pks), pks
    assert sum("LIMIT 10" in sql for sql in pks) == 3


def test_an_interrupted_warm_resumes_after_its_last_batch(redis: Any) -> None:
    rows = authors(25)
    walk = maintenance.warm(Author, batch=10)
    first = next(walk)  # one batch done, then the process "dies"
    assert first.last_pk == rows[9].pk
    walk.close()
    assert maintenance.checkpoint(Author) == rows[9].pk
    out = run("cachepatterns_warm", "testapp.Author", "--batch", "10", "--resume")
    assert out.splitlines()[-1].endswith(": 15 loaded into the cache, 0 already cached.")
    assert maintenance.checkpoint(Author) is None  # done: nothing left to resume
    out = run("cachepatterns_warm", "testapp.Author", "--start-after", str(rows[19].pk))
    assert out.splitlines()[-1].startswith("Warmed 5 testapp.Author row(s)")


def test_warm_resume_without_a_checkpoint_starts_from_the_first_row() -> None:
    authors(3)
    out = run("cachepatterns_warm", "testapp.Author", "--resume")
    assert out.startswith("No interrupted warm of testapp.Author to resume; starting from the first row.")
    assert "Warmed 3 testapp.Author row(s)" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["nope"], "is not a model"),
        (["testapp.Post"], "is not cached"),
        (["testapp.Author", "--batch", "0"], "--batch must be at least 1"),
    ],
)
def test_warm_explains_bad_input(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("cachepatterns_warm", *args)


def test_warm_says_when_redis_is_down() -> None:
    authors(2)
    with (
        override_settings(CACHES=DOWN),
        pytest.raises(CommandError, match="Redis is unavailable, nothing was warmed"),
    ):
        run("cachepatterns_warm", "testapp.Author")


def test_warm_stops_with_a_resume_hint_when_redis_goes_away(monkeypatch: Any) -> None:
    rows = authors(25)
    real = maintenance.get_store

    class Failing:
        def __init__(self) -> None:
            self.batches = 0

        def __getattr__(self, name: str) -> Any:
            return getattr(real(), name)

        def pipeline(self, commands: Any, **kwargs: Any) -> Any:
            self.batches += 1
            if self.batches == 2:
                raise CacheUnavailable("Redis for cache 'default' is unreachable: gone")
            return real().pipeline(commands, **kwargs)

    failing = Failing()
    monkeypatch.setattr(maintenance, "get_store", lambda: failing)
    with pytest.raises(
        CommandError, match=f"after 10 row\\(s\\).*--resume \\(or --start-after {rows[9].pk}\\)"
    ):
        run("cachepatterns_warm", "testapp.Author", "--batch", "10")


# -- cachepatterns_flush --------------------------------------------------------------------


@pytest.fixture
def queue(monkeypatch: Any) -> FakeQueue:
    fake = FakeQueue()
    for name in ("status", "flush", "dead_letters", "replay", "purge"):
        monkeypatch.setattr(write_behind, name, getattr(fake, name))
    return fake


def test_flush_with_the_real_empty_queue() -> None:
    assert run("cachepatterns_flush") == (
        "Flushed every write-behind model: 0 row(s) written to the database; 0 pending.\n"
    )


def test_flush_one_model_drains_it(queue: FakeQueue) -> None:
    out = run("cachepatterns_flush", "testapp.Author")
    assert out == "Flushed testapp.Author: 3 row(s) written to the database; 0 pending.\n"
    assert queue.calls == [("flush", Author, True)]
    assert (
        run("cachepatterns_flush", "--no-wait")
        == "Flush of every write-behind model started; 0 write(s) pending.\n"
    )
    assert queue.calls[-1] == ("flush", None, False)


def test_flush_explains_errors(monkeypatch: Any) -> None:
    with pytest.raises(CommandError, match="is not a model"):
        run("cachepatterns_flush", "nope.Nope")

    def down(model: Any = None, *, wait: bool = True) -> int:
        raise CacheUnavailable("Redis for cache 'default' is unreachable: refused")

    monkeypatch.setattr(write_behind, "flush", down)
    with pytest.raises(CommandError, match="Write-behind could not be flushed: Redis for cache"):
        run("cachepatterns_flush")


# -- cachepatterns_dlq ------------------------------------------------------------------------


def test_dlq_with_the_real_empty_queue() -> None:
    assert run("cachepatterns_dlq", "list") == "No dead letters.\n"
    assert run("cachepatterns_dlq", "list", "--json") == "[]\n"
    assert run("cachepatterns_dlq", "replay", "--all") == "Replayed 0 dead letter(s).\n"
    assert run("cachepatterns_dlq", "purge", "--all") == "Purged 0 dead letter(s).\n"


def test_dlq_lists_replays_and_purges(queue: FakeQueue) -> None:
    listing = run("cachepatterns_dlq", "list").splitlines()
    assert listing == [
        "1-0  testapp.author pk=0  attempts=8  at=2026-01-01T00:00:00Z  boom",
        "2-0  testapp.author pk=1  attempts=8  at=2026-01-01T00:00:00Z  boom",
    ]
    assert run("cachepatterns_dlq", "replay", "2-0") == "Replayed 1 dead letter(s).\n"
    assert run("cachepatterns_dlq", "purge", "--all") == "Purged 2 dead letter(s).\n"
    assert queue.calls == [("replay", ["2-0"]), ("purge", None)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["replay"], "Name dead-letter ids, or give --all"),
        (["purge", "1-0", "--all"], "Name dead-letter ids, or give --all"),
        (["list", "--limit", "0"], "--limit must be at least 1"),
    ],
)
def test_dlq_explains_bad_input(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        run("cachepatterns_dlq", *args)


def test_dlq_says_when_redis_is_down(monkeypatch: Any) -> None:
    def down(limit: int = 100) -> list[Any]:
        raise CacheUnavailable("Redis for cache 'default' is unreachable: refused")

    monkeypatch.setattr(write_behind, "dead_letters", down)
    with pytest.raises(CommandError, match="Dead letters unavailable: Redis for cache"):
        run("cachepatterns_dlq", "list")
