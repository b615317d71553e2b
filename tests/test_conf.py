"""Tests for ``cachepatterns_app.conf``: defaults, nested merging, re-reading on override."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from django.conf import settings as django_settings
from django.test import override_settings

from cachepatterns_app import store
from cachepatterns_app.conf import DEFAULTS, get_settings, merge


def test_defaults_match_the_documented_contract() -> None:
    # design.md's settings block; CIRCUIT_BREAKER and DEPLOYMENT_ID are the documented additions.
    assert DEFAULTS == {
        "CACHE_ALIAS": "default",
        "KEY_PREFIX": "cp",
        "DEFAULT_TTL": 3600,
        "TTL_JITTER": 0.1,
        "SERIALIZER": "json",
        "MAX_VALUE_BYTES": 1_048_576,
        "DEGRADE_ON_FAILURE": True,
        "LOCK_TIMEOUT": 10,
        "STATS": True,
        "DEPLOYMENT_ID": None,
        "CIRCUIT_BREAKER": {"THRESHOLD": 1, "COOLDOWN": 5.0},
        "WRITE_BEHIND": {
            "FLUSH_INTERVAL": 5,
            "BATCH_SIZE": 500,
            "MAX_RETRIES": 8,
            "MAX_PENDING": 1_000_000,
            "ON_CACHE_FAILURE": "sync",
            "RECLAIM_IDLE": 60,
            "WARN_AFTER": 60,
        },
        "REFRESH_AHEAD": {"FACTOR": 0.2, "XFETCH_BETA": 0.0},
    }


def test_missing_settings_dict_gives_the_defaults() -> None:
    # Deleting a setting sends no setting_changed (in Django or pytest-django), so
    # the cached copy is dropped by hand, inside and after.
    try:
        with override_settings():
            del django_settings.CACHEPATTERNS
            get_settings.cache_clear()
            assert get_settings().raw == DEFAULTS
    finally:
        get_settings.cache_clear()
    assert get_settings().key_prefix == "cpt"


def test_a_non_dict_settings_value_gives_the_defaults() -> None:
    # conf stays usable so that checks.E001 can report it.
    with override_settings(CACHEPATTERNS=None):
        assert get_settings().raw == DEFAULTS


def test_the_suite_settings_are_merged_over_the_defaults() -> None:
    effective = get_settings()
    assert effective.KEY_PREFIX == "cpt"
    assert effective.key_prefix == "cpt"
    assert effective.DEFAULT_TTL == 300
    assert DEFAULTS["SERIALIZER"] == effective.SERIALIZER
    assert effective.cache_alias == "default"


def test_unknown_attribute_raises_attribute_error() -> None:
    with pytest.raises(AttributeError, match="NOPE"):
        get_settings().NOPE  # noqa: B018


def test_nested_dicts_merge_key_by_key() -> None:
    merged = merge({"WRITE_BEHIND": {"BATCH_SIZE": 10}, "REFRESH_AHEAD": {"XFETCH_BETA": 1.0}})
    assert merged["WRITE_BEHIND"] == {**DEFAULTS["WRITE_BEHIND"], "BATCH_SIZE": 10}
    assert merged["REFRESH_AHEAD"] == {"FACTOR": 0.2, "XFETCH_BETA": 1.0}
    assert merged["CIRCUIT_BREAKER"] == DEFAULTS["CIRCUIT_BREAKER"]


def test_merge_never_mutates_the_defaults_or_the_input() -> None:
    pristine = copy.deepcopy(DEFAULTS)
    user = {"WRITE_BEHIND": {"BATCH_SIZE": 10}}
    merged = merge(user)
    merged["WRITE_BEHIND"]["MAX_RETRIES"] = 99
    merged["REFRESH_AHEAD"]["FACTOR"] = 0.9
    assert pristine == DEFAULTS
    assert user == {"WRITE_BEHIND": {"BATCH_SIZE": 10}}
    assert merge({})["WRITE_BEHIND"]["MAX_RETRIES"] == 8


def test_a_non_dict_nested_value_is_kept_for_the_checks_to_report() -> None:
    assert merge({"WRITE_BEHIND": 5})["WRITE_BEHIND"] == 5


def test_unknown_keys_are_kept_for_the_checks_to_report() -> None:
    assert merge({"DEFAULT_TLL": 1})["DEFAULT_TLL"] == 1


def test_override_settings_is_seen_at_once() -> None:
    before = get_settings()
    with override_settings(CACHEPATTERNS={"KEY_PREFIX": "other", "WRITE_BEHIND": {"BATCH_SIZE": 7}}):
        inside = get_settings()
        assert inside.key_prefix == "other"
        assert DEFAULTS["DEFAULT_TTL"] == inside.DEFAULT_TTL
        assert inside.WRITE_BEHIND["BATCH_SIZE"] == 7
        assert inside.WRITE_BEHIND["MAX_RETRIES"] == DEFAULTS["WRITE_BEHIND"]["MAX_RETRIES"]
    after = get_settings()
    assert after.key_prefix == before.key_prefix == "cpt"


def test_pytest_django_settings_fixture_is_seen_at_once(settings: Any) -> None:
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "LOCK_TIMEOUT": 3}
    assert get_settings().LOCK_TIMEOUT == 3


def test_reading_is_cached_between_changes() -> None:
    assert get_settings() is get_settings()


@pytest.mark.parametrize("setting", ["CACHEPATTERNS", "CACHES", "SECRET_KEY"])
def test_settings_that_shape_the_store_reset_it(setting: str) -> None:
    first = store.get_store()
    with override_settings(**{setting: getattr(django_settings, setting)}):
        assert store.get_store() is not first


def test_unrelated_settings_keep_the_store() -> None:
    first = store.get_store()
    with override_settings(TIME_ZONE="UTC"):
        assert store.get_store() is first


def test_circuit_breaker_settings_reach_the_store(settings: Any) -> None:
    settings.CACHEPATTERNS = {**settings.CACHEPATTERNS, "CIRCUIT_BREAKER": {"THRESHOLD": 4}}
    breaker = store.get_store().breaker
    assert breaker.threshold == 4
    assert breaker.cooldown == DEFAULTS["CIRCUIT_BREAKER"]["COOLDOWN"]


# -- first use without the app in INSTALLED_APPS (a process of its own) ----------------

NOT_INSTALLED_SCRIPT = """
import sys
import django
from django.conf import settings

apps = ["django.contrib.contenttypes", "django.contrib.auth", "tests.testapp"]
if sys.argv[1] == "installed":
    apps.append("cachepatterns_app")
settings.configure(
    INSTALLED_APPS=apps,
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
    CACHES={"default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": sys.argv[2],
        "OPTIONS": {"SOCKET_TIMEOUT": 5, "SOCKET_CONNECT_TIMEOUT": 5},
    }},
    CACHEPATTERNS={"KEY_PREFIX": "cpt"},
    USE_TZ=True,
)
django.setup()
from django.core.management import call_command

call_command("migrate", verbosity=0)
from tests.testapp.models import Author

ada = Author.objects.create(name="Ada", email="ada@example.com")
names = [Author.objects.get(pk=ada.pk).name for _ in range(3)]
ada.name = "Countess"
ada.save()
print(names, Author.objects.get(pk=ada.pk).name)
"""


def _first_use(installed: bool, redis_url: str | None = None) -> Any:
    import os
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run(
        [
            sys.executable,
            "-c",
            NOT_INSTALLED_SCRIPT,
            "installed" if installed else "missing",
            redis_url or str(django_settings.CACHES["default"]["LOCATION"]),
        ],
        cwd=Path(__file__).resolve().parent.parent,
        # Its database is SQLite whatever the suite's is (tests/testapp/collations.py
        # picks the test app's collations from DATABASE_URL).
        env={k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_first_use_without_the_app_installed_warns_once_and_still_caches() -> None:
    result = _first_use(installed=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['Ada', 'Ada', 'Ada'] Countess"  # the managers work
    assert result.stderr.count("'cachepatterns_app' is not in INSTALLED_APPS") == 1, result.stderr
    assert "Add 'cachepatterns_app' to INSTALLED_APPS" in result.stderr


def test_first_use_with_the_app_installed_says_nothing() -> None:
    result = _first_use(installed=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['Ada', 'Ada', 'Ada'] Countess"
    assert "INSTALLED_APPS" not in result.stderr


def test_without_the_app_an_outage_still_lets_writes_commit() -> None:
    # Nowhere to record the failed invalidation durably: said, never raised.
    result = _first_use(installed=False, redis_url="redis://127.0.0.1:1/0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['Ada', 'Ada', 'Ada'] Countess"
    assert "Could not record 1 failed invalidation(s): 'cachepatterns_app' is not in" in result.stderr
    assert "Traceback" not in result.stderr
