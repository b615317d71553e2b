"""
Build every Redis key the app uses. Nothing else formats a key.

Layout (``cp`` is ``KEY_PREFIX``; ``<db>`` is the database identity token of
:func:`~cachepatterns_app.identity.database_identity`)::

    cp:{<db>:blog.post:42}              a cached row            (value)
    cp:{<db>:blog.post:42}:l            its fill lease           (single flight, no stale set)
    cp:{<db>:blog.post:42}:v            its version             (write-through ordering)
    cp:{<db>:blog.post:slug=hello}      unique-field pointer    (holds the pk)
    cp:{f:<db>:user:1:posts}:gen        a family's generation
    cp:{f:<db>:user:1:posts}:v:<gen>:<member>   a family member's value
    cp:{f:<db>:user:1:posts}:l:<gen>:<member>   its fill lease
    cp:{k:<db>:<key>}  cp:{k:<db>:<key>}:l  cp:{k:<db>:<key>}:v   a decorated key outside families
    cp:{wb:<db>:app.model}:r:42    a write-behind row's state (a hash; no TTL while dirty)
    cp:{wb:<db>:app.model}:q       the model's write-behind queue (a Stream), :seq its sequence,
                                   :dlq its dead letters, :e entry errors, :t the early-flush mark
    <value key>:m                       refresh-ahead meta: "<compute ms>[,<failures>]"
    cp:{f:<db>:user:1:posts}:m:<gen>:<member>   the same for a family member (built in Lua)
    cp:{ra:<db>}:hot                    refresh-ahead hot set (sampled read counts, capped)

The part in braces is a Redis Cluster hash tag: everything that one Lua script
or one transaction touches lives in one slot, so the app runs unchanged on a
cluster.

Every value in a key goes through :func:`key_part`, which is injective over
(type, value): a string made only of ``[A-Za-z0-9_.@-]`` (at most 64 of them,
and not spelling an integer) and an ``int`` stay readable; anything else becomes
``~`` plus a 130-bit hash of its type and text. ``~`` is not in the safe set, so
a kept part never equals a hashed one, and ``1``, ``"1"``, ``1.0``, ``True``,
``None`` and ``"None"`` all key apart. Braces, spaces, ``*?[]``, ``:`` and
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from django.db.models import Model

from cachepatterns_app.conf import get_settings

__all__ = [
    "FamilyKeys",
    "KeyTemplate",
    "PlainKeys",
    "RowKeys",
    "family_keys",
    "hot_keys_key",
    "key_part",
    "key_text",
    "meta_key",
    "model_label",
    "normalise",
    "plain_keys",
    "row_keys",
    "unique_key",
    "write_behind_keys",
]

_SAFE = re.compile(r"[A-Za-z0-9_.@-]{1,64}")
#: Strings that spell an integer are hashed, so that ``"7"`` never keys like ``7``.
_INTEGER = re.compile(r"-?[0-9]+")
_HASH_MARK = "~"


@lru_cache(maxsize=4096)
def _hashed(tag: str, text: str) -> str:
    # Pure in two strings, so safe to remember: a hot row's key is not re-hashed per call.
    digest = hashlib.sha256(f"{tag}\x00{text}".encode("utf-8", "surrogatepass")).digest()
    return _HASH_MARK + base64.b32encode(digest).decode("ascii")[:26].lower()


def normalise(text: str) -> str:
    """Return the string ``text`` as a key part that is safe for Redis and unique to it."""
    if _SAFE.fullmatch(text) and not _INTEGER.fullmatch(text):
        return text
    return _hashed("s", text)


def key_part(value: Any, name: str = "value") -> str:
    """
    Return the key part for ``value``: safe for Redis, and different for values that
    differ in type or text (``1``, ``"1"``, ``True`` and ``1.0`` all differ).

    Saved model instances are keyed by their pk and enums by their value, on
    purpose. Types without a stable text (containers, arbitrary objects) raise
    ``TypeError`` naming ``name``, because keying them by ``repr`` would silently
    vary between processes.
    """
    kind = type(value)
    if kind is int:
        text = str(value)
        return text if len(text) <= 64 else _hashed("i", text)
    if kind is str:
        return normalise(value)
    if kind is uuid.UUID:  # a write-behind key's usual type: what _typed_text gives it
        return _hashed("u", value.hex)
    if isinstance(value, enum.Enum):
        return key_part(value.value, name)
    if isinstance(value, Model):
        if value.pk is None:
            raise TypeError(
                f"Cannot build a cache key from parameter {name!r}: the "
                f"{type(value).__name__} instance is unsaved (pk is None). Save it first "
                "or pass its primary key."
            )
        return key_part(value.pk, name)
    if isinstance(value, str):
        return normalise(str(value))
    if isinstance(value, int) and not isinstance(value, bool):
        return key_part(int(value), name)
    return _hashed(*_typed_text(value, name))


def _typed_text(value: Any, name: str) -> tuple[str, str]:
    """Return (type tag, text) for a value that :func:`key_part` hashes."""
    # bool before int, datetime before date: each is a subclass of the other.
    if isinstance(value, bool):
        return "b", "1" if value else "0"
    if value is None:
        return "n", ""
    if isinstance(value, float):
        return "f", repr(value)
    if isinstance(value, decimal.Decimal):
        return "d", str(value)
    if isinstance(value, uuid.UUID):
        return "u", value.hex
    if isinstance(value, datetime.datetime):
        return "dt", value.isoformat()
    if isinstance(value, datetime.date):
        return "da", value.isoformat()
    if isinstance(value, datetime.time):
        return "ti", value.isoformat()
    if isinstance(value, tuple):
        # Elements are key parts (never containing ','), so the text parses back one way only.
        return "t", ",".join(key_part(v, name) for v in value)
    raise TypeError(
        f"Cannot build a cache key from parameter {name!r} of type "
        f"{type(value).__name__}: keys accept str, int, float, bool, None, Decimal, UUID, "
        "date/time, Enum, tuples of those and saved model instances. Pass a value of one "
        "of those types (for example an id instead of an object)."
    )


def key_text(value: Any, name: str = "value") -> str:
    """Return the key part of ``value`` (kept for callers of the 0.1 name)."""
    return key_part(value, name)


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


def row_keys(label: str, db: str, pk: Any) -> RowKeys:
    """Return the keys of row ``pk`` (already canonical) of model ``label`` in database ``db``."""
    part = str(pk) if type(pk) is int else key_part(pk, "pk")
    base = _tagged(f"{db}:{label}:{part}")
    return RowKeys(base, base + ":l", base + ":v")


def unique_key(label: str, db: str, field: str, value: Any) -> str:
    """Return the pointer key mapping a unique field's value (as asked) to the row."""
    return _tagged(f"{db}:{label}:{field}={key_part(value, field)}")


@dataclass(frozen=True, slots=True)
class PlainKeys:
    """The keys of a decorated function's result that belongs to no family."""

    value: str
    lease: str
    version: str


def plain_keys(db: str, key: str) -> PlainKeys:
    """Return the keys for a formatted decorator key outside any family."""
    base = _tagged(f"k:{db}:{key}")
    return PlainKeys(base, base + ":l", base + ":v")


def meta_key(value_key: str) -> str:
    """
    Return the refresh-ahead companion of a row's or plain result's value key: the
    compute time of the value (and the failures of its refreshes), same hash tag.
    """
    return value_key + ":m"


def hot_keys_key(db: str) -> str:
    """Return the sorted set counting sampled reads of refresh-ahead keys of database ``db``."""
    return _tagged(f"ra:{db}") + ":hot"


@dataclass(frozen=True, slots=True)
class FamilyKeys:
    """The keys of a family: its generation and the prefixes of its members."""

    generation: str
    base: str

    def member(self, generation: int, member: str) -> tuple[str, str]:
        """Return the (value, lease) keys of ``member`` in ``generation``."""
        return f"{self.base}:v:{generation}:{member}", f"{self.base}:l:{generation}:{member}"

    def member_meta(self, generation: int | str, member: str) -> str:
        """Return the refresh-ahead meta key of ``member`` in ``generation``."""
        return f"{self.base}:m:{generation}:{member}"


def family_keys(db: str, family: str) -> FamilyKeys:
    """Return the keys of the formatted family name ``family`` in database ``db``."""
    base = _tagged(f"f:{db}:{family}")
    return FamilyKeys(base + ":gen", base)


Convert = Callable[[Any], Any]


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

    def format(self, params: Mapping[str, Any], convert: Mapping[str, Convert] | None = None) -> str:
        """
        Return the template filled with ``params``, each passed through
        ``convert[name]`` first where given (the canonical form of a value the
        database treats as equal to others), then :func:`key_part`.
        """
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
                if convert is not None and field in convert:
                    value = convert[field](value)
                out.append(key_part(value, field))
        return "".join(out)

    def __repr__(self) -> str:
        return f"KeyTemplate({self.template!r})"


def _has_separator(literal: str) -> bool:
    return any(not (ch.isascii() and (ch.isalnum() or ch in "_.@-")) for ch in literal)


@dataclass(frozen=True, slots=True)
class WriteBehindKeys:
    """
    The keys of one write-behind model in one database. They share one hash tag,
    so that a save (the row's state, the sequence and the queue entry) is one atomic
    Lua call on Redis Cluster too: a model's write-behind rows live in one slot.
    """

    base: str
    #: The durable queue (a Redis Stream; its consumer group is ``GROUP``).
    stream: str
    #: The sequence every write of the model draws from (orders writes per row).
    seq: str
    #: Dead letters: writes that kept failing, with their error.
    dead: str
    #: Marks that a flush was triggered early (so a backlog triggers it once).
    trigger: str
    #: Failure counts and last errors of queue entries, by entry id.
    errors: str

    GROUP = "cachepatterns"

    def row(self, pk: Any) -> RowKeys:
        """Return the keys of row ``pk`` (already canonical): its state hash and its fill lease."""
        part = str(pk) if type(pk) is int else key_part(pk, "pk")
        return RowKeys(f"{self.base}:r:{part}", f"{self.base}:l:{part}", f"{self.base}:r:{part}")

    def increment(self, token: str) -> str:
        """Return the mark that the recorded increment ``token`` was added in Redis."""
        return f"{self.base}:i:{token}"

    @property
    def repairs(self) -> str:
        """Held by the one flush that applies what was written around Redis in an outage."""
        return f"{self.base}:fix"


def write_behind_keys(label: str, db: str) -> WriteBehindKeys:
    """Return the write-behind keys of model ``label`` in database ``db``."""
    return _write_behind_keys(label, db, get_settings().key_prefix)


@lru_cache(maxsize=1024)
def _write_behind_keys(label: str, db: str, prefix: str) -> WriteBehindKeys:
    # Pure in its arguments (the prefix is one of them), and asked on every queued
    # save: six key names built once per model, database and prefix.
    base = f"{prefix}:{{wb:{db}:{label}}}"
    return WriteBehindKeys(base, base + ":q", base + ":seq", base + ":dlq", base + ":t", base + ":e")
