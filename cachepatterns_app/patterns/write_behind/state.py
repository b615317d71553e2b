"""
What a queued write stores: the row as the database will hold it, as hash fields.

For write-behind rows Redis is the source of truth until the flush, so what a save
puts there must be what a fresh read returns after the flush, field by field: each
field's ``pre_save`` runs (``auto_now``), values are converted as the field converts
them, Decimals are rounded the way the database rounds them, a field class of the
project's own goes through its own ``get_prep_value``/``to_python``. What only the
database can compute is refused with an error that says what to do instead:
expressions (``F()``, functions), database defaults and generated columns.

A row's hash holds ``~s`` (the sequence of its latest write), ``~f`` (``d`` dirty,
``c`` clean, ``x`` deleted), ``~v`` (the codec fingerprint) and one field per column:
the column's plain value as JSON text (``RowCodec.encode_field``).
"""

from __future__ import annotations

import datetime
import decimal
import json
from collections.abc import Callable, Sequence
from typing import Any

from django.db import models
from django.db.models import Field, Model
from django.db.models.fields import NOT_PROVIDED

from cachepatterns_app.codecs import RowCodec, _identity
from cachepatterns_app.exceptions import SerializationError, WriteBehindError
from cachepatterns_app.identity import NotCanonical, canonical, canonical_types, custom_field, value_field

__all__ = ["CLEAN", "DELETED", "DIRTY", "Plan", "decode_state", "encode_fields", "stored_values"]

DIRTY, CLEAN, DELETED = "d", "c", "x"
SEQ, FLAG, FINGERPRINT = "~s", "~f", "~v"


def computed_columns(model: type[Model]) -> list[str]:
    """Return the columns the database computes (write-behind cannot know their values)."""
    out = []
    for field in model._meta.concrete_fields:
        if (
            isinstance(field, models.GeneratedField)
            or getattr(field, "db_default", NOT_PROVIDED) is not NOT_PROVIDED
        ):
            out.append(field.name)
    return out


class Plan:
    """What :func:`stored_values` needs of each field, worked out once per field list."""

    __slots__ = ("label", "specs")

    def __init__(self, model: type[Model], fields: Sequence[Field[Any, Any]]) -> None:
        self.label = model._meta.label
        # (field, attname, types stored as they are, may be NULL, max_length, whether a
        # datetime is stored as it is once it is aware in UTC)
        self.specs = [
            (
                f,
                f.attname,
                _ready(f),
                bool(f.null or f.primary_key),
                getattr(f, "max_length", None),
                _utc_ready(f),
                _plain_pre_save(f),
            )
            for f in fields
        ]


def stored_values(
    instance: Model, fields: Sequence[Field[Any, Any]] | Plan, vendor: str, adding: bool
) -> dict[str, Any]:
    """
    Return ``{attname: value}`` for ``fields`` of ``instance`` as the database will
    return them; raise :class:`WriteBehindError` for what only the database can compute.
    ``fields`` may be a :class:`Plan` of them, which a caller that saves often keeps.
    """
    plan = fields if isinstance(fields, Plan) else Plan(type(instance), fields)
    out: dict[str, Any] = {}
    loaded = instance.__dict__
    for field, attname, ready, nullable, max_length, utc_ready, plain in plan.specs:
        # A field whose pre_save only reads the attribute: read it (a deferred one is not
        # in __dict__ and goes through pre_save, which loads it).
        value = loaded[attname] if plain and attname in loaded else field.pre_save(instance, adding)
        kind = type(value)
        if kind in ready or value is None:
            pass  # already what the database returns (NULL: checked below)
        elif utc_ready and kind is datetime.datetime and value.tzinfo is datetime.UTC:
            pass  # timezone.now()'s kind: what canonical() would return, as it is
        else:
            value = _checked(instance, field, value, vendor)
        if value is None and not nullable:
            raise WriteBehindError(
                f"{plan.label}.{field.name} is None but the column is NOT NULL: the flush would "
                "fail. Nothing was queued; give it a value."
            )
        if max_length and isinstance(value, str) and len(value) > max_length:
            raise WriteBehindError(
                f"{plan.label}.{field.name} is {len(value)} characters, over "
                f"max_length={max_length}: the flush would fail. Nothing was queued."
            )
        out[attname] = value
    return out


_ready_types: dict[Field[Any, Any], frozenset[type]] = {}


def _plain_pre_save(field: Field[Any, Any]) -> bool:
    """
    Whether ``field.pre_save`` returns the attribute as it is (no ``auto_now``, no file
    commit) and the attribute is the value in the instance's ``__dict__`` (Django's own
    fields and descriptors; a project's field may compute either).
    """
    from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
    from django.db.models.query_utils import DeferredAttribute

    if custom_field(field) or field.descriptor_class not in (
        DeferredAttribute,
        ForeignKeyDeferredAttribute,
    ):
        return False
    method = type(field).pre_save
    if method is Field.pre_save:
        return True
    # Django's date and time fields stamp the value only with auto_now/auto_now_add.
    stamps = (models.DateField.pre_save, models.DateTimeField.pre_save, models.TimeField.pre_save)
    stamped = getattr(field, "auto_now", False) or getattr(field, "auto_now_add", False)
    return method in stamps and not stamped


def _ready(field: Field[Any, Any]) -> frozenset[type]:
    types = _ready_types.get(field)
    if types is None:
        custom = type(value_field(field)).__module__.split(".")[0] != "django"
        # A primary key too: canonical() returns a value of these types unchanged, and a
        # key must be exactly what canonical_pk() gives (the row's identity in Redis).
        types = _ready_types[field] = frozenset() if custom else canonical_types(field)
    return types


def _utc_ready(field: Field[Any, Any]) -> bool:
    """Whether an aware UTC ``datetime`` is canonical for ``field`` (one of Django's own)."""
    # canonical() returns such a value unchanged: to_python() keeps a datetime, and
    # (under USE_TZ) astimezone(UTC) of a UTC datetime is an equal one in the same zone.
    return (
        type(field).__module__.split(".")[0] == "django"
        and isinstance(field, models.DateTimeField)
        and not field.primary_key
    )


def _checked(instance: Model, field: Field[Any, Any], value: Any, vendor: str) -> Any:
    label = instance._meta.label
    if hasattr(value, "resolve_expression"):
        raise WriteBehindError(
            f"{label}.{field.name} is an expression ({value!r}): a queued write cannot know "
            "what the database will compute. Use objects.incr(pk, field, n) for counters, "
            "or save(sync=True) to run the expression in the database."
        )
    try:
        return _as_stored(field, value, vendor)
    except (NotCanonical, TypeError, ValueError, decimal.InvalidOperation) as e:
        raise WriteBehindError(
            f"{label}.{field.name} = {value!r} is not a value the column can hold ({e}); "
            "nothing was queued. Fix the value, or use save(sync=True) to see the database's error."
        ) from None


def _as_stored(field: Field[Any, Any], value: Any, vendor: str) -> Any:
    if value is None:
        return None
    target = value_field(field)
    if type(target).__module__.split(".")[0] != "django":
        # A field class of the project's own: its get_prep_value says what the column
        # stores, its to_python how that reads back.
        return target.to_python(target.get_prep_value(value))
    if isinstance(target, models.DecimalField):
        return _rounded(target, value, vendor)
    if isinstance(target, models.JSONField | models.FileField | models.BinaryField):
        return bytes(value) if isinstance(value, memoryview) else value
    return canonical(field, value)


def _rounded(field: Any, value: Any, vendor: str) -> decimal.Decimal:
    """Round ``value`` to the column's places the way ``vendor`` does."""
    number = field.to_python(value)
    if not isinstance(number, decimal.Decimal) or not number.is_finite():
        raise ValueError("not a finite number")
    places = decimal.Decimal(1).scaleb(-(field.decimal_places or 0))
    if vendor == "sqlite":
        # SQLite keeps decimals as REAL; Django reads them back through a float with 15
        # significant digits, quantised with the field's context (half-even).
        as_float = decimal.Context(prec=15).create_decimal_from_float(float(number))
        rounded = as_float.quantize(places, context=field.context)
    else:
        # MySQL/MariaDB and PostgreSQL round exact numbers half away from zero.
        # Under enough precision for the column: the default context's 28 digits would
        # refuse a DecimalField(max_digits=30) value the database holds.
        digits = max(28, (field.max_digits or 0) + 2, len(number.as_tuple().digits) + 2)
        rounded = number.quantize(
            places, rounding=decimal.ROUND_HALF_UP, context=decimal.Context(prec=digits)
        )
    if field.max_digits is not None and len(rounded.as_tuple().digits) > field.max_digits:
        raise ValueError(f"more than {field.max_digits} digits")
    return rounded


_dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
# What _dumps does for a str (ensure_ascii=False), called directly.
_quoted: Callable[[str], str] = json.encoder.encode_basestring


def encode_fields(codec: RowCodec, values: dict[str, Any]) -> list[str]:
    """Return ``[attname, json, …]`` hash field pairs for ``values``."""
    out: list[str] = []
    encoders = codec.field_encoders
    for attname, value in values.items():
        try:
            encode = encoders[attname]
            plain: Any = value if value is None or encode is _identity else encode(value)
            kind = type(plain)
            # What the JSON encoder writes for these, without its per-call overhead.
            if kind is str:
                out += (attname, _quoted(plain))
            elif kind is int:
                out += (attname, str(plain))
            elif plain is None:
                out += (attname, "null")
            else:
                out += (attname, _dumps(plain))
        except (TypeError, ValueError, AttributeError, SerializationError) as e:
            raise WriteBehindError(f"Cannot queue {codec.label}.{attname} = {value!r}: {e}") from e
    return out


def as_mapping(flat: Sequence[Any]) -> dict[str, str]:
    """Return a Redis reply ``[field, value, …]`` as ``{field: value}`` text."""
    items = [item.decode("utf-8") if isinstance(item, bytes) else str(item) for item in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


_loads_json = json.JSONDecoder().decode


def loads(text: str) -> Any:
    """``json.loads`` for one field's text, with the flush's common shapes parsed directly."""
    # What encode_fields writes for NULL, plain integers and strings without escapes;
    # anything else (and anything malformed) goes through the JSON parser.
    if text == "null":
        return None
    first = text[:1]
    if first == '"':
        inner = text[1:-1]
        if len(text) > 1 and text[-1] == '"' and '"' not in inner and "\\" not in inner:
            return inner
    elif first.isdigit() and text.isascii() and text.isdigit() and (text == "0" or first != "0"):
        return int(text)
    return _loads_json(text)


def decode_state(codec: RowCodec, state: dict[str, str], db: str) -> Model:
    """
    Return the instance a row hash describes; raise ``SerializationError`` if it is not
    a row of this model in the current layout (every column present, each of its type).
    """
    if state.get(FINGERPRINT) != codec.fingerprint:
        raise SerializationError(f"Write-behind state of {codec.label} has another layout; discarded.")
    try:
        values = [codec.fingerprint, *(loads(state[name]) for name in codec.attnames)]
    except (KeyError, ValueError) as e:
        raise SerializationError(
            f"Write-behind state of {codec.label} is incomplete or unreadable: {e}"
        ) from e
    return codec.decode(values, db)
