"""
The save's fast paths keep what the slow ones did (a review's scenarios): a Decimal
primary key is keyed by ``canonical_pk()``, and the direct script path packs what
redis-py's packer packs and refuses what it refuses, the same way.
"""

from __future__ import annotations

import decimal
from typing import Any

import pytest
from django.db import models
from django.test.utils import isolate_apps

from cachepatterns_app import store
from cachepatterns_app.exceptions import CacheUnavailable
from cachepatterns_app.identity import NotCanonical
from cachepatterns_app.registry import row_cache_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.mark.parametrize(
    "amount",
    [
        pytest.param(decimal.Decimal("1.005"), id="more-places-than-the-column"),
        pytest.param(decimal.Decimal("123456789012345678.25"), id="18-digits"),
        pytest.param(decimal.Decimal("12.5"), id="plain"),
    ],
)
@isolate_apps("tests.testapp")
def test_a_decimal_key_is_keyed_as_canonical_pk_says(forget, monkeypatch, amount):
    # stored_values() rounds a Decimal as the database does (SQLite through a float);
    # the key must be canonical_pk()'s, which every read uses, or refused as it refuses.
    from cachepatterns_app import WriteBehindManager
    from cachepatterns_app.patterns.write_behind.model import WriteBehindModel

    class DecimalKey(WriteBehindModel):
        amount = models.DecimalField(primary_key=True, max_digits=20, decimal_places=2)
        n = models.IntegerField(default=0)
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"

    forget.append(DecimalKey)
    cache = row_cache_for(DecimalKey)
    keyed: list[Any] = []
    monkeypatch.setattr(cache, "_write", lambda db, pk, mode, encoded: keyed.append(pk) or [1, 1, 1, 1])
    monkeypatch.setattr(cache, "_accepted", lambda *args, **kwargs: 1)
    try:
        expected = cache.canonical_pk(amount)
    except NotCanonical:
        with pytest.raises(NotCanonical):
            DecimalKey(amount=amount).save()
        assert keyed == []
        return
    DecimalKey(amount=amount).save()
    assert keyed == [expected]


def _direct_and_sha() -> tuple[Any, Any, str]:
    cache_store = store.get_store("default")
    client = cache_store.client
    direct = cache_store._direct(client)
    if direct is None:
        pytest.skip("this client does not take the direct script path")
    return cache_store, direct, client.script_load("return ARGV[1]")


def test_the_direct_path_sends_a_bytearray_as_redis_pys_packer_does():
    _, direct, sha = _direct_and_sha()
    assert direct(sha, 0, bytearray(b"ab")) == b"ab"
    assert direct(sha, 0, memoryview(b"cd")) == b"cd"


def test_an_argument_redis_py_cannot_pack_is_still_a_redis_error(monkeypatch):
    import redis as redis_py

    cache_store, direct, sha = _direct_and_sha()
    with pytest.raises(redis_py.DataError):
        direct(sha, 0, None)
    monkeypatch.setitem(store.SCRIPTS, "review_echo", "return ARGV[1]")
    with pytest.raises(CacheUnavailable, match="refused a command"):
        cache_store.script("review_echo", [], [None])
    assert cache_store.script("review_echo", [], ["still usable"]) == b"still usable"


class _Shouting(models.UUIDField):  # type: ignore[type-arg]
    """A project's key field with its own text form."""

    def value_to_string(self, obj: Any) -> str:
        return super().value_to_string(obj).upper()


@isolate_apps("tests.testapp")
def test_a_key_text_is_the_fields_own_text_form(forget):
    # Tombstones, fences and recorded increments are found by this text: the fast path
    # (str(pk)) must give what value_to_string() gives, and a field with its own form keeps it.
    import uuid

    from cachepatterns_app import WriteBehindManager
    from cachepatterns_app.patterns.write_behind.model import WriteBehindModel, _Holder, _pk_text
    from tests.testapp.models import Counter, Tally, Visit

    class Loud(WriteBehindModel):
        id = _Shouting(primary_key=True, default=uuid.uuid4)
        objects = WriteBehindManager()

        class Meta:
            app_label = "testapp"

    forget.append(Loud)
    key = uuid.uuid4()
    for model, pk in ((Counter, key), (Tally, "k ü"), (Visit, 42), (Loud, key)):
        cache = row_cache_for(model)
        expected = cache.pk_field.value_to_string(_Holder(cache.pk_attname, pk))
        assert _pk_text(cache, pk) == expected, model
    assert _pk_text(row_cache_for(Loud), key) == str(key).upper()
