"""
Tests for ``cachepatterns_app.checks``: each message is raised by a setting that
should raise it, carries a hint, and is silent under the suite's own settings.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.core import checks as django_checks
from django.core.checks import CheckMessage
from django.db import connections, models
from django.test import override_settings
from django.test.utils import isolate_apps

from cachepatterns_app import registry, store
from cachepatterns_app.checks import (
    ALL,
    DATABASE,
    check_cache,
    check_functions,
    check_isolation,
    check_migrated,
    check_models,
    check_redis_reachable,
    check_settings,
)
from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.managers import CacheAsideManager, WriteThroughManager


def ids(messages: list[CheckMessage]) -> list[str]:
    for message in messages:
        assert message.hint, f"{message.id} has no hint"
    return [m.id for m in messages if m.id]


def with_cp(**overrides: Any) -> override_settings:
    return override_settings(CACHEPATTERNS={**settings.CACHEPATTERNS, **overrides})


def redis_cache(location: str, **options: Any) -> dict[str, Any]:
    return {"BACKEND": "django_redis.cache.RedisCache", "LOCATION": location, "OPTIONS": options}


FAST = {"SOCKET_TIMEOUT": 0.3, "SOCKET_CONNECT_TIMEOUT": 0.3}


# -- the suite's settings are clean -----------------------------------------------


def _suite_declarations(messages: list[CheckMessage]) -> list[CheckMessage]:
    # The suite's own decorated functions are declared when pytest imports the test
    # modules, after Django loaded the apps: W008 is right about those, and only those.
    # W010 is silenced in the suite's settings (its Redis keeps nothing on disk).
    return [
        m
        for m in messages
        if not (m.id == "cachepatterns.W008" and str(m.msg).startswith("tests."))
        and m.id != "cachepatterns.W010"
    ]


@pytest.mark.parametrize("check", ALL, ids=[c.__name__ for c in ALL])
def test_default_test_settings_raise_nothing(check: Callable[..., list[CheckMessage]]) -> None:
    assert _suite_declarations(check()) == []


def test_the_database_checks_are_silent_on_the_migrated_test_database(db: Any) -> None:
    for check in DATABASE:
        assert check(databases=["default"]) == []


@pytest.mark.django_db(databases=["default", "other"])
def test_checks_are_registered_under_the_cachepatterns_tag() -> None:
    # Both databases: Django 6 runs database-tagged checks too when tags are given.
    assert _suite_declarations(django_checks.run_checks(tags=["cachepatterns"])) == []
    with with_cp(SERIALIZER="yaml"):
        found = django_checks.run_checks(tags=["cachepatterns"])
    assert "cachepatterns.E006" in ids(found)


# -- settings ------------------------------------------------------------------------


def test_e001_settings_not_a_dict() -> None:
    with override_settings(CACHEPATTERNS=["KEY_PREFIX", "cp"]):
        assert ids(check_settings()) == ["cachepatterns.E001"]
        # The other checks must not crash on it either.
        assert check_cache() == []


def test_e002_unknown_key_suggests_the_close_one() -> None:
    with with_cp(DEFAULT_TLL=60):
        messages = check_settings()
    assert ids(messages) == ["cachepatterns.E002"]
    assert "'DEFAULT_TLL'" in messages[0].msg
    assert "Did you mean 'DEFAULT_TTL'?" in (messages[0].hint or "")


def test_e002_unknown_key_without_a_close_match() -> None:
    with with_cp(ZZZ=1):
        messages = check_settings()
    assert ids(messages) == ["cachepatterns.E002"]
    assert "Did you mean" not in (messages[0].hint or "")


@pytest.mark.parametrize(
    "ttl",
    [
        0,
        -1,
        "60",
        True,
        [60],
        float("inf"),
        float("nan"),
    ],
)
def test_e005_bad_default_ttl(ttl: Any) -> None:
    with with_cp(DEFAULT_TTL=ttl):
        assert ids(check_settings()) == ["cachepatterns.E005"]


@pytest.mark.parametrize("ttl", [None, 1, 0.5, 86400])
def test_e005_not_raised_for_good_ttls(ttl: Any) -> None:
    with with_cp(DEFAULT_TTL=ttl):
        assert check_settings() == []


@pytest.mark.parametrize("name", ["yaml", "JSON", None, ""])
def test_e006_unknown_serializer(name: Any) -> None:
    with with_cp(SERIALIZER=name):
        messages = check_settings()
    assert ids(messages) == ["cachepatterns.E006"]
    assert "json, msgpack, pickle" in (messages[0].hint or "")


@pytest.mark.parametrize("name", ["json", "msgpack", "pickle"])
def test_e006_not_raised_for_known_serializers(name: str) -> None:
    with with_cp(SERIALIZER=name):
        assert check_settings() == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"TTL_JITTER": 1},
        {"TTL_JITTER": -0.1},
        {"TTL_JITTER": "0.1"},
        {"MAX_VALUE_BYTES": 0},
        {"MAX_VALUE_BYTES": True},
        {"LOCK_TIMEOUT": -1},
        {"LOCK_TIMEOUT": None},
        {"DEGRADE_ON_FAILURE": "yes"},
        {"STATS": 1},
        {"KEY_PREFIX": ""},
        {"KEY_PREFIX": "cp{x}"},
        {"KEY_PREFIX": "has space"},
        {"KEY_PREFIX": "x" * 65},
        {"KEY_PREFIX": 5},
        {"LOCK_TIMEOUT": float("inf")},
    ],
    ids=lambda o: repr(o),
)
def test_e007_bad_value(overrides: dict[str, Any]) -> None:
    with with_cp(**overrides):
        messages = check_settings()
    assert ids(messages) == ["cachepatterns.E007"]
    assert repr(next(iter(overrides))) in messages[0].msg


@pytest.mark.parametrize(
    "overrides",
    [
        {"WRITE_BEHIND": 5},
        {"REFRESH_AHEAD": None},
        {"CIRCUIT_BREAKER": []},
        {"WRITE_BEHIND": {"BATCH": 10}},
        {"CIRCUIT_BREAKER": {"THRESHOLD": 0}},
        {"CIRCUIT_BREAKER": {"THRESHOLD": 1.5}},
        {"CIRCUIT_BREAKER": {"COOLDOWN": 0}},
        {"CIRCUIT_BREAKER": {"COOLDOWN": "5"}},
        {"WRITE_BEHIND": {"ON_CACHE_FAILURE": "ignore"}},
        {"WRITE_BEHIND": {"BATCH_SIZE": 0}},
        {"WRITE_BEHIND": {"MAX_RETRIES": True}},
        {"WRITE_BEHIND": {"FLUSH_INTERVAL": "5"}},
        {"REFRESH_AHEAD": {"FACTOR": 1}},
        {"REFRESH_AHEAD": {"FACTOR": 0}},
        {"REFRESH_AHEAD": {"XFETCH_BETA": -1}},
    ],
    ids=lambda o: repr(o),
)
def test_e008_bad_nested_setting(overrides: dict[str, Any]) -> None:
    with with_cp(**overrides):
        messages = check_settings()
    assert ids(messages) == ["cachepatterns.E008"]
    assert repr(next(iter(overrides))) in messages[0].msg


def test_e008_nested_dicts_are_merged_not_replaced() -> None:
    # Setting one sub-key must not make the others "missing".
    with with_cp(WRITE_BEHIND={"BATCH_SIZE": 10}, REFRESH_AHEAD={"XFETCH_BETA": 1.0}):
        assert check_settings() == []


def test_errors_are_reported_together() -> None:
    with with_cp(DEFAULT_TTL=0, SERIALIZER="yaml", TTL_JITTER=2):
        assert sorted(ids(check_settings())) == [
            "cachepatterns.E005",
            "cachepatterns.E006",
            "cachepatterns.E007",
        ]


# -- the cache -----------------------------------------------------------------------


def test_e003_alias_not_in_caches() -> None:
    with with_cp(CACHE_ALIAS="missing"):
        messages = check_cache()
        assert ids(messages) == ["cachepatterns.E003"]
        assert "default" in (messages[0].hint or "")
        # An unusable alias is an error, not also a "Redis unreachable" warning.
        assert check_redis_reachable() == []


def test_e004_alias_is_not_django_redis() -> None:
    caches = {
        "default": settings.CACHES["default"],
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    with override_settings(CACHES=caches), with_cp(CACHE_ALIAS="local"):
        assert ids(check_cache()) == ["cachepatterns.E004"]
        assert check_redis_reachable() == []


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"SOCKET_TIMEOUT": 1.0},
        {"SOCKET_CONNECT_TIMEOUT": 1.0},
        {"SOCKET_TIMEOUT": 0, "SOCKET_CONNECT_TIMEOUT": 1},
    ],
    ids=["none", "no-connect-timeout", "no-socket-timeout", "zero"],
)
def test_w002_missing_socket_timeouts(options: dict[str, Any]) -> None:
    with override_settings(
        CACHES={"default": redis_cache(settings.CACHES["default"]["LOCATION"], **options)}
    ):
        assert ids(check_cache()) == ["cachepatterns.W002"]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP port that accepts connections and never answers: a hung Redis."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"redis://127.0.0.1:{server.getsockname()[1]}/0"


def test_w001_redis_refuses_connections() -> None:
    with override_settings(CACHES={"default": redis_cache("redis://127.0.0.1:1/0", **FAST)}):
        assert ids(check_redis_reachable()) == ["cachepatterns.W001"]
    # Leaving the override must reconnect to the real server (store.reset on setting_changed).
    assert check_redis_reachable() == []


#: Deliberately long: a check that waited for the cache's own socket timeout instead
#: of its one-second probe would take this long.
HUNG_SOCKET_TIMEOUT = 120.0


def test_w001_redis_hangs_the_check_gives_up_after_its_own_short_timeout(silent_server: str) -> None:
    slow = {"SOCKET_TIMEOUT": HUNG_SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": HUNG_SOCKET_TIMEOUT}
    with override_settings(CACHES={"default": redis_cache(silent_server, **slow)}):
        started = time.monotonic()
        assert ids(check_redis_reachable()) == ["cachepatterns.W001"]
        elapsed = time.monotonic() - started
        # A small fraction of the configured timeout: the check's probe (1 s) ended it,
        # however busy the machine; and a failed probe must not open the breaker.
        assert elapsed < HUNG_SOCKET_TIMEOUT / 4, elapsed
        assert store.get_store().breaker.state == "closed"
    assert check_redis_reachable() == []


def test_store_follows_caches_overrides(redis: Any) -> None:
    before = store.get_store()
    with override_settings(CACHES={"default": redis_cache("redis://127.0.0.1:1/0", **FAST)}):
        down = store.get_store()
        assert down is not before
        with pytest.raises(CacheUnavailable):
            down.execute("PING")
    after = store.get_store()
    assert after is not down
    assert after.execute("PING") in (True, b"PONG", "PONG")


# -- models --------------------------------------------------------------------------


@pytest.fixture
def forget_models() -> Iterator[list[type[models.Model]]]:
    """Unregister row caches of models defined in a test (registration is global)."""
    made: list[type[models.Model]] = []
    yield made
    with registry._lock:
        for model in made:
            registry._row_caches.pop(model, None)


@isolate_apps("tests.testapp")
def test_e010_write_through_without_an_integer_version(forget_models: list[Any]) -> None:
    class NoVersion(models.Model):
        version = models.CharField(max_length=10)
        objects = WriteThroughManager()

        class Meta:
            app_label = "testapp"

    class Renamed(models.Model):
        revision = models.IntegerField(default=0)
        objects = WriteThroughManager(version_field="rev")

        class Meta:
            app_label = "testapp"

    class Fine(models.Model):
        revision = models.IntegerField(default=0)
        objects = WriteThroughManager(version_field="revision")

        class Meta:
            app_label = "testapp"

    forget_models.extend([NoVersion, Renamed, Fine])
    found = {m.obj: m for m in check_models() if m.id == "cachepatterns.E010"}
    assert set(found) == {NoVersion, Renamed}
    # The field exists with the wrong type: change it, do not add it again.
    assert "testapp.NoVersion.version is a CharField" in found[NoVersion].msg
    assert (found[NoVersion].hint or "").startswith("Change its type to an integer field")
    assert "Add `" not in (found[NoVersion].hint or "")
    # The field does not exist: add it (or name the existing one).
    assert "has no field 'rev'" in found[Renamed].msg
    assert (found[Renamed].hint or "").startswith("Add `rev = models.PositiveBigIntegerField")


@isolate_apps("tests.testapp")
def test_e011_a_manager_ttl_broken_after_construction(forget_models: list[Any]) -> None:
    class Mutated(models.Model):
        objects = CacheAsideManager(ttl=60)

        class Meta:
            app_label = "testapp"

    forget_models.append(Mutated)
    assert not [m for m in check_models() if m.obj is Mutated]
    Mutated._meta.managers[0].ttl = "60"  # construction validated it; a later assignment is not
    found = [m for m in check_models() if m.obj is Mutated]
    assert ids(found) == ["cachepatterns.E011"]
    assert "testapp.Mutated.objects: CacheAsideManager's ttl is the str '60'" in found[0].msg


def test_e011_a_function_cached_with_a_bad_ttl() -> None:
    from cachepatterns_app.decorators import CachedFunction

    def by_hand(x: int) -> int:
        return x

    # The decorators validate ttl; state built without them is caught by the check.
    CachedFunction(by_hand, "e011:{x}", "60", None, None)
    found = [m for m in check_functions() if "by_hand" in m.msg]
    assert ids(found) == ["cachepatterns.E011"]
    assert "ttl is the str '60'" in found[0].msg


def test_w008_depends_on_declared_after_the_apps_were_loaded() -> None:
    from cachepatterns_app import cache_aside
    from tests.testapp.models import Post

    @cache_aside(key="w008:{author_id}", family="w008:{author_id}:f", depends_on={Post: "author_id"})
    def lazily_declared(author_id: int) -> int:
        return author_id

    @cache_aside(key="w008:plain:{author_id}")
    def without_dependencies(author_id: int) -> int:
        return author_id

    found = {m.msg.split(" ")[0]: m for m in check_functions() if m.id == "cachepatterns.W008"}
    name = f"{__name__}.test_w008_depends_on_declared_after_the_apps_were_loaded.<locals>.lazily_declared"
    assert name in found
    assert "depends_on={testapp.Post: ...}" in found[name].msg
    assert f"Import {__name__} from your AppConfig.ready()" in (found[name].hint or "")
    assert not any("without_dependencies" in key for key in found)
    # The demo's queries are imported from BlogConfig.ready(): declared in time.
    assert not any(key.startswith("demo_project.") for key in found)


# -- the app's table (a database check) ---------------------------------------------


@pytest.mark.django_db(transaction=True, databases=["default", "other"])
def test_w007_the_pending_invalidation_table_is_missing() -> None:
    from cachepatterns_app.models import PendingInvalidation

    table = PendingInvalidation._meta.db_table
    connection = connections["default"]
    with connection.schema_editor() as editor:
        editor.alter_db_table(PendingInvalidation, table, "cp_w007_moved_away")
    try:
        found = check_migrated(databases=["default"])
        registered = django_checks.run_checks(tags=["cachepatterns"], databases=["default"])
        not_asked = django_checks.run_checks()
    finally:
        with connection.schema_editor() as editor:
            editor.alter_db_table(PendingInvalidation, "cp_w007_moved_away", table)
    assert ids(found) == ["cachepatterns.W007"]
    assert f"no table {table!r}" in found[0].msg
    assert "migrate" in (found[0].hint or "")
    assert "cachepatterns.W007" in ids(registered)
    # A database check: not run unless databases are named (manage.py check --database).
    assert "cachepatterns.W007" not in [m.id for m in not_asked]
    assert check_migrated(databases=["default"]) == []


@isolate_apps("tests.testapp")
def test_w004_cached_model_whose_default_manager_does_not_report_bulk_writes(
    forget_models: list[Any],
) -> None:
    class PlainFirst(models.Model):
        name = models.CharField(max_length=10)
        plain = models.Manager()
        cached = CacheAsideManager()

        class Meta:
            app_label = "testapp"

    forget_models.append(PlainFirst)
    found = [(m.id, m.obj) for m in check_models()]
    assert ("cachepatterns.W004", PlainFirst) in found


@isolate_apps("tests.testapp")
def test_w004_the_plain_concrete_model_of_a_cached_proxy(forget_models: list[Any]) -> None:
    class PlainMedia(models.Model):
        title = models.CharField(max_length=10)

        class Meta:
            app_label = "testapp"

    class CachedPlainMedia(PlainMedia):
        objects = CacheAsideManager()

        class Meta:
            app_label = "testapp"
            proxy = True

    forget_models.append(CachedPlainMedia)
    found = [(m.id, m.obj) for m in check_models()]
    assert ("cachepatterns.W004", PlainMedia) in found
    assert ("cachepatterns.W004", CachedPlainMedia) not in found


@isolate_apps("tests.testapp")
def test_w004_the_plain_multi_table_parent_of_a_cached_child(forget_models: list[Any]) -> None:
    class PlainParent(models.Model):
        name = models.CharField(max_length=10)

        class Meta:
            app_label = "testapp"

    class CachedChild(PlainParent):
        objects = CacheAsideManager()

        class Meta:
            app_label = "testapp"

    forget_models.append(CachedChild)
    found = [(m.id, m.obj) for m in check_models()]
    assert ("cachepatterns.W004", PlainParent) in found


@isolate_apps("tests.testapp")
def test_w009_a_base_manager_named_in_meta_that_reports_nothing(forget_models: list[Any]) -> None:
    class NamedBase(models.Model):
        name = models.CharField(max_length=10)
        objects = CacheAsideManager()
        plain = models.Manager()  # noqa: DJ012

        class Meta:
            app_label = "testapp"
            base_manager_name = "plain"

    class ClaimedBase(models.Model):
        name = models.CharField(max_length=10)
        objects = CacheAsideManager()

        class Meta:
            app_label = "testapp"

    forget_models.extend([NamedBase, ClaimedBase])
    found = [(m.id, m.obj) for m in check_models()]
    assert ("cachepatterns.W009", NamedBase) in found
    assert ("cachepatterns.W009", ClaimedBase) not in found
    assert ClaimedBase._base_manager is ClaimedBase.objects


# -- isolation level ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("engine", "level", "warned"),
    [
        ("django.db.backends.mysql", "repeatable read", True),
        ("django.db.backends.mysql", "serializable", True),
        ("django.db.backends.mysql", "READ COMMITTED", False),
        ("django.db.backends.mysql", None, False),
        ("django.db.backends.sqlite3", "repeatable read", False),
    ],
)
def test_w005_snapshot_isolation(
    engine: str, level: str | None, warned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An extra alias in the already-parsed database settings; no connection is opened.
    options = {} if level is None else {"isolation_level": level}
    monkeypatch.setitem(connections.settings, "w005", {"ENGINE": engine, "OPTIONS": options})
    found = [(m.id, m.msg) for m in check_isolation()]
    if warned:
        assert len(found) == 1
        assert found[0][0] == "cachepatterns.W005"
        assert "'w005'" in found[0][1]
    else:
        assert found == []


@pytest.mark.parametrize(
    ("name", "warned"),
    [("REPEATABLE_READ", True), ("SERIALIZABLE", True), ("READ_COMMITTED", False), (None, False)],
)
def test_w005_postgresql_snapshot_isolation(
    name: str | None, warned: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Django's PostgreSQL backend takes the driver's IsolationLevel, not a string.
    pytest.importorskip("psycopg")
    from django.db.backends.postgresql.psycopg_any import IsolationLevel

    options = {} if name is None else {"isolation_level": IsolationLevel[name]}
    monkeypatch.setitem(
        connections.settings, "w005", {"ENGINE": "django.db.backends.postgresql", "OPTIONS": options}
    )
    found = [m.id for m in check_isolation()]
    assert found == (["cachepatterns.W005"] if warned else [])


@isolate_apps("tests.testapp")
def test_e017_a_write_behind_text_key_the_database_compares_loosely(forget_models: list[Any]) -> None:
    from cachepatterns_app import WriteBehindManager
    from cachepatterns_app.checks.write_behind import check_write_behind_model
    from cachepatterns_app.patterns.write_behind.model import WriteBehindModel
    from tests.testapp.collations import EXACT_COLLATION, LOOSE_COLLATION

    # PostgreSQL's default (and C) is exact; any other explicit collation may be
    # nondeterministic (CREATE COLLATION … deterministic = false), so it is not trusted.
    loose = "case_insensitive" if connections["default"].vendor == "postgresql" else LOOSE_COLLATION

    class LooseKey(WriteBehindModel):
        code = models.CharField(primary_key=True, max_length=10, db_collation=loose)
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"

    class ExactKey(WriteBehindModel):
        code = models.CharField(primary_key=True, max_length=10, db_collation=EXACT_COLLATION)
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"

    forget_models += [LooseKey, ExactKey]
    found = check_write_behind_model(LooseKey)
    assert ids(found) == ["cachepatterns.E017"]
    assert "'default'" in found[0].msg
    assert "collation" in (found[0].hint or "")
    assert check_write_behind_model(ExactKey) == []
