"""
What a queued save stores, on its fast paths: values already canonical skip the
conversion, and must come out exactly as the conversion would make them; the JSON
text of a string is what the JSON encoder writes; a write Redis never accepted is
never reported as queued.
"""

from __future__ import annotations

import datetime
import json
import zoneinfo
from typing import Any

import pytest
from django.utils import timezone

from cachepatterns_app.exceptions import WriteBehindError
from cachepatterns_app.identity import canonical
from cachepatterns_app.patterns.write_behind import state as row_state
from cachepatterns_app.registry import row_cache_for
from tests.testapp.models import Counter, Reserved

pytestmark = pytest.mark.django_db(transaction=True)

PARIS = zoneinfo.ZoneInfo("Europe/Paris")
MOMENTS = [
    pytest.param(datetime.datetime(2026, 3, 29, 1, 30, 5, 123456, tzinfo=datetime.UTC), id="datetime.UTC"),
    pytest.param(datetime.datetime(2026, 3, 29, 1, 30, tzinfo=zoneinfo.ZoneInfo("UTC")), id="zoneinfo-UTC"),
    pytest.param(datetime.datetime(2026, 3, 29, 3, 30, tzinfo=PARIS), id="Paris"),
    pytest.param(datetime.datetime(2026, 3, 29, 1, 30), id="naive"),
    pytest.param(None, id="NULL"),
]


def stored(instance: Any, attname: str) -> Any:
    cache = row_cache_for(type(instance))
    plan = row_state.Plan(type(instance), [f for f in cache.columns if f.attname != "wb_seq"])
    return row_state.stored_values(instance, plan, "mysql", adding=True)[attname]


@pytest.mark.parametrize("moment", MOMENTS)
def test_a_datetime_is_stored_as_the_conversion_makes_it(moment):
    field = Reserved._meta.get_field("at")
    got = stored(Reserved(at=moment), "at")
    want = canonical(field, moment)
    assert got == want
    # The same zone object, not only the same instant: the codec writes the offset.
    assert (got.tzinfo if got else None) is (want.tzinfo if want else None)
    if moment is not None and timezone.is_aware(moment):
        assert got.tzinfo is datetime.UTC


def test_auto_now_still_runs_on_the_fast_path():
    counter = Counter(name="c", touched=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    got = stored(counter, "touched")
    assert got.year >= 2026
    assert got.tzinfo is datetime.UTC


@pytest.mark.parametrize(
    "text",
    ["plain", 'with "quotes" and \\ backslash', "tab\tnewline\ncontrol\x01", "naïve 🙂 \u2028", ""],
)
def test_a_string_is_encoded_as_the_json_encoder_writes_it(text):
    codec = row_cache_for(Reserved).codec
    encoded = row_state.encode_fields(codec, {"select": text})
    assert encoded == ["select", json.dumps(text, separators=(",", ":"), ensure_ascii=False)]
    assert json.loads(encoded[1]) == text


def test_a_write_redis_never_accepted_is_not_reported_as_queued(monkeypatch):
    cache = row_cache_for(Counter)
    before = cache.queue("default").length()
    counter = Counter(name="evicted")
    # Redis answers "the row is not here" to the write, again after the load: the row
    # was evicted in between. Nothing was queued, so the save must say so.
    monkeypatch.setattr(cache, "_write", lambda db, pk, mode, encoded: [0])
    monkeypatch.setattr(cache, "_load_row", lambda db, pk: None)
    with pytest.raises(WriteBehindError, match="Nothing was queued"):
        counter.save(update_fields=["name"])
    assert cache.queue("default").length() == before


@pytest.mark.parametrize(
    "given",
    [
        pytest.param(lambda pk: pk, id="UUID"),
        pytest.param(str, id="text"),
        pytest.param(lambda pk: pk.hex, id="hex"),
    ],
)
def test_a_key_is_stored_as_canonical_pk_makes_it(given):
    import uuid

    pk = uuid.uuid4()
    counter = Counter(id=given(pk), name="keyed")
    got = stored(counter, "id")
    assert got == row_cache_for(Counter).canonical_pk(given(pk)) == pk
    assert type(got) is uuid.UUID


def test_a_deferred_field_is_read_through_pre_save_not_skipped():
    from django.db import models

    saved = Counter(name="in the database", views=5)
    saved.save(sync=True)
    partial = models.QuerySet(Counter).only("id", "name").get(pk=saved.pk)
    assert "views" not in partial.__dict__
    assert stored(partial, "views") == 5  # loaded, as getattr() loads it


def test_only_djangos_own_plain_fields_are_read_from_the_instance_directly():
    from django.db import models

    assert row_state._plain_pre_save(Counter._meta.get_field("name"))
    assert not row_state._plain_pre_save(Counter._meta.get_field("touched"))  # auto_now

    class Shouting(models.CharField):
        def pre_save(self, model_instance: Any, add: bool) -> Any:
            return str(super().pre_save(model_instance, add)).upper()

    assert not row_state._plain_pre_save(Shouting(max_length=5))
