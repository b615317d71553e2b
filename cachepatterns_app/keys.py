"""
Build every Redis key the app uses. Nothing else formats a key.

Layout (``cp`` is ``KEY_PREFIX``)::

    cp:{blog.post:42}              a cached row            (value)
    cp:{blog.post:42}:l            its fill lease           (single flight, no stale set)
    cp:{blog.post:42}:v            its version             (write-through ordering)
    cp:{blog.post:slug=hello}      unique-field pointer    (holds the pk)
    cp:{f:user:1:posts}:gen        a family's generation
    cp:{f:user:1:posts}:v:<gen>:<member>   a family member's value
    cp:{f:user:1:posts}:l:<gen>:<member>   its fill lease
    cp:{k:<key>}  cp:{k:<key>}:l  cp:{k:<key>}:v   a decorated key outside families

The part in braces is a Redis Cluster hash tag: everything that one Lua script
or one transaction touches lives in one slot, so the app runs unchanged on a
cluster.

User-supplied parts go through :func:`normalise`, which is injective: a part made
only of ``[A-Za-z0-9_.@-]`` (at most 64 of them) stays as it is, anything else
becomes ``~`` plus a 130-bit hash of its text. Since ``~`` is not in the safe set,
a kept part never equals a hashed one; braces, spaces, ``*?[]``, ``:`` and
non-ASCII never reach Redis.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import enum
import hashlib
import re
import string
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Model

from cachepatterns_app.conf import get_settings

__all__ = [
    "FamilyKeys",
    "KeyTemplate",
    "PlainKeys",
    "RowKeys",
    "family_keys",
    "key_text",
    "model_label",
    "normalise",
    "plain_keys",
    "row_keys",
    "unique_key",
]

_SAFE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
_HASH_MARK = "~"


def normalise(text: str) -> str:
    """Return ``text`` as a key part that is safe for Redis and unique to ``text``."""
    if _SAFE.fullmatch(text):
        return text
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
    return _HASH_MARK + base64.b32encode(digest).decode("ascii")[:26].lower()


def key_text(value: Any, name: str = "value") -> str:
    """
    Return the text a key uses for ``value``.

    Values are keyed by their text, so ``1`` and ``"1"`` share a key. Types without
    a stable text (containers, arbitrary objects) raise ``TypeError`` naming
    ``name``, because keying them by ``repr`` would silently vary between processes.
    """
    # bool before int: bool is an int subclass but must not be keyed as 0/1.
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int | decimal.Decimal | uuid.UUID):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return key_text(value.value, name)
    if isinstance(value, Model):
        if value.pk is None:
            raise TypeError(
                f"Cannot build a cache key from parameter {name!r}: the "
                f"{type(value).__name__} instance is unsaved (pk is None). Save it first "
                "or pass its primary key."
            )
        return key_text(value.pk, name)
    if isinstance(value, tuple):
        # Elements are normalised (never containing ',', '(' or ')') or are tuples
        # themselves (always starting with '('), so the text parses back one way only.
        return "(" + ",".join(_element(v, name) for v in value) + ")"
    raise TypeError(
        f"Cannot build a cache key from parameter {name!r} of type "
        f"{type(value).__name__}: keys accept str, int, float, bool, None, Decimal, UUID, "
        "date/time, Enum, tuples of those and saved model instances. Pass a value of one "
        "of those types (for example an id instead of an object)."
    )


def _element(value: Any, name: str) -> str:
    return key_text(value, name) if isinstance(value, tuple) else normalise(key_text(value, name))


def model_label(model: type[Model]) -> str:
    """Return the lower-case ``app_label.model_name`` of ``model`` (proxies share it)."""
    meta = model._meta.concrete_model._meta if model._meta.concrete_model else model._meta
    return meta.label_lower


def _tagged(tag: str) -> str:
    return f"{get_settings().key_prefix}:{{{tag}}}"


@dataclass(frozen=True, slots=True)
class RowKeys:
    """The keys of one cached row."""

    value: str
    lease: str
    version: str


def row_keys(label: str, pk: Any) -> RowKeys:
    """Return the keys of the row ``pk`` of the model labelled ``label``."""
    # Integer primary keys are always safe text: skip the normalisation on the hit path.
    part = str(pk) if type(pk) is int else normalise(key_text(pk, "pk"))
    base = _tagged(f"{label}:{part}")
    return RowKeys(base, base + ":l", base + ":v")


def unique_key(label: str, field: str, value: Any) -> str:
    """Return the pointer key mapping a unique field's value to the row's pk."""
    return _tagged(f"{label}:{field}={normalise(key_text(value, field))}")


@dataclass(frozen=True, slots=True)
class PlainKeys:
    """The keys of a decorated function's result that belongs to no family."""

    value: str
    lease: str
    version: str


def plain_keys(key: str) -> PlainKeys:
    """Return the keys for a formatted decorator key outside any family."""
    base = _tagged(f"k:{key}")
    return PlainKeys(base, base + ":l", base + ":v")


@dataclass(frozen=True, slots=True)
class FamilyKeys:
    """The keys of a family: its generation and the prefixes of its members."""

    generation: str
    base: str

    def member(self, generation: int, member: str) -> tuple[str, str]:
        """Return the (value, lease) keys of ``member`` in ``generation``."""
        return f"{self.base}:v:{generation}:{member}", f"{self.base}:l:{generation}:{member}"


def family_keys(family: str) -> FamilyKeys:
    """Return the keys of the formatted family name ``family``."""
    base = _tagged(f"f:{family}")
    return FamilyKeys(base + ":gen", base)


class KeyTemplate:
    """
    A key or family template such as ``"user:{user_id}:posts:page:{page}"``.

    Placeholders are plain names. Two placeholders must be separated by literal
    text containing a character outside ``[A-Za-z0-9_.@-]`` (``:`` or ``/``), so
    that different parameters can never format to the same key.
    """

    def __init__(self, template: str) -> None:
        self.template = template
        self.fields: tuple[str, ...] = ()
        self._parts: list[tuple[str, str | None]] = []
        fields: list[str] = []
        previous_was_field = False
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:
            raise ValueError(
                f"Key template {template!r} has an unbalanced brace ({e}); placeholders "
                "look like {name}, and braces cannot appear otherwise."
            ) from None
        for literal, field, spec, conversion in parsed:
            if "{" in literal or "}" in literal:
                raise ValueError(
                    f"Key template {template!r} contains a literal brace; braces are "
                    "reserved for Redis Cluster hash tags. Remove the '{{' / '}}'."
                )
            if previous_was_field and not _has_separator(literal) and field is not None:
                raise ValueError(
                    f"Key template {template!r} has two placeholders with no separator "
                    "between them; put ':' between placeholders so distinct values "
                    "cannot form the same key."
                )
            if field is None:
                self._parts.append((literal, None))
                continue
            if not field.isidentifier() or spec or conversion:
                raise ValueError(
                    f"Key template {template!r}: placeholder {{{field}}} must be a plain "
                    "parameter name, without attribute access, index, '!r' or ':spec'."
                )
            self._parts.append((literal, field))
            fields.append(field)
            previous_was_field = True
        self.fields = tuple(dict.fromkeys(fields))

    def format(self, params: Mapping[str, Any]) -> str:
        """Return the template filled with normalised ``params``."""
        out: list[str] = []
        for literal, field in self._parts:
            out.append(literal)
            if field is not None:
                try:
                    value = params[field]
                except KeyError:
                    raise TypeError(
                        f"Key template {self.template!r} needs parameter {field!r}, which was not given."
                    ) from None
                out.append(normalise(key_text(value, field)))
        return "".join(out)

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"


def _has_separator(literal: str) -> bool:
    return any(not (ch.isascii() and (ch.isalnum() or ch in "_.@-")) for ch in literal)
