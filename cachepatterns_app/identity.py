"""
What a row *is* for the cache: which database it lives in, and which spelling of
a value the database treats as the value.

Two rules live here.

**Database identity.** Every key embeds a short token naming the database a value
came from: a hash of ``DEPLOYMENT_ID`` (if set), the alias and the alias's
ENGINE/HOST/PORT/NAME. Two aliases, or two deployments (a staging and a dev
database, the demo on MariaDB and then on SQLite) sharing one Redis therefore never
read each other's rows.

**Canonical values.** Databases treat some different spellings as one value: ``"07"``
and ``7`` in an integer column, ``"1.5"`` and ``1.50`` in a ``DECIMAL(5, 2)``, an
upper-case UUID, and — on MySQL/MariaDB's default collations — ``"ABC"``,
``"abc "`` and ``"ábc"``. :func:`canonical` turns a value into the form the database
returns where Python can know it exactly (types, Decimal scale, UUIDs, time zones);
:func:`text_is_exact` says whether a text column compares byte for byte, which only
the database's collation decides. Where it does not, the caller must not trust the
spelling it was given (see ``patterns.cache_aside``): only the spelling the
database returned is ever stored under a key.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import hashlib
import unicodedata
import uuid
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ValidationError
from django.db import connections, models
from django.db.models import Field
from django.utils import timezone

from cachepatterns_app.conf import get_settings

__all__ = [
    "NotCanonical",
    "canonical",
    "canonical_types",
    "collation_is_exact",
    "database_identity",
    "fold",
    "text_is_exact",
    "value_field",
]


class NotCanonical(ValueError):
    """A value has no exact canonical form (the database would round or coerce it)."""


#: alias -> (settings dict, its NAME/HOST/PORT, the settings object, token). Checked by identity and
#: NAME, HOST and PORT only on the hit path: the test runner renames a database in
#: place (a failover script may repoint one), and an override of CACHEPATTERNS or
#: DATABASES replaces the objects compared.
_memo: dict[str, tuple[Any, Any, Any, str]] = {}


def database_identity(alias: str) -> str:
    """Return the token that names database ``alias`` of this deployment in keys."""
    config = connections.settings[alias]
    settings = get_settings()
    memo = _memo.get(alias)
    where = (config.get("NAME"), config.get("HOST"), config.get("PORT"))
    if memo is not None and memo[0] is config and memo[2] is settings and memo[1] == where:
        return memo[3]
    facts = (
        settings.DEPLOYMENT_ID,
        alias,
        config.get("ENGINE"),
        config.get("HOST"),
        config.get("PORT"),
        config.get("NAME"),
    )
    digest = hashlib.sha256(repr(facts).encode("utf-8", "surrogatepass")).digest()
    token = base64.b32encode(digest).decode("ascii")[:8].lower()
    _memo[alias] = (config, where, settings, token)
    return token


def value_field(field: Field[Any, Any]) -> Field[Any, Any]:
    """Return the field whose values ``field`` holds (a foreign key holds its target's)."""
    seen = 0
    while isinstance(field, models.ForeignKey) and seen < 16:
        field = field.target_field
        seen += 1
    return field


def canonical(field: Field[Any, Any], value: Any) -> Any:
    """
    Return ``value`` as the database returns it for ``field``, or raise
    :class:`NotCanonical` when only the database could tell (a Decimal with more
    places than the column keeps would be rounded; a value the field rejects).
    """
    field = value_field(field)
    try:
        typed = field.to_python(value)
    except (ValidationError, TypeError, ValueError, decimal.InvalidOperation) as e:
        raise NotCanonical(str(e)) from None
    if typed is None:
        return None
    if isinstance(field, models.DecimalField) and isinstance(typed, decimal.Decimal):
        places = field.decimal_places or 0
        if not typed.is_finite():
            raise NotCanonical("not a finite number")
        exponent = typed.as_tuple().exponent
        if isinstance(exponent, int) and exponent < -places:
            # The column keeps fewer places: the database rounds (or refuses) it.
            raise NotCanonical(f"{typed} has more than {places} decimal places")
        return typed.quantize(decimal.Decimal(1).scaleb(-places))
    if (
        isinstance(field, models.DateTimeField)
        and isinstance(typed, datetime.datetime)
        and django_settings.USE_TZ
    ):
        if timezone.is_naive(typed):
            typed = timezone.make_aware(typed, timezone.get_default_timezone())
        return typed.astimezone(datetime.UTC)
    return typed


_TEXT_FIELDS = (models.CharField, models.TextField)


def text_is_exact(field: Field[Any, Any], alias: str) -> bool:
    """
    Return whether ``field`` compares values exactly on database ``alias``: True for
    every non-text field, and for text columns whose collation is binary and pads
    nothing. MySQL/MariaDB's default collations ignore case, accents and trailing
    spaces; their ``_bin`` collations still ignore trailing spaces (PAD SPACE), so
    only ``*_nopad_bin``, ``*_0900_bin`` and ``binary`` count as exact there. On
    PostgreSQL and SQLite the default collation is exact, and so are PostgreSQL's
    ``C``, ``POSIX`` and ``ucs_basic``; any other explicit ``db_collation`` (which could
    be nondeterministic or ``NOCASE``) is not trusted.
    """
    field = value_field(field)
    if custom_field(field) or isinstance(field, models.GenericIPAddressField):
        # A project's own field class may convert values any way it likes; Django's
        # IP field rewrites IPv6 spellings on the way in.
        return False
    if not isinstance(field, _TEXT_FIELDS):
        return True
    return collation_is_exact(getattr(field, "db_collation", None), connections[alias].vendor)


#: PostgreSQL's built-in collations that compare bytes (deterministic, no locale rules).
_PG_BYTEWISE = frozenset({"", "c", "posix", "ucs_basic"})


def collation_is_exact(collation: str | None, vendor: str) -> bool:
    """
    Return whether a text column with ``db_collation=collation`` (None: the database's
    default) compares byte for byte on a ``vendor`` database, trailing spaces included.
    """
    name = (collation or "").lower()
    if vendor == "mysql":
        return name == "binary" or name.endswith(("_nopad_bin", "_0900_bin"))
    if vendor == "sqlite":
        return name in ("", "binary")
    # Any other explicit collation could be nondeterministic (CREATE COLLATION …
    # deterministic = false); only the bytewise built-ins are known exact.
    return name in _PG_BYTEWISE


def custom_field(field: Field[Any, Any]) -> bool:
    """Whether ``field`` is of a class of the project's own (it may convert values any way it likes)."""
    return type(field).__module__.split(".")[0] != "django"


#: Letters a Unicode collation may expand to (or equate with) other letters.
_EXPANSIONS = str.maketrans(
    {
        "æ": "ae",
        "œ": "oe",
        "ø": "o",
        "đ": "d",
        "ð": "d",
        "ł": "l",
        "þ": "th",
        "ħ": "h",
        "\u0131": "i",  # dotless i
        "ŀ": "l",
    }
)


def fold(text: str) -> str:
    """
    Return a coarse form of ``text`` that spellings a case- and accent-insensitive
    collation treats as equal usually share: compatibility-decomposed, accents and
    format characters dropped, case-folded, common ligatures expanded, trailing
    spaces removed. Used only to *group* (family invalidation), never to identify:
    folding two different values together costs an extra invalidation, not a
    wrong answer.
    """
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(
        ch
        for ch in decomposed
        if not unicodedata.combining(ch) and unicodedata.category(ch) not in ("Cf", "Cc")
    )
    return kept.casefold().translate(_EXPANSIONS).rstrip(" ")


def canonical_types(field: Field[Any, Any]) -> frozenset[type]:
    """Return the types a value of ``field`` already has when it is canonical (no conversion)."""
    target = value_field(field)
    if isinstance(target, models.DateTimeField):
        return frozenset()  # time zone and precision need the conversion
    for kinds, types in _READY:
        if isinstance(target, kinds):
            return types
    return frozenset()


_READY: list[tuple[Any, frozenset[type]]] = [
    (models.BooleanField, frozenset({bool})),
    (models.IntegerField | models.AutoField, frozenset({int})),
    (models.FloatField, frozenset({float})),
    (models.CharField | models.TextField, frozenset({str})),
    (models.UUIDField, frozenset({uuid.UUID})),
    (models.DurationField, frozenset({datetime.timedelta})),
    (models.DateField, frozenset({datetime.date})),
    (models.TimeField, frozenset({datetime.time})),
    (models.BinaryField, frozenset({bytes})),
]
