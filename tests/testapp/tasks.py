"""Tasks the suite runs in a real worker process."""

from __future__ import annotations

from celery import shared_task
from django.db import models

from tests.testapp.models import Author


@shared_task(name="tests.rename_author")
def rename_author(pk: int, name: str) -> str:
    author = models.QuerySet(Author).get(pk=pk)
    author.name = name
    author.save()
    return author.name


@shared_task(name="tests.read_author")
def read_author(pk: int) -> str:
    return Author.objects.get(pk=pk).name


@shared_task(name="tests.flush_and_crash")
def flush_and_crash(point: str) -> None:
    """
    Flush the Counter queue and die by SIGKILL at ``point``: "before_commit" (while the
    transaction is writing the rows) or "after_commit" (committed, not acknowledged).
    A real process death at an exact point, for the write-behind crash tests.
    """
    import os
    import signal

    from django.db import connection

    from cachepatterns_app.patterns.write_behind import queue as queue_module
    from cachepatterns_app.patterns.write_behind.flush import flush_model
    from cachepatterns_app.registry import row_cache_for
    from tests.testapp.models import Counter

    def die(*args: object, **kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    cache = row_cache_for(Counter)
    if point == "after_commit":
        queue_module.Queue.acknowledge = die  # type: ignore[method-assign]
        flush_model(cache, "default")  # type: ignore[arg-type]
        return

    def crash_on_write(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        if sql.startswith(("UPDATE", "INSERT")) and "testapp_counter" in sql:
            die()
        return execute(sql, params, many, context)

    with connection.execute_wrapper(crash_on_write):
        flush_model(cache, "default")  # type: ignore[arg-type]
