"""
Tests for ``cachepatterns_app.validation``: a bad ``ttl`` or a decorator used
without parentheses fails where it is declared, with a message saying what to
write, instead of on the first cached read.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from django.db import models
from django.test.utils import isolate_apps

from cachepatterns_app import CacheAsideManager, WriteThroughManager, cache_aside, write_through
from cachepatterns_app.exceptions import ConfigurationError
from cachepatterns_app.validation import MAX_TTL, ttl_problem, validate_ttl
from tests.support import settle

BAD_TTLS = [-1, 0, 0.0, "60", " 60 ", True, False, math.nan, math.inf, -math.inf, [60], MAX_TTL + 1]
GOOD_TTLS = [None, 1, 0.5, 3600, 86400 * 365, MAX_TTL]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_bad_ttls_are_named_with_what_to_pass(ttl: Any) -> None:
    with pytest.raises(ConfigurationError) as caught:
        validate_ttl(ttl, "Thing(ttl=...)")
    message = str(caught.value)
    assert message.startswith("Thing(ttl=...): ttl ")
    assert "positive int or float of seconds" in message
    assert "None for no expiry" in message


def test_a_numeric_string_is_answered_with_the_number_to_write() -> None:
    assert "(write 60, not '60')" in str(ttl_problem("60"))


@pytest.mark.parametrize("ttl", GOOD_TTLS, ids=repr)
def test_good_ttls_pass_unchanged(ttl: Any) -> None:
    assert ttl_problem(ttl) is None
    assert validate_ttl(ttl, "Thing(ttl=...)") is ttl


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_managers_refuse_a_bad_ttl_at_construction(ttl: Any) -> None:
    with pytest.raises(ConfigurationError, match=r"^CacheAsideManager\(ttl=\.\.\.\): ttl "):
        CacheAsideManager(ttl=ttl)
    with pytest.raises(ConfigurationError, match=r"^WriteThroughManager\(ttl=\.\.\.\): ttl "):
        WriteThroughManager(ttl=ttl)


@isolate_apps("tests.testapp")
def test_a_model_declaring_a_bad_ttl_fails_at_class_creation() -> None:
    with pytest.raises(ConfigurationError, match="ttl is the str '60'"):

        class Bad(models.Model):
            objects = CacheAsideManager(ttl="60")

            class Meta:
                app_label = "testapp"


def test_managers_accept_none_and_the_default() -> None:
    assert CacheAsideManager(ttl=None).ttl is None
    assert WriteThroughManager(ttl=60).ttl == 60
    CacheAsideManager()  # DEFAULT_TTL


@pytest.mark.parametrize("decorator", [cache_aside, write_through], ids=["cache_aside", "write_through"])
@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_decorators_refuse_a_bad_ttl_before_decorating(decorator: Any, ttl: Any) -> None:
    with pytest.raises(ConfigurationError, match=rf"^@{decorator.__name__}\(ttl=\.\.\.\): ttl "):
        decorator(key="v:{x}", ttl=ttl)


@pytest.mark.parametrize("decorator", [cache_aside, write_through], ids=["cache_aside", "write_through"])
def test_a_decorator_without_parentheses_says_to_add_them(decorator: Any) -> None:
    name = decorator.__name__

    def user_posts(user_id: int) -> list[int]:
        return [user_id]

    with pytest.raises(ConfigurationError) as caught:
        decorator(user_posts)
    message = str(caught.value)
    assert f"@{name} was applied without parentheses to" in message
    assert "user_posts" in message
    assert f"Write @{name}() " in message


@pytest.mark.parametrize("key", [3, b"k:{x}", ["k"]], ids=repr)
def test_a_key_that_is_not_a_template_string_is_refused(key: Any) -> None:
    with pytest.raises(ConfigurationError, match="the key must be a template string"):
        cache_aside(key=key)


@pytest.mark.django_db(transaction=True)
def test_the_parenthesised_decorators_still_work(counts: Any) -> None:
    calls: list[int] = []

    @cache_aside(key="validation:{x}", ttl=None)
    def plain(x: int) -> int:
        calls.append(x)
        return x * 2

    @write_through(key="validation:{x}", ttl=0.5)
    def writer(x: int) -> int:
        return x * 3

    assert plain(3) == 6
    assert writer(4) == 12
    settle()
    assert plain(3) == 6
    assert calls == [3]  # the second call was a hit
    assert counts("validation:{x}")["hit"] == 1
