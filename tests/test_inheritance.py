"""Proxies, multi-table inheritance and abstract bases: writes through any class reach the cache."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import models

from cachepatterns_app import cache_aside
from cachepatterns_app.registry import row_cache_for
from tests.support import keys_of, settle
from tests.testapp.models import (
    Account,
    Article,
    BusinessAccount,
    Place,
    PlaceProxy,
    Restaurant,
)

pytestmark = pytest.mark.django_db(transaction=True)


@cache_aside(key="inh:places:{owner_id}", family="inh:places:{owner_id}:f", depends_on={Place: "owner_id"})
def places_of(owner_id: int) -> Any:
    return sorted(Place.objects.filter(owner_id=owner_id).values_list("name", flat=True))


@cache_aside(key="inh:names:{owner_id}", family="inh:names:{owner_id}:f", depends_on={PlaceProxy: "owner_id"})
def names_by_owner(owner_id: int) -> Any:
    return sorted(Place.objects.filter(owner_id=owner_id).values_list("name", flat=True))


def test_a_child_row_invalidates_families_depending_on_its_parent_model(django_assert_num_queries):
    Place.objects.create(owner_id=1, name="a")
    assert places_of(1) == ["a"]
    settle()
    with django_assert_num_queries(0):
        assert places_of(1) == ["a"]

    Restaurant.objects.create(owner_id=1, name="b", seats=4)  # writes a Place row owned by 1

    assert places_of(1) == ["a", "b"]


def test_moving_a_child_between_owners_invalidates_both_parent_families():
    diner = Restaurant.objects.create(owner_id=1, name="diner")
    assert places_of(1) == ["diner"]
    assert places_of(2) == []
    settle()
    diner.owner_id = 2
    diner.save()
    assert places_of(1) == []
    assert places_of(2) == ["diner"]


def test_a_dependency_on_a_proxy_sees_writes_through_the_concrete_model():
    place = Place.objects.create(owner_id=7, name="inn")
    assert names_by_owner(7) == ["inn"]
    settle()
    place.name = "hotel"
    place.save()  # sent with sender=Place, not PlaceProxy
    assert names_by_owner(7) == ["hotel"]


def test_a_child_save_bumps_and_puts_its_write_through_parent(redis, django_assert_num_queries):
    account = BusinessAccount.objects.create(name="acme", vat="x")
    parent = Account.objects.get(pk=account.pk)
    settle()
    version = parent.version

    account.name = "acme 2"
    account.save()

    assert isinstance(account.version, int)
    assert account.version == version + 1 == models.QuerySet(Account).get(pk=account.pk).version
    settle()
    with django_assert_num_queries(0):
        cached = Account.objects.get(pk=account.pk)
    assert (cached.name, cached.version) == ("acme 2", version + 1)


def test_a_manager_declared_on_an_abstract_base_caches_the_subclass(redis, django_assert_num_queries):
    assert row_cache_for(Article) is not None
    article = Article.objects.create(title="first")
    Article.objects.get(pk=article.pk)
    settle()
    assert redis.exists(keys_of(Article, article.pk).value)
    with django_assert_num_queries(0):
        assert Article.objects.get(pk=article.pk).title == "first"
    article.title = "second"
    article.save()
    assert not redis.exists(keys_of(Article, article.pk).value)
    assert Article.objects.get(pk=article.pk).title == "second"
