"""
Statistics of short-lived processes reach Redis (``cachepatterns_app.stats``):
a ``manage.py shell -c`` that read through the cache, a Celery task, and a process
whose Redis is down at exit (which must still exit cleanly). Each process here is
a real one: the suite's settings, its test database and its Redis.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connection

from cachepatterns_app import stats
from tests.support import PATIENCE, cachepatterns, wait_until
from tests.testapp.models import Author
from tests.testapp.tasks import read_author

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.django_db(transaction=True)


def django_admin(*args: str, redis_url: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``django-admin`` in a new process on the suite's settings, database and Redis."""
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "CP_WORKER_DB_NAME": str(connection.settings_dict["NAME"]),
        "REDIS_URL": redis_url or settings.REDIS_URL,
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_shell_command_ships_its_counts_at_exit() -> None:
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    code = f"from tests.testapp.models import Author\nfor _ in range(5): Author.objects.get(pk={ada.pk})\n"
    shell = django_admin("shell", "-c", code)
    assert shell.returncode == 0, shell.stderr

    # Another process sees them: they were sent before the shell exited (five reads
    # take far less than the one-second shipping interval).
    report = django_admin("cachepatterns_stats", "--json")
    assert report.returncode == 0, report.stderr
    counts = json.loads(report.stdout)["labels"]["testapp.author"]["events"]
    assert (counts["miss"], counts["hit"]) == (1, 4), counts


def test_a_process_whose_redis_is_down_at_exit_still_exits_cleanly() -> None:
    code = "from tests.testapp.models import Author\nprint(Author.objects.filter(pk=1).exists())\n"
    code += "from cachepatterns_app import stats; stats.record('hit', 'exit-test')\n"
    shell = django_admin("shell", "-c", code, redis_url="redis://127.0.0.1:1/0")
    assert shell.returncode == 0, shell.stderr
    assert "Traceback" not in shell.stderr


@pytest.mark.worker
def test_a_celery_task_ships_the_workers_counts_when_it_ends(celery_worker: Any) -> None:
    ada = Author.objects.create(name="Ada", email="ada@example.com")
    # The worker reads (a miss); this process only wrote (an invalidation).
    assert read_author.apply_async((ada.pk,), queue=celery_worker.queue).get(timeout=PATIENCE) == "Ada"

    def workers_miss() -> int:
        return int(stats.snapshot().get("testapp.author", {}).get("miss", 0))

    # The worker keeps running: only the task's end can have sent this.
    assert wait_until(lambda: workers_miss() == 1), stats.snapshot()
    assert stats.local_counts().get("testapp.author|miss", 0) == 0


def test_a_forked_child_does_not_ship_its_parents_counts() -> None:
    stats.record("hit", "fork-test", 3)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it would ship, and leave at once
        try:
            unshipped = {"|".join(k): n for k, n in stats._unshipped().items()}
            os.write(write, json.dumps([stats.local_counts(), unshipped]).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = json.loads(os.read(read, 10_000).decode())
    os.waitpid(pid, 0)
    os.close(read)
    assert child == [{}, {}]
    assert stats.local_counts()["fork-test|hit"] == 3  # the parent's are still the parent's


def test_durations_from_two_processes_land_in_one_distribution() -> None:
    # 0.3 ms, 2 ms and 40 ms here; 7 s in another process.
    for seconds in (0.0003, 0.002, 0.04):
        stats.observe("db_load", "observe-test", seconds)
    code = "from cachepatterns_app import stats\nstats.observe('db_load', 'observe-test', 7.0)\n"
    shell = django_admin("shell", "-c", code)
    assert shell.returncode == 0, shell.stderr

    cell = stats.durations()[("observe-test", "db_load")]
    by_bound = dict(zip(stats.BUCKETS, cell["buckets"], strict=True))
    assert (by_bound[0.0005], by_bound[0.0025], by_bound[0.05], by_bound[10.0]) == (1, 1, 1, 1)
    assert sum(cell["buckets"]) == 4
    assert cell["sum"] == pytest.approx(7.0423, abs=1e-6)  # kept in whole microseconds


def recent(field: str) -> float | None:
    # The last two minutes: a shipment may land just before the minute turns.
    return next((f[field] for _, f in reversed(stats.history()[-2:]) if field in f), None)


def test_gauges_keep_the_last_value_and_a_minute_of_history() -> None:
    stats.gauge("wb_pending", "testapp.author", 5)
    stats.gauge("wb_pending", "testapp.author", 3)
    assert stats.gauges()[("testapp.author", "wb_pending")]["value"] == 3.0
    assert recent("g|testapp.author|wb_pending") == 3.0


def test_reset_forgets_counts_durations_gauges_and_history() -> None:
    stats.record("hit", "reset-test")
    stats.observe("db_load", "reset-test", 0.01)
    stats.gauge("wb_pending", "reset-test", 1)
    stats.flush()
    assert recent("e|hit") == 1.0
    stats.reset()
    assert stats.snapshot() == {}
    assert stats.durations() == {}
    assert stats.gauges() == {}
    assert all(fields == {} for _, fields in stats.history())


def test_counting_a_hit_sends_nothing_to_redis(monkeypatch: Any) -> None:
    """Stats on or off, fifty hits are fifty round trips: counting rides on nothing of its own."""
    from django.test import override_settings

    from tests.support import private_redis, traffic_to

    monkeypatch.setattr(stats, "FLUSH_EVERY", 3600.0)  # no shipment falls due meanwhile
    with private_redis() as server, override_settings(CACHES=server.caches()):
        ada = Author.objects.create(name="Ada", email="ada@example.com")
        Author.objects.get(pk=ada.pk)
        Author.objects.get(pk=ada.pk)  # the fill has run: from here on, hits
        sent = {}
        for on in (True, False):
            with cachepatterns(STATS=on):
                Author.objects.get(pk=ada.pk)  # a fresh store after the override
                with traffic_to(server.port) as traffic:
                    for _ in range(50):
                        Author.objects.get(pk=ada.pk)
                sent[on] = (traffic.sends, traffic.replies, traffic.connects)
    assert sent[True] == sent[False] == (50, 50, 0), sent
    assert stats.local_counts()["testapp.author|hit"] >= 51
