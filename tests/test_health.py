"""
The health panel (``cachepatterns_app.health``) on real reports: a private Redis
configured the way an operator must hear about, a write-behind queue standing in
for the real one (its operations are the only thing replaced), invalidations
recorded in the real table.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from django.test import override_settings

from cachepatterns_app import metrics, stats
from cachepatterns_app.models import PendingInvalidation
from cachepatterns_app.patterns.write_behind import operations as write_behind
from tests.support import cachepatterns, private_redis

pytestmark = pytest.mark.django_db


def found(report: dict[str, Any]) -> set[str]:
    return {f["id"] for f in report["health"]}


def queue(monkeypatch: Any, *, pending: int = 0, age: float | None = None, dead: int = 0) -> None:
    models = [
        {
            "label": "testapp.author",
            "pending": pending,
            "oldest_pending_age": age,
            "stream_length": pending,
            "dead_letters": dead,
            "consumers": 1,
        }
    ]
    monkeypatch.setattr(write_behind, "status", lambda: {"enabled": True, "models": models})


def without_write_behind(monkeypatch: Any) -> None:
    """A project with no write-behind model (the suite's own test app has some)."""
    monkeypatch.setattr(write_behind, "caches", lambda model=None: [])


def test_a_healthy_cache_has_nothing_to_say(monkeypatch: Any) -> None:
    without_write_behind(monkeypatch)
    assert stats.report()["health"] == []


def test_write_behind_on_a_server_that_can_lose_dirty_rows(monkeypatch: Any) -> None:
    queue(monkeypatch)
    with (
        private_redis("--maxmemory-policy", "allkeys-lru") as server,
        override_settings(CACHES=server.caches()),
    ):
        report = stats.report()
        assert {"eviction_policy", "aof_off"} <= found(report)
        server.client.config_set("maxmemory-policy", "volatile-lru")
        server.client.config_set("appendonly", "yes")
        assert not {"eviction_policy", "aof_off"} & found(stats.report())


def test_real_write_behind_models_on_a_server_without_aof() -> None:
    # No stand-in: the test app's write-behind models make status() say "enabled".
    with private_redis() as server, override_settings(CACHES=server.caches()):
        report = stats.report()
        assert report["write_behind"]["enabled"] is True
        assert "aof_off" in found(report)
        server.client.config_set("appendonly", "yes")
        assert "aof_off" not in found(stats.report())


def test_without_write_behind_allkeys_and_no_aof_are_fine(monkeypatch: Any) -> None:
    without_write_behind(monkeypatch)
    with (
        private_redis("--maxmemory-policy", "allkeys-lru") as server,
        override_settings(CACHES=server.caches()),
    ):
        assert stats.report()["health"] == []


def test_an_old_pending_write_and_dead_letters(monkeypatch: Any) -> None:
    durable = private_redis("--appendonly", "yes")
    with (
        durable as server,
        override_settings(CACHES=server.caches()),
        cachepatterns(WRITE_BEHIND={"WARN_AFTER": 20}),
    ):
        queue(monkeypatch, pending=4, age=19.0, dead=2)
        assert found(stats.report()) == {"dead_letters"}  # 19 s < WARN_AFTER
        queue(monkeypatch, pending=4, age=21.0)
        report = stats.report()
    assert found(report) == {"write_behind_lag"}
    assert report["write_behind"]["age_limit"] == 20.0


def test_invalidations_recorded_in_the_database(monkeypatch: Any) -> None:
    without_write_behind(monkeypatch)
    PendingInvalidation.objects.create(digest="d" * 64, command=["DEL", "cpt:x"], label="testapp.author")
    report = stats.report()
    assert found(report) == {"pending_invalidations"}
    assert report["pending_invalidations"]["recorded"] == 1
    assert report["pending_invalidations"]["oldest_age"] >= 0


def test_evicted_keys_rising_since_an_earlier_sample(monkeypatch: Any) -> None:
    # volatile-ttl evicts the keys closest to expiring first: the fillers (100 s), not
    # the statistics' minute hashes (two hours), which must keep the earlier sample.
    options = ("--maxmemory", "2mb", "--maxmemory-policy", "volatile-ttl", "--maxmemory-samples", "10")
    with private_redis(*options) as server, override_settings(CACHES=server.caches()):
        stats.report()  # the first sample of evicted_keys
        pipe = server.client.pipeline(transaction=False)
        for i in range(300):
            pipe.set(f"filler:{i}", "x" * 20_000, ex=100)
        pipe.execute()
        evicted = int(server.client.info("stats")["evicted_keys"])
        assert evicted > 0
        report = stats.report()
    (finding,) = [f for f in report["health"] if f["id"] == "evictions"]
    # The report's own writes (its samples) may push one more key out: at least; and
    # the two reports may fall on either side of a minute's turn.
    match = re.match(r"Redis evicted (\d+) keys in the last [12] min", finding["title"])
    assert match, finding
    assert int(match[1]) >= evicted


def test_memory_close_to_maxmemory() -> None:
    full = ("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    with private_redis(*full) as server, override_settings(CACHES=server.caches()):
        pipe = server.client.pipeline(transaction=False)
        for i in range(200):
            pipe.set(f"filler:{i}", "x" * 10_000)
        pipe.execute(raise_on_error=False)
        report = stats.report()
    assert "memory" in found(report)


def test_quantiles_from_buckets() -> None:
    buckets = [0] * len(stats.BUCKETS)
    buckets[stats.BUCKETS.index(0.01)] = 10  # ten loads between 5 and 10 ms
    assert metrics.quantile(0.5, buckets) == pytest.approx(0.0075)
    assert metrics.quantile(1.0, buckets) == pytest.approx(0.01)
    assert metrics.quantile(0.5, [0] * len(stats.BUCKETS)) is None
    buckets[-1] = 90  # beyond the last finite bound: all that can be said is "more than 10 s"
    assert metrics.quantile(0.99, buckets) == 10.0
