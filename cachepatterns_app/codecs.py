"""
Field-aware encoding of model rows into plain values, and back.

A row is encoded as ``[fingerprint, value_1, …, value_n]`` in the order of the
model's concrete fields. Each value is converted according to its field's type so
that it survives JSON exactly: aware datetimes keep their offset, Decimals keep
their digits, durations are whole microseconds, bytes are base64. The fingerprint
names the field layout; a payload written by code with another layout (a deploy
that added a field, or a foreign writer) is refused and treated as a miss.

Decoding builds the instance with ``Model.from_db``, so it is indistinguishable
from one the ORM loaded: ``_state.adding`` is False and ``_state.db`` is set.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import json
import uuid
from collections.abc import Callable, Sequence
from typing import Any, cast

from django.conf import settings
from django.db import models
from django.db.models import Field, Model, signals
from django.db.models.base import ModelState
from django.db.models.fields.files import FileDescriptor, ImageFileDescriptor
from django.db.models.fields.related_descriptors import ForeignKeyDeferredAttribute
from django.db.models.query_utils import DeferredAttribute

from cachepatterns_app.exceptions import SerializationError
from cachepatterns_app.keys import model_label

__all__ = ["RowCodec", "row_codec"]

Convert = Callable[[Any], Any]

CODEC_VERSION = 1


def _identity(value: Any) -> Any:
    return value


def _datetime_out(value: datetime.datetime) -> str:
    return value.isoformat()


def _duration_out(value: datetime.timedelta) -> int:
    return value // datetime.timedelta(microseconds=1)


def _duration_in(value: int) -> datetime.timedelta:
    return datetime.timedelta(microseconds=value)


def _bytes_out(value: bytes | memoryview) -> str:
    return base64.b64encode(bytes(value)).decode("ascii")


def _bytes_in(value: str) -> bytes:
    return base64.b64decode(value)


def _file_out(value: Any) -> Any:
    # FieldFile -> its stored name, which is what the database column holds.
    return getattr(value, "name", value)


def _uuid_out(value: uuid.UUID | str) -> str:
    return value.hex if isinstance(value, uuid.UUID) else uuid.UUID(str(value)).hex


def _converters(field: Field[Any, Any]) -> tuple[Convert, Convert]:
    """Return (encode, decode) for one concrete field; identity where JSON suffices."""
    if isinstance(field, models.ForeignKey):
        return _converters(field.target_field)
    if isinstance(field, models.GeneratedField):
        return _converters(cast("Field[Any, Any]", field.output_field))
    if isinstance(field, models.JSONField):
        encoder, decoder = field.encoder, field.decoder
        # Kept as the JSON text the column holds, decoded with the field's own decoder,
        # so custom encoder/decoder pairs behave exactly as they do from the database.
        return (
            lambda v: json.dumps(v, cls=encoder),
            lambda v: json.loads(v, cls=decoder),
        )
    if isinstance(field, models.DateTimeField):
        return _datetime_out, _aware_datetime if settings.USE_TZ else datetime.datetime.fromisoformat
    if isinstance(field, models.DateField):
        return datetime.date.isoformat, datetime.date.fromisoformat
    if isinstance(field, models.TimeField):
        return datetime.time.isoformat, datetime.time.fromisoformat
    if isinstance(field, models.DurationField):
        return _duration_out, _duration_in
    if isinstance(field, models.DecimalField):
        return str, decimal.Decimal
    if isinstance(field, models.UUIDField):
        return _uuid_out, lambda v: uuid.UUID(hex=v)
    if isinstance(field, models.BinaryField):
        return _bytes_out, _bytes_in
    if isinstance(field, models.FileField):
        return _file_out, _identity
    if isinstance(
        field,
        models.IntegerField
        | models.AutoField
        | models.BooleanField
        | models.FloatField
        | models.CharField
        | models.TextField
        | models.GenericIPAddressField,
    ):
        return _identity, _identity
    return _fallback(field)


_TEXT = (str,)


def _stored_types(field: Field[Any, Any]) -> tuple[type, ...]:
    """
    Return the plain-value types the encoded form of ``field`` can have. A payload
    holding anything else was not written by this code for this layout (a hand edit,
    another program, a bug), so it is refused instead of handed to the caller.
    """
    if isinstance(field, models.ForeignKey):
        return _stored_types(field.target_field)
    if isinstance(field, models.GeneratedField):
        return _stored_types(cast("Field[Any, Any]", field.output_field))
    if isinstance(field, models.BooleanField):
        return (bool,)
    if isinstance(field, models.IntegerField | models.AutoField | models.DurationField):
        return (int,)
    if isinstance(field, models.FloatField):
        return (float, int)
    if isinstance(
        field,
        models.CharField
        | models.TextField
        | models.GenericIPAddressField
        | models.JSONField
        | models.DateField
        | models.TimeField
        | models.DecimalField
        | models.UUIDField
        | models.BinaryField
        | models.FileField,
    ):
        return _TEXT
    return (str, int, float, bool, list)


def _aware_datetime(value: str) -> datetime.datetime:
    parsed = datetime.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError("a naive datetime where the database returns aware ones (USE_TZ)")
    return parsed


def _fallback(field: Field[Any, Any]) -> tuple[Convert, Convert]:
    """Any other field: plain JSON values pass, others go through the field's text form."""
    plain = (str, int, float, bool)

    def encode(value: Any) -> Any:
        if isinstance(value, plain):
            return value
        return ["~t", field.value_to_string(cast(Any, _Holder(field, value)))]

    def decode(value: Any) -> Any:
        if isinstance(value, list) and len(value) == 2 and value[0] == "~t":
            return field.to_python(value[1])
        return value

    return encode, decode


class _Holder:
    """The minimal object ``Field.value_to_string`` reads an attribute from."""

    def __init__(self, field: Field[Any, Any], value: Any) -> None:
        setattr(self, field.attname, value)


class RowCodec:
    """Encode and decode full rows of one model."""

    def __init__(self, model: type[Model]) -> None:
        self.model = model
        self.label = model_label(model)
        fields = list(model._meta.concrete_fields)
        self.attnames: list[str] = [f.attname for f in fields]
        pairs = [_converters(f) for f in fields]
        self._encoders = [(i, enc) for i, (enc, _) in enumerate(pairs) if enc is not _identity]
        self._decoders = [(i, dec) for i, (_, dec) in enumerate(pairs) if dec is not _identity]
        self._encode_by_name = {f.attname: enc for f, (enc, _) in zip(fields, pairs, strict=True)}
        self._decode_by_name = {f.attname: dec for f, (_, dec) in zip(fields, pairs, strict=True)}
        #: (index, types its plain value may have): None only where the column is nullable.
        self._checks = [
            (i, frozenset(_stored_types(f)) | ({type(None)} if f.null else frozenset()))
            for i, f in enumerate(fields)
        ]
        self._not_null = [i for i, f in enumerate(fields) if not f.null]
        #: The same sets in field order, for one C-level pass over a decoded row.
        self._allowed = tuple(allowed for _, allowed in self._checks)
        layout = "|".join(f"{f.attname}:{f.get_internal_type()}" for f in fields)
        digest = hashlib.sha256(f"{CODEC_VERSION}|{self.label}|{layout}".encode()).hexdigest()
        self.fingerprint = digest[:10]
        self._width = len(fields) + 1
        self._plain_init: bool | None = None

    def deferred(self, instance: Model) -> bool:
        """Return whether ``instance`` lacks any concrete field (``only()``/``defer()``)."""
        return any(name not in instance.__dict__ for name in self.attnames)

    def encode(self, instance: Model) -> list[Any]:
        """Return the plain-value form of ``instance`` (all concrete fields loaded)."""
        data = instance.__dict__
        try:
            values: list[Any] = [self.fingerprint, *[data[name] for name in self.attnames]]
        except KeyError as e:
            raise SerializationError(
                f"Cannot cache a {self.label} with deferred field {e.args[0]!r}; load "
                "the full row (no only()/defer())."
            ) from None
        for index in self._not_null:
            if values[index + 1] is None:
                raise SerializationError(
                    f"Cannot cache a {self.label} whose non-null field "
                    f"{self.attnames[index]!r} is None; a cached copy would be refused on read."
                )
        for index, encode in self._encoders:
            value = values[index + 1]
            if value is not None:
                try:
                    values[index + 1] = encode(value)
                except (TypeError, ValueError, AttributeError) as e:
                    raise SerializationError(
                        f"Cannot encode {self.label}.{self.attnames[index]} = {value!r}: {e}"
                    ) from e
        return values

    @property
    def field_encoders(self) -> dict[str, Convert]:
        """``{attname: encode}``: :meth:`encode_field` for a caller that encodes many."""
        return self._encode_by_name

    def encode_field(self, attname: str, value: Any) -> Any:
        """Return the plain-value form of one field's ``value``."""
        return value if value is None else self._encode_by_name[attname](value)

    def decode_field(self, attname: str, value: Any) -> Any:
        """Return the field value whose plain-value form is ``value``."""
        return value if value is None else self._decode_by_name[attname](value)

    def decode(self, values: Sequence[Any], db: str) -> Model:
        """Return the instance encoded in ``values``, as if loaded from database ``db``."""
        if not isinstance(values, list) or len(values) != self._width or values[0] != self.fingerprint:
            raise SerializationError(
                f"Cached payload does not match the current layout of {self.label}; "
                "it was written by other code and is discarded."
            )
        row = values[1:]
        if not all(map(frozenset.__contains__, self._allowed, map(type, row))):
            index = next(i for i, allowed in self._checks if type(row[i]) not in allowed)
            raise SerializationError(
                f"Cached {self.label}.{self.attnames[index]} holds a "
                f"{type(row[index]).__name__}, which this field never stores; discarded."
            )
        for index, decode in self._decoders:
            value = row[index]
            if value is not None:
                try:
                    row[index] = decode(value)
                except (TypeError, ValueError, AttributeError, OverflowError, decimal.InvalidOperation) as e:
                    raise SerializationError(
                        f"Cached {self.label}.{self.attnames[index]} is corrupt: {e}"
                    ) from e
        if self._plain_init is None:
            self._plain_init = _plain_init(self.model)
        if not self._plain_init:
            return self.model.from_db(db, self.attnames, row)
        # What from_db() -> __init__() would do for a full row, without the call
        # overhead (checked equivalent for this model in _plain_init()).
        instance = self.model.__new__(self.model)
        state = ModelState()
        state.adding = False
        state.db = db
        attrs = instance.__dict__
        attrs["_state"] = state
        attrs.update(zip(self.attnames, row, strict=True))
        return instance


_PLAIN_DESCRIPTORS = (DeferredAttribute, ForeignKeyDeferredAttribute, FileDescriptor, ImageFileDescriptor)


def _plain_init(model: type[Model]) -> bool:
    """
    Return whether building ``model`` instances by filling ``__dict__`` is exactly
    what ``Model.from_db`` does: no custom ``__init__``/``from_db``, no init signal
    receivers, and only Django's own field descriptors, whose setters just store
    the value on a new instance.
    """
    if model.__init__ is not Model.__init__ or model.from_db.__func__ is not Model.from_db.__func__:  # type: ignore[attr-defined]
        return False
    if signals.pre_init.has_listeners(model) or signals.post_init.has_listeners(model):
        return False
    return all(
        type(getattr(model, f.attname, None)) in _PLAIN_DESCRIPTORS for f in model._meta.concrete_fields
    )


_codecs: dict[type[Model], RowCodec] = {}


def row_codec(model: type[Model]) -> RowCodec:
    """Return the shared codec of ``model``."""
    try:
        return _codecs[model]
    except KeyError:
        codec = _codecs[model] = RowCodec(model)
        return codec
