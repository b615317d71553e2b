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
