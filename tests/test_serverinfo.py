"""
Redis server facts (``cachepatterns_app.serverinfo``) and the report's cost against
a server holding a million keys: counted commands, never a clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import override_settings

from cachepatterns_app import serverinfo, stats
from cachepatterns_app.store import get_store
from tests.support import private_redis

pytestmark = pytest.mark.django_db


def test_facts_of_the_suites_redis() -> None:
    facts = serverinfo.facts(get_store())
    assert facts["available"] is True
    assert facts["role"] == "master"
    assert facts["version"].count(".") == 2
    assert facts["used_memory"] > 0
    assert facts["used_memory_human"]
    assert facts["maxmemory_policy"]
    assert facts["connected_clients"] >= 1
    assert facts["aof_enabled"] in (True, False)
    assert facts["keyspace_hits"] >= 0


def test_parse_without_config() -> None:
    info = {
        "redis_version": "7.2.4",
        "valkey_version": "8.0.1",
        "role": "master",
        "aof_enabled": 0,
        "keyspace_hits": 9,
        "keyspace_misses": 1,
        "db3": {"keys": 5, "expires": 0},
        "db0": {"keys": 2, "expires": 0},
    }
    refused = Exception("ERR unknown command 'CONFIG'")
    facts = serverinfo.parse(info, refused, refused, db=3)
    assert (facts["server"], facts["version"]) == ("valkey", "8.0.1")
    assert facts["maxmemory_policy"] is None  # neither INFO nor CONFIG said
    assert facts["config_refused"] is True
    assert facts["persistence"] == "no AOF; RDB unknown (CONFIG refused)"
    assert facts["keyspace_hit_rate"] == 0.9
    assert (facts["keys"], facts["db_keys"]) == (7, 5)


def test_a_server_that_refuses_config_still_reports_its_policy_from_info() -> None:
    with private_redis("--rename-command", "CONFIG", "") as server, override_settings(CACHES=server.caches()):
        facts = serverinfo.facts(get_store())
    assert facts["available"] is True
    assert facts["config_refused"] is True
    assert facts["maxmemory_policy"] == "noeviction"  # INFO memory carries it


def test_rdb_and_aof_are_read_from_the_server() -> None:
    with private_redis() as server, override_settings(CACHES=server.caches()):
        assert serverinfo.facts(get_store())["persistence"] == "none"  # --save "" --appendonly no
        server.client.config_set("save", "3600 1")
        server.client.config_set("appendonly", "yes")
        facts = serverinfo.facts(get_store())
    assert facts["persistence"] == "AOF + RDB"
    assert facts["aof_enabled"] is True


def test_redis_down_is_reported_not_raised() -> None:
    down = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:1/0",
            "OPTIONS": {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2},
        }
    }
    with override_settings(CACHES=down):
        facts = serverinfo.facts(get_store())
        report = stats.report()
    assert facts["available"] is False
    assert "unreachable" in facts["error"]
    assert {f["id"] for f in report["health"]} >= {"redis_down", "breaker_open"}


def _delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {name: n - before.get(name, 0) for name, n in after.items() if n != before.get(name, 0)}


@pytest.mark.slow
def test_the_report_costs_the_same_commands_with_a_million_keys(redis: Any) -> None:
    """No KEYS, no SCAN, nothing per key: the commands a report sends do not depend on the keyspace."""
    with private_redis() as server, override_settings(CACHES=server.caches(socket_timeout=5.0)):
        stats.record("hit", "testapp.author", 9)
        stats.report()  # the first one loads nothing lazily after this
        before = server.command_calls()
        stats.report()
        empty = _delta(before, server.command_calls())

        pipe = server.client.pipeline(transaction=False)
        for start in range(0, 1_000_000, 10_000):
            pipe.mset({f"filler:{i}": "x" for i in range(start, start + 10_000)})
        pipe.execute()
        assert server.client.dbsize() >= 1_000_000

        before = server.command_calls()
        report = stats.report()
        full = _delta(before, server.command_calls())
    assert report["redis"]["db_keys"] >= 1_000_000
    assert not [name for name in full if name.split("|")[0] in {"keys", "scan", "hscan", "sscan", "zscan"}]
    # The observer's own INFO commandstats is one "info" more in each count.
    assert full == empty, (empty, full)
    # A constant: the hour's minute hashes plus a few per write-behind model (its queue's
    # length, pending count, oldest entry, dead letters…), however many keys there are.
    from cachepatterns_app.patterns.write_behind.operations import caches

    assert sum(full.values()) < stats.HISTORY_MINUTES + 20 + 12 * len(caches()), full
