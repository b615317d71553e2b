"""
Prepare what the bench measures against: the database and its tables, the rows,
and a description of the machine; clean up the keys the bench wrote.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import random
import subprocess
from typing import Any

from django.conf import settings
from django.db import connection, models

__all__ = [
    "HIT_PK",
    "MISS_PK",
    "PAGE_AUTHOR",
    "ROW_PKS",
    "cleanup_redis",
    "create_database",
    "create_rows",
    "create_tables",
    "machine_note",
]

HIT_PK = 1
MISS_PK = 2
SAVE_PK = 3
ATOMIC_SAVE_PK = 4
PAGE_AUTHOR = 5
#: Rows read by get_many(100) and by the 100 single gets.
ROW_PKS = list(range(101, 201))
AUTHORS = 300
PROFILES = 10
PAGE_POSTS = 40

_WORDS = [
    "cache",
    "redis",
    "mariadb",
    "django",
    "query",
    "page",
    "author",
    "post",
    "lease",
    "generation",
    "family",
    "stale",
    "commit",
    "invalidate",
    "write",
    "through",
    "behind",
    "refresh",
    "ahead",
    "latency",
    "round",
    "trip",
    "socket",
    "server",
    "client",
    "value",
    "key",
    "expire",
    "jitter",
    "stampede",
    "single",
    "flight",
    "version",
    "order",
]


def create_database() -> None:
    """Create the MySQL/MariaDB database named in ``DATABASE_URL`` if it is missing."""
    db = settings.DATABASES["default"]
    if not db["ENGINE"].endswith("mysql"):
        return  # SQLite creates its file; PostgreSQL databases are created by their owner
    import MySQLdb

    kwargs: dict[str, Any] = {"user": db.get("USER") or "root", "charset": "utf8mb4"}
    if db.get("HOST"):
        kwargs["host"] = db["HOST"]
    if db.get("PORT"):
        kwargs["port"] = int(db["PORT"])
    if db.get("PASSWORD"):
        kwargs["password"] = db["PASSWORD"]
    server = MySQLdb.connect(**kwargs)
    try:
        name = db["NAME"].replace("`", "``")
        server.cursor().execute(
            f"CREATE DATABASE IF NOT EXISTS `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )
    finally:
        server.close()


def create_tables() -> None:
    """Drop and create the bench tables, so every run starts from the same rows."""
    from bench.models import BENCH_MODELS
    from cachepatterns_app.models import WriteBehindFence, WriteBehindIncrement, WriteBehindTombstone

    existing = set(connection.introspection.table_names())
    with connection.schema_editor() as editor:
        for model in reversed(BENCH_MODELS):
            if model._meta.db_table in existing:
                editor.delete_model(model)
        for model in BENCH_MODELS:
            editor.create_model(model)
        # The app's own tables that write-behind uses (the bench does not migrate).
        for model in (WriteBehindTombstone, WriteBehindFence, WriteBehindIncrement):
            if model._meta.db_table in existing:
                editor.delete_model(model)
            editor.create_model(model)


def _text(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _author_fields(rng: random.Random, pk: int, now: datetime.datetime) -> dict[str, Any]:
    return {
        "id": pk,
        "name": f"Author {pk} {_text(rng, 2)[:-1]}",
        "email": f"author{pk}@example.com",
        "bio": _text(rng, 30),
        "joined": now - datetime.timedelta(days=rng.randint(1, 2000), seconds=rng.randint(0, 86399)),
        "last_login": now - datetime.timedelta(minutes=rng.randint(1, 100000)),
        "post_count": rng.randint(0, 500),
        "follower_count": rng.randint(0, 100000),
    }


def create_rows() -> None:
    """Insert the rows; through the plain base managers so nothing is invalidated or cached."""
    from bench.models import Author, Ledger, PlainAuthor, PlainLedger, PlainProfile, Post, Profile

    rng = random.Random(20261128)
    now = datetime.datetime(2026, 11, 28, 12, 0, tzinfo=datetime.UTC)
    rows = [_author_fields(rng, pk, now) for pk in range(1, AUTHORS + 1)]
    models.QuerySet(Author).bulk_create([Author(**row) for row in rows])
    models.QuerySet(PlainAuthor).bulk_create([PlainAuthor(**row) for row in rows])
    models.QuerySet(Profile).bulk_create([Profile(**row) for row in rows[:PROFILES]])
    models.QuerySet(PlainProfile).bulk_create([PlainProfile(**row) for row in rows[:PROFILES]])
    models.QuerySet(Ledger).bulk_create([Ledger(**row) for row in rows[:PROFILES]])
    models.QuerySet(PlainLedger).bulk_create([PlainLedger(**row) for row in rows[:PROFILES]])
    posts = []
    for author in range(1, 21):
        count = PAGE_POSTS if author == PAGE_AUTHOR else 12
        for n in range(count):
            posts.append(
                Post(
                    author_id=author,
                    title=_text(rng, 7),
                    body=_text(rng, 35),
                    created_at=now - datetime.timedelta(hours=n * 7 + author),
                )
            )
    models.QuerySet(Post).bulk_create(posts)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _nproc() -> str:
    try:
        return subprocess.run(["nproc"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(len(os.sched_getaffinity(0)))


def machine_note(redis_info: dict[str, Any]) -> dict[str, str]:
    """Return what the reader needs to compare these numbers with their own."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT VERSION()")
        (db_version,) = cursor.fetchone()
    load = os.getloadavg()
    return {
        "CPU": f"{_cpu_model()}, nproc {_nproc()}, {platform.machine()}",
        "OS": f"{platform.system()} {platform.release()}",
        "Python": platform.python_version(),
        "Django": _version("django"),
        "Database": f"{connection.vendor} {db_version}",
        "Redis": f"{redis_info.get('redis_version', '?')} ({redis_info.get('redis_mode', '?')})",
        "Clients": (
            f"redis-py {_version('redis')}, hiredis {_version('hiredis')}, "
            f"django-redis {_version('django-redis')}, mysqlclient {_version('mysqlclient')}"
        ),
        "Load average at start": " ".join(f"{x:.2f}" for x in load),
    }


def cleanup_redis(client: Any, pattern: str = "cpbench*") -> int:
    """Delete the bench's keys by prefix (SCAN + UNLINK; the bench never flushes a database)."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            removed += client.unlink(*batch)
            batch.clear()
    if batch:
        removed += client.unlink(*batch)
    return removed


def purge_tasks() -> int:
    """
    Drop the bench's Celery messages waiting in its broker: the early-flush triggers the
    write-behind saves publish while no worker runs would otherwise be left behind (and
    run by the next bench's worker, in the middle of another measurement).
    """
    from bench.celery_app import app

    return int(app.control.purge() or 0)
