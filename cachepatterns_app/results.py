"""
Encode what a decorated function returns — querysets, model instances, lists of
them, or plain JSON-like values — into plain values, and back.

Model instances go through their model's :class:`~cachepatterns_app.codecs.RowCodec`
(so every field type round-trips exactly) together with the related objects
``select_related`` loaded, which come back already attached: a cached page of
posts with their authors costs no query to render ``post.author``. A queryset is
evaluated once and cached as the list of its instances.

Envelopes::

    {"t": "v", "v": <plain value>}
    {"t": "o", "m": [labels], "o": <instance>}            one instance
    {"t": "l", "m": [labels], "o": [<instance>, ...]}     a list of instances

where ``<instance>`` is ``[label index, row, {relation: <instance> | None}]``.
"""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.exceptions import FieldDoesNotExist
from django.db import DEFAULT_DB_ALIAS
from django.db.models import ForeignKey, Model, QuerySet

from cachepatterns_app.codecs import row_codec
from cachepatterns_app.conf import get_settings
from cachepatterns_app.exceptions import SerializationError, ValueTooLarge
from cachepatterns_app.serializers import get_serializer

__all__ = ["db_of", "decode_result", "dumps_result", "encode_result", "loads_result", "materialise"]


def materialise(value: Any) -> Any:
    """Return ``value`` with querysets evaluated to lists (evaluated exactly once)."""
    if isinstance(value, QuerySet):
        return list(value)
    return value


def encode_result(value: Any) -> dict[str, Any]:
    """Return the envelope for ``value`` (already materialised)."""
    labels: list[str] = []
    index: dict[str, int] = {}
    if isinstance(value, Model):
        return {"t": "o", "o": _instance(value, labels, index), "m": labels}
    if isinstance(value, list | tuple) and value and all(isinstance(v, Model) for v in value):
        items = [_instance(v, labels, index) for v in value]
        return {"t": "l", "o": items, "m": labels}
    if _has_model(value):
        raise SerializationError(
            "Cannot cache a value that mixes model instances with other values; return a "
            "queryset, an instance, a list of instances, or plain JSON-like data."
        )
    return {"t": "v", "v": value}


def _has_model(value: Any) -> bool:
    if isinstance(value, Model):
        return True
    if isinstance(value, list | tuple):
        return any(_has_model(v) for v in value)
    if isinstance(value, dict):
        return any(_has_model(v) for v in value.values())
    return False


def _instance(obj: Model, labels: list[str], index: dict[str, int]) -> list[Any]:
    model = type(obj)
    codec = row_codec(model)
    label = f"{model._meta.app_label}.{model._meta.model_name}"
    if label not in index:
        index[label] = len(labels)
        labels.append(label)
    related: dict[str, Any] = {}
    cache = obj._state.fields_cache
    for field in model._meta.concrete_fields:
        if isinstance(field, ForeignKey) and field.name in cache:
            target = cache[field.name]
            related[field.name] = None if target is None else _instance(target, labels, index)
    return [index[label], codec.encode(obj), related]


def decode_result(envelope: Any, db: str) -> Any:
    """Return the value encoded in ``envelope``; raise ``SerializationError`` if malformed."""
    try:
        kind = envelope["t"]
        if kind == "v":
            return envelope["v"]
        models = [apps.get_model(label) for label in envelope["m"]]
        if kind == "o":
            return _decode_instance(envelope["o"], models, db)
        if kind == "l":
            return [_decode_instance(item, models, db) for item in envelope["o"]]
    except (KeyError, TypeError, IndexError, LookupError, ValueError, AttributeError, FieldDoesNotExist) as e:
        raise SerializationError(f"Cached result is malformed: {e!r}") from e
    raise SerializationError(f"Cached result has unknown kind {kind!r}")


def _decode_instance(item: list[Any], models: list[type[Model]], db: str) -> Model:
    position, row, related = item
    model = models[position]
    obj = row_codec(model).decode(row, db)
    if not isinstance(related, dict):
        raise SerializationError("Cached result has a malformed related-objects part")
    for name, target in related.items():
        field = model._meta.get_field(name)
        if not isinstance(field, ForeignKey):
            raise SerializationError(f"Cached result names {name!r}, which is not a relation")
        value = None if target is None else _decode_instance(target, models, db)
        field.set_cached_value(obj, value)
    return obj


def db_of(value: Any) -> str | None:
    """Return the database alias the instances in ``value`` came from (None: no instances)."""
    first = value[0] if isinstance(value, list) and value else value
    return first._state.db if isinstance(first, Model) else None


def dumps_result(value: Any) -> bytes:
    """
    Return the payload for ``value`` (materialised) with the configured serializer.

    Raise ``SerializationError`` if it cannot be encoded, ``ValueTooLarge`` if it is
    over ``MAX_VALUE_BYTES``.
    """
    settings = get_settings()
    envelope = encode_result(value)
    envelope["d"] = db_of(value)
    payload = get_serializer(settings.SERIALIZER).dumps(envelope)
    if settings.MAX_VALUE_BYTES and len(payload) > settings.MAX_VALUE_BYTES:
        raise ValueTooLarge(
            f"{len(payload)} bytes is over MAX_VALUE_BYTES ({settings.MAX_VALUE_BYTES}); return "
            "less (a page, not a whole table) or raise the limit."
        )
    return payload


def loads_result(payload: bytes) -> Any:
    """Return the value in ``payload``; raise ``SerializationError`` if unreadable."""
    envelope = get_serializer(get_settings().SERIALIZER).loads(payload)
    if not isinstance(envelope, dict):
        raise SerializationError("Cached result is not an envelope")
    return decode_result(envelope, envelope.get("d") or DEFAULT_DB_ALIAS)
